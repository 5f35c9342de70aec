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
    // the host's other devices bound in. By default the guest then runs in
    // process mode; with org.skiff.sandbox=kvm that is a clear error.
    let host_dev = p.dir.join("host-dev");
    std::fs::create_dir_all(&host_dev).unwrap();
    let script = format!(
        "mount --rbind /dev {hd} && mount -t tmpfs none /dev && \
         for n in null zero full random urandom tty ptmx fuse; do touch /dev/$n; mount --bind {hd}/$n /dev/$n; done && \
         mkdir /dev/pts /dev/shm && mount --rbind {hd}/pts /dev/pts && mount --rbind {hd}/shm /dev/shm && \
         exec \"$@\"",
        hd = host_dev.display()
    );
    let without_kvm = |extra: &[&str]| {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]);
        let podman = p.cmd();
        cmd.arg(podman.get_program()).args(podman.get_args());
        cmd.args(["run", "--rm", "--pull", "never", "--network", "none"]).args(extra);
        cmd.args(["skiff-test/hello", "--sleep-ms", "0", "in process mode"]);
        common::run(&mut cmd, Duration::from_secs(60))
    };
    let r = without_kvm(&[]);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.stdout.contains(r#"command line: ["--sleep-ms", "0", "in process mode"]"#), "{r:?}");
    refused(&without_kvm(&["--annotation", "org.skiff.sandbox=kvm"]), "no KVM: /dev/kvm does not exist");
    // The store still works: the refusals left nothing behind.
    let r = run("skiff-test/hello");
    assert_eq!(r.status, 0, "{r:?}");
}

