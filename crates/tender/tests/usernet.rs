//! User-mode networking boot tests: no TAP device, no namespace; the guest
//! is reached through ports the tender publishes on 127.0.0.1, and reaches
//! servers the test runs on 127.0.0.1 through the gateway.

mod common;

use skiff_testnet::{Guard, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::workspace;

fn echo_image() -> &'static Path {
    common::guest("examples/echo")
}

fn netprobe_image() -> &'static Path {
    common::guest("tests/guests/netprobe")
}

fn website_image() -> &'static Path {
    common::guest("examples/static-website")
}

/// A guest on the user network; its output goes to a file.
struct Guest {
    child: Guard,
    out: PathBuf,
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Guest {
    fn start(image: &Path, tender_args: &[&str], guest_args: &[&str]) -> Guest {
        common::require_sandbox();
        let dir = workspace().join("target/usernet-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.join(format!("{}-{n}.out", std::process::id()));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(common::tender())
            .args(common::sandbox_args())
            .args(["--net", "service=user"])
            .args(if tender_args.contains(&"--timeout") { &[][..] } else { &["--timeout", "120s"][..] })
            .args(tender_args)
            .arg(image)
            .arg("--")
            .args(guest_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the tender");
        Guest { child: Guard(child), out }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_line(&self, needle: &str) -> String {
        wait_for(Duration::from_secs(20), || self.output().lines().find(|l| l.contains(needle)).map(str::to_string))
            .unwrap_or_else(|| panic!("no {needle:?} in the output:\n{}", self.output()))
    }

    /// The host address the tender published for a guest port.
    fn published(&self, guest_port: u16, proto: &str) -> SocketAddr {
        let line = self.wait_line(&format!("/{proto} -> guest port {guest_port}"));
        line.split_whitespace().nth(1).and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()).expect("address")
    }

    fn finish(&mut self, limit: Duration) -> (i32, String) {
        let status = wait_for(limit, || self.child.0.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("the tender did not exit:\n{}", self.output()));
        (status.code().unwrap_or(-1), self.output())
    }
}

fn fill_at(seed: u64, offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = (offset + i) as u64;
        let mut z = seed ^ (pos / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *b = (z ^ (z >> 31)).to_le_bytes()[(pos % 8) as usize];
    }
}

/// Streams `total` seeded bytes through an echo at `addr`, checking every
/// byte that comes back.
fn echo_stream(addr: SocketAddr, total: usize, seed: u64) -> Duration {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let checker = std::thread::spawn(move || {
        let (mut want, mut got, mut seen) = (vec![0u8; 65536], vec![0u8; 65536], 0);
        while seen < total {
            let n = reader.read(&mut got).expect("read the echo");
            assert!(n > 0, "the echo ended after {seen} of {total} bytes");
            fill_at(seed, seen, &mut want[..n]);
            assert!(got[..n] == want[..n], "echoed bytes differ at offset {seen}");
            seen += n;
        }
    });
    let mut writer = stream;
    let (mut buf, mut sent) = (vec![0u8; 65536], 0);
    while sent < total {
        let n = buf.len().min(total - sent);
        fill_at(seed, sent, &mut buf[..n]);
        writer.write_all(&buf[..n]).expect("send");
        sent += n;
    }
    checker.join().expect("the echo matches");
    start.elapsed()
}

#[test]
fn echo_is_reached_through_published_ports_without_any_tap_device() {
    let g = Guest::start(echo_image(), &["--publish", "0:7", "--publish", "0:7/udp"], &[]);
    // The guest got its address from the tender's DHCP server.
    g.wait_line("DHCP: leased 10.0.2.15/24 from 10.0.2.2, router 10.0.2.2, DNS [Ipv4(10.0.2.3)]");
    g.wait_line("echo: serving TCP and UDP on 10.0.2.15:7");
    let tcp = g.published(7, "tcp");
    let udp = g.published(7, "udp");
    assert_eq!(tcp.ip().to_string(), "127.0.0.1");

    let took = echo_stream(tcp, 64 << 20, 1);
    eprintln!("64 MiB through --publish in {took:?}");

    // 200 connections open at once, each echoing its own bytes.
    let conns: Vec<TcpStream> =
        (0..200).map(|_| TcpStream::connect_timeout(&tcp, Duration::from_secs(10)).expect("connect")).collect();
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut data = vec![0u8; 10_000 + i * 41];
                fill_at(i as u64, 0, &mut data);
                s.write_all(&data).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                assert!(back == data, "connection {i}: {} of {} bytes back", back.len(), data.len());
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every connection echoes");
    }

    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut back = 0;
    for i in 0..20 {
        u.send_to(format!("datagram {i}").as_bytes(), udp).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            assert_eq!(from, udp);
            assert_eq!(&buf[..n], format!("datagram {i}").as_bytes());
            back += 1;
        }
    }
    assert!(back >= 19, "{back} of 20 datagrams came back");
}

/// A server on 127.0.0.1 that answers one connection, if one comes within
/// `limit`. Returns its port and a handle telling whether it was reached.
fn one_shot_server(limit: Duration) -> (u16, std::thread::JoinHandle<bool>) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok((mut c, _)) = server.accept() {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = String::new();
                let _ = c.read_to_string(&mut got);
                let _ = c.write_all(format!("host says: {got}").as_bytes());
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    (port, handle)
}

#[test]
fn a_guest_connects_out_to_the_host_through_the_gateway() {
    let (port, server) = one_shot_server(Duration::from_secs(20));
    let port = port.to_string();
    let mut g = Guest::start(netprobe_image(), &[], &["connect", "10.0.2.2", &port, "hello out there"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert!(server.join().unwrap(), "the host server saw no connection:\n{out}");
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("outbound traffic relayed"), "{out}");
    assert!(out.contains(r#"reply "host says: hello out there""#), "{out}");
}

#[test]
fn data_written_just_before_main_returns_still_arrives() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        // read_to_end succeeds only at a clean end of stream (the FIN).
        let eof = c.read_to_end(&mut got).is_ok();
        (got, eof)
    });
    let bytes = 48_000;
    let mut g =
        Guest::start(netprobe_image(), &[], &["send-and-return", "10.0.2.2", &port.to_string(), &bytes.to_string()]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert_eq!(status, 0, "{out}");
    let (got, eof) = reader.join().unwrap();
    assert!(eof, "the connection ended without a FIN after {} bytes:\n{out}", got.len());
    let expected: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    assert!(got == expected, "{} bytes arrived of {bytes}", got.len());
}

#[test]
fn outbound_none_blocks_the_guests_connections() {
    let (port, server) = one_shot_server(Duration::from_secs(5));
    let port = port.to_string();
    let mut g = Guest::start(netprobe_image(), &["--net-outbound", "none"], &["connect", "10.0.2.2", &port, "x"]);
    let (status, out) = g.finish(Duration::from_secs(30));
    assert!(!server.join().unwrap(), "the host server was reached although outbound is off:\n{out}");
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("outbound traffic off"), "{out}");
    assert!(out.contains("main failed: connection refused"), "{out}");
}

#[test]
fn a_flood_of_garbage_frames_neither_grows_the_tender_nor_stops_the_relays() {
    let mut g = Guest::start(netprobe_image(), &["--publish", "0:7", "--stats", "--timeout", "60s"], &["flood", "6"]);
    g.wait_line("netprobe: flooding for 6 s");
    let addr = g.published(7, "tcp");
    for i in 0..5u64 {
        let took = echo_stream(addr, 256 * 1024, 10 + i);
        assert!(took < Duration::from_secs(10), "a relay took {took:?} during the flood");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, out) = g.finish(Duration::from_secs(60));
    assert_eq!(status, 0, "{out}");
    let line = out.lines().find(|l| l.contains("tender peak RSS")).expect("--stats memory line");
    let beyond_kib: usize = line
        .split("KiB, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("the figure beyond the guest's memory");
    // The user network's documented bound, plus the tender itself.
    let bound_kib = skiff_usernet::Limits::default().memory_bound() / 1024 + 8 * 1024;
    assert!(beyond_kib < bound_kib, "the tender grew to {beyond_kib} KiB beyond the guest (bound {bound_kib} KiB)");
    let user = out.lines().find(|l| l.contains("outbound connections")).expect("--stats user line");
    eprintln!("{user}\n{line}");
}

#[test]
fn a_taken_host_port_is_a_clear_error() {
    common::require_sandbox();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--net", "service=user", "--publish", &format!("{port}:7")])
        .arg(echo_image())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}/tcp for --publish")), "{err}");
    assert!(err.contains("another program uses that port"), "{err}");
    let out = Command::new(common::tender())
        .args(common::sandbox_args())
        .args(["--net", "service=user", "--publish", "8007"])
        .arg(echo_image())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(skiff_abi::exit::USAGE)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected [HOSTADDR:]HOSTPORT:GUESTPORT"));
    // Bad limits are bad command lines too, refused with their range.
    let usage = out.status.code();
    for (option, value, says) in [
        ("--net-max-connections", "0", "is not a whole number from 1 to 16384"),
        ("--net-backlog", "lots", "is not a whole number from 1 to 65535"),
        ("--net-max-udp-flows", "100000", "is not a whole number from 1 to 8192"),
        ("--net-tcp-buffer", "1K", "is not a buffer size from 4K to 16M"),
    ] {
        let out = Command::new(common::tender())
            .args(common::sandbox_args())
            .args(["--net", "service=user", option, value])
            .arg(echo_image())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), usage, "{err}");
        assert!(err.contains(&format!("for '{option}")) && err.contains(says), "{err}");
    }
}

