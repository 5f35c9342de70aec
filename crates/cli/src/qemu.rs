//! `skiff run --vmm qemu`: the same image under QEMU, through its PVH
//! entry. This module writes QEMU's command line from the image's manifest
//! and `skiff run`'s options, runs QEMU, enforces `--timeout`, passes stop
//! signals on, and turns QEMU's exit status back into the guest's.
//!
//! QEMU exits with `(status << 1) | 1` for a status the guest writes to
//! `isa-debug-exit`; any other ending is QEMU's own (an error at start,
//! a signal, a reset) and gets its own message and status.
//!
//! Each disk the image declares is a raw QEMU drive on a virtio-blk device
//! whose serial number is the disk's name (how the guest finds it):
//! `cache=writeback`, so a flush from the guest is QEMU's `fdatasync` of
//! the file before the request completes (flush means durable, as under
//! the tender; `cache=unsafe` would drop flushes), `discard=unmap` (a
//! discard punches a hole), `werror=report,rerror=report` (a host I/O
//! error, a full file system included, is the request's error instead of
//! a paused VM), `readonly=on` for `ro`, and `logical_block_size=4096` for
//! `sector=4096`.

use skiff_tender::disk::{DiskError, DiskSpec};
use skiff_tender::elf::DeclaredDevice;
use skiff_tender::net::{NicSpec, Outbound};
use skiff_tender::options::LogLevel;
use skiff_usernet::{Proto, Publish};
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU program used unless `SKIFF_QEMU` names another.
pub const QEMU: &str = "qemu-system-x86_64";
/// The Debian package that has it.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Which monitor runs the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vmm {
    /// Skiff's own monitor, in this process (the default).
    Tender,
    /// QEMU (`qemu-system-x86_64`), through the image's PVH entry.
    Qemu,
}

/// QEMU's machine type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// The minimal machine: no firmware, no PCI, virtio-mmio devices; boots
    /// in tens of milliseconds.
    #[default]
    Microvm,
    /// A PC with PCI (virtio-pci devices); boots through SeaBIOS, about 3 s
    /// on this kind of KVM.
    Q35,
}

/// What stops `skiff run --vmm qemu` before or instead of QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU is not installed (or not where `SKIFF_QEMU` says).
    #[error(
        "{qemu} not found: --vmm qemu needs QEMU (Debian package {QEMU_PACKAGE}: apt-get install {QEMU_PACKAGE}, or scripts/setup), or SKIFF_QEMU naming one"
    )]
    NotFound {
        /// The program looked for.
        qemu: String,
    },
    /// QEMU could not be started.
    #[error("cannot start {qemu}: {source}")]
    Spawn {
        /// The program.
        qemu: String,
        /// Why.
        source: std::io::Error,
    },
    /// Waiting for QEMU or watching for signals failed.
    #[error("cannot watch QEMU: {0}")]
    Watch(std::io::Error),
    /// Options that only the tender has.
    #[error("{} only with --vmm tender (QEMU has no such setting)", .0.join(", "))]
    TenderOnly(Vec<String>),
    /// `--machine` without `--vmm qemu`.
    #[error("--machine only with --vmm qemu")]
    MachineWithoutQemu,
    /// A guest argument QEMU's command line cannot carry.
    #[error("guest argument {0:?} cannot go on QEMU's command line (it has a NUL byte)")]
    Argument(String),
    /// `--net NAME=...` for a NIC the image does not declare.
    #[error("--net {name}: the image declares no NIC {name:?} (it declares: {declared})")]
    Undeclared {
        /// The name given.
        name: String,
        /// The image's NICs.
        declared: String,
    },
    /// `--net-mac NAME=...` without such a NIC.
    #[error("--net-mac {0}: the image declares no NIC {0:?}")]
    MacWithoutNic(String),
    /// `--publish` with no NIC on QEMU's user network.
    #[error("--publish needs a NIC on the user network (the image declares none, or each is on a TAP device)")]
    PublishWithoutUser,
    /// A `--disk` that does not match the image, or whose file cannot be
    /// made or read.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A free host port for `--publish` with port 0 could not be found.
    #[error("--publish {addr}/{proto}: cannot find a free host port: {source}")]
    FreePort {
        /// The host address.
        addr: SocketAddr,
        /// TCP or UDP.
        proto: Proto,
        /// Why.
        source: std::io::Error,
    },
}

