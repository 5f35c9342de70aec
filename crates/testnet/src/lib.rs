//! Network fixtures for Skiff's boot tests.
//!
//! A [`NetNs`] is a fresh network namespace with loopback up; it can hold
//! TAP devices ([`NetNs::add_tap`]), run programs inside it
//! ([`NetNs::command`]), run Rust code inside it ([`NetNs::run`], a thread
//! that joins the namespace, so sockets it opens live there), and it is
//! deleted, with everything in it, when dropped, including when a test
//! panics. [`Dnsmasq`] runs a DHCP (and DNS, router advertisement) server on
//! a TAP device in a namespace. Namespaces left behind by a killed test run
//! are removed by the next one. [`Nsd`] runs the NSD name server that the
//! DNS tests compare with, on loopback or in a namespace, and [`nsupdate`]
//! sends them dynamic updates.
//!
//! All traffic stays inside the namespace or on loopback: nothing here
//! touches the host's other interfaces. [`tls::any_certificate`] is the HTTPS client
//! configuration for the test servers' self-signed certificates.

pub mod tls;

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "skiff-t";

/// Panics unless the tests run as root: namespaces and TAP devices need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the network tests create namespaces and TAP devices; run them as root (CI does)");
    }
}

/// Panics unless `/dev/kvm` is usable.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("the boot tests run real guests and need read-write access to /dev/kvm ({e})");
    }
}

