//! `skiff-oci`: an OCI runtime that runs Skiff images as containers, for
//! podman (`--runtime`), containerd (the runc shim's `BinaryName`) and
//! Kubernetes (a RuntimeClass).
//!
//! runc's model: `create` checks the bundle (a Skiff image at
//! `process.args[0]`, the right ABI, `/dev/kvm`), forks the container's
//! process, which enters the namespaces and the cgroup named in
//! `config.json` and then waits on a FIFO in the state directory; its PID
//! goes in `--pid-file`. `start` opens the FIFO, and the process runs the
//! tender (linked in: the container's process *is* the tender), so the
//! engine that reaps it (conmon, containerd's shim) sees the guest's exit
//! status. `state`, `kill`, `delete`, `features` as runc has them.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod process;
#[allow(unsafe_code)]
mod tap;

use clap::{Parser, Subcommand};
use skiff_oci::cgroup::{self, CgroupError, Hierarchies};
use skiff_oci::log::{Format, Log};
use skiff_oci::network::{self, NetworkError};
use skiff_oci::sandbox;
use skiff_oci::spec::{ANNOTATION_SANDBOX, NsKind, Plan, SandboxChoice, Spec, SpecError};
use skiff_oci::state::{self, Container, Saved, StateError, Status};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `skiff-oci --version`, in runc's shape.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2");

/// Runs Skiff images as OCI containers (podman --runtime, containerd's runc shim).
#[derive(Parser, Debug)]
#[command(name = "skiff-oci", version = VERSION, about)]
struct Cli {
    /// Where containers' state is kept.
    #[arg(long, global = true, default_value = state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file (engines read it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// The log file's format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: Format,
    /// Read cgroupsPath as systemd's SLICE:PREFIX:NAME (the cgroup is made
    /// directly, not through systemd).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; changes nothing.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set up a container from a bundle; it waits for `start`.
    Create {
        /// The bundle directory (config.json and the root file system).
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Write the container process's PID here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// A Unix socket to send the terminal's master side to (`-t`).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Accepted for runc compatibility (there is no pivot_root).
        #[arg(long)]
        no_pivot: bool,
        /// Accepted for runc compatibility (no session keyring is made).
        #[arg(long)]
        no_new_keyring: bool,
        /// Descriptors past standard error to pass on to the container.
        #[arg(long, default_value = "0")]
        preserve_fds: u32,
        /// The container's ID.
        id: String,
    },
    /// Start a created container: its guest boots.
    Start {
        /// The container's ID.
        id: String,
    },
    /// Print a container's state as runc's JSON.
    State {
        /// The container's ID.
        id: String,
    },
    /// Send a signal to a container's process (default SIGTERM).
    Kill {
        /// Accepted for runc compatibility (the tender is the only process).
        #[arg(long, short)]
        all: bool,
        /// The container's ID.
        id: String,
        /// A signal name (TERM, SIGKILL) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a container's state and cgroup (--force: kill it first).
    Delete {
        /// Kill a running container first.
        #[arg(long, short)]
        force: bool,
        /// The container's ID.
        id: String,
    },
    /// Print what this runtime supports, as JSON.
    Features,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum RuntimeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{arg} is not a Skiff image: {reason}")]
    NotSkiff { arg: String, reason: String },
    #[error("{arg}: {reason}")]
    Image { arg: String, reason: String },
    #[error("no KVM: {0}")]
    Kvm(String),
    #[error("the bundle {path} cannot be used: {source}")]
    Bundle { path: PathBuf, source: std::io::Error },
    #[error("config.json asks for a terminal (-t) but no --console-socket was given")]
    NoConsoleSocket,
    #[error("cannot {what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("cannot write the pid file {path}: {source}")]
    PidFile { path: PathBuf, source: std::io::Error },
    #[error("container {id} could not be set up: {reason}")]
    Setup { id: String, reason: String },
    #[error("container {id} is {status}: {what}")]
    WrongStatus { id: String, status: Status, what: &'static str },
    #[error("{0:?} is not a signal (examples: TERM, SIGKILL, 9)")]
    BadSignal(String),
    #[error("container {id}: the process did not start: {reason}")]
    Start { id: String, reason: String },
    #[error("cannot run {runc} for the pod's sandbox container: {source}", runc = sandbox::RUNC)]
    Runc { source: std::io::Error },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Sys { what, source }
}

/// Whether `/dev/kvm` is there and usable; the tender's own messages.
fn check_kvm() -> Result<(), RuntimeError> {
    use skiff_tender::kvm::KvmError;
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata("/dev/kvm") {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::Kvm(KvmError::NoDevice.to_string()));
        }
        Err(e) => return Err(RuntimeError::Kvm(KvmError::Open(e).to_string())),
    };
    if !meta.file_type().is_char_device() {
        return Err(RuntimeError::Kvm("/dev/kvm is not a character device".into()));
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(RuntimeError::Kvm(KvmError::Permission.to_string()))
        }
        Err(e) => Err(RuntimeError::Kvm(KvmError::Open(e).to_string())),
    }
}