/// The options of `skiff run` that QEMU understands, and the image.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The QEMU program.
    pub qemu: String,
    /// The machine type.
    pub machine: Machine,
    /// The image file.
    pub image: PathBuf,
    /// Guest memory in bytes.
    pub mem: u64,
    /// The guest's log level.
    pub log: LogLevel,
    /// Arguments for the service.
    pub args: Vec<String>,
    /// The NICs the image declares.
    pub declared: Vec<DeclaredDevice>,
    /// `--net NAME=TAP|user`.
    pub net: Vec<NicSpec>,
    /// `--net-mac NAME=MAC`.
    pub macs: Vec<(String, [u8; 6])>,
    /// `--publish`, host ports already chosen.
    pub publish: Vec<Publish>,
    /// `--net-outbound`.
    pub outbound: Outbound,
    /// `--disk NAME=FILE[,ro][,size=SIZE][,sector=512|4096]`.
    pub disks: Vec<DiskSpec>,
}

/// The PVH command line (`-append`): `skiff.log=LEVEL` unless the level is
/// the default, then each argument quoted so that the guest's POSIX-shell
/// split gives it back as it was.
pub fn append(log: LogLevel, args: &[String]) -> Result<String, QemuError> {
    let mut words = Vec::new();
    if log != LogLevel::Info {
        words.push(format!("skiff.log={}", log_name(log)));
    }
    for a in args {
        let quoted = shlex::try_quote(a).map_err(|_| QemuError::Argument(a.clone()))?;
        words.push(quoted.into_owned());
    }
    Ok(words.join(" "))
}

fn log_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Off => "off",
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// QEMU's `-m` value: MiB when whole, else KiB.
fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) { format!("{}M", bytes >> 20) } else { format!("{}K", bytes.div_ceil(1 << 10)) }
}