/// What netavark adds to the host's firewall for podman's default network
/// and leaves after its last container (its `NETAVARK*` chains and the
/// rules jumping to them), removed again when the test ends unless it was
/// there before, and `net.ipv4.ip_forward` as it was. The tests that use
/// netavark hold it one at a time: the chains are shared.
struct HostFirewall {
    before: Vec<(&'static str, Vec<String>)>,
    forward: String,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static NETAVARK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const FORWARD_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

impl HostFirewall {
    fn save(table: &str) -> Vec<String> {
        let r = run(Command::new("iptables-save").args(["-t", table]), Duration::from_secs(10));
        assert_eq!(r.status, 0, "iptables-save: {r:?}");
        r.stdout.lines().filter(|l| l.contains("NETAVARK")).map(str::to_string).collect()
    }

    fn new() -> HostFirewall {
        require(&["iptables", "iptables-save"]);
        let one_at_a_time = NETAVARK.lock().unwrap_or_else(|e| e.into_inner());
        HostFirewall {
            _one_at_a_time: one_at_a_time,
            before: ["nat", "filter"].into_iter().map(|t| (t, Self::save(t))).collect(),
            forward: std::fs::read_to_string(FORWARD_SYSCTL).unwrap_or_default(),
        }
    }
}

impl Drop for HostFirewall {
    fn drop(&mut self) {
        for (table, before) in &self.before {
            let new: Vec<String> = Self::save(table).into_iter().filter(|l| !before.contains(l)).collect();
            // Rules first (iptables-save prints them in a form the shell
            // reads back), then the chains they jumped to.
            for rule in new.iter().rev().filter_map(|l| l.strip_prefix("-A ")) {
                let _ = run(
                    Command::new("sh").arg("-c").arg(format!("iptables -w -t {table} -D {rule}")),
                    Duration::from_secs(10),
                );
            }
            for chain in new.iter().filter_map(|l| l.strip_prefix(':')?.split(' ').next()) {
                for op in ["-F", "-X"] {
                    let _ = run(Command::new("iptables").args(["-w", "-t", table, op, chain]), Duration::from_secs(10));
                }
            }
        }
        if !self.forward.is_empty() {
            let _ = std::fs::write(FORWARD_SYSCTL, &self.forward);
        }
    }
}

/// A free TCP port on the host's loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Fetches every file of the site from `https://localhost:PORT` (the
/// host's 127.0.0.1, forwarded by podman to the container) over TLS 1.3
/// in one curl run, and compares the bytes.
fn fetch_all(port: u16, dir: &Path) {
    let files = common::tender::site_files();
    let out = dir.join(format!("fetched-{port}"));
    std::fs::create_dir_all(&out).unwrap();
    // The demo certificate is self-signed for localhost: -k.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--tlsv1.3", "--max-time", "30", "--resolve", &format!("localhost:{port}:127.0.0.1")]);
    cmd.args(["-w", "%{http_code} %{ssl_verify_result}\n"]);
    for (i, (path, _)) in files.iter().enumerate() {
        cmd.arg("-o").arg(out.join(i.to_string())).arg(format!("https://localhost:{port}{path}"));
    }
    let r = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(r.status, 0, "curl: {r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "{r:?}");
    for (i, (path, bytes)) in files.iter().enumerate() {
        assert!(lines[i].starts_with("200 "), "{path}: {}", lines[i]);
        let got = std::fs::read(out.join(i.to_string())).unwrap();
        assert!(got == *bytes, "{path}: {} bytes fetched, {} in the site", got.len(), bytes.len());
    }
}

/// Waits until the container's log has `line`.
fn wait_for_log(p: &Podman, id: &str, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.run(&["logs", id]);
        let all = logs.stdout.clone() + &logs.stderr;
        if all.contains(line) {
            return all;
        }
        assert!(Instant::now() < deadline, "no {line:?} in the logs of {id}: {logs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_static_websites_serve_every_file_over_tls13_through_podmans_network_and_published_ports() {
    let firewall = HostFirewall::new();
    let p = Podman::new("podman-web");
    require(&["curl"]);
    p.load(&package("examples/static-website", "skiff-test/web", &p.dir));
    let ports = [free_port(), free_port()];
    let mut ids = Vec::new();
    for port in ports {
        // Nothing but -p: podman's default network, as a user runs it.
        let r = p.run(&["run", "-d", "--pull", "never", "-p", &format!("{port}:443"), "skiff-test/web"]);
        assert_eq!(r.status, 0, "{r:?}");
        ids.push(r.stdout.trim().to_string());
    }
    for (id, port) in ids.iter().zip(ports) {
        let logs = wait_for_log(&p, id, "static-website: ");
        // The guest has the container's address and eth0's MAC.
        let ip = p.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", id]).stdout.trim().to_string();
        let mac = p.run(&["inspect", "-f", "{{.NetworkSettings.MacAddress}}", id]).stdout.trim().to_string();
        assert!(!ip.is_empty() && !mac.is_empty(), "{logs}");
        assert!(logs.contains(&format!("is joined to the container's eth0 {ip}/")), "{logs}");
        assert!(logs.contains(", MTU 1500 through the TAP device skiff0"), "{logs}");
        assert!(logs.contains(&format!("(MAC {mac}, DNS ")), "{logs}");
        // podman's default network copies the host's name servers (less
        // loopback ones) into the resolv.conf it mounts.
        let host = skiff_oci::network::dns_servers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        if let Some(first) = host.first() {
            assert!(logs.contains(&format!("DNS {first}")), "{logs}");
        }
        assert!(logs.contains(&format!("on https://{ip}:443/")), "{logs}");
        fetch_all(port, &p.dir);
    }
    // The first still serves while the second runs.
    fetch_all(ports[0], &p.dir);
    for id in &ids {
        let r = p.run(&["stop", "-t", "20", id]);
        assert_eq!(r.status, 0, "{r:?}");
        let code = p.run(&["inspect", "-f", "{{.State.ExitCode}}", id]);
        assert_eq!(code.stdout.trim(), "0", "{code:?}");
        let r = p.run(&["rm", id]);
        assert_eq!(r.status, 0, "{r:?}");
    }
    drop(p);
    drop(firewall);
}

#[test]
fn an_image_with_a_nic_and_no_network_or_the_hosts_is_refused_clearly() {
    let p = Podman::new("podman-nonet");
    p.load(&package("examples/static-website", "skiff-test/web", &p.dir));
    let r = p.run(&["run", "--rm", "--pull", "never", "--network", "none", "skiff-test/web"]);
    refused(
        &r,
        "this image declares the NIC \"service\", but the container's network namespace has no network interface \
         to connect it to (was it started with --network none?)",
    );
    // The host's own interfaces are never taken.
    let r = p.run(&["run", "--rm", "--pull", "never", "--network", "host", "skiff-test/web"]);
    refused(&r, "but the container shares the host's network namespace (--network host?)");
}

/// A podman network of the test's own (rootful podman keeps networks in
/// /etc/containers/networks, outside the test's store): removed after.
struct Network<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Network<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["network", "rm", "-f", &self.name]);
    }
}

#[test]
fn a_network_with_a_smaller_mtu_carries_whole_files_to_the_guest_and_back() {
    let firewall = HostFirewall::new();
    let p = Podman::new("podman-mtu");
    require(&["curl"]);
    p.load(&package("examples/static-website", "skiff-test/web", &p.dir));
    // As an overlay network (VXLAN) has it: frames of 1500 bytes would not
    // pass the bridge's ports.
    let network = Network { podman: &p, name: format!("skiff-test-mtu-{}", std::process::id()) };
    let r = p.run(&["network", "create", "--opt", "mtu=1400", &network.name]);
    assert_eq!(r.status, 0, "{r:?}");
    let port = free_port();
    let r = p.run(&[
        "run",
        "-d",
        "--pull",
        "never",
        "--network",
        &network.name,
        "-p",
        &format!("{port}:443"),
        "skiff-test/web",
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    let id = r.stdout.trim().to_string();
    let logs = wait_for_log(&p, &id, "static-website: ");
    assert!(logs.contains(", MTU 1400 through the TAP device skiff0"), "{logs}");
    fetch_all(port, &p.dir);
    let r = p.run(&["rm", "-f", "-t", "5", &id]);
    assert_eq!(r.status, 0, "{r:?}");
    drop(network);
    drop(p);
    drop(firewall);
}

/// One HTTPS GET of `/` at `https://localhost:PORT` (127.0.0.1) by curl,
/// with no retry of its own: whether it read a 200.
fn got_200(port: u16) -> bool {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]);
    cmd.args(["--resolve", &format!("localhost:{port}:127.0.0.1"), &format!("https://localhost:{port}/")]);
    let r = run(&mut cmd, Duration::from_secs(20));
    r.status == 0 && r.stdout == "200"
}

#[test]
fn a_client_connecting_from_the_start_of_podman_run_gets_its_200_without_a_lost_second() {
    let firewall = HostFirewall::new();
    let p = Podman::new("podman-cold");
    require(&["curl"]);
    p.load(&package("examples/static-website", "skiff-test/web", &p.dir));
    for _ in 0..2 {
        let port = free_port();
        // The client tries from before the spawn and again at once after
        // any failure (refused, reset), as a readiness probe or a proxy
        // does; a SYN that reaches the container while it is created and
        // started and gets no answer would cost it a second.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let start = Instant::now();
        let (first_200, returned, r) = std::thread::scope(|s| {
            let client = s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if got_200(port) {
                        return Some(start.elapsed());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                None
            });
            let r = p.run(&["run", "-d", "--pull", "never", "-p", &format!("127.0.0.1:{port}:443"), "skiff-test/web"]);
            let returned = start.elapsed();
            if r.status != 0 {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !client.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (client.join().expect("the client"), returned, r)
        });
        assert_eq!(r.status, 0, "{r:?}");
        let id = r.stdout.trim().to_string();
        let first_200 = first_200.unwrap_or_else(|| panic!("no 200 within 10 s: {}", wait_for_log(&p, &id, "")));
        // The guest listens within milliseconds of podman's return; 500 ms
        // is far above that and far below the lost second.
        assert!(
            first_200 < returned + Duration::from_millis(500),
            "the first 200 came {first_200:?} after podman run started, which returned after {returned:?}"
        );
        let r = p.run(&["rm", "-f", "-t", "0", &id]);
        assert_eq!(r.status, 0, "{r:?}");
    }
    drop(p);
    drop(firewall);
}