/// Panics unless `program` is on the PATH, naming the package to install.
pub fn require_program(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    if !found {
        panic!("this test needs `{program}`; install the Debian package {package} (scripts/setup does)");
    }
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces a previous, killed test process left behind.
fn remove_stale() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: u32 = rest.split('-').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if pid != 0 && !pid_alive(pid) {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

/// Deletes every namespace this process has made and not yet dropped: for
/// a program ending on a signal, which runs no destructors.
pub fn remove_own_namespaces() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else { return };
    let own = format!("{PREFIX}-{}-", std::process::id());
    for name in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(&own)) {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates a namespace with loopback up.
    pub fn new() -> io::Result<NetNs> {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(&mut ns.command_of("ip", &["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn command_of(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.command(program);
        c.args(args);
        c
    }

    /// Runs `ip ARGS` in the namespace.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(&mut self.command_of("ip", args))
    }

    /// Creates TAP device `tap`, up, with the given addresses (CIDR form;
    /// IPv6 ones skip duplicate address detection).
    pub fn add_tap(&self, tap: &str, addrs: &[&str]) -> io::Result<()> {
        self.ip(&["tuntap", "add", tap, "mode", "tap"])?;
        for a in addrs {
            if a.contains(':') {
                self.ip(&["-6", "addr", "add", a, "dev", tap, "nodad"])?;
            } else {
                self.ip(&["addr", "add", a, "dev", tap])?;
            }
        }
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens belong
    /// to the namespace) and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: `ns` is an open namespace descriptor; setns moves only
            // this (fresh, single-purpose) thread into it.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Sends raw Ethernet frames out of interface `ifname` (from the host
    /// side of a TAP device, so they arrive at the guest). Returns how many
    /// the kernel accepted (it refuses frames shorter than an Ethernet
    /// header).
    pub fn send_raw_frames(&self, ifname: &str, frames: Vec<Vec<u8>>) -> io::Result<usize> {
        let ifname = ifname.to_string();
        self.run(move || {
            // SAFETY: plain socket creation; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
            // SAFETY: `name` is a valid C string.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            // SAFETY: a zeroed sockaddr_ll is valid; the fields set below
            // select the interface.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            let mut result = Ok(0);
            for f in &frames {
                // SAFETY: `f` is a valid buffer of `f.len()` bytes and `addr`
                // a valid sockaddr_ll of the size given.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc < 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::EINVAL) {
                        continue;
                    }
                    result = Err(err);
                    break;
                }
                result = result.map(|n| n + 1);
            }
            // SAFETY: `fd` is ours and open.
            unsafe { libc::close(fd) };
            result
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A dnsmasq serving DHCP (and DNS) on one interface of a namespace,
/// killed on drop.
pub struct Dnsmasq {
    child: Child,
    /// The lease file.
    pub leases: PathBuf,
    /// The log file.
    pub log: PathBuf,
    dir: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq on `iface` in `ns` with `extra` arguments (ranges,
    /// records); waits until it is ready.
    pub fn start(ns: &NetNs, iface: &str, extra: &[&str]) -> io::Result<Dnsmasq> {
        require_program("dnsmasq", "dnsmasq-base");
        let dir = std::env::temp_dir().join(format!("skiff-dnsmasq-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let leases = dir.join("leases");
        let log = dir.join("log");
        let pid = dir.join("pid");
        let _ = std::fs::remove_file(&leases);
        let mut cmd = ns.command("dnsmasq");
        cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--log-dhcp"])
            .arg(format!("--interface={iface}"))
            .arg("--except-interface=lo")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", pid.display()))
            .arg("--user=root")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(io::Error::other(format!("dnsmasq exited with {status}: {logged}")));
            }
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started")) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(io::Error::other("dnsmasq did not start within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Dnsmasq { child, leases, log, dir })
    }

    /// The lease file's current contents.
    pub fn leases(&self) -> String {
        std::fs::read_to_string(&self.leases).unwrap_or_default()
    }

    /// The log's current contents.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port on 127.0.0.1 that is free for both UDP and TCP (as a DNS server
/// needs).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port on 127.0.0.1");
        let port = tcp.local_addr().expect("the bound address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// NSD (Debian `nsd`), the authoritative name server the DNS tests and
/// benchmark compare with: one server process, response-rate limiting
/// off, its configuration, state and log in one directory (which is also
/// its zone directory). Stopped with SIGTERM on drop (which ends its
/// helper processes too), its directory removed once it has stopped.
pub struct Nsd {
    child: Child,
    dir: PathBuf,
    listen: SocketAddr,
}

impl Nsd {
    /// Writes `dir`/nsd.conf for NSD on `listen`, with `server` as more
    /// lines of its `server:` clause (`"  name: value\n"` each) and `rest`
    /// after it (its `key:` and `zone:` clauses), and starts NSD in the
    /// foreground by `command`: `Command::new("nsd")`, or
    /// [`NetNs::command`]`("nsd")` in a namespace. Does not wait for it to
    /// answer.
    pub fn start(mut command: Command, dir: &Path, listen: SocketAddr, server: &str, rest: &str) -> io::Result<Nsd> {
        require_program("nsd", "nsd");
        let d = dir.display();
        let conf = format!(
            "server:\n  ip-address: {}\n  port: {}\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  \
             database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  \
             pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n  rrl-ratelimit: 0\n  zonesdir: \"{d}\"\n\
             {server}remote-control:\n  control-enable: no\n{rest}",
            listen.ip(),
            listen.port()
        );
        std::fs::write(dir.join("nsd.conf"), conf)?;
        let child = command
            .args(["-d", "-c"])
            .arg(dir.join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Nsd { child, dir: dir.to_path_buf(), listen })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nsd.log")).unwrap_or_default()
    }

    /// Sends SIGHUP: NSD reloads its zone files (and notifies its
    /// secondaries of a changed serial).
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill has no memory effects; the pid is our child's, not
        // yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if wait_for(Duration::from_secs(5), || self.child.try_wait().ok().flatten()).is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs nsupdate (Debian `bind9-dnsutils`) against the name server at
/// `server` with `script` (its commands before `send`), signed with `key`
/// (`"hmac-sha256:NAME:SECRET"`) when given; whether it succeeded, and its
/// output (stdout and stderr).
pub fn nsupdate(server: SocketAddr, key: Option<&str>, script: &str) -> (bool, String) {
    require_program("nsupdate", "bind9-dnsutils");
    let mut cmd = Command::new("nsupdate");
    cmd.args(["-t", "5"]);
    if let Some(k) = key {
        cmd.args(["-y", k]);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run nsupdate");
    let text = format!("server {} {}\n{script}\nsend\n", server.ip(), server.port());
    child.stdin.take().expect("nsupdate's stdin").write_all(text.as_bytes()).expect("write to nsupdate");
    let out = child.wait_with_output().expect("wait for nsupdate");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A process killed (and reaped) on drop: a guest under the tender.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `f` returns `Some`, polling every 20 ms, for at most
/// `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