/// One `hostfwd` of QEMU's user network.
fn hostfwd(p: &Publish) -> String {
    let host = match p.host {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!("hostfwd={}:{host}-:{}", p.proto, p.guest_port)
}

/// A value for QEMU's option syntax: a comma is written twice.
fn escape(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Checks `--disk` against the image's declared disks (as the tender
/// does: each declared disk attached once, none the image lacks) and
/// returns the specs in manifest order.
fn declared_disks(spec: &Spec) -> Result<Vec<&DiskSpec>, DiskError> {
    let declared = skiff_tender::disk::declared(&spec.declared);
    for (i, d) in spec.disks.iter().enumerate() {
        if spec.disks[..i].iter().any(|o| o.name == d.name) {
            return Err(DiskError::Duplicate(d.name.clone()));
        }
        if !declared.contains(&d.name) {
            return Err(DiskError::Undeclared { name: d.name.clone(), declared });
        }
    }
    declared
        .iter()
        .map(|name| spec.disks.iter().find(|d| &d.name == name).ok_or_else(|| DiskError::Missing(name.clone())))
        .collect()
}

/// Creates the disk files `size=` asks for that do not exist yet, and
/// checks that each file holds at least one sector, as the tender does.
pub fn prepare_disks(disks: &[DiskSpec]) -> Result<(), DiskError> {
    for d in disks {
        let open_err = |source| DiskError::Open { name: d.name.clone(), path: d.path.clone(), source };
        if let Some(size) = d.create_size
            && !d.path.exists()
        {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&d.path).map_err(open_err)?;
            f.set_len(size).map_err(open_err)?;
        }
        let len = std::fs::metadata(&d.path).map_err(open_err)?.len();
        if len < u64::from(d.sector_size) {
            return Err(DiskError::TooSmall {
                name: d.name.clone(),
                path: d.path.clone(),
                len,
                sector_size: d.sector_size,
            });
        }
    }
    Ok(())
}

/// QEMU's `-drive` and `-device` arguments for the image's disks.
fn disk_arguments(spec: &Spec) -> Result<Vec<OsString>, QemuError> {
    let device = match spec.machine {
        Machine::Microvm => "virtio-blk-device",
        Machine::Q35 => "virtio-blk-pci",
    };
    let mut out = Vec::new();
    for (i, d) in declared_disks(spec)?.into_iter().enumerate() {
        let mut drive = OsString::from("file=");
        drive.push(escape(d.path.as_os_str()));
        drive.push(format!(
            ",if=none,id=disk{i},format=raw,cache=writeback,discard=unmap,werror=report,rerror=report{}",
            if d.read_only { ",readonly=on" } else { "" }
        ));
        let mut dev = OsString::from(format!("{device},drive=disk{i},serial="));
        dev.push(escape(d.name.as_ref()));
        if d.sector_size != 512 {
            dev.push(format!(",logical_block_size={0},physical_block_size={0}", d.sector_size));
        }
        out.extend(["-drive".into(), drive, "-device".into(), dev]);
    }
    Ok(out)
}

/// QEMU's arguments (without the program) for `spec`.
pub fn arguments(spec: &Spec) -> Result<Vec<OsString>, QemuError> {
    let nics: Vec<&DeclaredDevice> = spec.declared.iter().filter(|d| d.kind == skiff_abi::DeviceKind::Net).collect();
    let names = || nics.iter().map(|d| format!("{:?}", d.name)).collect::<Vec<_>>().join(", ");
    for s in &spec.net {
        if !nics.iter().any(|d| d.name == s.name) {
            let declared = if nics.is_empty() { "none".into() } else { names() };
            return Err(QemuError::Undeclared { name: s.name.clone(), declared });
        }
    }
    for (name, _) in &spec.macs {
        if !nics.iter().any(|d| &d.name == name) {
            return Err(QemuError::MacWithoutNic(name.clone()));
        }
    }
    // A NIC without --net goes on the user network, as under the tender.
    let on_user = |d: &DeclaredDevice| spec.net.iter().find(|s| s.name == d.name).is_none_or(NicSpec::is_user);
    if !spec.publish.is_empty() && !nics.iter().any(|d| on_user(d)) {
        return Err(QemuError::PublishWithoutUser);
    }

    let (machine, nic_device) = match spec.machine {
        Machine::Microvm => ("microvm,x-option-roms=off,rtc=off", "virtio-net-device"),
        // No option ROM (iPXE): the PVH entry never uses it, and SeaBIOS
        // spends about 0.4 s running it.
        Machine::Q35 => ("q35", "virtio-net-pci,romfile="),
    };
    let mut a: Vec<String> = vec![
        "-M".into(),
        machine.into(),
        "-enable-kvm".into(),
        // This machine kind's KVM refuses the ARCH_CAPABILITIES MSR that
        // `max` would set, and QEMU aborts.
        "-cpu".into(),
        "max,-arch-capabilities".into(),
        "-m".into(),
        memory(spec.mem),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        // A reset (triple fault) ends QEMU instead of booting again.
        "-no-reboot".into(),
        "-serial".into(),
        "stdio".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=4".into(),
    ];
    let mut publish = spec.publish.clone();
    for (i, d) in nics.iter().enumerate() {
        let id = format!("nic{i}");
        let netdev = match spec.net.iter().find(|s| s.name == d.name) {
            Some(s) if !s.is_user() => format!("tap,id={id},ifname={},script=no,downscript=no", s.tap),
            _ => {
                let outbound = match spec.outbound {
                    Outbound::AsDeclared => d.outbound,
                    Outbound::All => true,
                    Outbound::None => false,
                };
                // The first user-network NIC takes the published ports.
                let mut netdev = format!("user,id={id},restrict={}", if outbound { "off" } else { "on" });
                for p in std::mem::take(&mut publish) {
                    netdev.push(',');
                    netdev.push_str(&hostfwd(&p));
                }
                netdev
            }
        };
        let mac = spec
            .macs
            .iter()
            .find(|(n, _)| n == &d.name)
            .map_or_else(|| skiff_tender::net::generated_mac(&d.name), |(_, m)| *m);
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        a.extend(["-netdev".into(), netdev, "-device".into(), format!("{nic_device},netdev={id},mac={mac}")]);
    }
    let mut out: Vec<OsString> = a.into_iter().map(OsString::from).collect();
    out.extend(disk_arguments(spec)?);
    out.push("-kernel".into());
    out.push(spec.image.clone().into_os_string());
    let append = append(spec.log, &spec.args)?;
    if !append.is_empty() {
        out.push("-append".into());
        out.push(append.into());
    }
    Ok(out)
}

/// `--publish` entries with host port 0 get a free port now (QEMU would
/// not say which it took); each forward is printed as the tender prints it.
pub fn choose_ports(publish: &[Publish]) -> Result<Vec<Publish>, QemuError> {
    let mut out = Vec::new();
    for p in publish {
        let mut p = *p;
        if p.host.port() == 0 {
            let err = |source| QemuError::FreePort { addr: p.host, proto: p.proto, source };
            let port = match p.proto {
                Proto::Tcp => std::net::TcpListener::bind(p.host).and_then(|l| l.local_addr()),
                Proto::Udp => std::net::UdpSocket::bind(p.host).and_then(|s| s.local_addr()),
            }
            .map_err(err)?
            .port();
            p.host.set_port(port);
        }
        out.push(p);
    }
    Ok(out)
}

/// How a QEMU run ended, as `skiff` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest wrote its status to `isa-debug-exit`.
    Guest(u8),
    /// `--timeout` ran out and QEMU was killed.
    Timeout(Duration),
    /// A stop signal was passed on and QEMU ended the VM at once.
    Stopped(&'static str),
    /// QEMU failed before or while starting the guest (its message).
    Failed(String),
    /// QEMU ended without a guest status: its exit status, or the signal
    /// that killed it.
    Vanished(String),
}

impl Ending {
    /// `skiff`'s exit status.
    pub fn status(&self) -> u8 {
        use skiff_abi::exit;
        match self {
            Ending::Guest(s) => *s,
            Ending::Timeout(_) => exit::TIMEOUT,
            Ending::Stopped(_) => exit::STOPPED,
            Ending::Failed(_) => exit::TENDER_ERROR,
            Ending::Vanished(_) => exit::VM_FAILURE,
        }
    }

    /// The line `skiff` prints about it, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Ending::Guest(_) => None,
            Ending::Timeout(t) => Some(format!("--timeout {t:?} expired: QEMU killed")),
            Ending::Stopped(signal) => Some(format!(
                "{signal} passed on to QEMU, which ended the guest at once (QEMU has no stop request for the guest)"
            )),
            Ending::Failed(why) => Some(format!("QEMU failed: {why}")),
            Ending::Vanished(how) => Some(format!("QEMU ended without the guest's exit status ({how})")),
        }
    }
}

