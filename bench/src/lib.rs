//! Shared helpers for Skiff's benchmarks: finding and building the
//! binaries under test, timing whole processes, summarising samples, and
//! a podman store of a benchmark's own with its container images (a
//! packaged Skiff image, nginx from the host's nginx-light).
//!
//! Absolute times drift on shared machines, so every benchmark runs its
//! baseline in the same invocation, interleaved with the subject, and
//! reports ratios.

use skiff_tender::tap::{Tap, wait_readable};
use skiff_testnet::{Guard, NetNs, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
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
    /// Statically, against musl, as `scripts/build-tender` builds it: no
    /// shared libraries to map, a faster start and the least resident
    /// memory.
    Static,
}

/// The target the static tender and the KVM floor are built for.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the release tender, linked as asked, and returns its path.
pub fn release_tender(linking: Linking) -> PathBuf {
    match linking {
        Linking::Dynamic => {
            let dir = "target/tender-dynamic";
            cargo_build(&["-p", "skiff-tender", "--bin", "skiff-tender", "--target-dir", dir], "the release tender");
            workspace().join(dir).join("release/skiff-tender")
        }
        Linking::Static => {
            let out = Command::new(workspace().join("scripts/build-tender"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/build-tender");
            assert!(out.status.success(), "scripts/build-tender failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    }
}

/// Builds the KVM floor program (`bench/kvm-floor`) as the static tender
/// is built: release, statically against musl.
pub fn kvm_floor() -> PathBuf {
    let dir = "target/tender-static";
    let args = ["-p", "skiff-kvm-floor", "--bin", "kvm-floor", "--target", STATIC_TARGET, "--target-dir", dir];
    cargo_build(&args, "the KVM floor program");
    workspace().join(dir).join(STATIC_TARGET).join("release/kvm-floor")
}

/// `cargo build --release -q` with `args` in the workspace; panics naming
/// `what` if it fails.
fn cargo_build(args: &[&str], what: &str) {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-q"])
        .args(args)
        .current_dir(workspace())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {what} failed");
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
/// The first three fields of `/proc/loadavg` (1, 5, 15 min): the other
/// work on the host.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The report's line about the load: before and after the benchmark, and,
/// when the one-minute load before it was above a quarter of the CPUs (other
/// work was running: the benchmark's own load comes after), a warning that
/// the run's figures are indicative.
pub fn load_report(before: &str, after: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let one_minute: f64 = before.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    let busy = one_minute > 0.25 * cpus;
    format!(
        "Load average (1, 5, 15 min) before: {before}; after: {after} (on {cpus} CPUs).{}",
        if busy {
            " BUSY: other work was running when this run started; its figures and ratios are indicative, \
             not for the targets (re-run on a quiet machine)."
        } else {
            ""
        }
    )
}

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
///
/// With `SKIFF_BENCH_LINUX_OFFLOAD=1` the server side's device takes TCP
/// segmentation offload (`TUNSETOFFLOAD`), so the Linux kernel behind it
/// sends segments of up to 64 KiB, which the forwarder passes to the
/// client side whole with their virtio-net headers, as a VMM passes a
/// virtio-net guest's offloaded segments to its TAP device. Skiff's tender
/// merges its guest's segments into such writes itself; this gives the
/// Linux baseline the same. Off by default: the baseline of record is the
/// Linux kernel sending frames as on the wire.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Whether the Linux baseline's forwarder passes offloaded segments
/// (`SKIFF_BENCH_LINUX_OFFLOAD=1`).
pub fn linux_offload() -> bool {
    std::env::var("SKIFF_BENCH_LINUX_OFFLOAD").is_ok_and(|v| v == "1")
}

/// A line for reports: which Linux baseline ran.
pub fn linux_path() -> &'static str {
    if linux_offload() {
        "Linux baseline: TCP segmentation offload on its TAP device, 64 KiB segments passed whole \
         (SKIFF_BENCH_LINUX_OFFLOAD=1)"
    } else {
        "Linux baseline: frames as on the wire through the forwarder (no offloads; \
         SKIFF_BENCH_LINUX_OFFLOAD=1 gives it TCP segmentation offload)"
    }
}

impl Forwarder {
    /// Starts copying between `tap_a` in `a` and `tap_b` in `b`.
    pub fn start(a: &NetNs, tap_a: &str, b: &NetNs, tap_b: &str) -> Forwarder {
        let (ta, tb) = (tap_a.to_string(), tap_b.to_string());
        let ta = Arc::new(a.run(move || Tap::attach(&ta).expect("attach the client-side TAP")));
        let tb = Arc::new(b.run(move || Tap::attach(&tb).expect("attach the server-side TAP")));
        if linux_offload() {
            tb.set_tcp_offload(true).expect("TCP offload on the server-side TAP");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(ta.clone(), tb.clone()), (tb, ta)]
            .into_iter()
            .map(|(from, to)| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // A 64 KiB segment and its headers.
                    let mut buf = vec![0u8; 70_000];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = wait_readable(&[from.fd()], Some(Duration::from_millis(50)));
                        // Both devices have virtio-net headers: what one
                        // reads, header included, is written to the other.
                        while let Ok(Some(r)) = from.recv(&mut buf) {
                            let _ = to.send_with_header(&buf[..r.end]);
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
    // The monitor takes the stop signals itself (they may be blocked here:
    // `tear_down_on_signal`).
    skiff_tender::sys::unblock_stop_signals_on_exec(&mut tender);
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

/// Builds the `skiff` command (release) and returns its path.
pub fn release_skiff() -> PathBuf {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-q", "-p", "skiff-cli", "--bin", "skiff"])
        .current_dir(workspace())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the skiff command failed");
    workspace().join("target/release/skiff")
}

/// Tears the benchmark's set-up down when it is stopped (`SIGINT` from
/// Ctrl-C, `SIGTERM`), which would otherwise end it without running a
/// destructor: kills every child process (guests' monitors, clients; a
/// QEMU dies with its `skiff`), deletes the namespaces this process made,
/// says so and exits with 128 + the signal. Call it first in `main`,
/// before any thread starts: the signals are blocked in every thread and
/// taken by one that waits for them.
pub fn tear_down_on_signal() {
    use skiff_tender::sys::{StopSignal, block_stop_signals, wait_for_stop};
    block_stop_signals().expect("block SIGINT and SIGTERM");
    std::thread::spawn(|| {
        let signal = loop {
            if let Some(signal) = wait_for_stop(Duration::from_secs(3600)) {
                break signal;
            }
        };
        eprintln!("{}: stopping the guests and deleting the benchmark's namespaces", signal.name());
        for pid in children(std::process::id()) {
            // SAFETY: kill takes plain integers; the pid is our child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        skiff_testnet::remove_own_namespaces();
        std::process::exit(128 + if signal == StopSignal::Term { libc::SIGTERM } else { libc::SIGINT });
    });
}

/// What `ping -q` says in its summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PingSummary {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// The run's time as ping reports it, milliseconds.
    pub time_ms: f64,
    /// Average round trip, microseconds.
    pub avg_rtt_us: f64,
}

impl PingSummary {
    /// Replies per second over the run.
    pub fn rate(&self) -> f64 {
        f64::from(self.received) / (self.time_ms / 1000.0)
    }
}

/// Reads the summary lines of `ping -q` (iputils):
/// `N packets transmitted, M received, ..., time Tms` and
/// `rtt min/avg/max/mdev = a/b/c/d ms`.
pub fn parse_ping(text: &str) -> Option<PingSummary> {
    let counts = text.lines().find(|l| l.contains(" packets transmitted, "))?;
    let mut transmitted = None;
    let mut received = None;
    let mut time_ms = None;
    for part in counts.split(", ") {
        let part = part.trim();
        if let Some(n) = part.strip_suffix(" packets transmitted") {
            transmitted = n.parse().ok();
        } else if let Some(n) = part.strip_suffix(" received") {
            received = n.parse().ok();
        } else if let Some(t) = part.strip_prefix("time ") {
            time_ms = t.strip_suffix("ms")?.parse().ok();
        }
    }
    let rtt = text.lines().find(|l| l.starts_with("rtt ") || l.starts_with("round-trip "));
    let avg_ms: f64 = rtt
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    Some(PingSummary { transmitted: transmitted?, received: received?, time_ms: time_ms?, avg_rtt_us: avg_ms * 1000.0 })
}

/// Ping flood (`ping -f -q -c COUNT`) from `ns` to `addr`: (pings per
/// second, average RTT in microseconds). Panics, with ping's output, if
/// more than 1% of the replies are missing.
pub fn ping_flood(ns: &NetNs, addr: &str, count: u32) -> (f64, f64) {
    let out =
        ns.command("ping").args(["-f", "-q", "-c", &count.to_string(), "-W", "1", addr]).output().expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = parse_ping(&text).unwrap_or_else(|| {
        panic!("ping printed no summary:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    });
    assert!(f64::from(summary.received) >= f64::from(count) * 0.99, "ping flood lost replies:\n{text}");
    (summary.rate(), summary.avg_rtt_us)
}

/// Sends `bytes` to the bulk sink at `addr` (netprobe's port 9 protocol:
/// it counts what it reads and answers with the count); MiB/s.
pub fn bulk_in(ns: &NetNs, addr: &str, bytes: u64) -> f64 {
    let addr = addr.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect(addr).expect("connect to the bulk sink");
        let chunk = vec![0xa5u8; 256 * 1024];
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            s.write_all(&chunk[..n]).expect("write to the bulk sink");
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write).expect("shut down the writing side");
        let mut count = [0u8; 8];
        s.read_exact(&mut count).expect("read the sink's count");
        assert_eq!(u64::from_le_bytes(count), bytes, "the sink counted every byte");
        bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
    })
}

/// Receives `bytes` from the bulk source at `addr` (netprobe's port 19
/// protocol: it sends as many bytes as the 8-byte count asks); MiB/s.
pub fn bulk_out(ns: &NetNs, addr: &str, bytes: u64) -> f64 {
    let addr = addr.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect(addr).expect("connect to the bulk source");
        let start = Instant::now();
        s.write_all(&bytes.to_le_bytes()).expect("ask the source");
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).expect("read from the bulk source");
            assert!(n > 0, "the source stopped after {got} bytes");
            got += n as u64;
        }
        bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
    })
}

/// The OCI runtime a container runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Debian's runc, podman's default.
    Runc,
    /// skiff-oci as built by [`release_runtime`].
    SkiffOci,
}

/// Why podman benchmarks cannot run here, if they cannot: not root, or
/// one of podman, runc and iptables-save missing.
pub fn podman_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("rootful podman needs root".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in [("podman", "podman"), ("runc", "runc"), ("iptables-save", "iptables")] {
        if !std::env::split_paths(&path).any(|d| d.join(program).is_file()) {
            return Some(format!("`{program}` is missing (Debian package {package}; scripts/setup installs it)"));
        }
    }
    None
}

/// A podman store of the benchmark's own under a directory it is given;
/// dropping it removes its containers, its images, the store and
/// netavark's firewall rules and chains that were not there before.
pub struct Podman {
    dir: PathBuf,
    runtime: PathBuf,
    firewall: Vec<(&'static str, Vec<String>)>,
    /// `--ulimit`s for `podman run`: podman's defaults (nofile 1048576)
    /// exceed what a host without `CAP_SYS_RESOURCE` lets runc set, so both
    /// runtimes get the host's hard limit of open files and 4096 processes.
    ulimits: Vec<String>,
}

fn netavark_rules(table: &str) -> Vec<String> {
    let out = Command::new("iptables-save").args(["-t", table]).output().expect("run iptables-save");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("NETAVARK")).map(str::to_string).collect()
}

impl Podman {
    /// A store in `dir/podman`; `runtime` is the skiff-oci binary.
    pub fn new(dir: &Path, runtime: PathBuf) -> Podman {
        let firewall = ["nat", "filter"].into_iter().map(|t| (t, netavark_rules(t))).collect();
        let out = Command::new("sh").args(["-c", "ulimit -Hn"]).output().expect("run sh");
        let nofile = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ulimits =
            vec!["--ulimit".into(), format!("nofile={nofile}:{nofile}"), "--ulimit".into(), "nproc=4096:4096".into()];
        Podman { dir: dir.join("podman"), runtime, firewall, ulimits }
    }

    /// `podman run` with the limits.
    pub fn run(&self, runtime: Runtime) -> Command {
        let mut c = self.cmd(runtime);
        c.args(["run", "--pull", "never"]).args(&self.ulimits);
        c
    }

    /// `podman` with the store's options and `--runtime`.
    pub fn cmd(&self, runtime: Runtime) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root").arg(self.dir.join("root"));
        c.arg("--runroot").arg(self.dir.join("runroot"));
        c.arg("--tmpdir").arg(self.dir.join("tmp"));
        c.args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime"]);
        match runtime {
            Runtime::SkiffOci => c.arg(&self.runtime),
            Runtime::Runc => c.arg("runc"),
        };
        c
    }

    /// Runs podman with `args`; its standard output, trimmed. Panics with
    /// podman's output when it fails.
    pub fn ok(&self, runtime: Runtime, args: &[&str]) -> String {
        let out = self.cmd(runtime).args(args).stdin(Stdio::null()).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(Runtime::Runc).args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd(Runtime::Runc).args(["rmi", "-af"]).output();
        for (table, before) in &self.firewall {
            let new: Vec<String> = netavark_rules(table).into_iter().filter(|l| !before.contains(l)).collect();
            for rule in new.iter().rev().filter_map(|l| l.strip_prefix("-A ")) {
                let _ = Command::new("sh").arg("-c").arg(format!("iptables -w -t {table} -D {rule}")).output();
            }
            for chain in new.iter().filter_map(|l| l.strip_prefix(':')?.split(' ').next()) {
                let _ = Command::new("iptables").args(["-w", "-t", table, "-F", chain]).output();
                let _ = Command::new("iptables").args(["-w", "-t", table, "-X", chain]).output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds skiff-oci (release) and returns its path.
pub fn release_runtime() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "skiff-oci", "--bin", "skiff-oci"])
        .current_dir(workspace())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building skiff-oci failed");
    workspace().join("target/release/skiff-oci")
}

/// `skiff package` of `image` as `name` (an archive in `dir`), loaded into
/// the store.
pub fn load_skiff(p: &Podman, dir: &Path, image: &Path, name: &str) {
    let elf = std::fs::read(image).expect("read the image");
    let parsed = skiff_tender::elf::Image::parse(elf.clone(), false).expect("a Skiff image");
    let archive = dir.join(format!("{}.tar", name.replace('/', "_")));
    let file = std::fs::File::create(&archive).expect("create the archive");
    let reference = skiff_oci::package::Reference::parse(name).expect("an image name");
    skiff_oci::package::write(&elf, &skiff_oci::package::Facts::of(&parsed), &reference, file).expect("package");
    p.ok(Runtime::Runc, &["load", "-q", "-i", archive.to_str().expect("a UTF-8 path")]);
}

/// A root file system directory packed with tar and `podman import`ed as
/// `name` with the given command (JSON array text).
pub fn import(p: &Podman, rootfs: &Path, name: &str, cmd: &str) {
    let tar = rootfs.with_extension("tar");
    let status = Command::new("tar").arg("-C").arg(rootfs).arg("-cf").arg(&tar).arg(".").status().expect("run tar");
    assert!(status.success(), "tar {}", rootfs.display());
    p.ok(
        Runtime::Runc,
        &["import", "-q", "--change", &format!("CMD {cmd}"), tar.to_str().expect("a UTF-8 path"), name],
    );
}

/// The nginx configuration of [`make_nginx`]'s image: one worker, the site
/// in `/site` on port 443 over TLS 1.2 and 1.3 with `/etc/nginx/cert.pem`.
pub const NGINX_IMAGE_CONF: &str = "user root root;\nworker_processes 1;\npid /tmp/nginx.pid;\n\
    error_log stderr warn;\nevents { worker_connections 1024; }\n\
    http {\n  access_log off;\n  sendfile on;\n  tcp_nodelay on;\n  types { text/html html; }\n\
    client_body_temp_path /tmp/body;\n  proxy_temp_path /tmp/proxy;\n  fastcgi_temp_path /tmp/fastcgi;\n  \
    uwsgi_temp_path /tmp/uwsgi;\n  scgi_temp_path /tmp/scgi;\n\
    server {\n    listen 443 ssl;\n    root /site;\n    ssl_certificate /etc/nginx/cert.pem;\n    \
    ssl_certificate_key /etc/nginx/key.pem;\n    ssl_protocols TLSv1.2 TLSv1.3;\n  }\n}\n";

/// Imports the host's nginx (Debian nginx-light) with its libraries (from
/// `ldd`), examples/static-website's site files, `cert` and
/// [`NGINX_IMAGE_CONF`] as the image `localhost/nginx-light` (built in
/// `dir/nginx`): what runc runs as the nginx container.
pub fn make_nginx(p: &Podman, dir: &Path, cert: &Cert) {
    let rootfs = dir.join("nginx");
    let copy = |from: &Path| {
        let to = rootfs.join(from.strip_prefix("/").expect("an absolute path"));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("create a directory");
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    let nginx = Path::new("/usr/sbin/nginx");
    copy(nginx);
    let ldd = Command::new("ldd").arg(nginx).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` or the
        // loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            let real = std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            copy(&real);
            let link = rootfs.join(path.trim_start_matches('/'));
            if !link.exists() {
                std::fs::create_dir_all(link.parent().expect("a parent")).expect("create a directory");
                std::os::unix::fs::symlink(&real, &link).expect("link a library");
            }
        }
    }
    for d in ["etc/nginx", "tmp", "var/log/nginx", "var/lib/nginx"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("create a directory");
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        .expect("write /etc/passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("write /etc/group");
    let status = Command::new("cp")
        .arg("-r")
        .arg(workspace().join("examples/static-website/site"))
        .arg(rootfs.join("site"))
        .status()
        .expect("run cp");
    assert!(status.success(), "copying the site failed");
    std::fs::copy(&cert.cert, rootfs.join("etc/nginx/cert.pem")).expect("copy the certificate");
    std::fs::copy(&cert.key, rootfs.join("etc/nginx/key.pem")).expect("copy the key");
    std::fs::write(rootfs.join("etc/nginx/nginx.conf"), NGINX_IMAGE_CONF).expect("write nginx.conf");
    import(
        p,
        &rootfs,
        "localhost/nginx-light",
        "[\"/usr/sbin/nginx\", \"-c\", \"/etc/nginx/nginx.conf\", \"-g\", \"daemon off;\"]",
    );
}

/// CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(") ").next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A process's resident memory from `/proc/PID/status`, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    /// Peak resident set (`VmHWM`).
    pub hwm: u64,
    /// Resident set now (`VmRSS`).
    pub rss: u64,
}

/// Reads `VmHWM` and `VmRSS` (in kB) from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Resident> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let value = line[name.len()..].trim().strip_suffix("kB")?.trim();
        value.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some(Resident { hwm: field("VmHWM:")?, rss: field("VmRSS:")? })
}

/// The resident memory of process `pid`, if it is alive.
pub fn resident(pid: u32) -> Option<Resident> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The parent's pid from the text of `/proc/PID/stat` (the field after the
/// state, which follows the command name in parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The pids of `parent`'s children, from `/proc`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_ppid(&s)) == Some(parent)
        })
        .collect()
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Wrk {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Socket errors and non-2xx/3xx responses.
    pub errors: u64,
}

/// A wrk latency (`512.00us`, `1.20ms`, `2.00s`) in microseconds.
pub fn parse_latency(s: &str) -> f64 {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

/// Reads wrk's report (run with `--latency`).
pub fn parse_wrk(text: &str) -> Wrk {
    let mut w = Wrk::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_us = parse_latency(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_us = parse_latency(v);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // connect N, read N, write N, timeout N
            w.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    w
}

/// wrk's arguments for `url`: `connections` keep-alive connections (one
/// thread up to 16, two above) for `secs` seconds, with latency
/// percentiles; `close` sends `Connection: close` (a connection per
/// request).
pub fn wrk_args(url: &str, connections: u32, secs: u32, close: bool) -> Vec<String> {
    let threads = if connections > 16 { 2 } else { 1 };
    let mut args: Vec<String> = vec!["-t".into(), threads.to_string(), "-c".into(), connections.to_string()];
    args.extend(["-d".into(), format!("{secs}s"), "--latency".into()]);
    if close {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    args.push(url.into());
    args
}

/// Runs wrk from `ns` (see [`wrk_args`]) and reads its report; a run that
/// measured nothing counts as an error and its output is printed.
pub fn wrk(ns: &NetNs, url: &str, connections: u32, secs: u32, close: bool) -> Wrk {
    let out = ns.command("wrk").args(wrk_args(url, connections, secs, close)).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = parse_wrk(&text);
    if w.rps == 0.0 {
        eprintln!("    wrk measured nothing for {url}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        w.errors += 1;
    }
    w
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The run with the median request rate.
pub fn median_wrk(mut v: Vec<Wrk>) -> Wrk {
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_flood_summary_is_read() {
        let text = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n \n--- 10.0.0.2 ping statistics ---\n\
                    20000 packets transmitted, 19990 received, 0.05% packet loss, time 480ms\n\
                    rtt min/avg/max/mdev = 0.008/0.012/0.120/0.003 ms, ipg/ewma 0.024/0.011 ms\n";
        let s = parse_ping(text).unwrap();
        assert_eq!((s.transmitted, s.received), (20000, 19990));
        assert_eq!(s.time_ms, 480.0);
        assert!((s.avg_rtt_us - 12.0).abs() < 1e-9, "{}", s.avg_rtt_us);
        assert!((s.rate() - 19990.0 / 0.48).abs() < 1e-6);
        // Errors in the summary ("+5 errors") do not confuse it; no rtt
        // line (nothing came back) leaves the RTT unknown.
        let lost = "5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4004ms\n";
        let s = parse_ping(lost).unwrap();
        assert_eq!((s.transmitted, s.received, s.time_ms), (5, 0, 4004.0));
        assert!(s.avg_rtt_us.is_nan());
        assert_eq!(parse_ping("ping: connect: Network is unreachable\n"), None);
    }

    #[test]
    fn proc_status_gives_peak_and_current_resident_memory() {
        let text = "Name:\tqemu-system-x86\nVmPeak:\t 1000000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(text), Some(Resident { hwm: 50 << 20, rss: 40 << 20 }));
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
        let me = resident(std::process::id()).unwrap();
        assert!(me.hwm >= me.rss && me.rss > 0, "{me:?}");
    }

    #[test]
    fn the_parent_pid_is_read_past_a_command_name_with_spaces() {
        assert_eq!(parse_ppid("4242 (qemu (x) 1) S 4200 4242 1 0"), Some(4200));
        assert_eq!(parse_ppid("garbage"), None);
        let me = std::process::id();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(me).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn the_nginx_image_serves_the_site_over_tls_on_443_with_one_worker() {
        for line in ["worker_processes 1;", "listen 443 ssl;", "root /site;", "ssl_certificate /etc/nginx/cert.pem;"] {
            assert!(NGINX_IMAGE_CONF.contains(line), "{line} missing from:\n{NGINX_IMAGE_CONF}");
        }
    }

    #[test]
    fn a_wrk_report_is_read() {
        let text = "Running 5s test @ https://10.0.0.2/bench/1k.html\n  1 threads and 16 connections\n\
                    \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                    \x20   Latency   301.22us  101.00us   3.10ms   90.00%\n\
                    \x20 Latency Distribution\n     50%  286.00us\n     75%  320.00us\n     90%  400.00us\n\
                    \x20    99%    1.52ms\n  221235 requests in 5.00s, 260.00MB read\n\
                    \x20 Socket errors: connect 0, read 2, write 0, timeout 3\n\
                    \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  44247.00\nTransfer/sec:     52.00MB\n";
        let w = parse_wrk(text);
        assert_eq!(w, Wrk { rps: 44247.0, p50_us: 286.0, p99_us: 1520.0, errors: 9 });
        assert_eq!(parse_latency("2.00s"), 2_000_000.0);
        assert!(parse_wrk("unable to connect to 10.0.0.2:443 Connection refused\n").rps == 0.0);
        let runs = [3.0, 1.0, 2.0].map(|rps| Wrk { rps, ..Wrk::default() });
        assert_eq!(median_wrk(runs.to_vec()).rps, 2.0);
    }
}
