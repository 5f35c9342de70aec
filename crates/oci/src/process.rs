//! The container's process: forked by `create`, it enters the namespaces,
//! is put in the cgroup, takes its terminal, limits and user, waits on the
//! FIFO until `start`, then runs the tender and exits with the guest's
//! status.
//!
//! `create` forks an intermediate process that joins (`setns`) or makes
//! (`unshare`) the namespaces; with a PID namespace it forks once more, so
//! the tender is the namespace's first process, and exits. The container's
//! process reports its PID on a pipe, waits for `create` to put it in the
//! cgroup, finishes its set-up, says `ready` (or the error that stopped
//! it), and blocks opening the FIFO for writing.

use crate::RuntimeError;
use nix::sched::CloneFlags;
use skiff_oci::spec::{NsKind, Plan, SandboxChoice, Spec};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What the container's process needs.
pub struct Setup<'a> {
    /// The plan made of `config.json`.
    pub plan: &'a Plan,
    /// `config.json` itself (user, limits).
    pub spec: &'a Spec,
    /// The NIC the image declares, connected in the container's network
    /// namespace.
    pub nic: Option<String>,
    /// The DNS servers the guest gets.
    pub dns: Vec<std::net::IpAddr>,
    /// The FIFO to wait on.
    pub fifo: PathBuf,
    /// Where to send the terminal's master side.
    pub console_socket: Option<PathBuf>,
    /// Descriptors past standard error the container keeps.
    pub preserve_fds: u32,
}

/// The process could not be made.
pub enum SpawnError {
    /// The runtime's side failed (e.g. the cgroup).
    Runtime(RuntimeError),
    /// The process said why it could not go on.
    Child(String),
}

fn flag(kind: NsKind) -> CloneFlags {
    match kind {
        NsKind::Network => CloneFlags::CLONE_NEWNET,
        NsKind::Mount => CloneFlags::CLONE_NEWNS,
        NsKind::Pid => CloneFlags::CLONE_NEWPID,
        NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        NsKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
    }
}

/// Forks the container's process and returns its PID once it waits on the
/// FIFO. `join` puts it in the cgroup before it goes on.
pub fn spawn(setup: &Setup, join: impl FnOnce(i32) -> Result<(), RuntimeError>) -> Result<i32, SpawnError> {
    let pipe = |what: &str| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(crate::sys(what.to_string()));
    let (report_r, report_w) = pipe("make a pipe").map_err(SpawnError::Runtime)?;
    let (go_r, go_w) = pipe("make a pipe").map_err(SpawnError::Runtime)?;
    // SAFETY: skiff-oci has started no thread (it never does before this
    // point), so the child is a complete copy of a single-threaded process
    // and may run any code.
    let forked = unsafe { nix::unistd::fork() }.map_err(crate::sys("fork")).map_err(SpawnError::Runtime)?;
    let child = match forked {
        nix::unistd::ForkResult::Child => {
            drop(report_r);
            drop(go_w);
            // Never dropped: the container's process closes every
            // descriptor it does not pass on before the tender runs.
            let mut report = std::mem::ManuallyDrop::new(std::fs::File::from(report_w));
            let code = match intermediate(setup, &mut report, go_r) {
                Ok(code) => code,
                Err(reason) => {
                    let _ = writeln!(report, "error {}", reason.replace('\n', " "));
                    1
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(report_w);
    drop(go_r);
    let mut go = Some(std::fs::File::from(go_w));
    let mut lines = BufReader::new(std::fs::File::from(report_r));
    let mut pid = None;
    let mut join = Some(join);
    let result = loop {
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => break Err(SpawnError::Child("the container's process ended while being set up".into())),
            Ok(_) => {}
        }
        let line = line.trim_end();
        if let Some(n) = line.strip_prefix("pid ") {
            let Ok(n) = n.parse::<i32>() else { break Err(SpawnError::Child(format!("bad report {line:?}"))) };
            pid = Some(n);
            if let Some(join) = join.take()
                && let Err(e) = join(n)
            {
                // Closing the pipe unasked ends the process.
                go = None;
                break Err(SpawnError::Runtime(e));
            }
            if let Some(g) = go.as_mut() {
                let _ = g.write_all(b"g");
            }
        } else if line == "ready" {
            break pid.ok_or_else(|| SpawnError::Child("the container's process did not say its PID".into()));
        } else if let Some(reason) = line.strip_prefix("error ") {
            break Err(SpawnError::Child(reason.to_string()));
        }
    };
    drop(go);
    // The intermediate process exits once it has forked the container's
    // process; without a PID namespace it is the container's process.
    if pid != Some(child.as_raw()) {
        let _ = nix::sys::wait::waitpid(child, None);
    }
    if result.is_err()
        && let Some(p) = pid
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
    }
    result
}

/// The intermediate process: namespaces, then (with a PID namespace) the
/// fork of the container's process. Returns the exit status.
fn intermediate(setup: &Setup, report: &mut std::fs::File, go: OwnedFd) -> Result<i32, String> {
    let plan = setup.plan;
    // Open every namespace to join first: entering a mount namespace
    // changes what later paths name.
    let mut joins = Vec::new();
    for (kind, path) in &plan.namespaces {
        if let Some(path) = path {
            let f =
                std::fs::File::open(path).map_err(|e| format!("cannot open the namespace {}: {e}", path.display()))?;
            joins.push((*kind, path, f));
        }
    }
    joins.sort_by_key(|(kind, _, _)| *kind == NsKind::Mount);
    for (kind, path, f) in &joins {
        nix::sched::setns(f, flag(*kind)).map_err(|e| format!("cannot join the namespace {}: {e}", path.display()))?;
    }
    drop(joins);
    let mut new = CloneFlags::empty();
    for (kind, path) in &plan.namespaces {
        if path.is_none() && *kind != NsKind::Cgroup {
            new |= flag(*kind);
        }
    }
    if !new.is_empty() {
        nix::sched::unshare(new).map_err(|e| format!("cannot make new namespaces ({new:?}): {e}"))?;
    }
    if new.contains(CloneFlags::CLONE_NEWNS) {
        // Nothing the container does to its mounts reaches the host.
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("cannot make the mount namespace private: {e}"))?;
    }
    if plan.namespaces.iter().any(|(k, _)| *k == NsKind::Pid) {
        // SAFETY: this process is single-threaded (a fork of one).
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("cannot fork: {e}"))? {
            nix::unistd::ForkResult::Parent { child } => {
                writeln!(report, "pid {child}").map_err(|e| format!("cannot report: {e}"))?;
                return Ok(0);
            }
            nix::unistd::ForkResult::Child => {}
        }
    } else {
        writeln!(report, "pid {}", nix::unistd::getpid()).map_err(|e| format!("cannot report: {e}"))?;
    }
    container(setup, report, go)
}