/// Reads and checks the image `plan` runs: a Skiff image of this ABI.
fn check_image(plan: &Plan, arg: &str) -> Result<skiff_tender::elf::Image, RuntimeError> {
    use skiff_tender::TenderError;
    use skiff_tender::elf::ElfError;
    match skiff_tender::load_image(&plan.image, true) {
        Ok(image) => Ok(image),
        Err(TenderError::Image { source: source @ ElfError::AbiMismatch { .. }, .. }) => {
            Err(RuntimeError::Image { arg: arg.to_string(), reason: source.to_string() })
        }
        Err(TenderError::Image { source, .. }) => {
            Err(RuntimeError::NotSkiff { arg: arg.to_string(), reason: source.to_string() })
        }
        Err(e) => Err(RuntimeError::Image { arg: arg.to_string(), reason: e.to_string() }),
    }
}

/// The DNS servers for the guest: those of the `resolv.conf` the engine
/// mounts in the container, else the host's.
fn dns_servers(plan: &Plan) -> Vec<std::net::IpAddr> {
    let file = plan.resolv_conf.as_deref().unwrap_or(Path::new("/etc/resolv.conf"));
    std::fs::read_to_string(file).map(|text| network::dns_servers(&text)).unwrap_or_default()
}

/// Writes `pid` to `path` through a temporary file beside it.
fn write_pid_file(path: &Path, pid: i32) -> Result<(), RuntimeError> {
    let err = |source| RuntimeError::PidFile { path: path.to_owned(), source };
    let tmp = path.with_extension("skiff-oci-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

struct CreateArgs {
    bundle: PathBuf,
    pid_file: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    preserve_fds: u32,
    id: String,
}

fn create(cli: &Cli, a: CreateArgs) -> Result<(), RuntimeError> {
    let container = Container::new(&cli.root, &a.id)?;
    let bundle = a.bundle.canonicalize().map_err(|source| RuntimeError::Bundle { path: a.bundle.clone(), source })?;
    let spec = Spec::load(&bundle)?;
    let mut plan = Plan::new(&spec, &bundle)?;
    let arg = spec.process.as_ref().and_then(|p| p.args.first()).cloned().unwrap_or_default();
    let image = check_image(&plan, &arg)?;
    let nic = network::declared_nic(&image.devices)?;
    if let Some(nic) = &nic {
        let namespace = plan.namespaces.iter().find(|(k, _)| *k == NsKind::Network).map(|(_, p)| p.as_deref());
        network::check_namespace(nic, namespace)?;
    }
    let dns = match &nic {
        Some(_) => dns_servers(&plan),
        None => Vec::new(),
    };
    plan.sandbox = match (plan.sandbox, check_kvm()) {
        (SandboxChoice::Process, _) => SandboxChoice::Process,
        (SandboxChoice::Kvm, kvm) => kvm.map(|()| SandboxChoice::Kvm)?,
        (SandboxChoice::Auto, Ok(())) => SandboxChoice::Kvm,
        (SandboxChoice::Auto, Err(why)) => {
            // Said on the engine's output at create; the guest's own
            // output follows on start.
            eprintln!(
                "skiff-oci: {why}; running the guest in process mode (a seccomp-sandboxed process, no VM: see \
                 docs/threat-model.md; the annotation {ANNOTATION_SANDBOX}=kvm makes this an error)"
            );
            SandboxChoice::Process
        }
    };
    if plan.terminal && a.console_socket.is_none() {
        return Err(RuntimeError::NoConsoleSocket);
    }
    let linux = spec.linux.clone().unwrap_or_default();
    let rel = cgroup::relative_path(linux.cgroups_path.as_deref(), cli.systemd_cgroup, &a.id)?;
    let hierarchies = Hierarchies::mounted()?;
    container.make()?;
    let made = (|| {
        nix::unistd::mkfifo(&container.fifo(), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(sys(format!("create the FIFO {}", container.fifo().display())))?;
        let setup = process::Setup {
            plan: &plan,
            spec: &spec,
            nic,
            dns,
            fifo: container.fifo(),
            console_socket: a.console_socket.clone(),
            preserve_fds: a.preserve_fds,
        };
        let mut cgroups = Vec::new();
        let pid = process::spawn(&setup, |pid| {
            cgroups = cgroup::join(&hierarchies, &rel, linux.resources.as_ref(), pid)?;
            Ok(())
        })
        .map_err(|e| match e {
            process::SpawnError::Runtime(e) => e,
            process::SpawnError::Child(reason) => RuntimeError::Setup { id: a.id.clone(), reason },
        });
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                cgroup::remove(&cgroups);
                return Err(e);
            }
        };
        let (_, start_time) = state::proc_stat(pid).ok_or_else(|| RuntimeError::Setup {
            id: a.id.clone(),
            reason: "the container's process ended while being set up".into(),
        })?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        container.save(&Saved {
            id: a.id.clone(),
            pid,
            start_time,
            bundle: bundle.clone(),
            rootfs: bundle.join(spec.root.as_ref().map(|r| r.path.clone()).unwrap_or_default()),
            created: state::rfc3339(now),
            annotations: spec.annotations.clone(),
            cgroups,
        })?;
        if let Some(path) = &a.pid_file {
            write_pid_file(path, pid)?;
        }
        Ok(())
    })();
    if made.is_err() {
        if let Ok(saved) = container.load() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(saved.pid), nix::sys::signal::SIGKILL);
            cgroup::remove(&saved.cgroups);
        }
        let _ = container.remove();
    }
    made
}

