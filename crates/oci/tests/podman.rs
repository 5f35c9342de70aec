//! Skiff images under rootful podman with skiff-oci as the runtime: the
//! images `skiff package` writes are loaded into a podman store of the
//! test's own (`--root`, `--runroot`, `--tmpdir` under /tmp/skiff-oci) and
//! run with `--network none` (or a namespace the test made), so nothing
//! outside the test is touched; each test removes its containers and
//! store.
//!
//! Needs root, `/dev/kvm`, podman and conmon (`scripts/setup`).

mod common;

use common::{Ran, package, package_bytes, require, run, runtime, scratch};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A podman store of one test's own.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(name: &str) -> Podman {
        require(&["podman", "conmon"]);
        Podman { dir: scratch(name) }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime"])
            .arg(runtime());
        c
    }

    /// Runs podman with `args`; at most 60 s.
    fn run(&self, args: &[&str]) -> Ran {
        run(self.cmd().args(args), Duration::from_secs(60))
    }

    fn load(&self, archive: &Path) {
        let r = self.run(&["load", "-q", "-i", archive.to_str().expect("a UTF-8 path")]);
        assert_eq!(r.status, 0, "podman load {}: {r:?}", archive.display());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["rmi", "-af"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn podman_runs_hello_with_its_arguments() {
    let p = Podman::new("podman-hello");
    p.load(&package("examples/hello", "skiff-test/hello", &p.dir));
    let r = p.run(&["run", "--rm", "--pull", "never", "--network", "none", "skiff-test/hello", "a", "b c"]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stdout.contains("Hello from Skiff!"), "{r:?}");
    assert!(r.stdout.contains(r#"command line: ["a", "b c"]"#), "{r:?}");
}

#[test]
fn the_guests_exit_status_is_podmans() {
    let p = Podman::new("podman-status");
    p.load(&package("tests/guests/probe", "skiff-test/probe", &p.dir));
    let r = p.run(&["run", "--rm", "--pull", "never", "--network", "none", "skiff-test/probe", "exit", "3"]);
    assert_eq!(r.status, 3, "{r:?}");
    // A panic is the runtime's status and message, as under skiff run.
    let r = p.run(&["run", "--rm", "--pull", "never", "--network", "none", "skiff-test/probe", "panic"]);
    assert_eq!(r.status, i32::from(skiff_abi::exit::PANIC), "{r:?}");
    assert!(r.stderr.contains("probe panic 42"), "{r:?}");
}

#[test]
fn a_terminal_comes_through_the_console_socket() {
    let p = Podman::new("podman-tty");
    p.load(&package("tests/guests/probe", "skiff-test/probe", &p.dir));
    let r = p.run(&["run", "--rm", "-t", "--pull", "never", "--network", "none", "skiff-test/probe", "hello", "tty"]);
    assert_eq!(r.status, 0, "{r:?}");
    // The line came through a terminal: it ends in CR LF.
    assert!(r.stdout.contains(r#"probe says hello; args ["hello", "tty"]"#), "{r:?}");
    assert!(r.stdout.contains("]\r\n"), "{r:?}");
}

/// The cgroup v1 `memory` directory (or v2 directory) of process `pid`.
fn memory_limit(pid: &str) -> u64 {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the process's cgroups");
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == "memory") {
            let file = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
            return std::fs::read_to_string(&file).expect(&file).trim().parse().expect("a number");
        }
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let file = format!("/sys/fs/cgroup{path}/memory.max");
            return std::fs::read_to_string(&file).expect(&file).trim().parse().expect("a number");
        }
    }
    panic!("process {pid} is in no memory cgroup: {cgroups}");
}

/// A network namespace made (and removed) by the test.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        let r = run(Command::new("ip").args(["netns", "add", &name]), Duration::from_secs(10));
        assert_eq!(r.status, 0, "ip netns add: {r:?}");
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]), Duration::from_secs(10));
    }
}

