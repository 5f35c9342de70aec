//! Network boot tests: the echo example and the netprobe guest on TAP
//! devices in network namespaces the tests create and delete, talked to by
//! real clients (ping, dnsmasq, Rust sockets) inside those namespaces.
//!
//! Needs root (namespaces, TAP devices), `/dev/kvm`, and the Debian
//! packages iproute2, iputils-ping and dnsmasq-base (`scripts/setup`).

use skiff_testnet::{Dnsmasq, Guard, NetNs, require_kvm, require_program, require_root, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn build_guest(dir: &str) -> PathBuf {
    let mut opts = skiff_build::BuildOptions::new(workspace().join(dir));
    opts.target_dir = Some(workspace().join("target/guest"));
    opts.quiet = true;
    match skiff_build::build(&opts) {
        Ok(built) => built.image,
        Err(e) => panic!("building {dir} failed: {e}"),
    }
}

fn echo_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_guest("examples/echo"))
}

fn netprobe_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_guest("tests/guests/netprobe"))
}

const TAP: &str = "tap0";
const HOST4: &str = "10.0.0.1";
const GUEST4: &str = "10.0.0.2";

/// A namespace with a TAP device addressed 10.0.0.1/24 and fd00::1/64.
fn namespace() -> NetNs {
    require_root();
    require_kvm();
    let ns = NetNs::new().expect("create a network namespace");
    ns.add_tap(TAP, &["10.0.0.1/24", "fd00::1/64"]).expect("create the TAP device");
    ns
}

/// A guest running under the tender inside `ns`; its console goes to a
/// file.
struct Guest {
    child: Guard,
    console: PathBuf,
    errors: PathBuf,
}

impl Guest {
    fn start(ns: &NetNs, image: &Path, tender_args: &[&str], guest_args: &[&str]) -> Guest {
        let dir = workspace().join("target/net-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join(format!("{}.out", ns.name()));
        let errors = dir.join(format!("{}.err", ns.name()));
        let child = ns
            .command(env!("CARGO_BIN_EXE_skiff-tender"))
            .args(["--net", &format!("service={TAP}")])
            .args(if tender_args.contains(&"--timeout") { &[][..] } else { &["--timeout", "120s"][..] })
            .args(tender_args)
            .arg(image)
            .arg("--")
            .args(guest_args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .expect("start the tender");
        Guest { child: Guard(child), console, errors }
    }

    fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.console).unwrap_or_default(),
            std::fs::read_to_string(&self.errors).unwrap_or_default()
        )
    }

    /// Waits for a console line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let found = wait_for(limit, || {
            let text = self.output();
            text.lines().find(|l| l.contains(needle)).map(str::to_string)
        });
        match found {
            Some(line) => line,
            None => {
                let status = self.child.0.try_wait().ok().flatten();
                panic!("no {needle:?} in the guest's output within {limit:?} (tender: {status:?}):\n{}", self.output())
            }
        }
    }

    /// Waits for the tender to exit; returns its status and output.
    fn finish(&mut self, limit: Duration) -> (i32, String) {
        let status = wait_for(limit, || self.child.0.try_wait().ok().flatten());
        match status {
            Some(s) => (s.code().unwrap_or(-1), self.output()),
            None => panic!("the tender did not exit within {limit:?}:\n{}", self.output()),
        }
    }
}

/// Starts echo with a static address and waits until it serves.
fn echo(ns: &NetNs, tender_args: &[&str], extra: &[&str]) -> Guest {
    let mut args = vec!["--ipv4", "10.0.0.2/24", "--gateway", HOST4, "--ipv6", "fd00::2/64"];
    args.extend_from_slice(extra);
    let mut g = Guest::start(ns, echo_image(), tender_args, &args);
    g.wait_line("echo: serving TCP and UDP", Duration::from_secs(20));
    g
}

/// The byte at every offset of a seeded pseudo-random stream, so sender
/// and checker agree whatever sizes reads and writes come in.
fn fill_at(seed: u64, offset: usize, buf: &mut [u8]) {
    let mut block = u64::MAX;
    let mut value = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i;
        if (pos / 8) as u64 != block {
            block = (pos / 8) as u64;
            // SplitMix64 of (seed, block).
            let mut z = seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            value = (z ^ (z >> 31)).to_le_bytes();
        }
        *b = value[pos % 8];
    }
}