/// The container's process, up to and after `start`.
fn container(setup: &Setup, report: &mut std::fs::File, go: OwnedFd) -> Result<i32, String> {
    let plan = setup.plan;
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read(&mut byte).map_or(true, |n| n == 0) {
        // `create` gave up (the cgroup could not be joined) and said why.
        std::process::exit(1);
    }
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    for (kind, path) in &plan.namespaces {
        if *kind == NsKind::Cgroup && path.is_none() {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("cannot make a cgroup namespace: {e}"))?;
        }
    }
    if let Some(name) = &plan.hostname {
        nix::unistd::sethostname(name).map_err(|e| format!("cannot set the host name {name:?}: {e}"))?;
    }
    // In the container's network namespace, with the runtime's privileges
    // still held.
    let connection = match &setup.nic {
        Some(nic) => {
            let mut links = crate::tap::HostLinks::default();
            Some(skiff_oci::network::connect(nic, &setup.dns, &mut links).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let process = setup.spec.process.clone().unwrap_or_default();
    for r in &process.rlimits {
        let resource = rlimit(&r.kind).ok_or_else(|| format!("unknown rlimit {:?}", r.kind))?;
        // Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts
        // withhold even from root: then the limit stays at most the
        // current hard one, as high as the container can have it.
        let set = match nix::sys::resource::setrlimit(resource, r.soft, r.hard) {
            Err(nix::errno::Errno::EPERM) => {
                let (_, hard) = nix::sys::resource::getrlimit(resource).unwrap_or((0, 0));
                nix::sys::resource::setrlimit(resource, r.soft.min(hard), r.hard.min(hard))
            }
            other => other,
        };
        set.map_err(|e| format!("cannot set {} to {}/{}: {e}", r.kind, r.soft, r.hard))?;
    }
    if let Some(socket) = &setup.console_socket {
        console(socket)?;
    }
    let user = &process.user;
    let groups: Vec<nix::unistd::Gid> = user.additional_gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("cannot set the groups {:?}: {e}", user.additional_gids))?;
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("cannot set the group {}: {e}", user.gid))?;
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("cannot set the user {}: {e}", user.uid))?;
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    }
    writeln!(report, "ready").map_err(|e| format!("cannot report: {e}"))?;
    // Blocks until `start` opens the other end.
    let fifo = std::fs::OpenOptions::new().write(true).open(&setup.fifo).and_then(|mut f| f.write_all(b"0"));
    if let Err(e) = fifo {
        eprintln!("skiff-oci: the container's process cannot open {}: {e}", setup.fifo.display());
        return Ok(i32::from(skiff_abi::exit::TENDER_ERROR));
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // The TAP device's descriptor goes to the tender.
    close_descriptors(2 + setup.preserve_fds as i32, connection.as_ref().map(|c| c.tap.as_raw_fd()));
    Ok(i32::from(run_tender(plan, connection)))
}

