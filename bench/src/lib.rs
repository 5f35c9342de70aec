//! Shared helpers for Skiff's benchmarks: finding and building the
//! binaries under test, timing whole processes, and summarising samples.
//!
//! Absolute times drift on shared machines, so every benchmark runs its
//! baseline in the same invocation, interleaved with the subject, and
//! reports ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
