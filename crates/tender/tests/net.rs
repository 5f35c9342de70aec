//! Network boot tests: the echo example and the netprobe guest on TAP
//! devices in network namespaces the tests create and delete, talked to by
//! real clients (ping, dnsmasq, Rust sockets) inside those namespaces.
//!
//! Needs root (namespaces, TAP devices), `/dev/kvm`, and the Debian
//! packages iproute2, iputils-ping and dnsmasq-base (`scripts/setup`).

mod common;

use skiff_testnet::{Dnsmasq, Guard, NetNs, require_program, require_root, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::workspace;

fn echo_image() -> &'static Path {
    common::guest("examples/echo")
}

fn netprobe_image() -> &'static Path {
    common::guest("tests/guests/netprobe")
}

const TAP: &str = "tap0";
const HOST4: &str = "10.0.0.1";
const GUEST4: &str = "10.0.0.2";

/// A namespace with a TAP device addressed 10.0.0.1/24 and fd00::1/64.
fn namespace() -> NetNs {
    require_root();
    common::require_sandbox();
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
            .command(common::tender())
            .args(common::sandbox_args())
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
                    let s = TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(20)).expect("connect");
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

/// The guest's MAC, as the tender generates it for the NIC "service".
fn service_mac() -> String {
    let m = skiff_tender::net::generated_mac("service");
    m.map(|b| format!("{b:02x}")).join(":")
}