/// Sends `total` bytes of a seeded stream to `addr` while reading the echo
/// back; checks every byte. Returns the time taken.
fn echo_stream(addr: SocketAddr, total: usize, seed: u64) -> Duration {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let checker = std::thread::spawn(move || {
        let mut want = vec![0u8; 64 * 1024];
        let mut got = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        while seen < total {
            let n = reader.read(&mut got).expect("read the echo");
            assert!(n > 0, "the echo ended after {seen} of {total} bytes");
            fill_at(seed, seen, &mut want[..n]);
            assert!(got[..n] == want[..n], "echoed bytes differ at offset {seen}");
            seen += n;
        }
        seen
    });
    let mut writer = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = buf.len().min(total - sent);
        fill_at(seed, sent, &mut buf[..n]);
        writer.write_all(&buf[..n]).expect("send");
        sent += n;
    }
    let seen = checker.join().expect("the echo matches");
    assert_eq!(seen, total);
    start.elapsed()
}

fn guest_addr() -> SocketAddr {
    format!("{GUEST4}:7").parse().unwrap()
}

#[test]
fn echo_answers_ping_tcp_and_udp_on_static_addresses() {
    require_program("ping", "iputils-ping");
    let ns = namespace();
    let _g = echo(&ns, &[], &[]);
    let out = ns.command("ping").args(["-c", "5", "-i", "0.05", "-W", "2", GUEST4]).output().unwrap();
    assert!(out.status.success(), "ping: {}", String::from_utf8_lossy(&out.stdout));
    let out = ns.command("ping").args(["-6", "-c", "5", "-i", "0.05", "-W", "2", "fd00::2"]).output().unwrap();
    assert!(out.status.success(), "ping -6: {}", String::from_utf8_lossy(&out.stdout));
    let (tcp, udp) = ns.run(|| {
        let mut s = TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hello, skiff").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut tcp = String::new();
        s.read_to_string(&mut tcp).unwrap();
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut udp = Vec::new();
        for i in 0..20 {
            let msg = format!("datagram {i}");
            u.send_to(msg.as_bytes(), guest_addr()).unwrap();
            let mut buf = [0u8; 100];
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                assert_eq!(from, guest_addr());
                udp.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        (tcp, udp)
    });
    assert_eq!(tcp, "hello, skiff");
    assert!(udp.len() >= 19, "only {} of 20 datagrams came back", udp.len());
    assert!(udp.iter().all(|d| d.starts_with("datagram ")));
    // IPv6 TCP too.
    let v6 = ns.run(|| {
        let mut s = TcpStream::connect_timeout(&"[fd00::2]:7".parse().unwrap(), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"over v6").unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&v6, b"over v6");
}

#[test]
fn a_64_mib_stream_is_echoed_byte_identical() {
    let ns = namespace();
    let mut g = echo(&ns, &["--stats", "--timeout", "60s"], &[]);
    let took = ns.run(|| echo_stream(guest_addr(), 64 << 20, 1));
    eprintln!("64 MiB echoed in {took:?}");
    let _ = g.child.0.kill();
}

#[test]
fn two_hundred_concurrent_connections_each_echo_correctly() {
    let ns = namespace();
    let _g = echo(&ns, &[], &[]);
    ns.run(|| {
        let threads: Vec<_> = (0..200u64)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(20)).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    (s, i)
                })
            })
            .collect();
        // All 200 are open at once before any data flows.
        let mut conns: Vec<(TcpStream, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let writers: Vec<_> = conns
            .iter_mut()
            .map(|(s, i)| {
                let mut s = s.try_clone().unwrap();
                let i = *i;
                std::thread::spawn(move || {
                    let mut data = vec![0u8; 20_000 + i as usize * 37];
                    fill_at(100 + i, 0, &mut data);
                    s.write_all(&data).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    assert!(back == data, "connection {i}: {} bytes back, {} sent", back.len(), data.len());
                })
            })
            .collect();
        for w in writers {
            w.join().expect("every connection echoes its own bytes");
        }
    });
}
