//! Shared helpers for Skiff's benchmarks: finding and building the
//! binaries under test, timing whole processes, and summarising samples.
//!
//! Absolute times drift on shared machines, so every benchmark runs its
//! baseline in the same invocation, interleaved with the subject, and
//! reports ratios.

use skiff_tender::tap::{Tap, wait_readable};
use skiff_testnet::{Guard, NetNs, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A self-signed ECDSA P-256 certificate (PEM files) for both servers of a
/// benchmark.
pub struct Cert {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Makes a certificate for `localhost` and `ip` in `dir` with openssl.
pub fn make_cert(dir: &Path, ip: &str) -> Cert {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", &format!("subjectAltName=DNS:localhost,IP:{ip}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
    Cert { cert, key }
}

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

/// How the tender binary is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linking {
    /// Against the system's shared C library (a plain `cargo build`).
    Dynamic,
    /// Statically (`-C target-feature=+crt-static` on the final link), as
    /// `scripts/build-tender` does: no shared libraries to map, about half
    /// the resident memory and a faster start.
    Static,
}

/// Builds the release tender, linked as asked, and returns its path.
pub fn release_tender(linking: Linking) -> PathBuf {
    let dir = match linking {
        Linking::Dynamic => "target/tender-dynamic",
        Linking::Static => "target/tender-static",
    };
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["rustc", "--release", "-q", "-p", "skiff-tender", "--bin", "skiff-tender", "--target-dir", dir]);
    if linking == Linking::Static {
        cmd.args(["--", "-C", "target-feature=+crt-static"]);
    }
    let status = cmd.current_dir(workspace()).status().expect("run cargo");
    assert!(status.success(), "building the release tender failed");
    workspace().join(dir).join("release/skiff-tender")
}

/// Builds a guest crate (release) into the shared guest target directory.
pub fn guest(dir: &str) -> PathBuf {
    let mut opts = skiff_build::BuildOptions::new(workspace().join(dir));
    opts.target_dir = Some(workspace().join("target/guest"));
    opts.quiet = true;
    match skiff_build::build(&opts) {
        Ok(b) => b.image,
        Err(e) => panic!("building {dir}: {e}"),
    }
}

/// Resource use of one finished process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall time from spawn to reaped.
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set, bytes.
    pub max_rss: u64,
    /// Exit status.
    pub status: i32,
}

/// Runs `cmd` to completion (output discarded) and measures it.
pub fn measure(cmd: &mut Command) -> Sample {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; both out-parameters live here.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    std::mem::forget(child); // already reaped by wait4
    let tv = |t: libc::timeval| Duration::from_micros((t.tv_sec * 1_000_000 + t.tv_usec) as u64);
    Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss: usage.ru_maxrss as u64 * 1024,
        status: if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 },
    }
}

/// Percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// Median, p10 and p90 of `samples`' wall times.
pub fn summary(samples: &[Sample]) -> (Duration, Duration, Duration) {
    let mut w: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    w.sort();
    (percentile(&w, 50), percentile(&w, 10), percentile(&w, 90))
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Copies frames between two TAP devices in two namespaces, one thread per
/// direction, until dropped.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Starts copying between `tap_a` in `a` and `tap_b` in `b`.
    pub fn start(a: &NetNs, tap_a: &str, b: &NetNs, tap_b: &str) -> Forwarder {
        let (ta, tb) = (tap_a.to_string(), tap_b.to_string());
        let ta = Arc::new(a.run(move || Tap::attach(&ta).expect("attach the client-side TAP")));
        let tb = Arc::new(b.run(move || Tap::attach(&tb).expect("attach the server-side TAP")));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(ta.clone(), tb.clone()), (tb, ta)]
            .into_iter()
            .map(|(from, to)| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = wait_readable(&[from.fd()], Some(Duration::from_millis(50)));
                        while let Ok(Some(n)) = from.recv(&mut buf) {
                            let _ = to.send(&buf[..n]);
                        }
                    }
                })
            })
            .collect();
        Forwarder { stop, threads }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client namespace with `tap0` addressed 10.0.0.1/24.
pub fn client_ns() -> NetNs {
    let ns = NetNs::new().expect("namespace");
    ns.add_tap("tap0", &["10.0.0.1/24"]).expect("tap");
    ns
}

/// The Linux baseline: a client namespace, a forwarder, and a server
/// namespace whose `tap1` is 10.0.0.2/24.
pub struct Linux {
    /// Where clients run.
    pub client: NetNs,
    /// Where the Linux servers run.
    pub server: NetNs,
    _fwd: Forwarder,
}

/// Sets up the Linux baseline's namespaces and forwarder.
pub fn start_linux() -> Linux {
    let client = client_ns();
    let server = NetNs::new().expect("namespace");
    server.add_tap("tap1", &["10.0.0.2/24"]).expect("tap");
    let fwd = Forwarder::start(&client, "tap0", &server, "tap1");
    Linux { client, server, _fwd: fwd }
}

/// Starts `tender` (a tender command line, on the host or in a namespace)
/// with stdout and stderr in one log file named after `tag`, and waits up
/// to 30 s for `ready` to appear in it. Returns the running tender, the
/// log's path and its text at that moment.
pub fn start_logged(mut tender: Command, tag: &str, ready: &str) -> (Guard, PathBuf, String) {
    let log = std::env::temp_dir().join(format!("skiff-bench-{tag}.log"));
    let file = std::fs::File::create(&log).expect("create the log file");
    let child = tender
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("share the log file"))
        .stderr(file)
        .spawn()
        .expect("start the tender");
    let guard = Guard(child);
    let text = wait_for(Duration::from_secs(30), || std::fs::read_to_string(&log).ok().filter(|t| t.contains(ready)))
        .unwrap_or_else(|| panic!("the guest did not come up:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    (guard, log, text)
}