/// What QEMU's exit status says, given the error lines it printed.
pub fn ending(status: std::process::ExitStatus, errors: &[String]) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        // 1 is also the status QEMU gives for its own errors.
        Some(1) if !errors.is_empty() => Ending::Failed(errors.join("; ")),
        Some(code) if code & 1 == 1 => Ending::Guest((code >> 1) as u8),
        Some(code) if !errors.is_empty() => Ending::Failed(format!("{} (exit status {code})", errors.join("; "))),
        Some(code) => Ending::Vanished(format!("exit status {code}")),
        None => Ending::Vanished(format!("killed by signal {}", status.signal().unwrap_or(0))),
    }
}

/// Adds function names to the guest's CPU exception reports on their way
/// to the terminal: the guest has no symbol table, `skiff` has the image.
/// The line after `skiff: guest CPU exception ...`, `  rip 0x...`, gets
/// ` in FUNCTION+OFFSET` as under the tender; all else passes unchanged and
/// at once (only that one line is held until it ends).
pub struct FaultNamer<F> {
    name: F,
    /// The start of the current line, for recognising the report's head.
    line: Vec<u8>,
    /// The previous line was a report's head: the next one is held.
    armed: bool,
    /// The held line.
    held: Vec<u8>,
}

/// How much of a line is kept for matching, and how long a `rip` line is
/// held at most.
const NAMER_LINE_MAX: usize = 96;