#[test]
fn detached_logs_stop_cleanly_and_rm_in_the_containers_namespace_and_cgroup() {
    let p = Podman::new("podman-detached");
    p.load(&package("examples/hello", "skiff-test/hello", &p.dir));
    let netns = Netns::new("skiff-oci-detached");
    let network = format!("ns:{}", netns.path());
    let r = p.run(&[
        "run",
        "-d",
        "--pull",
        "never",
        "--network",
        &network,
        "--memory",
        "96m",
        "skiff-test/hello",
        "--sleep-ms",
        "600000",
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = p.run(&["logs", &id]);
        if logs.stdout.contains("Hello from Skiff!") {
            break;
        }
        assert!(Instant::now() < deadline, "no greeting in the logs: {logs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = p.run(&["inspect", "-f", "{{.State.Pid}}", &id]).stdout.trim().to_string();
    // The tender runs in the network namespace podman was given, and in
    // the cgroup with the container's memory limit.
    let inode = |path: &str| std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).ino();
    assert_eq!(inode(&format!("/proc/{pid}/ns/net")), inode(&netns.path()));
    assert_ne!(inode(&format!("/proc/{pid}/ns/pid")), inode("/proc/self/ns/pid"), "a PID namespace of its own");
    assert_eq!(memory_limit(&pid), 96 << 20);
    let state = run(Command::new(runtime()).args(["state", &id]), Duration::from_secs(10));
    assert!(state.stdout.contains(r#""status": "running""#), "{state:?}");

    // podman stop sends SIGTERM: the tender ends the guest cleanly, 0.
    let start = Instant::now();
    let r = p.run(&["stop", "-t", "20", &id]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "stop took {:?}", start.elapsed());
    let code = p.run(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.stdout.trim(), "0", "not the clean stop's status: {code:?}");
    let r = p.run(&["rm", &id]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(!Path::new(skiff_oci::state::DEFAULT_ROOT).join(&id).exists(), "the runtime's state is left");
}

/// Asserts that `r` failed with `message` in podman's output.
fn refused(r: &Ran, message: &str) {
    assert_ne!(r.status, 0, "{r:?}");
    assert!(r.stderr.contains(message), "expected {message:?} in podman's output: {r:?}");
}

#[test]
fn bad_images_and_bundles_are_refused_with_a_clear_message() {
    let p = Podman::new("podman-bad");
    let linux = std::fs::read("/bin/true").expect("/bin/true");
    p.load(&package_bytes(&linux, "skiff-test/linux", &p.dir));
    let hello = std::fs::read(common::guest("examples/hello")).expect("hello");
    let other_abi = skiff_abi::ABI_VERSION + 1;
    p.load(&package_bytes(&common::with_abi(&hello, other_abi), "skiff-test/other-abi", &p.dir));
    p.load(&package("examples/hello", "skiff-test/hello", &p.dir));
    let run = |image: &str| p.run(&["run", "--rm", "--pull", "never", "--network", "none", image]);

    refused(&run("skiff-test/linux"), "/skiff/image is not a Skiff image: ");
    refused(
        &run("skiff-test/other-abi"),
        &format!("built for Skiff ABI version {other_abi}, but this tender speaks version {}", skiff_abi::ABI_VERSION),
    );
    // A root file system without the image.
    let empty = p.dir.join("empty-rootfs");
    std::fs::create_dir_all(&empty).unwrap();
    let r = p.run(&["run", "--rm", "--network", "none", "--rootfs", empty.to_str().unwrap(), "/skiff/image"]);
    refused(&r, "/skiff/image is not in the container's root file system");
    // No /dev/kvm: podman in a mount namespace whose /dev is a tmpfs with
    // the host's other devices bound in.
    let host_dev = p.dir.join("host-dev");
    std::fs::create_dir_all(&host_dev).unwrap();
    let script = format!(
        "mount --rbind /dev {hd} && mount -t tmpfs none /dev && \
         for n in null zero full random urandom tty ptmx fuse; do touch /dev/$n; mount --bind {hd}/$n /dev/$n; done && \
         mkdir /dev/pts /dev/shm && mount --rbind {hd}/pts /dev/pts && mount --rbind {hd}/shm /dev/shm && \
         exec \"$@\"",
        hd = host_dev.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]);
    let podman = p.cmd();
    cmd.arg(podman.get_program()).args(podman.get_args());
    cmd.args(["run", "--rm", "--pull", "never", "--network", "none", "skiff-test/hello"]);
    refused(&common::run(&mut cmd, Duration::from_secs(60)), "no KVM: /dev/kvm does not exist");
    // The store still works: the refusals left nothing behind.
    let r = run("skiff-test/hello");
    assert_eq!(r.status, 0, "{r:?}");
}
