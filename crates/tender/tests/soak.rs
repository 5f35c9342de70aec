//! Soak tests: examples/static-website started every way a user starts a
//! service (`skiff run CRATE`, `skiff run IMAGE`, `skiff-tender IMAGE`),
//! on the user network (`--publish 0:443`) and on a TAP device in a
//! network namespace, under sustained churn: non-keep-alive HTTPS
//! connections one after another from several clients, keep-alive
//! clients beside them, and handshake garbage (random bytes, truncated
//! ClientHellos) in between. Each checks that no well-formed request
//! fails, that the tender is still serving at the end with no blocked
//! system call, that the tender's own resident memory (outside the
//! guest's memory) and the guest's heap in use (the website's
//! `--heap-log`) stay flat after warm-up, and that a stop signal then ends
//! it with a documented status. (The guest memory the tender holds is what
//! the guest touched, which grows toward the heap's high-water mark with
//! its fragmentation; a leak in the guest shows in its heap in use.)
//!
//! The clients are rustls in this process, trusting a certificate made
//! for the run. `SKIFF_SOAK_CONNECTIONS` sets the number of non-keep-alive
//! connections per test (default 3,000; the soak in BENCHMARKS.md uses
//! 20,000); run with `--nocapture` to see the figures.
//!
//! The `skiff run` cases use the `skiff` binary next to `skiff-tender`
//! (`cargo test --workspace` builds both; alone: `cargo build -p
//! skiff-cli` first). The TAP cases need root and iproute2.

mod common;

use rustls::pki_types::ServerName;
use skiff_testnet::{Guard, NetNs, require_kvm, require_root, wait_for};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::workspace;

/// How a test starts the website.
#[derive(Clone, Copy, Debug)]
enum Entry {
    /// `skiff run examples/static-website`: builds, then runs the tender
    /// inside the `skiff` process.
    RunCrate,
    /// `skiff run IMAGE`.
    RunImage,
    /// `skiff-tender IMAGE`.
    Tender,
}

/// Where its NIC goes.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// The user network, port 443 published on 127.0.0.1.
    User,
    /// TAP device `tap0` in a namespace; the guest is 10.0.0.2.
    Tap,
}

const GUEST: &str = "10.0.0.2";

fn image() -> &'static Path {
    common::guest("examples/static-website")
}

/// The `skiff` command, built beside the tender.
fn skiff_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_skiff-tender")).with_file_name("skiff");
    assert!(
        path.is_file(),
        "{} is missing: build the skiff command first (cargo build -p skiff-cli; cargo test --workspace does)",
        path.display()
    );
    path
}

/// Non-keep-alive connections per test.
fn connections() -> u64 {
    match std::env::var("SKIFF_SOAK_CONNECTIONS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("SKIFF_SOAK_CONNECTIONS={v:?} is not a number")),
        Err(_) => 3_000,
    }
}

/// The certificate the website serves in these tests, and a client
/// configuration that trusts only it.
struct Pki {
    cert_pem: String,
    key_pem: String,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("make a certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).expect("trust the test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = client;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki { cert_pem: ck.cert.pem(), key_pem: ck.signing_key.serialize_pem(), client: Arc::new(client) }
    })
}

/// The files the clients fetch, with their bytes.
fn files() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let site = workspace().join("examples/static-website/site");
        ["/index.html", "/robots.txt", "/css/site.css"]
            .into_iter()
            .map(|p| (p, std::fs::read(site.join(&p[1..])).unwrap_or_else(|e| panic!("read {p}: {e}"))))
            .collect()
    })
}

/// The website under one entry path and link, its console in a file.
struct Website {
    child: Guard,
    console: PathBuf,
    addr: SocketAddr,
    ns: Option<Arc<NetNs>>,
}