impl<F: Fn(u64) -> Option<String>> FaultNamer<F> {
    pub fn new(name: F) -> FaultNamer<F> {
        FaultNamer { name, line: Vec::new(), armed: false, held: Vec::new() }
    }

    /// Takes console bytes in and appends what should go out to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if self.armed {
                self.held.push(b);
                if b == b'\n' || self.held.len() >= NAMER_LINE_MAX {
                    self.armed = false;
                    self.release(out);
                }
                if b == b'\n' {
                    self.line.clear();
                }
                continue;
            }
            out.push(b);
            if b == b'\n' {
                self.armed = self.line.starts_with(b"skiff: guest CPU exception");
                self.line.clear();
            } else if self.line.len() < NAMER_LINE_MAX {
                self.line.push(b);
            }
        }
    }

    /// Whatever is still held, at the end of the output.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.armed = false;
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        let named = std::str::from_utf8(&self.held)
            .ok()
            .and_then(|l| l.strip_suffix('\n'))
            .and_then(|l| l.strip_prefix("  rip 0x"))
            .and_then(|hex| u64::from_str_radix(hex.trim_end_matches('\r'), 16).ok())
            .and_then(|rip| (self.name)(rip).map(|f| (rip, f)));
        match named {
            Some((rip, function)) => {
                out.extend_from_slice(format!("  rip {rip:#x} in {function}\n").as_bytes());
                self.held.clear();
            }
            None => out.append(&mut self.held),
        }
    }
}

/// Runs QEMU with `args`: the guest's console on our standard output (CPU
/// exception reports named with `name`), QEMU's own messages on our
/// standard error, `timeout` enforced and stop signals passed on.
pub fn run(
    qemu: &str,
    args: &[OsString],
    timeout: Option<Duration>,
    name: impl Fn(u64) -> Option<String> + Send + 'static,
) -> Result<Ending, QemuError> {
    // Blocked here and taken by `wait_for_stop`; QEMU starts with them
    // unblocked, in our process group (Ctrl-C in a terminal reaches both).
    skiff_tender::sys::block_stop_signals().map_err(QemuError::Watch)?;
    let mut cmd = Command::new(qemu);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    skiff_tender::sys::unblock_stop_signals_on_exec(&mut cmd);
    skiff_tender::sys::end_with_parent_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => QemuError::NotFound { qemu: qemu.to_string() },
        _ => QemuError::Spawn { qemu: qemu.to_string(), source },
    })?;
    let stdout = child.stdout.take().expect("piped");
    let console = std::thread::spawn(move || relay_console(stdout, FaultNamer::new(name)));
    let stderr = child.stderr.take().expect("piped");
    // QEMU's messages go on to our standard error as they come; its error
    // lines (not warnings, not the note about a signal) are kept.
    let relay = std::thread::spawn(move || {
        let mut errors = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if !line.contains("warning:") && !line.contains("terminating on signal") && errors.len() < 8 {
                errors.push(line);
            }
        }
        errors
    });
    let start = Instant::now();
    let mut stopped = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(QemuError::Watch)? {
            break status;
        }
        if let Some(t) = timeout
            && start.elapsed() >= t
        {
            let _ = child.kill();
            let _ = child.wait();
            let _ = relay.join();
            let _ = console.join();
            return Ok(Ending::Timeout(t));
        }
        let tick = timeout.map_or(Duration::from_millis(20), |t| t.saturating_sub(start.elapsed()));
        if let Some(signal) = skiff_tender::sys::wait_for_stop(tick.min(Duration::from_millis(20))) {
            // QEMU ends the VM on SIGTERM or SIGINT at once; a guest that
            // has already written its status keeps it.
            let _ = skiff_tender::sys::send_stop(child.id(), signal);
            stopped.get_or_insert(signal.name());
        }
    };
    let errors = relay.join().unwrap_or_default();
    let _ = console.join();
    Ok(match (ending(status, &errors), stopped) {
        (Ending::Guest(s), _) => Ending::Guest(s),
        (_, Some(signal)) => Ending::Stopped(signal),
        (other, None) => other,
    })
}