#[test]
fn echo_gets_its_address_from_dnsmasq_over_dhcp() {
    let ns = namespace();
    let dnsmasq = Dnsmasq::start(&ns, TAP, &["--dhcp-range=10.0.0.50,10.0.0.99,255.255.255.0,2m"]).expect("dnsmasq");
    let mut g = Guest::start(&ns, echo_image(), &[], &[]);
    let line = g.wait_line("echo: serving TCP and UDP on", Duration::from_secs(20));
    let addr = line.split(" on ").nth(1).and_then(|s| s.split(':').next()).expect("address in the line").to_string();
    assert!(addr.starts_with("10.0.0."), "{line}");
    g.wait_line(&format!("DHCP: leased {addr}/24 from 10.0.0.1"), Duration::from_secs(1));
    let leases = dnsmasq.leases();
    assert!(leases.contains(&service_mac()) && leases.contains(&addr), "leases:\n{leases}");
    let echoed = ns.run(move || {
        let mut s = TcpStream::connect_timeout(&format!("{addr}:7").parse().unwrap(), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"leased").unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&echoed, b"leased");
}

#[test]
fn the_dhcp_lease_is_renewed() {
    let ns = namespace();
    let dnsmasq = Dnsmasq::start(&ns, TAP, &["--dhcp-range=10.0.0.50,10.0.0.99,255.255.255.0,2m"]).expect("dnsmasq");
    // Cap the lease at 4 s: the client renews at half of it.
    let mut g = Guest::start(&ns, netprobe_image(), &[], &["--dhcp-max-lease", "4", "wait", "7"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("netprobe: waited 7 s, address Some(10.0.0."), "{out}");
    let log = dnsmasq.log();
    let acks = log.lines().filter(|l| l.contains("DHCPACK") && l.contains(&service_mac())).count();
    assert!(acks >= 2, "expected the first lease and at least one renewal, dnsmasq saw {acks} ACKs:\n{log}");
    let requests = log.lines().filter(|l| l.contains("DHCPREQUEST") && l.contains(&service_mac())).count();
    assert!(requests >= 2, "{log}");
}

#[test]
fn slaac_configures_an_ipv6_address_from_router_advertisements() {
    require_program("ping", "iputils-ping");
    let ns = namespace();
    ns.ip(&["-6", "addr", "add", "fd00:5::1/64", "dev", TAP, "nodad"]).unwrap();
    let _dnsmasq = Dnsmasq::start(
        &ns,
        TAP,
        &[
            "--enable-ra",
            "--dhcp-range=fd00:5::,ra-only,64,2m",
            "--ra-param=tap0,10",
            "--dhcp-range=10.0.0.50,10.0.0.99,2m",
        ],
    )
    .expect("dnsmasq");
    let mut g = Guest::start(&ns, echo_image(), &[], &["--slaac"]);
    g.wait_line("echo: serving TCP and UDP", Duration::from_secs(20));
    // SLAAC's address: the prefix and the MAC's EUI-64.
    let m = skiff_tender::net::generated_mac("service");
    let addr = format!(
        "fd00:5::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([m[0] ^ 2, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]])
    );
    let ok = wait_for(Duration::from_secs(20), || {
        let out = ns.command("ping").args(["-6", "-c", "1", "-W", "1", &addr]).output().ok()?;
        out.status.success().then_some(())
    });
    assert!(ok.is_some(), "no answer from the SLAAC address {addr}:\n{}", g.output());
}

#[test]
fn the_dns_client_resolves_and_an_outgoing_connection_gets_its_data() {
    let ns = namespace();
    let _dnsmasq = Dnsmasq::start(
        &ns,
        TAP,
        &["--dhcp-range=10.0.0.50,10.0.0.99,2m", "--address=/service.skiff.test/10.0.0.1", "--listen-address=10.0.0.1"],
    )
    .expect("dnsmasq");
    // A TCP server in the namespace that answers with what it read, upper-cased.
    let server = ns.run(|| std::net::TcpListener::bind("10.0.0.1:9000").unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        s.write_all(format!("served: {}", got.to_uppercase()).as_bytes()).unwrap();
    });
    let mut g =
        Guest::start(&ns, netprobe_image(), &[], &["connect", "service.skiff.test", "9000", "hello from the guest"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    handle.join().unwrap();
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("connected to 10.0.0.1:9000"), "{out}");
    assert!(out.contains(r#"reply "served: HELLO FROM THE GUEST""#), "{out}");

    let mut g = Guest::start(&ns, netprobe_image(), &[], &["resolve", "service.skiff.test"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("service.skiff.test resolves to [10.0.0.1]"), "{out}");
}

#[test]
fn a_64_mib_stream_survives_loss_reordering_and_duplication() {
    let ns = namespace();
    let _g = echo(&ns, &[], &[]);
    ns.command("tc")
        .args([
            "qdisc",
            "add",
            "dev",
            TAP,
            "root",
            "netem",
            "loss",
            "3%",
            "reorder",
            "5%",
            "duplicate",
            "1%",
            "delay",
            "1ms",
        ])
        .status()
        .expect("tc");
    let took = ns.run(|| echo_stream(guest_addr(), 64 << 20, 2));
    eprintln!("64 MiB echoed through netem in {took:?}");
}

#[test]
fn malformed_frames_are_dropped_and_echo_keeps_serving() {
    let ns = namespace();
    let mut g = echo(&ns, &["--stats", "--timeout", "30s"], &[]);
    // Learn the guest's MAC through ARP with a first connection.
    let first = ns.run(|| echo_stream(guest_addr(), 4096, 3));
    assert!(first < Duration::from_secs(10));
    let mac = skiff_tender::net::generated_mac("service");
    let host: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let eth = |ethertype: [u8; 2]| -> Vec<u8> { [&mac[..], &host[..], &ethertype[..]].concat() };
    let mut frames: Vec<Vec<u8>> = vec![
        vec![0xff; 6],                                  // truncated Ethernet header
        eth([0x08, 0x00]),                              // IPv4 ethertype, no IP header
        [eth([0x08, 0x00]), vec![0x45, 0, 0]].concat(), // truncated IPv4 header
        [eth([0x08, 0x06]), vec![0, 1, 8, 0]].concat(), // truncated ARP
        [eth([0x86, 0xdd]), vec![0x60; 20]].concat(),   // truncated IPv6
    ];
    // An IPv4 header with a bogus total length and a bad checksum, then a
    // UDP datagram to port 7 with a bad checksum, then a TCP segment with a
    // bogus data offset.
    let ip = |proto: u8, total: u16, payload: &[u8]| -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0xde, 0xad, 10, 0, 0, 1, 10, 0, 0, 2];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        [eth([0x08, 0x00]), h, payload.to_vec()].concat()
    };
    frames.push(ip(17, 9000, &[0, 9, 0, 7, 0, 12, 0, 0, b'x', b'y', b'z', b'!']));
    frames.push(ip(17, 32, &[0, 9, 0, 7, 0, 12, 0xbe, 0xef, b'x', b'y', b'z', b'!']));
    frames.push(ip(6, 40, &[0, 9, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0xf0, 2, 0xff, 0xff, 0, 0, 0, 0]));
    frames.push(ip(1, 28, &[8, 0, 0xff, 0xff, 0, 1, 0, 1]));
    // Random bytes, some as long as a full frame.
    let mut x: u64 = 0x1234_5678_9abc_def0;
    for i in 0..200 {
        let len = [14, 60, 200, 1514][i % 4];
        let f: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        frames.push(if i % 2 == 0 { [&mac[..], &f[6..]].concat() } else { f });
    }
    let count = frames.len();
    let sent = ns.send_raw_frames(TAP, frames).expect("send raw frames");
    assert!(sent >= count - 1, "only {sent} of {count} frames went out");
    let again = ns.run(|| echo_stream(guest_addr(), 1 << 20, 4));
    assert!(again < Duration::from_secs(20));
    let _ = g.child.0.kill();
}

/// The CPU time (user + system, in clock ticks of 10 ms) of process `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A guest that takes its NIC and never reads it, while frames keep
/// arriving: the host must not spend a core on it (neither the guest's
/// executor nor the I/O thread).
#[test]
fn a_nic_nobody_reads_costs_no_cpu() {
    let ns = namespace();
    let args = ["--stats", "--timeout", "30s"];
    let mut g = Guest::start(&ns, netprobe_image(), &args, &["hold-nic", "3"]);
    g.wait_line("netprobe: holding the NIC", Duration::from_secs(20));
    let mac = skiff_tender::net::generated_mac("service");
    // More frames than the receive ring holds (256 slots).
    let frames: Vec<Vec<u8>> = (0..600u32)
        .map(|i| [&mac[..], &[0x02, 0, 0, 0, 0, 0x99], &[0x08, 0x00], &i.to_be_bytes()[..], &[0u8; 60][..]].concat())
        .collect();
    let sent = ns.send_raw_frames(TAP, frames).expect("send raw frames");
    assert!(sent >= 590, "only {sent} frames went out");
    std::thread::sleep(Duration::from_millis(200));
    let pid = g.child.0.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(pid) - before;
    let (status, out) = g.finish(Duration::from_secs(20));
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("netprobe: done holding"), "{out}");
    // 1.5 s of a busy core is 150 ticks; allow 10% of that.
    assert!(used <= 15, "the tender used {used} ticks (10 ms each) of CPU in 1.5 s for an idle guest:\n{out}");
}

#[test]
fn the_rings_need_few_exits_under_load() {
    let ns = namespace();
    let mut g = echo(&ns, &["--stats", "--timeout", "6s"], &[]);
    ns.run(|| echo_stream(guest_addr(), 16 << 20, 6));
    let (_, out) = g.finish(Duration::from_secs(30));
    let line = out.lines().find(|l| l.contains("exits per frame")).expect("--stats net line");
    let per_frame: f64 =
        line.split("; ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(per_frame < 0.2, "{line}");
}

/// With the I/O thread asleep (no spin), the guest's doorbell has the vCPU
/// thread send the queued frames itself instead of waking the I/O thread:
/// every reply of a slow request/response exchange leaves that way.
#[test]
fn replies_to_a_sleeping_io_thread_leave_from_the_vcpu_thread() {
    let ns = namespace();
    let mut g = echo(&ns, &["--stats", "--timeout", "4s", "--net-spin", "0us"], &[]);
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..20u8 {
            std::thread::sleep(Duration::from_millis(5));
            s.write_all(&[i; 100]).unwrap();
            let mut back = [0u8; 100];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, [i; 100]);
        }
    });
    let (_, out) = g.finish(Duration::from_secs(30));
    let line = out.lines().find(|l| l.contains("sent by the vCPU thread")).expect("--stats io line");
    let direct: u64 = line
        .split("; ")
        .find(|p| p.contains("sent by the vCPU thread"))
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(direct >= 20, "{line}");
}