impl Website {
    fn start(entry: Entry, link: Link) -> Website {
        require_kvm();
        let pki = pki();
        let ns = match link {
            Link::User => None,
            Link::Tap => {
                require_root();
                let ns = NetNs::new().expect("create a network namespace");
                ns.add_tap("tap0", &["10.0.0.1/24"]).expect("create the TAP device");
                Some(Arc::new(ns))
            }
        };
        // Long enough for the full soak; the test stops it before.
        let tender_opts = ["--timeout", "3600s", "--stop-grace", "1s", "--stats"];
        let net_opts: &[&str] = match (entry, link) {
            // skiff run puts the NIC on the user network by itself.
            (Entry::RunCrate | Entry::RunImage, Link::User) => &["--publish", "0:443"],
            (Entry::Tender, Link::User) => &["--net", "service=user", "--publish", "0:443"],
            (_, Link::Tap) => &["--net", "service=tap0"],
        };
        let (program, mut args): (PathBuf, Vec<String>) = match entry {
            Entry::RunCrate => (
                skiff_bin(),
                vec![
                    "run".into(),
                    workspace().join("examples/static-website").display().to_string(),
                    "-q".into(),
                    "--target-dir".into(),
                    workspace().join("target/guest").display().to_string(),
                ],
            ),
            Entry::RunImage => (skiff_bin(), vec!["run".into(), image().display().to_string()]),
            Entry::Tender => (PathBuf::from(env!("CARGO_BIN_EXE_skiff-tender")), vec![]),
        };
        args.extend(tender_opts.iter().chain(net_opts).map(|s| s.to_string()));
        if let Entry::Tender = entry {
            args.push(image().display().to_string());
        } else {
            // The image is built before the clock starts.
            let _ = image();
        }
        args.push("--".into());
        if let Link::Tap = link {
            args.extend(["--ipv4", "10.0.0.2/24", "--gateway", "10.0.0.1"].map(String::from));
        }
        args.extend(["--cert".into(), pki.cert_pem.clone(), "--key".into(), pki.key_pem.clone()]);
        // The guest's heap figures, four times a second.
        args.extend(["--heap-log".into(), "250ms".into()]);

        let dir = workspace().join("target/soak-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join(format!("{}-{entry:?}-{link:?}.out", std::process::id()));
        let file = std::fs::File::create(&console).unwrap();
        let mut command = match &ns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let mut w = Website { child: Guard(child), console, addr: "0.0.0.0:0".parse().unwrap(), ns };
        // The first `skiff run CRATE` may build the TLS stack.
        w.addr = w.wait(Duration::from_secs(600), |text| {
            if !text.contains("static-website:") {
                return None;
            }
            match link {
                Link::Tap => Some(format!("{GUEST}:443").parse().unwrap()),
                Link::User => text
                    .lines()
                    .find(|l| l.contains("/tcp -> guest port 443"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|a| a.trim_end_matches("/tcp").parse().ok()),
            }
        });
        w
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn wait<T>(&mut self, limit: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let mut ended = None;
        let found = wait_for(limit, || {
            ended = self.child.0.try_wait().ok().flatten();
            // A last look at the output of a process that ended.
            let found = f(&self.output());
            if found.is_none() && ended.is_some() { Some(None) } else { found.map(Some) }
        });
        match found.flatten() {
            Some(v) => v,
            None => panic!("the website did not come up within {limit:?} (process: {ended:?}):\n{}", self.output()),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Runs `f` where the website is reachable: in the namespace for a
    /// TAP device, here for the user network.
    fn reach<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        match &self.ns {
            Some(ns) => ns.run(f),
            None => f(),
        }
    }
}

/// The website's guest memory (the tender's default `--mem`).
const GUEST_MEM: u64 = 64 << 20;

/// The resident set of process `pid` in KiB (`/proc/PID/smaps`): all of
/// it, and the part that is the guest's memory: the span of adjacent
/// mappings, `GUEST_MEM` long, that the tender maps it as (anonymous
/// memory with the image's segments mapped over parts of it).
fn rss_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("no smaps for process {pid} ({e}): is it gone?"));
    // (start, end, resident KiB) of each mapping.
    let mut maps: Vec<(u64, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
        if let Some((a, b)) = range
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            maps.push((a, b, 0));
        } else if let Some(v) = line.strip_prefix("Rss:")
            && let Some(last) = maps.last_mut()
        {
            last.2 = v.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let total = maps.iter().map(|m| m.2).sum();
    let guest = (0..maps.len())
        .find_map(|i| {
            let mut end = maps[i].0;
            let mut rss = 0;
            for m in &maps[i..] {
                if m.0 != end || m.1 - maps[i].0 > GUEST_MEM {
                    break;
                }
                (end, rss) = (m.1, rss + m.2);
                if end - maps[i].0 == GUEST_MEM {
                    return Some(rss);
                }
            }
            None
        })
        .unwrap_or_else(|| panic!("no {GUEST_MEM}-byte span of guest memory in process {pid}'s mappings"));
    (total, guest)
}

/// The tender's own part of [`rss_kib`]: everything but the guest's memory.
fn own_kib((total, guest): (u64, u64)) -> u64 {
    total - guest
}

const HEAP_LINE: &str = "static-website: heap ";

/// The guest heap's figures in the website's `--heap-log` lines of
/// `output`, oldest first: KiB in use and peak.
fn guest_heap_all(output: &str) -> Vec<(u64, u64)> {
    let figures = |rest: &str| {
        let mut numbers = rest.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().ok());
        Some((numbers.next()??, numbers.next()??))
    };
    output.lines().filter_map(|l| l.split_once(HEAP_LINE)).filter_map(|(_, rest)| figures(rest)).collect()
}

/// The latest figures.
fn guest_heap(output: &str) -> Option<(u64, u64)> {
    guest_heap_all(output).last().copied()
}

fn heap_text(figures: Option<(u64, u64)>) -> String {
    figures.map_or("none".into(), |(used, peak)| format!("{used} KiB (peak {peak} KiB)"))
}

/// Why a request failed.
#[derive(Debug)]
struct Failure(String);

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure(what.to_string())
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr) -> Result<Tls, Failure> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| fail(format!("connect: {e}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(pki().client.clone(), name).map_err(|e| fail(format!("TLS: {e}")))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends one GET for file `n` and checks the whole answer.
fn request(tls: &mut Tls, n: usize, close: bool) -> Result<(), Failure> {
    let (path, want) = &files()[n % files().len()];
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n");
    tls.write_all(head.as_bytes()).map_err(|e| fail(format!("send {path}: {e}")))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let (head_len, body_len) = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&got[..end]).to_string();
            if !text.starts_with("HTTP/1.1 200 ") {
                return Err(fail(format!("{path}: {}", text.lines().next().unwrap_or(""))));
            }
            let length = text
                .lines()
                .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .ok_or_else(|| fail(format!("{path}: no Content-Length in {text:?}")))?;
            break (end + 4, length);
        }
        let n = tls.read(&mut buf).map_err(|e| fail(format!("read the head of {path}: {e}")))?;
        if n == 0 {
            return Err(fail(format!("{path}: the connection ended after {} bytes", got.len())));
        }
        got.extend_from_slice(&buf[..n]);
    };
    while got.len() < head_len + body_len {
        let n = tls.read(&mut buf).map_err(|e| fail(format!("read the body of {path}: {e}")))?;
        if n == 0 {
            return Err(fail(format!("{path}: the body ended after {} bytes", got.len() - head_len)));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if &got[head_len..] != want.as_slice() {
        return Err(fail(format!("{path}: {} bytes differ from the site's {}", got.len() - head_len, want.len())));
    }
    Ok(())
}

/// One non-keep-alive connection: handshake, a request with `Connection:
/// close`, and the server's close.
fn one_shot(addr: SocketAddr, n: usize) -> Result<(), Failure> {
    let mut tls = connect(addr)?;
    request(&mut tls, n, true)?;
    // The server closes: a close_notify or the end of the stream, not a
    // timeout.
    let mut buf = [0u8; 1024];
    match tls.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(_) => Err(fail("bytes after the response to Connection: close")),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(fail(format!("waiting for the server to close: {e}"))),
    }
}

/// A small deterministic generator for the garbage.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A real ClientHello as it goes on the wire.
fn client_hello() -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// One hostile connection: random bytes, or a ClientHello cut short, then
/// the end of what the client sends. What the server answers is not
/// judged, only that it ends the connection.
fn garbage(addr: SocketAddr, rng: &mut SplitMix) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else { return };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let bytes = if rng.below(2) == 0 {
        (0..16 + rng.below(2048)).map(|_| rng.next() as u8).collect()
    } else {
        let mut hello = client_hello();
        hello.truncate(1 + rng.below(hello.len() as u64 - 1) as usize);
        hello
    };
    let _ = s.write_all(&bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// What one load run did.
#[derive(Default)]
struct Counts {
    /// Non-keep-alive connections that completed.
    done: AtomicU64,
    /// Requests on keep-alive connections.
    kept: AtomicU64,
    /// Hostile connections.
    garbage: AtomicU64,
    failures: Mutex<Vec<String>>,
    finished: AtomicBool,
}

impl Counts {
    fn failed(&self, what: &str, f: Failure) {
        self.failures.lock().unwrap().push(format!("{what}: {}", f.0));
    }
}

const CHURN_CLIENTS: u64 = 4;
const KEEP_ALIVE_CLIENTS: u64 = 2;

/// Drives the load at `addr` until `total` non-keep-alive connections are
/// done: churn clients, keep-alive clients and one garbage client.
fn drive(addr: SocketAddr, total: u64, counts: Arc<Counts>) {
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..CHURN_CLIENTS {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    match one_shot(addr, n as usize) {
                        Ok(()) => {
                            counts.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(f) => counts.failed("connection", f),
                    }
                }
            });
        }
        for k in 0..KEEP_ALIVE_CLIENTS {
            let counts = &counts;
            scope.spawn(move || {
                let mut n = k as usize;
                while !counts.finished.load(Ordering::Relaxed) {
                    let mut tls = match connect(addr) {
                        Ok(t) => t,
                        Err(f) => {
                            counts.failed("keep-alive connect", f);
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    // A hundred requests a connection, then a new one.
                    for _ in 0..100 {
                        if counts.finished.load(Ordering::Relaxed) {
                            break;
                        }
                        n += 1;
                        match request(&mut tls, n, false) {
                            Ok(()) => {
                                counts.kept.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(f) => {
                                counts.failed("keep-alive request", f);
                                break;
                            }
                        }
                    }
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
        scope.spawn(|| {
            let mut rng = SplitMix(0x5eed);
            while !counts.finished.load(Ordering::Relaxed) {
                garbage(addr, &mut rng);
                counts.garbage.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // The churn clients end the run.
        while next.load(Ordering::Relaxed) < total + CHURN_CLIENTS {
            std::thread::sleep(Duration::from_millis(20));
        }
        counts.finished.store(true, Ordering::Relaxed);
    });
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The soak of one entry path on one link.
fn soak(entry: Entry, link: Link) {
    let total = connections();
    let mut w = Website::start(entry, link);
    let pid = w.pid();
    let addr = w.addr;
    let rss_start = rss_kib(pid);
    let heap_start = w.wait(Duration::from_secs(10), |text| guest_heap(text).map(Some));

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let load = {
        let counts = counts.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let driver = {
            let counts = counts.clone();
            move || drive(addr, total, counts)
        };
        // The load runs where the website is reachable; this thread
        // watches the tender meanwhile.
        let ns = w.ns.clone();
        let handle = std::thread::spawn(move || {
            match ns {
                Some(ns) => ns.run(driver),
                None => driver(),
            }
            let _ = tx.send(());
        });
        (handle, rx)
    };

    // Warm-up: a third of the connections, at most 2,000 (the user
    // network's relays and the guest's heap reach their working set within
    // about 2,000).
    let warm_at = (total / 3).clamp(200, 2_000).min(total);
    let mut rss_warm = None;
    // How many heap reports had come when warm-up ended: the next one is
    // the heap after warm-up.
    let mut heap_reports_at_warm = None;
    let mut rss_max = rss_start.0;
    loop {
        let finished = load.1.recv_timeout(Duration::from_millis(100)).is_ok();
        if let Ok(Some(status)) = w.child.0.try_wait() {
            counts.finished.store(true, Ordering::Relaxed);
            panic!("the tender died during the soak ({status}):\n{}", w.output());
        }
        let rss = rss_kib(pid);
        rss_max = rss_max.max(rss.0);
        if rss_warm.is_none() && counts.done.load(Ordering::Relaxed) >= warm_at {
            rss_warm = Some(rss);
            heap_reports_at_warm = Some(guest_heap_all(&w.output()).len());
        }
        if finished {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "the soak took over an hour");
    }
    load.0.join().expect("the load threads");
    let elapsed = started.elapsed();
    let rss_end = rss_kib(pid);
    let rss_warm = rss_warm.unwrap_or(rss_end);
    // The guest's heap once the load is over. The last connections are
    // still closing when the load ends (through the user network, whose
    // relays close them, the heap takes about a second to drain), so the
    // first report since the load ended that is back within the allowance
    // below counts (waiting up to 10 s for it); a leak never gets there.
    let logged = guest_heap_all(&w.output()).len();
    wait_for(Duration::from_secs(5), || (guest_heap_all(&w.output()).len() > logged).then_some(()))
        .unwrap_or_else(|| panic!("no guest heap report within 5 s of the load's end:\n{}", w.output()));
    let heap_warm = heap_reports_at_warm.and_then(|n| guest_heap_all(&w.output()).get(n).copied());
    let flat = |used: u64| heap_warm.is_none_or(|(warm, _)| used <= warm + (warm / 10).max(1024));
    let heap_end = wait_for(Duration::from_secs(10), || {
        guest_heap_all(&w.output()).into_iter().skip(logged).find(|&(used, _)| flat(used))
    })
    .or_else(|| guest_heap(&w.output()));

    // Still serving: one more request, after everything.
    let still = w.reach(move || one_shot(addr, 0).map_err(|f| f.0));
    let output = w.output();
    let status = w.child.0.try_wait().ok().flatten();

    let done = counts.done.load(Ordering::Relaxed);
    let kept = counts.kept.load(Ordering::Relaxed);
    let garbage = counts.garbage.load(Ordering::Relaxed);
    let failures = counts.failures.lock().unwrap();
    eprintln!(
        "soak {entry:?} on {link:?}: {done} of {total} connections in {:.1} s ({:.0}/s), {} failed; \
         {kept} keep-alive requests, {garbage} garbage connections; tender RSS start {}, after warm-up ({warm_at} \
         connections) {}, end {}, max {}; of it the tender's own (outside guest memory) {}, {}, {}; \
         guest heap in use at start {}, after warm-up {}, at the end {}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        failures.len(),
        mib(rss_start.0),
        mib(rss_warm.0),
        mib(rss_end.0),
        mib(rss_max),
        mib(own_kib(rss_start)),
        mib(own_kib(rss_warm)),
        mib(own_kib(rss_end)),
        heap_text(heap_start),
        heap_text(heap_warm),
        heap_text(heap_end),
    );

    assert!(status.is_none(), "the tender ended during the soak ({status:?}):\n{output}");
    assert!(!output.contains("blocked system call"), "{output}");
    assert!(
        failures.is_empty(),
        "{} of {total} well-formed exchanges failed, e.g. {:#?}\n{output}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(done, total);
    assert!(kept > 0 && garbage > 0, "keep-alive {kept}, garbage {garbage}");
    assert_eq!(still, Ok(()), "not serving after the soak:\n{output}");
    let (own_warm, own_end) = (own_kib(rss_warm), own_kib(rss_end));
    let allowed = (own_warm / 10).max(2048);
    assert!(
        own_end <= own_warm + allowed,
        "the tender's own RSS (outside guest memory) grew from {} after warm-up to {} at the end (allowed {})",
        mib(own_warm),
        mib(own_end),
        mib(allowed)
    );
    // The guest's heap is as flat: connections that ended gave back what
    // they held.
    if let (Some((warm, _)), Some((end, _))) = (heap_warm, heap_end) {
        assert!(flat(end), "guest heap in use grew from {warm} KiB after warm-up to {end} KiB, 10 s after the load");
    }
    drop(failures);

    // A stop signal ends it with a documented status, and its stats.
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM: {}", std::io::Error::last_os_error());
    let status = wait_for(Duration::from_secs(20), || w.child.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("the tender did not stop after SIGTERM:\n{}", w.output()));
    let output = w.output();
    let code = status.code();
    assert!(
        code == Some(0) || code == Some(skiff_abi::exit::STOPPED.into()),
        "SIGTERM ended it with {status}:\n{output}"
    );
    assert!(!output.contains("blocked system call"), "{output}");
    if let Some(line) = output.lines().find(|l| l.contains("guest memory touched")) {
        eprintln!("soak {entry:?} on {link:?}: at the end, {}", line.trim());
    }
}

#[test]
fn soak_skiff_tender_on_the_user_network() {
    soak(Entry::Tender, Link::User);
}

#[test]
fn soak_skiff_run_image_on_the_user_network() {
    soak(Entry::RunImage, Link::User);
}

#[test]
fn soak_skiff_run_crate_on_the_user_network() {
    soak(Entry::RunCrate, Link::User);
}

#[test]
fn soak_skiff_tender_on_a_tap_device() {
    soak(Entry::Tender, Link::Tap);
}

#[test]
fn soak_skiff_run_image_on_a_tap_device() {
    soak(Entry::RunImage, Link::Tap);
}

#[test]
fn soak_skiff_run_crate_on_a_tap_device() {
    soak(Entry::RunCrate, Link::Tap);
}
