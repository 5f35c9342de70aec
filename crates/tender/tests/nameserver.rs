//! examples/nameserver under the tender on the user network, its port 53
//! published on 127.0.0.1 over UDP and TCP, queried by real clients: kdig
//! (knot-dnsutils) and small raw UDP and TCP clients for what kdig cannot
//! show (pipelining on one connection, garbage, timing).

mod common;

use skiff_testnet::{Guard, free_port, require_kvm, require_program, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::workspace;

fn image() -> &'static Path {
    common::guest("examples/nameserver")
}

/// The name server that keeps updated zones on a disk named `zones`.
fn disk_image() -> &'static Path {
    common::guest("examples/nameserver-disk")
}

/// The name server on the user network; its output goes to a file.
struct NameServer {
    _child: Guard,
    out: PathBuf,
    udp: SocketAddr,
    tcp: SocketAddr,
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl NameServer {
    fn start(guest_args: &[&str]) -> NameServer {
        Self::start_with(image(), &[], guest_args)
    }

    /// `image` with `tender_args` (beyond the network's) and `guest_args`.
    fn start_with(image: &Path, tender_args: &[&str], guest_args: &[&str]) -> NameServer {
        Self::start_on(free_port(), image, tender_args, guest_args)
    }

    /// [`NameServer::start_with`], published on 127.0.0.1:`port`.
    fn start_on(port: u16, image: &Path, tender_args: &[&str], guest_args: &[&str]) -> NameServer {
        require_kvm();
        require_program("kdig", "knot-dnsutils");
        let dir = workspace().join("target/nameserver-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.join(format!("{}-{n}.out", std::process::id()));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
            .args(["--net", "service=user", "--timeout", "120s"])
            .args(["--publish", &format!("127.0.0.1:{port}:53/udp"), "--publish", &format!("127.0.0.1:{port}:53/tcp")])
            .args(tender_args)
            .arg(image)
            .arg("--")
            .args(guest_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the tender");
        let mut ns =
            NameServer { _child: Guard(child), out, udp: ([0, 0, 0, 0], 0).into(), tcp: ([0, 0, 0, 0], 0).into() };
        ns.udp = ns.published("udp");
        ns.tcp = ns.published("tcp");
        ns.wait_line("serving UDP and TCP on");
        ns
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_line(&self, needle: &str) -> String {
        wait_for(Duration::from_secs(20), || self.output().lines().find(|l| l.contains(needle)).map(str::to_string))
            .unwrap_or_else(|| panic!("no {needle:?} in the output:\n{}", self.output()))
    }

    /// The host address the tender published for port 53 over `proto`.
    fn published(&self, proto: &str) -> SocketAddr {
        let line = self.wait_line(&format!("/{proto} -> guest port 53"));
        line.split_whitespace().nth(1).and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()).expect("address")
    }

    /// Sends SIGTERM; the exit status and the output.
    fn stop(&mut self) -> (i32, String) {
        let pid = self._child.0.id();
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(sent.success());
        let status = wait_for(Duration::from_secs(10), || self._child.0.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("the name server did not stop:\n{}", self.output()));
        (status.code().unwrap_or(-1), self.output())
    }

    /// Ends the tender with SIGKILL: no stop, no sync.
    fn kill(&mut self) {
        self._child.0.kill().expect("kill the tender");
        self._child.0.wait().expect("wait for the tender");
    }

    /// The serial of example.com's SOA, as answered.
    fn serial(&self) -> u32 {
        let answer = section(&self.kdig(&["example.com", "SOA"]), "ANSWER");
        let soa = answer.first().unwrap_or_else(|| panic!("no SOA answered:\n{}", self.output()));
        soa.split_whitespace().nth(6).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no serial in {soa}"))
    }

    /// kdig's output for `args` (over UDP unless they say `+tcp`): stdout
    /// and stderr together.
    fn kdig(&self, args: &[&str]) -> String {
        let tcp = args.contains(&"+tcp");
        let addr = if tcp { self.tcp } else { self.udp };
        let out = Command::new("kdig")
            .arg(format!("@{}", addr.ip()))
            .args(["-p", &addr.port().to_string(), "+timeout=3", "+retry=1"])
            .args(args)
            .output()
            .expect("run kdig");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kdig {args:?} failed:\n{text}\nserver:\n{}", self.output());
        text
    }
}

/// The lines of `section` ("ANSWER", "AUTHORITY", "ADDITIONAL") of kdig's
/// output, whitespace collapsed.
fn section(out: &str, name: &str) -> Vec<String> {
    let head = format!(";; {name} SECTION:");
    out.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn flags(out: &str) -> String {
    out.lines().find(|l| l.starts_with(";; Flags:")).unwrap_or_else(|| panic!("no flags in:\n{out}")).to_string()
}

fn status(out: &str) -> String {
    let line = out.lines().find(|l| l.contains("status:")).unwrap_or_else(|| panic!("no status in:\n{out}"));
    line.split("status: ").nth(1).and_then(|s| s.split(';').next()).unwrap().to_string()
}

/// A query message for `name` (dotted, without the root) of type `qtype`.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The answer to `q` over UDP, if one comes within `wait`.
fn udp_ask(sock: &UdpSocket, to: SocketAddr, q: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(q, to).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            // Answers to earlier, unanswered-in-time queries are skipped.
            Ok((n, _)) if n >= 12 && buf[..2] == q[..2] => return Some(buf[..n].to_vec()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

fn ancount(answer: &[u8]) -> u16 {
    u16::from_be_bytes([answer[6], answer[7]])
}

/// Reads one length-prefixed message from `stream`.
fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg)?;
    Ok(msg)
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    f
}

#[test]
fn kdig_gets_answers_nxdomain_wildcards_referrals_and_dnssec() {
    let ns = NameServer::start(&[]);

    let a = ns.kdig(&["web.example.com", "A"]);
    assert_eq!(status(&a), "NOERROR", "{a}");
    assert!(flags(&a).contains(" aa"), "an authoritative answer: {a}");
    assert_eq!(section(&a, "ANSWER"), ["web.example.com. 3600 IN A 192.0.2.80"], "{a}");

    let cname = ns.kdig(&["www.example.com", "A"]);
    assert_eq!(
        section(&cname, "ANSWER"),
        ["www.example.com. 3600 IN CNAME web.example.com.", "web.example.com. 3600 IN A 192.0.2.80"],
        "{cname}"
    );

    let nx = ns.kdig(&["nope.example.com", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    let soa = section(&nx, "AUTHORITY");
    assert!(soa.len() == 1 && soa[0].starts_with("example.com. 300 IN SOA ns1.example.com."), "{nx}");

    let wild = ns.kdig(&["anything.apps.example.com", "A"]);
    assert_eq!(section(&wild, "ANSWER"), ["anything.apps.example.com. 3600 IN A 192.0.2.100"], "{wild}");

    let referral = ns.kdig(&["host.lab.example.com", "A"]);
    assert_eq!(status(&referral), "NOERROR", "{referral}");
    assert!(!flags(&referral).contains(" aa"), "a referral is not authoritative: {referral}");
    assert!(section(&referral, "ANSWER").is_empty(), "{referral}");
    assert_eq!(section(&referral, "AUTHORITY"), ["lab.example.com. 3600 IN NS ns.lab.example.com."], "{referral}");
    assert_eq!(section(&referral, "ADDITIONAL"), ["ns.lab.example.com. 3600 IN A 192.0.2.150"], "{referral}");

    let refused = ns.kdig(&["example.org", "A"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");

    // DNSSEC: signatures only when the DO bit asks for them.
    let plain = ns.kdig(&["signed.example", "A"]);
    assert!(!plain.contains("RRSIG"), "{plain}");
    let signed = ns.kdig(&["+dnssec", "signed.example", "A"]);
    let answer = section(&signed, "ANSWER");
    assert!(answer.iter().any(|l| l.starts_with("signed.example. 3600 IN RRSIG A 13 2 3600")), "{signed}");
    let denial = ns.kdig(&["+dnssec", "missing.signed.example", "A"]);
    assert_eq!(status(&denial), "NXDOMAIN", "{denial}");
    let authority = section(&denial, "AUTHORITY");
    assert!(authority.iter().any(|l| l.contains(" IN NSEC ")), "an NSEC proof: {denial}");
    assert!(authority.iter().any(|l| l.contains(" IN RRSIG NSEC ")), "{denial}");
    let keys = ns.kdig(&["+dnssec", "signed.example", "DNSKEY"]);
    assert_eq!(section(&keys, "ANSWER").iter().filter(|l| l.contains(" IN DNSKEY ")).count(), 2, "{keys}");

    // SIGTERM: it says what it served and ends cleanly.
    let mut ns = ns;
    let (status, out) = ns.stop();
    assert_eq!(status, 0, "{out}");
    let line = out.lines().find(|l| l.contains("stopping: answered")).unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "answered").unwrap();
    let (answered, asked): (u32, u32) = (words[at + 1].parse().unwrap(), words[at + 3].parse().unwrap());
    // Ten kdig queries (kdig retries a lost one).
    assert!(answered == asked && asked >= 10, "{line}");
    assert!(line.contains("and 0 TCP queries on 0 connections"), "{line}");
}

#[test]
fn truncated_udp_answers_are_retried_over_tcp_and_tcp_carries_several_queries() {
    let ns = NameServer::start(&[]);

    // Eight 70-byte TXT records do not fit 512 bytes: TC over UDP...
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tc = udp_ask(&sock, ns.udp, &query(7, "keys.example.com", 16), Duration::from_secs(3)).expect("a UDP answer");
    assert!(tc[2] & 0x02 != 0, "TC set");
    assert_eq!(ancount(&tc), 0);
    // ...and kdig's retry over TCP gets them all.
    let retried = ns.kdig(&["+noedns", "keys.example.com", "TXT"]);
    assert!(retried.contains("truncated reply") && retried.contains("retrying over TCP"), "{retried}");
    assert!(retried.contains("(TCP)"), "{retried}");
    assert_eq!(section(&retried, "ANSWER").len(), 8, "{retried}");

    // kdig keeps one connection open for several queries.
    let two = ns.kdig(&["+tcp", "+keepopen", "web.example.com", "A", "nope.example.com", "A"]);
    assert!(two.contains("status: NOERROR") && two.contains("status: NXDOMAIN"), "{two}");

    // Pipelined: three queries written at once on one connection, three
    // answers in order, then one more after a pause.
    let mut stream = TcpStream::connect(ns.tcp).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut burst = Vec::new();
    for (id, name) in [(1, "web.example.com"), (2, "nope.example.com"), (3, "keys.example.com")] {
        burst.extend(framed(&query(id, name, if id == 3 { 16 } else { 1 })));
    }
    stream.write_all(&burst).unwrap();
    let answers: Vec<_> = (0..3).map(|_| read_framed(&mut stream).expect("a pipelined answer")).collect();
    assert_eq!(answers.iter().map(|a| u16::from_be_bytes([a[0], a[1]])).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((rcode(&answers[0]), ancount(&answers[0])), (0, 1));
    assert_eq!(rcode(&answers[1]), 3, "NXDOMAIN");
    assert_eq!(ancount(&answers[2]), 8, "the whole RRset over TCP");
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&framed(&query(4, "mail.example.com", 1))).unwrap();
    assert_eq!(ancount(&read_framed(&mut stream).expect("a fourth answer")), 1);
}

#[test]
fn idle_and_surplus_tcp_connections_are_closed_and_never_stall_udp() {
    let ns = NameServer::start(&["--tcp-idle-timeout", "1", "--tcp-max-connections", "2"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Two clients hold both connection slots: one silent, one that sent
    // half a frame and stopped.
    let mut silent = TcpStream::connect(ns.tcp).unwrap();
    let mut partial = TcpStream::connect(ns.tcp).unwrap();
    partial.write_all(&framed(&query(9, "web.example.com", 1))[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // UDP is answered at once meanwhile.
    for i in 0..20 {
        let started = Instant::now();
        let a = udp_ask(&sock, ns.udp, &query(100 + i, "web.example.com", 1), Duration::from_secs(2));
        assert!(a.is_some_and(|a| ancount(&a) == 1), "UDP query {i} answered while TCP clients stall");
        assert!(started.elapsed() < Duration::from_millis(500), "UDP answer {i} took {:?}", started.elapsed());
    }

    // A third connection is over the limit: closed without an answer.
    let mut third = TcpStream::connect(ns.tcp).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = third.write_all(&framed(&query(10, "web.example.com", 1)));
    assert!(read_framed(&mut third).is_err(), "a connection over the limit is closed");

    // After the idle timeout both holders are closed (the trickler too)...
    for (name, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the {name} connection is closed");
        assert!(started.elapsed() < Duration::from_secs(4), "the {name} connection lasted {:?}", started.elapsed());
    }

    // ...and their slots serve new clients.
    let mut fresh = wait_for(Duration::from_secs(5), || {
        let mut s = TcpStream::connect(ns.tcp).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&framed(&query(11, "web.example.com", 1))).ok()?;
        let a = read_framed(&mut s).ok()?;
        (ancount(&a) == 1).then_some(s)
    })
    .expect("a new connection is served once the idle ones are gone");
    fresh.write_all(&framed(&query(12, "mail.example.com", 1))).unwrap();
    assert_eq!(ancount(&read_framed(&mut fresh).unwrap()), 1);
}

#[test]
fn garbage_never_stops_it_serving() {
    let ns = NameServer::start(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
    // xorshift: the same bytes every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..10u16 {
        for _ in 0..200 {
            let len = (next() % 600) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half of them look like queries (QR clear, one question) to
            // reach the parser, not just the header check.
            if d.len() >= 12 && next() % 2 == 0 {
                d[2] &= 0x7f;
                d[4..6].copy_from_slice(&[0, 1]);
            }
            garbage.send_to(&d, ns.udp).unwrap();
        }
        // A burst can overflow a socket buffer on the way: like any
        // client, ask again after half a second.
        let answered = (0..8u16).any(|attempt| {
            let q = query(round * 8 + attempt, "web.example.com", 1);
            udp_ask(&sock, ns.udp, &q, Duration::from_millis(500)).is_some_and(|a| ancount(&a) == 1)
        });
        assert!(answered, "no answer after {} garbage datagrams:\n{}", (round + 1) * 200, ns.output());
    }
    // A TCP connection speaking something else is closed; TCP goes on.
    let mut junk = TcpStream::connect(ns.tcp).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    junk.write_all(b"\x00\x03GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_framed(&mut junk).is_err(), "a frame shorter than a header closes the connection");
    let out = ns.kdig(&["+tcp", "web.example.com", "A"]);
    assert_eq!(section(&out, "ANSWER"), ["web.example.com. 3600 IN A 192.0.2.80"], "{out}");
}

#[test]
fn rate_limiting_is_set_on_the_command_line() {
    let ns = NameServer::start(&["--rate-limit", "5", "--slip", "0"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    for i in 0..60u16 {
        sock.send_to(&query(i, "web.example.com", 1), ns.udp).unwrap();
    }
    let mut answered = 0;
    let mut buf = [0u8; 1024];
    while sock.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    // A burst of 5, plus what a second of refill adds while they arrive.
    assert!((5..=15).contains(&answered), "{answered} of 60 answered under a limit of 5/s");
    // TCP is not rate limited.
    let out = ns.kdig(&["+tcp", "web.example.com", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");

    // A bad argument is one clear line and a failed start.
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
        .args(["--net", "service=user", "--timeout", "20s"])
        .arg(image())
        .args(["--", "--rate-limit", "lots"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("--rate-limit \"lots\": not answers per second"), "{text}");
}

/// nsupdate (bind9-dnsutils) against the name server, through its
/// published port: its success and output.
fn nsupdate(ns: &NameServer, key: Option<&str>, script: &str) -> (bool, String) {
    skiff_testnet::nsupdate(ns.udp, key, script)
}

#[test]
fn nsupdate_with_a_tsig_key_changes_the_zone_and_kdig_transfers_it() {
    const SECRET: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0hISE=";
    let upd = format!("upd:hmac-sha256:{SECRET}");
    let xfr = format!("xfr:hmac-sha256:{SECRET}");
    let mut ns = NameServer::start(&[
        "--tsig-key",
        &upd,
        "--tsig-key",
        &xfr,
        "--allow-update",
        "key:upd",
        "--allow-transfer",
        "key:xfr",
    ]);
    let upd_key = format!("hmac-sha256:upd:{SECRET}");
    let xfr_key = format!("hmac-sha256:xfr:{SECRET}");
    let soa = |ns: &NameServer| section(&ns.kdig(&["example.com", "SOA"]), "ANSWER")[0].clone();
    let before = soa(&ns);

    let (ok, out) = nsupdate(&ns, Some(&upd_key), "zone example.com.\nupdate add dyn.example.com. 300 A 192.0.2.77");
    assert!(ok, "the signed update failed:\n{out}\nserver:\n{}", ns.output());
    let a = ns.kdig(&["dyn.example.com", "A"]);
    assert_eq!(section(&a, "ANSWER"), ["dyn.example.com. 300 IN A 192.0.2.77"], "the change is answered: {a}");
    assert_ne!(soa(&ns), before, "the serial is bumped");
    let axfr = ns.kdig(&["+tcp", "-y", &xfr_key, "example.com", "AXFR"]);
    assert!(axfr.contains("dyn.example.com.") && !axfr.contains("failed"), "the change is in the AXFR:\n{axfr}");
    ns.wait_line("update of example.com from");
    ns.wait_line("AXFR of example.com serial");

    let (ok, out) = nsupdate(&ns, Some(&upd_key), "zone example.com.\nupdate delete dyn.example.com. A");
    assert!(ok, "{out}");
    assert_eq!(status(&ns.kdig(&["dyn.example.com", "A"])), "NXDOMAIN");

    // A wrong secret and a missing key are refused, one line each.
    let wrong = "hmac-sha256:upd:d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc9PT0=";
    let (ok, out) = nsupdate(&ns, Some(wrong), "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66");
    assert!(!ok, "an update with the wrong key succeeded:\n{out}");
    let (ok, out) = nsupdate(&ns, None, "zone example.com.\nupdate add bad.example.com. 300 A 192.0.2.66");
    assert!(!ok && out.contains("REFUSED"), "an unsigned update was not refused:\n{out}");
    assert_eq!(status(&ns.kdig(&["bad.example.com", "A"])), "NXDOMAIN");
    // The update key may not transfer.
    let refused = Command::new("kdig")
        .arg(format!("@{}", ns.tcp.ip()))
        .args(["-p", &ns.tcp.port().to_string(), "+timeout=3", "-y", &upd_key, "example.com", "AXFR"])
        .output()
        .expect("run kdig");
    let refused = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(refused.contains("REFUSED") && !refused.contains("www.example.com."), "{refused}");

    ns.wait_line("refused transfer of example.com to");
    let (code, out) = ns.stop();
    assert_eq!(code, 0, "{out}");
    let refused_updates = out.lines().filter(|l| l.contains("refused update of example.com from")).count();
    assert_eq!(refused_updates, 2, "one line per refused update:\n{out}");
    assert!(out.contains("BADSIG"), "{out}");
}

#[test]
fn a_bad_tsig_key_fails_the_start_with_one_line() {
    require_kvm();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-tender"))
        .args(["--net", "service=user", "--timeout", "30s"])
        .arg(image())
        .args(["--", "--tsig-key", "k:hmac-md5:AAAA", "--allow-update", "key:k"])
        .output()
        .expect("start the tender");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("only hmac-sha256 is supported"), "{text}");
}

#[test]
fn updates_kept_on_a_disk_survive_a_stop_and_a_kill() {
    const SECRET: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0hISE=";
    let upd = format!("upd:hmac-sha256:{SECRET}");
    let key = format!("hmac-sha256:upd:{SECRET}");
    let args = ["--tsig-key", upd.as_str(), "--allow-update", "key:upd"];
    let dir = workspace().join("target/nameserver-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-zones.img", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let spec = format!("zones={},size=4M", file.display());
    let tender = ["--disk", spec.as_str()];
    let answer = |ns: &NameServer, name: &str| section(&ns.kdig(&[name, "A"]), "ANSWER");

    // A new disk: formatted, one record added, stopped with SIGTERM.
    let mut ns = NameServer::start_with(disk_image(), &tender, &args);
    ns.wait_line("disk zones: a new zone store");
    ns.wait_line("updates are kept on the disk zones");
    let built = ns.serial();
    let (ok, out) = nsupdate(&ns, Some(&key), "zone example.com.\nupdate add one.example.com. 300 A 192.0.2.71");
    assert!(ok, "{out}\nserver:\n{}", ns.output());
    assert_eq!(ns.serial(), built + 1);
    let (code, out) = ns.stop();
    assert_eq!(code, 0, "{out}");

    // Restarted on the same file: the record and the bumped serial; one
    // more record, then SIGKILL right after its answer.
    let mut ns = NameServer::start_with(disk_image(), &tender, &args);
    ns.wait_line(&format!("zone example.com restored from the disk: serial {}", built + 1));
    assert_eq!(answer(&ns, "one.example.com"), ["one.example.com. 300 IN A 192.0.2.71"], "{}", ns.output());
    assert_eq!(ns.serial(), built + 1);
    let (ok, out) = nsupdate(&ns, Some(&key), "zone example.com.\nupdate add two.example.com. 300 A 192.0.2.72");
    assert!(ok, "{out}\nserver:\n{}", ns.output());
    ns.kill();

    // Killed, not stopped: the acknowledged update is there all the same.
    let ns = NameServer::start_with(disk_image(), &tender, &args);
    ns.wait_line(&format!("zone example.com restored from the disk: serial {}", built + 2));
    assert_eq!(answer(&ns, "one.example.com"), ["one.example.com. 300 IN A 192.0.2.71"]);
    assert_eq!(answer(&ns, "two.example.com"), ["two.example.com. 300 IN A 192.0.2.72"]);
    assert_eq!(ns.serial(), built + 2);
    drop(ns);
    let _ = std::fs::remove_file(&file);
}

/// NSD (Debian `nsd`) on 127.0.0.1:`port`, in a directory of its own under
/// target/nameserver-tests, with `zones` as the zone part of its
/// configuration; stopped and removed on drop.
struct Nsd(skiff_testnet::Nsd);

impl Nsd {
    /// A fresh directory for NSD's configuration and zone files.
    fn dir(what: &str) -> PathBuf {
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = workspace().join(format!("target/nameserver-tests/nsd-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn start(dir: &Path, port: u16, zones: &str) -> Nsd {
        let listen = ([127, 0, 0, 1], port).into();
        Nsd(skiff_testnet::Nsd::start(Command::new("nsd"), dir, listen, "  verbosity: 2\n", zones).expect("start nsd"))
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// NSD's answer section for `name` `qtype` (kdig), empty when it has
    /// none (or does not serve the zone yet).
    fn answer(&self, name: &str, qtype: &str) -> Vec<String> {
        let port = self.0.addr().port().to_string();
        let out = Command::new("kdig")
            .args(["@127.0.0.1", "-p", &port, "+timeout=1", "+retry=0", name, qtype])
            .output()
            .expect("run kdig");
        section(&String::from_utf8_lossy(&out.stdout), "ANSWER")
    }

    /// Waits up to 10 s for NSD to answer the SOA of `zone`, its primary.
    fn wait_serving(&self, zone: &str) {
        wait_for(Duration::from_secs(10), || Some(self.answer(zone, "SOA")).filter(|a| !a.is_empty()))
            .unwrap_or_else(|| panic!("NSD did not start:\n{}", self.log()));
    }

    /// Waits up to `limit` for NSD to answer `name` `qtype` with a record
    /// containing `want`.
    fn wait_answer(&self, name: &str, qtype: &str, want: &str, limit: Duration, server: &NameServer) -> Vec<String> {
        wait_for(limit, || Some(self.answer(name, qtype)).filter(|a| a.iter().any(|l| l.contains(want))))
            .unwrap_or_else(|| {
                panic!(
                    "NSD does not answer {name} {qtype} with {want:?}: {:?}\nNSD:\n{}\nSkiff:\n{}",
                    self.answer(name, qtype),
                    self.log(),
                    server.output()
                )
            })
    }

    fn reload(&self) {
        self.0.reload();
    }
}

/// Another port free for UDP and TCP than `taken`.
fn other_free_port(taken: u16) -> u16 {
    loop {
        let p = free_port();
        if p != taken {
            return p;
        }
    }
}

/// example.org as NSD serves it as a primary: serial `serial`, and
/// `extra` more A records (a zone that needs several AXFR messages).
fn example_org(serial: u32, extra: usize, more: &str) -> String {
    let mut z = format!(
        "$ORIGIN example.org.\n$TTL 3600\n@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n@ NS ns1\n\
         ns1 A 192.0.2.53\nwww A 192.0.2.10\n{more}"
    );
    for i in 0..extra {
        z += &format!("host{i} A 198.51.{}.{}\n", i / 250, i % 250 + 1);
    }
    z
}

const XFR_SECRET: &str = "eGZyLXNlY3JldC1mb3ItdGhlLXNlY29uZGFyeS10ZXN0cw==";

#[test]
fn nsd_as_a_secondary_of_the_image_serves_an_update_after_its_notify() {
    const SECRET: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0hISE=";
    let nsd_port = free_port();
    let notify = format!("example.com=10.0.2.2:{nsd_port}");
    let upd = format!("upd:hmac-sha256:{SECRET}");
    let ns = NameServer::start_with(
        image(),
        &["--net-outbound", "all"],
        &["--tsig-key", &upd, "--allow-update", "key:upd", "--allow-transfer", "10.0.2.2", "--notify", &notify],
    );
    ns.wait_line(&format!("NOTIFY for example.com goes to 10.0.2.2:{nsd_port}"));
    let serial = ns.serial();
    // NSD takes example.com from the image (through the published TCP port)
    // and accepts NOTIFY from the host's loopback, where the tender's
    // outbound relay sends it from.
    let nsd = Nsd::start(
        &Nsd::dir("secondary"),
        nsd_port,
        &format!(
            "zone:\n  name: \"example.com.\"\n  zonefile: \"example.com.zone\"\n  request-xfr: AXFR 127.0.0.1@{} NOKEY\n  \
             allow-notify: 127.0.0.1 NOKEY\n",
            ns.tcp.port()
        ),
    );
    nsd.wait_answer("example.com", "SOA", &format!(" {serial} "), Duration::from_secs(20), &ns);
    assert_eq!(nsd.answer("web.example.com", "A"), ["web.example.com. 3600 IN A 192.0.2.80"]);
    ns.wait_line(&format!("AXFR of example.com serial {serial} to 10.0.2.2"));

    // An update at the image: its NOTIFY reaches NSD, which transfers the
    // zone again and serves the new record.
    let key = format!("hmac-sha256:upd:{SECRET}");
    let (ok, out) = nsupdate(&ns, Some(&key), "zone example.com.\nupdate add fresh.example.com. 300 A 192.0.2.99");
    assert!(ok, "{out}\nserver:\n{}", ns.output());
    ns.wait_line(&format!("NOTIFY of example.com serial {} to 10.0.2.2:{nsd_port} acknowledged", serial + 1));
    let fresh = nsd.wait_answer("fresh.example.com", "A", "192.0.2.99", Duration::from_secs(15), &ns);
    assert_eq!(fresh, ["fresh.example.com. 300 IN A 192.0.2.99"]);
    assert!(nsd.answer("example.com", "SOA")[0].contains(&format!(" {} ", serial + 1)));
}

#[test]
fn the_image_as_a_secondary_of_nsd_loads_the_zone_at_boot_and_follows_its_notify() {
    let nsd_port = free_port();
    let ns_port = other_free_port(nsd_port);
    let dir = Nsd::dir("primary");
    std::fs::write(dir.join("example.org.zone"), example_org(1, 0, "")).unwrap();
    let nsd = Nsd::start(
        &dir,
        nsd_port,
        &format!(
            "zone:\n  name: \"example.org.\"\n  zonefile: \"example.org.zone\"\n  provide-xfr: 127.0.0.1 NOKEY\n  \
             notify: 127.0.0.1@{ns_port} NOKEY\n"
        ),
    );
    nsd.wait_serving("example.org");

    // The image loads example.org by AXFR at boot, over an outbound TCP
    // connection to the host's loopback (10.0.2.2 on the user network).
    let secondary = format!("example.org=10.0.2.2:{nsd_port}");
    let ns = NameServer::start_on(ns_port, image(), &["--net-outbound", "all"], &["--secondary", &secondary]);
    ns.wait_line(&format!("zone example.org serial 1 transferred from 10.0.2.2:{nsd_port}"));
    // At the first try: not before the guest had its address.
    assert!(!ns.output().contains("refresh of zone example.org"), "{}", ns.output());
    assert_eq!(section(&ns.kdig(&["www.example.org", "A"]), "ANSWER"), ["www.example.org. 3600 IN A 192.0.2.10"]);
    assert!(flags(&ns.kdig(&["www.example.org", "A"])).contains(" aa"));

    // The primary's zone changes; NSD reloads it and sends NOTIFY, which
    // the image accepts from its primary and follows.
    std::fs::write(dir.join("example.org.zone"), example_org(2, 0, "fresh A 192.0.2.20\n")).unwrap();
    nsd.reload();
    ns.wait_line("NOTIFY of example.org serial 2 from 10.0.2.2");
    ns.wait_line(&format!("zone example.org serial 2 transferred from 10.0.2.2:{nsd_port}"));
    let fresh = ns.kdig(&["fresh.example.org", "A"]);
    assert_eq!(section(&fresh, "ANSWER"), ["fresh.example.org. 3600 IN A 192.0.2.20"], "{fresh}");
    let soa = section(&ns.kdig(&["example.org", "SOA"]), "ANSWER");
    assert!(soa[0].contains(" 2 3600 600 86400 300"), "{soa:?}");
}

#[test]
fn tsig_signed_transfers_and_notify_both_ways_with_nsd() {
    const SECRET: &str = "c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0hISE=";
    let nsd_port = free_port();
    let ns_port = other_free_port(nsd_port);
    // The image first: NSD asks it for example.com as it starts (and would
    // retry only after minutes); NSD's NOTIFY at its start then brings the
    // image's first transfer of example.org.
    let xfr = format!("xfr:hmac-sha256:{XFR_SECRET}");
    let upd = format!("upd:hmac-sha256:{SECRET}");
    let secondary = format!("example.org=10.0.2.2:{nsd_port},key=xfr");
    let notify = format!("example.com=10.0.2.2:{nsd_port},key=xfr");
    let ns = NameServer::start_on(
        ns_port,
        image(),
        &["--net-outbound", "all"],
        &[
            "--tsig-key",
            &xfr,
            "--tsig-key",
            &upd,
            "--allow-update",
            "key:upd",
            "--allow-transfer",
            "key:xfr",
            "--secondary",
            &secondary,
            "--notify",
            &notify,
        ],
    );
    let dir = Nsd::dir("tsig");
    // Big enough for NSD to send its AXFR in several messages.
    std::fs::write(dir.join("example.org.zone"), example_org(1, 6000, "")).unwrap();
    let nsd = Nsd::start(
        &dir,
        nsd_port,
        &format!(
            "key:\n  name: \"xfr\"\n  algorithm: hmac-sha256\n  secret: \"{XFR_SECRET}\"\n\
             zone:\n  name: \"example.org.\"\n  zonefile: \"example.org.zone\"\n  provide-xfr: 127.0.0.1 xfr\n  \
             notify: 127.0.0.1@{ns_port} xfr\n\
             zone:\n  name: \"example.com.\"\n  zonefile: \"example.com.zone\"\n  \
             request-xfr: AXFR 127.0.0.1@{ns_port} xfr\n  allow-notify: 127.0.0.1 xfr\n"
        ),
    );
    nsd.wait_serving("example.org");
    // NSD refuses an unsigned transfer of example.org.
    let unsigned =
        Command::new("kdig").args(["@127.0.0.1", "-p", &nsd_port.to_string(), "example.org", "AXFR"]).output().unwrap();
    let unsigned = String::from_utf8_lossy(&unsigned.stdout).to_string();
    assert!(!unsigned.contains("host5999.example.org."), "NSD transfers without the key:\n{unsigned}");

    ns.wait_line("zone example.org is a secondary of 10.0.2.2");
    // The image's signed AXFR request is answered, every message checked.
    ns.wait_line(&format!("zone example.org serial 1 transferred from 10.0.2.2:{nsd_port}"));
    let last = ns.kdig(&["host5999.example.org", "A"]);
    assert_eq!(section(&last, "ANSWER"), ["host5999.example.org. 3600 IN A 198.51.23.250"], "{last}");
    // NSD's signed AXFR of example.com from the image.
    let serial = ns.serial();
    nsd.wait_answer("example.com", "SOA", &format!(" {serial} "), Duration::from_secs(20), &ns);
    ns.wait_line(&format!("AXFR of example.com serial {serial} to 10.0.2.2"));

    // An update at the image: its signed NOTIFY is accepted by NSD (which
    // takes only signed ones), and NSD serves the change.
    let key = format!("hmac-sha256:upd:{SECRET}");
    let (ok, out) = nsupdate(&ns, Some(&key), "zone example.com.\nupdate add fresh.example.com. 300 A 192.0.2.99");
    assert!(ok, "{out}\nserver:\n{}", ns.output());
    ns.wait_line(&format!("NOTIFY of example.com serial {} to 10.0.2.2:{nsd_port} acknowledged", serial + 1));
    nsd.wait_answer("fresh.example.com", "A", "192.0.2.99", Duration::from_secs(15), &ns);

    // NSD's signed NOTIFY after a change of example.org: followed.
    std::fs::write(dir.join("example.org.zone"), example_org(2, 6000, "fresh A 192.0.2.20\n")).unwrap();
    nsd.reload();
    ns.wait_line("NOTIFY of example.org serial 2 from 10.0.2.2");
    ns.wait_line(&format!("zone example.org serial 2 transferred from 10.0.2.2:{nsd_port}"));
    assert_eq!(section(&ns.kdig(&["fresh.example.org", "A"]), "ANSWER"), ["fresh.example.org. 3600 IN A 192.0.2.20"]);

    // An unsigned NOTIFY for example.org is refused, one line.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut n = query(0x7777, "example.org", 6);
    n[2] = 0x20 | 0x04; // opcode NOTIFY, AA
    let answer = udp_ask(&sock, ns.udp, &n, Duration::from_secs(3)).expect("an answer to the NOTIFY");
    assert_eq!(rcode(&answer), 5, "REFUSED");
    ns.wait_line("refused NOTIFY of example.org from 10.0.2.2: not signed with the primary's key xfr");
}