fn start(cli: &Cli, id: &str) -> Result<(), RuntimeError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let container = Container::new(&cli.root, id)?;
    let saved = container.load()?;
    match container.status(&saved) {
        Status::Created => {}
        status => {
            return Err(RuntimeError::WrongStatus { id: id.into(), status, what: "only a created container starts" });
        }
    }
    // Non-blocking, so a process that has died cannot hold `start`: the
    // process opens its end when it sees ours, then writes one byte.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(container.fifo())
        .map_err(|e| RuntimeError::Start { id: id.into(), reason: format!("cannot open its FIFO: {e}") })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut byte = [0u8; 1];
    loop {
        match fifo.read(&mut byte) {
            Ok(1) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(RuntimeError::Start { id: id.into(), reason: format!("reading its FIFO: {e}") }),
        }
        if !state::alive(saved.pid, saved.start_time) {
            return Err(RuntimeError::Start { id: id.into(), reason: "it has ended".into() });
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::Start { id: id.into(), reason: "it did not answer within 10 s".into() });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(container.fifo());
    Ok(())
}

fn print_state(cli: &Cli, id: &str) -> Result<(), RuntimeError> {
    let container = Container::new(&cli.root, id)?;
    let saved = container.load()?;
    println!("{}", saved.runc_json(container.status(&saved)));
    Ok(())
}

fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, RuntimeError> {
    use nix::sys::signal::Signal;
    let bad = || RuntimeError::BadSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| bad())
}

fn kill(cli: &Cli, id: &str, signal: &str) -> Result<(), RuntimeError> {
    let container = Container::new(&cli.root, id)?;
    let saved = container.load()?;
    let signal = parse_signal(signal)?;
    match container.status(&saved) {
        Status::Stopped => {
            Err(RuntimeError::WrongStatus { id: id.into(), status: Status::Stopped, what: "no process to signal" })
        }
        _ => nix::sys::signal::kill(nix::unistd::Pid::from_raw(saved.pid), signal)
            .map_err(sys(format!("send {signal} to process {}", saved.pid))),
    }
}