#[test]
fn nics_must_match_the_manifest_and_exist() {
    require_root();
    common::require_sandbox();
    let ns = NetNs::new().unwrap();
    let run = |args: &[&str]| {
        let out =
            ns.command(common::tender()).args(common::sandbox_args()).args(args).arg(echo_image()).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, err) = run(&[]);
    assert_eq!(status, 125);
    assert!(
        err.contains("needs a network interface named \"service\": attach a TAP device with --net service="),
        "{err}"
    );
    let (status, err) = run(&["--net", "service=nosuchtap"]);
    assert_eq!(status, 125);
    assert!(err.contains("TAP device nosuchtap does not exist"), "{err}");
    let (status, err) = run(&["--net", "service=lo"]);
    assert_eq!(status, 125);
    assert!(err.contains("lo is not a TAP device"), "{err}");
    let (status, err) = run(&["--net", "admin=tap9"]);
    assert_eq!(status, 125);
    assert!(err.contains("the image declares no NIC of that name (it has: service)"), "{err}");
    let (status, err) = run(&["--net", "service"]);
    assert_eq!(status, 124, "a command-line error, not a service's status 2");
    assert!(err.contains("expected NAME=TAPDEVICE"), "{err}");
    // --publish without the user network names what to add.
    let (status, err) = run(&["--net", "service=tap9", "--publish", "8080:80"]);
    assert_eq!(status, 125);
    assert!(err.contains("--publish needs a NIC on the user network: --net service=user"), "{err}");
    // An image without NICs says how a service declares one.
    let hello = common::guest("examples/hello");
    let out = std::process::Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--net", "service=user"])
        .arg(hello)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains(r#"it has no NICs: a service declares one with #[skiff::main(net = "service")]"#), "{err}");
    let out = std::process::Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--publish", "8080:80"])
        .arg(hello)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--publish needs a NIC on the user network, but the image has no NIC"), "{err}");
}

#[test]
fn an_oversized_frame_from_the_guest_ends_it_with_a_message() {
    let ns = namespace();
    let mut g = Guest::start(&ns, netprobe_image(), &[], &["--ipv4", "10.0.0.2/24", "oversize-frame"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert_eq!(status, 110, "{out}");
    assert!(
        out.contains("NIC \"service\": a transmitted frame of 2000 bytes is outside 14..=1514 bytes (MTU 1500)"),
        "{out}"
    );
    assert!(!out.contains("accepted an oversized frame"), "{out}");
}