/// A TLS client that takes any certificate (the demo's is self-signed) but
/// checks the handshake's signatures, without session resumption: every
/// connection is a full handshake, as `ab` makes them.
mod tls {
    use rustls::ClientConfig;
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::time::Duration;

    pub fn config() -> Arc<ClientConfig> {
        skiff_testnet::tls::any_certificate()
    }

    /// One HTTPS GET without keep-alive, as `ab` makes it: HTTP/1.0, read
    /// to the server's close, then our close_notify. Returns the status.
    pub fn get(addr: SocketAddr, config: &Arc<ClientConfig>, limit: Duration) -> Result<u16, String> {
        get_slowly(addr, config, limit, Duration::ZERO)
    }

    /// The same, waiting `hold` between the connect and the handshake.
    pub fn get_slowly(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        limit: Duration,
        hold: Duration,
    ) -> Result<u16, String> {
        let mut sock = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        std::thread::sleep(hold);
        sock.set_read_timeout(Some(limit)).unwrap();
        sock.set_write_timeout(Some(limit)).unwrap();
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: skiff-test\r\n\r\n")
            .map_err(|e| format!("handshake or request: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).map_err(|e| format!("response after {} bytes: {e}", response.len()))?;
        conn.send_close_notify();
        let _ = conn.complete_io(&mut sock);
        let head = String::from_utf8_lossy(&response[..response.len().min(64)]).to_string();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status in {head:?}"))?;
        if response.len() < 200 {
            return Err(format!("a short response: {head:?}"));
        }
        Ok(status)
    }
}

/// The static website on the user network with its HTTPS port published.
fn website(tender_args: &[&str]) -> (Guest, SocketAddr) {
    let mut args = vec!["--publish", "0:443", "--stats"];
    args.extend_from_slice(tender_args);
    let g = Guest::start(website_image(), &args, &[]);
    g.wait_line("static-website: ");
    let addr = g.published(443, "tcp");
    (g, addr)
}

/// The `--stats` line of the user network, once the tender has ended.
fn user_stats(out: &str) -> &str {
    out.lines().find(|l| l.contains("outbound connections")).expect("--stats user line")
}

#[test]
fn twenty_thousand_sequential_https_connections_all_succeed() {
    let (g, addr) = website(&["--timeout", "600s"]);
    let config = tls::config();
    let start = Instant::now();
    let count = 20_000;
    let mut failures = Vec::new();
    for i in 0..count {
        match tls::get(addr, &config, Duration::from_secs(10)) {
            Ok(200) => {}
            other => failures.push((i, other)),
        }
        assert!(failures.len() < 10, "failures: {failures:?}\n{}", g.output());
    }
    let took = start.elapsed();
    eprintln!("{count} sequential HTTPS connections in {took:?} ({:.0}/s)", count as f64 / took.as_secs_f64());
    assert!(failures.is_empty(), "failures: {failures:?}");
}

#[test]
fn beyond_the_connection_limit_clients_wait_and_every_one_is_served() {
    // 16 relays, 40 clients at once, each holding its connection a while.
    let (mut g, addr) = website(&["--timeout", "12s", "--net-max-connections", "16", "--net-backlog", "64"]);
    let config = tls::config();
    // First, sequential connections: each close is acknowledged at once,
    // so none of them needs the gateway to retransmit its FIN.
    for i in 0..300 {
        assert_eq!(tls::get(addr, &config, Duration::from_secs(10)), Ok(200), "connection {i}");
    }
    let start = Instant::now();
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let config = config.clone();
            // Slow clients: each holds its relay half a second before its
            // handshake.
            std::thread::spawn(move || {
                tls::get_slowly(addr, &config, Duration::from_secs(10), Duration::from_millis(500))
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().expect("client thread")).collect();
    let took = start.elapsed();
    let served = results.iter().filter(|r| matches!(r, Ok(200))).count();
    assert_eq!(served, 40, "{results:?}");
    assert!(took < Duration::from_secs(8), "40 clients took {took:?}");
    let (status, out) = g.finish(Duration::from_secs(30));
    assert_eq!(status, 111, "{out}");
    let user = user_stats(&out);
    eprintln!("{user}");
    assert!(user.contains("at most 16 at once"), "{user}");
    assert!(!user.contains("limit reached 0 times"), "{user}");
    // Before the guest acknowledged closes at once, every connection's
    // close waited a retransmission timeout (all but the last second's
    // were counted); a vCPU descheduled on a busy host may delay a few.
    let slow: u64 = user
        .split(" slow closes")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("slow closes count");
    assert!(slow < 10, "{slow} closes needed a retransmission: {user}");
}