/// Copies the guest's console from QEMU to our standard output as it
/// comes, through `namer`.
fn relay_console<F: Fn(u64) -> Option<String>>(mut from: impl Read, mut namer: FaultNamer<F>) {
    let mut stdout = std::io::stdout().lock();
    let (mut buf, mut out) = (vec![0u8; 16 * 1024], Vec::new());
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        out.clear();
        namer.feed(&buf[..n], &mut out);
        if stdout.write_all(&out).and_then(|()| stdout.flush()).is_err() {
            // Our reader is gone; keep draining so QEMU never blocks.
            continue;
        }
    }
    out.clear();
    namer.finish(&mut out);
    let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_abi::DeviceKind;
    use std::os::unix::process::ExitStatusExt;

    fn spec(machine: Machine) -> Spec {
        Spec {
            qemu: QEMU.into(),
            machine,
            image: "/images/echo".into(),
            mem: 64 << 20,
            log: LogLevel::Info,
            args: Vec::new(),
            declared: vec![DeclaredDevice { kind: DeviceKind::Net, name: "service".into(), outbound: false }],
            net: Vec::new(),
            macs: Vec::new(),
            publish: Vec::new(),
            outbound: Outbound::AsDeclared,
            disks: Vec::new(),
        }
    }

    fn line(spec: &Spec) -> String {
        arguments(spec).unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn arguments_round_trip_through_the_guests_split() {
        let args: Vec<String> =
            ["plain", "two words", "it's", "", "a\"b", "$HOME", "back\\slash", "tab\there", "new\nline", "x,y"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let text = append(LogLevel::Info, &args).unwrap();
        assert_eq!(shlex::split(&text).unwrap(), args, "{text}");
        let text = append(LogLevel::Debug, &args[..1]).unwrap();
        assert_eq!(text, "skiff.log=debug plain");
        assert!(matches!(append(LogLevel::Info, &["a\0b".into()]), Err(QemuError::Argument(_))));
    }

    #[test]
    fn microvm_nic_on_the_user_network_with_forwards() {
        let mut s = spec(Machine::Microvm);
        s.publish = vec!["8007:7".parse().unwrap(), "0.0.0.0:5353:53/udp".parse().unwrap()];
        s.args = vec!["--port".into(), "7".into()];
        s.mem = 32 << 20;
        let l = line(&s);
        assert!(
            l.starts_with(
                "-M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu max,-arch-capabilities -m 32M -nodefaults"
            ),
            "{l}"
        );
        assert!(l.contains("-serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4"), "{l}");
        assert!(
            l.contains(
                "-netdev user,id=nic0,restrict=on,hostfwd=tcp:127.0.0.1:8007-:7,hostfwd=udp:0.0.0.0:5353-:53 \
                 -device virtio-net-device,netdev=nic0,mac=02:5f:"
            ),
            "{l}"
        );
        assert!(l.ends_with("-kernel /images/echo -append --port 7"), "{l}");
    }

    #[test]
    fn q35_nic_on_a_tap_device_with_its_mac() {
        let mut s = spec(Machine::Q35);
        s.net = vec![NicSpec { name: "service".into(), tap: "tap0".into() }];
        s.macs = vec![("service".into(), [2, 0, 0, 0, 0, 9])];
        let l = line(&s);
        assert!(l.starts_with("-M q35 "), "{l}");
        assert!(
            l.contains(
                "-netdev tap,id=nic0,ifname=tap0,script=no,downscript=no \
                 -device virtio-net-pci,romfile=,netdev=nic0,mac=02:00:00:00:00:09"
            ),
            "{l}"
        );
        assert!(!l.contains("-append"), "{l}");
    }

    #[test]
    fn outbound_follows_the_manifest_unless_told() {
        let mut s = spec(Machine::Microvm);
        s.declared[0].outbound = true;
        assert!(line(&s).contains("restrict=off"));
        s.outbound = Outbound::None;
        assert!(line(&s).contains("restrict=on"));
    }

    #[test]
    fn nic_mistakes_are_refused() {
        let mut s = spec(Machine::Microvm);
        s.net = vec![NicSpec { name: "other".into(), tap: "user".into() }];
        let e = arguments(&s).unwrap_err().to_string();
        assert_eq!(e, r#"--net other: the image declares no NIC "other" (it declares: "service")"#);
        let mut s = spec(Machine::Microvm);
        s.net = vec![NicSpec { name: "service".into(), tap: "tap0".into() }];
        s.publish = vec!["8007:7".parse().unwrap()];
        assert!(matches!(arguments(&s), Err(QemuError::PublishWithoutUser)));
        let mut s = spec(Machine::Microvm);
        s.macs = vec![("nope".into(), [2, 0, 0, 0, 0, 1])];
        assert!(matches!(arguments(&s), Err(QemuError::MacWithoutNic(_))));
    }

    fn with_disk(machine: Machine, disk: &str) -> Spec {
        let mut s = spec(machine);
        s.declared.push(DeclaredDevice { kind: DeviceKind::Block, name: "data".into(), outbound: false });
        s.disks = vec![skiff_tender::disk::parse_disk(disk).unwrap()];
        s
    }

    #[test]
    fn disks_are_raw_drives_on_virtio_blk_named_by_serial() {
        let mut s = with_disk(Machine::Microvm, "data=/disks/a.img,size=8M");
        // A comma in the file name (a path from a program, not --disk).
        s.disks[0].path = "/disks/a,b.img".into();
        let l = line(&s);
        assert!(
            l.contains(
                "-drive file=/disks/a,,b.img,if=none,id=disk0,format=raw,cache=writeback,discard=unmap,\
                 werror=report,rerror=report -device virtio-blk-device,drive=disk0,serial=data -kernel"
            ),
            "{l}"
        );
        let l = line(&with_disk(Machine::Q35, "data=d.img,ro,sector=4096"));
        assert!(
            l.contains(
                "rerror=report,readonly=on -device virtio-blk-pci,drive=disk0,serial=data,\
                 logical_block_size=4096,physical_block_size=4096"
            ),
            "{l}"
        );
    }

    #[test]
    fn disk_mistakes_are_refused_as_under_the_tender() {
        let mut s = with_disk(Machine::Microvm, "data=d.img");
        s.disks[0].name = "other".into();
        let e = arguments(&s).unwrap_err().to_string();
        assert_eq!(e, "--disk other=...: the image declares no disk of that name (it has: data)");
        s.disks.clear();
        let e = arguments(&s).unwrap_err().to_string();
        assert!(e.starts_with("the image needs a disk named \"data\""), "{e}");
        let mut s = with_disk(Machine::Microvm, "data=d.img");
        s.disks.push(s.disks[0].clone());
        assert!(matches!(arguments(&s), Err(QemuError::Disk(DiskError::Duplicate(_)))));
    }

    #[test]
    fn size_creates_a_missing_disk_file_and_a_short_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("skiff-qemu-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("new.img");
        let spec = skiff_tender::disk::parse_disk(&format!("data={},size=1M", file.display())).unwrap();
        prepare_disks(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        // An existing file keeps its size and contents.
        std::fs::write(&file, [7u8; 4096]).unwrap();
        prepare_disks(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), [7u8; 4096]);
        let spec = skiff_tender::disk::parse_disk(&format!("data={},sector=4096", file.display())).unwrap();
        std::fs::write(&file, [0u8; 512]).unwrap();
        let e = prepare_disks(&[spec]).unwrap_err().to_string();
        assert!(e.contains("holds 512 bytes, less than one 4096-byte sector"), "{e}");
        let missing = skiff_tender::disk::parse_disk(&format!("data={}", dir.join("none").display())).unwrap();
        assert!(matches!(prepare_disks(&[missing]), Err(DiskError::Open { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(memory(64 << 20), "64M");
        assert_eq!(memory((5 << 20) + 4096), "5124K");
    }

    #[test]
    fn port_zero_gets_a_free_port() {
        let chosen = choose_ports(&["0:7".parse().unwrap(), "0:7/udp".parse().unwrap()]).unwrap();
        assert!(chosen.iter().all(|p| p.host.port() != 0), "{chosen:?}");
    }

    #[test]
    fn qemu_exit_statuses_map_back() {
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(ending(exited(1), &[]), Ending::Guest(0));
        assert_eq!(ending(exited(15), &[]), Ending::Guest(7));
        assert_eq!(ending(exited(203), &[]), Ending::Guest(101));
        let err = vec!["qemu-system-x86_64: -kernel x: could not load kernel".to_string()];
        assert!(matches!(ending(exited(1), &err), Ending::Failed(_)));
        assert_eq!(ending(exited(1), &err).status(), skiff_abi::exit::TENDER_ERROR);
        assert_eq!(ending(exited(0), &[]).status(), skiff_abi::exit::VM_FAILURE);
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(ending(killed, &[]), Ending::Vanished("killed by signal 9".into()));
    }

    fn namer_output(chunks: &[&[u8]]) -> String {
        let mut namer = FaultNamer::new(|rip| (rip == 0x20_1234).then(|| "probe::crash+0x4".to_string()));
        let mut out = Vec::new();
        for c in chunks {
            namer.feed(c, &mut out);
        }
        namer.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fault_reports_get_the_function_name_even_split_across_reads() {
        let report = "log line\nskiff: guest CPU exception in ring 3 (the service): x (#UD, vector 6)\n  rip \
                      0x201234\n  error code 0x0\n";
        let want = "log line\nskiff: guest CPU exception in ring 3 (the service): x (#UD, vector 6)\n  rip 0x201234 \
                    in probe::crash+0x4\n  error code 0x0\n";
        assert_eq!(namer_output(&[report.as_bytes()]), want);
        // Byte by byte, as a slow pipe may deliver it.
        let bytes: Vec<&[u8]> = report.as_bytes().chunks(1).collect();
        assert_eq!(namer_output(&bytes), want);
    }

    #[test]
    fn other_output_passes_unchanged() {
        for text in [
            // A rip line the service printed itself, not after a report's head.
            "  rip 0x201234\n",
            // A rip the image has no name for.
            "skiff: guest CPU exception: x\n  rip 0x999\n",
            // Not a rip line after the head.
            "skiff: guest CPU exception: x\n  something else\n",
            // Output that ends in the middle of the held line.
            "skiff: guest CPU exception: x\n  rip 0x2012",
            // A long line after the head is released once the limit is hit.
            &format!("skiff: guest CPU exception: x\n{}\n", "y".repeat(300)),
        ] {
            assert_eq!(namer_output(&[text.as_bytes()]), text);
        }
    }
}