fn delete(cli: &Cli, id: &str, force: bool) -> Result<(), RuntimeError> {
    let container = Container::new(&cli.root, id)?;
    let saved = match container.load() {
        // As runc: --force makes deleting what is not there a success
        // (engines clean up after a create that failed and cleaned up).
        Err(StateError::Unknown(_)) if force => return Ok(container.remove()?),
        other => other?,
    };
    let status = container.status(&saved);
    if status == Status::Running && !force {
        return Err(RuntimeError::WrongStatus { id: id.into(), status, what: "stop it first, or delete --force" });
    }
    if status != Status::Stopped {
        // A created container never ran: runc removes it without --force too.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(saved.pid), nix::sys::signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while state::alive(saved.pid, saved.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    cgroup::remove(&saved.cgroups);
    container.remove()?;
    Ok(())
}

/// runc's command line for `command` when runc is to run it: a pod's
/// sandbox container (see [`sandbox`]), or one runc already holds.
fn for_runc(cli: &Cli) -> Option<Vec<std::ffi::OsString>> {
    let mut args: Vec<std::ffi::OsString> = vec!["--root".into(), sandbox::runc_root(&cli.root).into()];
    if let Some(log) = &cli.log {
        args.extend(["--log".into(), log.into()]);
    }
    args.extend(["--log-format".into(), if cli.log_format == Format::Json { "json" } else { "text" }.into()]);
    if cli.systemd_cgroup {
        args.push("--systemd-cgroup".into());
    }
    match &cli.command {
        Cmd::Create { bundle, pid_file, console_socket, no_pivot, no_new_keyring, preserve_fds, id } => {
            let spec = Spec::load(bundle).ok()?;
            if !sandbox::is_sandbox(&spec.annotations) {
                return None;
            }
            args.extend(["create".into(), "--bundle".into(), bundle.into()]);
            if let Some(f) = pid_file {
                args.extend(["--pid-file".into(), f.into()]);
            }
            if let Some(s) = console_socket {
                args.extend(["--console-socket".into(), s.into()]);
            }
            if *no_pivot {
                args.push("--no-pivot".into());
            }
            if *no_new_keyring {
                args.push("--no-new-keyring".into());
            }
            args.extend(["--preserve-fds".into(), preserve_fds.to_string().into(), id.into()]);
        }
        Cmd::Start { id } | Cmd::State { id } if sandbox::is_runcs(&cli.root, id) => {
            let name = if matches!(cli.command, Cmd::Start { .. }) { "start" } else { "state" };
            args.extend([name.into(), id.into()]);
        }
        Cmd::Kill { all, id, signal } if sandbox::is_runcs(&cli.root, id) => {
            args.push("kill".into());
            if *all {
                args.push("--all".into());
            }
            args.extend([id.into(), signal.into()]);
        }
        Cmd::Delete { force, id } if sandbox::is_runcs(&cli.root, id) => {
            args.push("delete".into());
            if *force {
                args.push("--force".into());
            }
            args.push(id.into());
        }
        _ => return None,
    }
    Some(args)
}

fn features() -> String {
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": [],
        "mountOptions": [],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": [],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "org.skiff.abi-version": skiff_abi::ABI_VERSION.to_string(),
            "org.skiff.oci.version": env!("CARGO_PKG_VERSION"),
        },
    });
    serde_json::to_string_pretty(&features).expect("JSON values serialise")
}

fn main() -> ExitCode {
    // Before anything could start a thread: the tender this process may
    // become depends on it.
    skiff_tender::sys::use_one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let log = Log { file: cli.log.clone(), format: cli.log_format };
    let result = match for_runc(&cli) {
        // Returns only if runc could not be started.
        Some(args) => {
            use std::os::unix::process::CommandExt;
            Err(RuntimeError::Runc { source: std::process::Command::new(sandbox::RUNC).args(args).exec() })
        }
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string();
            eprintln!("skiff-oci: {msg}");
            log.write("error", &msg);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), RuntimeError> {
    match &cli.command {
        Cmd::Create { bundle, pid_file, console_socket, no_pivot: _, no_new_keyring: _, preserve_fds, id } => create(
            cli,
            CreateArgs {
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                preserve_fds: *preserve_fds,
                id: id.clone(),
            },
        ),
        Cmd::Start { id } => start(cli, id),
        Cmd::State { id } => print_state(cli, id),
        Cmd::Kill { all: _, id, signal } => kill(cli, id, signal),
        Cmd::Delete { force, id } => delete(cli, id, *force),
        Cmd::Features => {
            println!("{}", features());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(matches!(parse_signal("LOUD"), Err(RuntimeError::BadSignal(_))));
        assert!(matches!(parse_signal("99"), Err(RuntimeError::BadSignal(_))));
    }

    #[test]
    fn features_are_json_with_the_namespaces() {
        let v: serde_json::Value = serde_json::from_str(&features()).unwrap();
        assert_eq!(v["ociVersionMax"], state::OCI_VERSION);
        assert!(v["linux"]["namespaces"].as_array().unwrap().contains(&"network".into()));
    }
}