/// Closes every descriptor above `last` but `keep`.
fn close_descriptors(last: i32, keep: Option<i32>) {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > last && Some(*fd) != keep) {
        let _ = nix::unistd::close(fd);
    }
}

/// Boots the guest; returns its status, as `skiff-tender` would exit.
fn run_tender(plan: &Plan, connection: Option<skiff_oci::network::Connection>) -> u8 {
    let mut config = skiff_tender::Config::new(plan.image.clone());
    if plan.sandbox == SandboxChoice::Process {
        config.sandbox = skiff_tender::options::Sandbox::Process;
    }
    if let Some(mem) = plan.mem {
        config.mem = mem;
    }
    if let Some(grace) = plan.stop_grace {
        config.stop_grace = grace;
    }
    config.args = plan.args.clone();
    if let Some(c) = connection {
        eprintln!(
            "skiff-oci: NIC {:?} is joined to the container's {} through the TAP device {} (MAC {}, DNS {})",
            c.nics[0].name,
            c.interface.describe(),
            skiff_oci::network::TAP_NAME,
            c.interface.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            if c.dns.is_empty() {
                "none".to_string()
            } else {
                c.dns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            }
        );
        // The network options first: the service's own arguments, after
        // them, can still override one.
        config.args = c.guest_args.into_iter().chain(config.args).collect();
        config.net.attached = vec![(c.nics[0].name.clone(), c.tap)];
        config.net.nics = c.nics;
        config.net.macs = c.macs;
        config.net.mtus = c.mtus;
    }
    let mut stdout = match skiff_tender::console::Stdout::new() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skiff-tender: cannot use standard output: {e}");
            return skiff_abi::exit::TENDER_ERROR;
        }
    };
    // Process mode pins the guest's console writes to this descriptor.
    config.console_fd = Some(stdout.fd());
    match skiff_tender::run(&config, &mut stdout) {
        Ok(mut report) => {
            report.leave_to_exit();
            if let Some(message) = report.outcome.message() {
                eprintln!("skiff-tender: {message}");
            }
            report.outcome.status()
        }
        Err(e) => {
            eprintln!("skiff-tender: {e}");
            skiff_abi::exit::TENDER_ERROR
        }
    }
}

/// Makes a terminal, sends its master side to the engine over `socket`
/// (with the terminal's name, as runc does), and makes the other side this
/// process's standard streams and controlling terminal.
fn console(socket: &Path) -> Result<(), String> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("cannot open a terminal: {e}"))?;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to the console socket {}: {e}", socket.display()))?;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("cannot send the terminal to the console socket: {e}"))?;
    drop(pty.master);
    for dup in [nix::unistd::dup2_stdin, nix::unistd::dup2_stdout, nix::unistd::dup2_stderr] {
        dup(&pty.slave).map_err(|e| format!("cannot use the terminal: {e}"))?;
    }
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours;
    // descriptor 0 is the terminal just set up, and this process leads its
    // own session (setsid).
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    if r != 0 {
        return Err(format!("cannot make the terminal the controlling one: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn rlimit(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource::*;
    Some(match name {
        "RLIMIT_AS" => RLIMIT_AS,
        "RLIMIT_CORE" => RLIMIT_CORE,
        "RLIMIT_CPU" => RLIMIT_CPU,
        "RLIMIT_DATA" => RLIMIT_DATA,
        "RLIMIT_FSIZE" => RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => RLIMIT_NICE,
        "RLIMIT_NOFILE" => RLIMIT_NOFILE,
        "RLIMIT_NPROC" => RLIMIT_NPROC,
        "RLIMIT_RSS" => RLIMIT_RSS,
        "RLIMIT_RTPRIO" => RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => RLIMIT_STACK,
        _ => return None,
    })
}
