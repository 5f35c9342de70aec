//! `skiff-tender`: the KVM monitor that runs Skiff images (or, with
//! `--sandbox process`, runs them as a sandboxed process: [`process`]).
//!
//! The tender creates a VM with one vCPU, loads the image's segments,
//! builds the guest's page tables and boot info on the host, enters the
//! image in 64-bit mode, and then serves the hypercalls of
//! [`skiff_abi`] until the guest ends. It has no device emulation and no
//! access to the host's file system on the guest's behalf; its attack
//! surface is the hypercall list.
//!
//! Every guest-supplied address and length is checked twice: against guest
//! memory ([`guest_memory`]) and against the guest's own page tables, so a
//! service cannot make the tender write where the service itself may not
//! (its page tables, the supervisor). A bad hypercall ends the guest with
//! [`exit::BAD_HYPERCALL`] and a message; the tender itself carries on and
//! exits cleanly.
//!
//! Modules: [`elf`] reads and validates images, [`paging`] lays out guest
//! memory and builds page tables, [`kvm`], [`process`] (process mode: the
//! guest on the tender's own thread), [`guest_memory`], [`mapped`] (the
//! image file, mapped read-only), [`disk`], [`sys`] (signals, malloc
//! tuning) and [`tap`] (the TAP ioctls and `ppoll`) hold all the unsafe
//! code (the compiler enforces it: `deny(unsafe_code)`
//! everywhere else), [`console`] drains the guest's console ring,
//! [`fault`] explains CPU exceptions, [`stats`] counts exits and times the
//! boot.

#![deny(unsafe_code)]

pub mod console;
#[allow(unsafe_code)]
pub mod disk;
pub mod elf;
pub mod fault;
pub mod gso;
#[allow(unsafe_code)]
pub mod guest_memory;
#[allow(unsafe_code)]
pub mod kvm;
#[allow(unsafe_code)]
pub mod mapped;
pub mod monitor;
pub mod net;
pub mod netio;
pub mod options;
pub mod paging;
#[allow(unsafe_code)]
pub mod process;
pub mod profile;
pub mod ready;
pub mod rings;
pub mod seccomp;
pub mod serve;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod tap;

use elf::{ElfError, Image};
use guest_memory::{GuestAddr, GuestMemory, MemoryError};
use kvm::{KvmError, Vm};
use paging::{PageTables, PagingError};
pub use serve::{GuestError, VmFailure};
use skiff_abi::{
    ABI_VERSION, ARGS_MAX, AbortReason, BOOT_INFO_MAGIC, BootInfo, DeviceInfo, DeviceKind, FaultFrame, MAX_DEVICES,
    SHARED_SPIN_FOUND, SHARED_SPIN_MISSED, SHARED_TSC_MAIN, SHARED_TSC_RING3_ENTRY, exit, layout,
};
use stats::Stats;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use sys::ThreadKicker;

/// Guest memory when `--mem` is not given.
pub const DEFAULT_MEM: u64 = 64 << 20;

/// How to run a guest.
#[derive(Clone, Debug)]
pub struct Config {
    /// The image file.
    pub image: PathBuf,
    /// A virtual machine or a process.
    pub sandbox: options::Sandbox,
    /// The descriptor the console writer writes to, if it is one (process
    /// mode pins `write` to it, standard output and error).
    pub console_fd: Option<i32>,
    /// Guest memory in bytes.
    pub mem: u64,
    /// End the guest after this long (counted from the start of [`run`]).
    pub timeout: Option<Duration>,
    /// After `SIGTERM`/`SIGINT`, how long the guest has to end by itself.
    pub stop_grace: Duration,
    /// Console log level for the guest (0 off .. 5 trace).
    pub log_level: u32,
    /// The guest's command line.
    pub args: Vec<String>,
    /// NICs and how frames move.
    pub net: net::NetOptions,
    /// Files attached as the image's disks.
    pub disks: Vec<disk::DiskSpec>,
    /// `--stats`: also measure the memory figures at the end (the guest
    /// memory touched, the tender's peak RSS), which cost a few system
    /// calls on the way out.
    pub stats: bool,
    /// `--profile`: sample the guest and write the profile here.
    pub profile: Option<profile::ProfileOptions>,
}

impl Config {
    /// Defaults for `image`: 64 MiB, no timeout, level info, no arguments.
    pub fn new(image: impl Into<PathBuf>) -> Config {
        Config {
            image: image.into(),
            sandbox: options::Sandbox::Kvm,
            console_fd: None,
            mem: DEFAULT_MEM,
            timeout: None,
            stop_grace: monitor::DEFAULT_STOP_GRACE,
            log_level: 3,
            args: Vec::new(),
            net: net::NetOptions::default(),
            disks: Vec::new(),
            stats: false,
            profile: None,
        }
    }
}

/// The tender could not start the guest.
#[derive(Debug, thiserror::Error)]
pub enum TenderError {
    /// The image file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image is not a valid Skiff image.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ElfError,
    },
    /// `--mem` is out of range.
    #[error("guest memory of {0} bytes is out of range: give between 2 MiB and 3 GiB, in whole pages")]
    MemorySize(u64),
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// A disk could not be attached.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// The command line does not fit.
    #[error("the guest's command line is {0} bytes; the limit is {ARGS_MAX}")]
    ArgsTooLong(usize),
    /// An argument cannot be passed.
    #[error("argument {0} contains a NUL byte")]
    ArgHasNul(usize),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The memory map or page tables could not be built.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// KVM could not be used.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A thread, signal handler or notifier could not be set up.
    #[error("cannot set up the tender's threads and signals: {0}")]
    Watchdog(std::io::Error),
    /// The system-call allow-list could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// Process mode could not be set up.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// The profile cannot be taken (its file, its thread).
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
}

/// How the guest ended.
#[derive(Debug)]
pub enum Outcome {
    /// The service exited with a status.
    Exited(u8),
    /// The runtime aborted (panic, out of memory, deadlock).
    Aborted {
        /// Why.
        reason: AbortReason,
        /// The runtime's message.
        message: String,
    },
    /// The guest took a CPU exception.
    Fault {
        /// The raw frame.
        frame: FaultFrame,
        /// The explanation.
        report: String,
    },
    /// The guest broke the hypercall contract.
    BadHypercall(GuestError),
    /// `--timeout` expired.
    Timeout(Duration),
    /// A stop signal (named) came and the guest did not end in time.
    Stopped(&'static str),
    /// The VM itself failed.
    VmFailure(VmFailure),
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Exited(s) => *s,
            Outcome::Aborted { reason, .. } => reason.status(),
            Outcome::Fault { .. } => exit::CPU_EXCEPTION,
            Outcome::BadHypercall(_) => exit::BAD_HYPERCALL,
            Outcome::Timeout(_) => exit::TIMEOUT,
            Outcome::Stopped(_) => exit::STOPPED,
            Outcome::VmFailure(_) => exit::VM_FAILURE,
        }
    }

    /// What to tell the user, if anything (a plain exit says nothing).
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited(_) => None,
            Outcome::Aborted { reason, message } => Some(format!("guest aborted ({}): {message}", reason.describe())),
            Outcome::Fault { report, .. } => Some(report.clone()),
            Outcome::BadHypercall(m) => Some(format!("guest ended for a bad hypercall: {m}")),
            Outcome::Timeout(t) => Some(format!("guest ended: --timeout of {:.3} s expired", t.as_secs_f64())),
            Outcome::Stopped(signal) => Some(format!("guest ended: it did not stop by itself after {signal}")),
            Outcome::VmFailure(m) => Some(format!("virtual machine failure: {m}")),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub outcome: Outcome,
    /// Counters and timings.
    pub stats: Stats,
    /// `--profile`: the samples written, or why the file could not be.
    pub profile: Option<Result<(u64, PathBuf), profile::ProfileError>>,
    /// The guest's memory, CPU and monitor, torn down when the report is
    /// dropped unless [`RunReport::leave_to_exit`] says otherwise.
    remains: Option<Remains>,
}

impl RunReport {
    /// For a process that exits right after the run: leaves the guest's
    /// memory, its VM or sandbox and the monitor thread to the kernel,
    /// which frees them all at once when the process ends, instead of
    /// unmapping 64 MiB or more of address space (and, with KVM, tearing
    /// down the VM) while another thread still runs, which costs TLB
    /// shoot-downs on the way out. The monitor is told to stand down
    /// first, so nothing acts on the guest any more.
    pub fn leave_to_exit(&mut self) {
        if let Some(remains) = self.remains.take() {
            remains.monitor.stand_down();
            std::mem::forget(remains);
        }
    }
}

/// What [`run`] keeps alive until the report goes.
struct Remains {
    monitor: monitor::Monitor,
    _sampler: Option<Arc<profile::Sampler>>,
    _cpu: Box<dyn serve::RunGuest>,
    _mem: Arc<GuestMemory>,
    _image: Image,
}

impl std::fmt::Debug for Remains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remains")
    }
}

/// Reads and validates an image file. At most [`elf::MAX_FILE_SIZE`]
/// bytes are read, whatever the file claims (a pipe or a device has no
/// size).
pub fn load_image(path: &Path, abi_check: bool) -> Result<Image, TenderError> {
    use std::io::Read;
    let read_err = |source| TenderError::ReadImage { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    // A regular file is mapped (its pages shared by every tender running
    // it); anything else is read.
    let data = if meta.is_file() && meta.len() > 0 && meta.len() <= elf::MAX_FILE_SIZE {
        elf::ImageBytes::Mapped(mapped::MappedFile::map(file, meta.len() as usize).map_err(read_err)?)
    } else {
        let mut data = Vec::new();
        file.take(elf::MAX_FILE_SIZE + 1).read_to_end(&mut data).map_err(read_err)?;
        elf::ImageBytes::Owned(data)
    };
    Image::parse(data, abi_check).map_err(|source| TenderError::Image { path: path.to_owned(), source })
}

fn encode_args(args: &[String]) -> Result<Vec<u8>, TenderError> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a.as_bytes().contains(&0) {
            return Err(TenderError::ArgHasNul(i));
        }
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    if out.len() > ARGS_MAX {
        return Err(TenderError::ArgsTooLong(out.len()));
    }
    Ok(out)
}

/// Boots `config.image` and serves it until it ends. Console output goes
/// to `console`.
pub fn run(config: &Config, console: &mut dyn Write) -> Result<RunReport, TenderError> {
    // `--timeout` counts from here: loading the image is part of the budget.
    let deadline = config.timeout.map(|t| (Instant::now() + t, t));
    let tsc_clock = (config.sandbox == options::Sandbox::Process).then(process::TscClock::start);
    let mut stats = Stats::default();
    sys::use_one_malloc_arena();
    // Before any thread starts, so that every thread blocks them and the
    // monitor alone takes them.
    sys::block_stop_signals().map_err(TenderError::Watchdog)?;
    let image = load_image(&config.image, true)?;
    if let Some((at, t)) = deadline
        && Instant::now() >= at
    {
        return Ok(RunReport { outcome: Outcome::Timeout(t), stats, profile: None, remains: None });
    }
    let mem_size = config.mem;
    if !(layout::MEM_MIN..=layout::MEM_MAX).contains(&mem_size) || !mem_size.is_multiple_of(layout::PAGE_SIZE) {
        return Err(TenderError::MemorySize(mem_size));
    }
    let args = encode_args(&config.args)?;
    // Created now, so a file that cannot be written is said before the
    // guest runs (and the lockdown forbids opening files later).
    let mut profile_file = match &config.profile {
        Some(p) => Some(
            std::fs::File::create(&p.path)
                .map_err(|source| profile::ProfileError::Create { path: p.path.clone(), source })?,
        ),
        None => None,
    };
    // The rings at the top of memory: the NICs' frame rings, then the
    // disks' request rings.
    let disk_count = disk::declared(&image.devices).len();
    let nic_count = image.devices.len() - disk_count;
    let disk_ring_bytes = disk::ring_bytes(disk_count);
    let ring_bytes = net::ring_bytes(nic_count, &config.net) + disk_ring_bytes;
    let ring_base = mem_size.saturating_sub(ring_bytes);
    let nics = net::attach(&image.devices, &config.net, ring_base)?;
    let disks = disk::attach(&image.devices, &config.disks, mem_size.saturating_sub(disk_ring_bytes))?;
    let readiness = ready::Readiness {
        file: config
            .net
            .ready_file
            .as_deref()
            .map(ready::ReadyFile::prepare)
            .transpose()
            .map_err(net::NetError::from)?,
        announce: config.log_level >= options::LogLevel::Info as u32,
    };
    let user_net = seccomp::UserNetCalls {
        relays: nics.iter().any(net::Nic::is_user),
        outbound: nics.iter().any(|n| n.outbound),
        ready_file: readiness.file.is_some(),
    };
    let rings = (ring_bytes > 0).then_some((ring_base, mem_size));
    let process = config.sandbox == options::Sandbox::Process;
    let (area, (regions, (heap_start, heap_end))) = if process {
        (paging::BootArea::PROCESS, paging::process_regions(&image, mem_size, rings)?)
    } else {
        (paging::BootArea::KVM, paging::regions(&image, mem_size, rings)?)
    };
    stats.process = process;

    // KVM: a VM, its page tables and boot GDT. Process mode: the guest's
    // addresses at their own addresses in this process.
    let mem = if process {
        if image.process_entry.is_none() {
            return Err(process::ProcessError::NoEntry.into());
        }
        Arc::new(GuestMemory::new_at(paging::PROCESS_LOW, mem_size)?)
    } else {
        Arc::new(GuestMemory::new(mem_size)?)
    };
    // Process mode leaves the supervisor out.
    let loaded = |s: &elf::Segment| !(process && s.supervisor());
    // Read-only segments of a mapped image: their whole pages are mapped
    // from the file (private, copy on write), so every guest running the
    // image shares them in the page cache and nothing is copied.
    let mut copy_from = vec![0; image.segments.len()];
    if let elf::ImageBytes::Mapped(file) = &image.data {
        for (s, from) in image.segments.iter().zip(&mut copy_from) {
            let pages = s.filesz & !(layout::PAGE_SIZE - 1);
            let aligned = s.vaddr.is_multiple_of(layout::PAGE_SIZE) && s.offset.is_multiple_of(layout::PAGE_SIZE);
            if loaded(s) && !s.writable() && aligned && pages > 0 {
                mem.map_file(GuestAddr(s.vaddr), pages, file.file(), s.offset)?;
                *from = pages;
            }
        }
    }
    let (mut vm, tables) = if process {
        (None, None)
    } else {
        let tables = PageTables::build(&regions)?;
        (Some(Vm::new(&mem)?), Some(tables))
    };
    stats.timeline.vm_created = Some(Instant::now());

    for (s, &from) in image.segments.iter().zip(&copy_from).filter(|(s, _)| loaded(s)) {
        let bytes = image.segment_bytes(s);
        mem.write(GuestAddr(s.vaddr + from), &bytes[from as usize..])?;
    }
    if let Some(tables) = &tables {
        for (i, table) in tables.tables().iter().enumerate() {
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            mem.write(GuestAddr(paging::TABLES + i as u64 * paging::PAGE), &bytes)?;
        }
    }
    mem.write(GuestAddr(area.args), &args)?;
    stats.timeline.loaded = Some(Instant::now());

    let kvm_clock = match (&mut vm, &tables) {
        (Some(vm), Some(tables)) => {
            let gdt: Vec<u8> = paging::BOOT_GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
            mem.write(GuestAddr(paging::BOOT_GDT), &gdt)?;
            let gdt_limit = (gdt.len() - 1) as u16;
            // Straight into ring 3 when the image says how (about 0.4 ms of
            // emulated ring-0 instructions fewer under PVM), unless
            // `SKIFF_RING0_START` is set (for comparison).
            let start = match image.ring3_entry {
                Some(r) if std::env::var_os("SKIFF_RING0_START").is_none() => kvm::Start::Ring3(r),
                _ => kvm::Start::Ring0 { entry: image.entry },
            };
            stats.cpu =
                Some(vm.setup_long_mode(start, paging::BOOT_INFO, tables.root(), (paging::BOOT_GDT, gdt_limit))?);
            Some((vm.tsc_hz()?, vm.guest_tsc()))
        }
        _ => None,
    };
    stats.guest_mem = mem_size;
    let mut boot = BootInfo {
        magic: BOOT_INFO_MAGIC,
        abi_version: ABI_VERSION,
        log_level: config.log_level,
        mem_size,
        heap_start,
        heap_end,
        tsc_hz: 0,
        wall_nanos: 0,
        tsc_at_wall: 0,
        shared: area.shared,
        args: area.args,
        argc: config.args.len() as u32,
        args_len: args.len() as u32,
        page_table_root: tables.as_ref().map_or(0, PageTables::root),
        device_count: (nics.len() + disks.len()) as u32,
        reserved: 0,
        devices: [DeviceInfo { kind: 0, reserved: 0, name: [0; 32], data: [0; 32] }; MAX_DEVICES],
        hypercall: if process { process::hypercall_entry() } else { 0 },
    };
    for (slot, nic) in boot.devices.iter_mut().zip(nics.iter()) {
        slot.kind = DeviceKind::Net as u32;
        slot.name[..nic.rings.nic.len()].copy_from_slice(nic.rings.nic.as_bytes());
        slot.data = nic.info(config.net.guest_spin).encode();
    }
    for (slot, d) in boot.devices[nics.len()..].iter_mut().zip(disks.iter()) {
        slot.kind = DeviceKind::Block as u32;
        slot.name[..d.name.len()].copy_from_slice(d.name.as_bytes());
        slot.data = d.info.encode();
    }
    let disk_fds: Vec<i32> = disks.iter().map(disk::Disk::fd).collect();

    let limits = monitor::Limits { deadline: deadline.map(|(at, _)| at), grace: config.stop_grace };
    let mut monitor = monitor::Monitor::new(limits, &mem, area.shared).map_err(TenderError::Watchdog)?;
    let nic_rings: Vec<net::NicRings> = nics.iter().map(|n| n.rings.clone()).collect();
    let tx_sides = nics
        .iter()
        .map(|n| match &n.host {
            net::Host::Tap(tap) => tap.try_clone().map(|t| netio::TxSide::new(Some(t))),
            net::Host::User(_) => Ok(netio::TxSide::new(None)),
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(TenderError::Watchdog)?;
    let io_shared = Arc::new(netio::IoShared::new(tx_sides).map_err(TenderError::Watchdog)?);
    // Process mode pins reads and writes to known descriptors: TAP devices
    // are known now; a user network accepts sockets after lockdown.
    let tap_fds: Option<Vec<i32>> = nics
        .iter()
        .zip(&io_shared.tx)
        .map(|(n, side)| match &n.host {
            net::Host::Tap(tap) => Some([tap.fd(), side.tap_fd()?]),
            net::Host::User(_) => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(|fds| fds.concat());
    let io_thread = if nics.is_empty() {
        None
    } else {
        let kicker = ThreadKicker::current();
        let io = netio::IoThread::start(nics, mem.clone(), io_shared.clone(), config.net.io_spin, kicker, readiness);
        Some(io.map_err(TenderError::Watchdog)?)
    };

    let proc_status = if config.stats { stats::ProcStatus::open() } else { stats::ProcStatus::skipped() };
    let sampler = config.profile.as_ref().map(|_| Arc::new(profile::Sampler::new(&regions)));
    if sampler.is_some() {
        // The flame graph's renderer uses hash maps, whose keys this
        // thread draws from the kernel the first time only: now, while
        // `getrandom` is still allowed.
        let _ = std::collections::hash_map::RandomState::new();
    }
    // Process mode: everything but the lockdown itself before the clock,
    // so that the TSC is measured over as much of the set-up as possible
    // (`process::TscClock`) and nothing waits for it.
    let process_set_up = if process {
        let cpu = process::ProcessCpu::new(&image, &mem, area.boot_info, monitor.state().ending_flag())?;
        if let Some(sampler) = &sampler {
            process::attach_sampler(sampler, &mem)?;
        }
        let fds = match tap_fds {
            None => seccomp::ProcessFds::default(),
            Some(taps) => {
                let mut both = vec![
                    monitor.state().wake.as_raw_fd(),
                    io_shared.rx_notify.as_raw_fd(),
                    io_shared.doorbell.as_raw_fd(),
                ];
                both.extend(taps);
                let mut write = vec![libc::STDOUT_FILENO, libc::STDERR_FILENO];
                write.extend(config.console_fd);
                write.extend(profile_file.as_ref().map(AsRawFd::as_raw_fd));
                write.extend(&both);
                seccomp::ProcessFds { write, read: both, ..Default::default() }
            }
        };
        let fds = seccomp::ProcessFds { status: proc_status.fd(), pid: std::process::id() as i32, ..fds };
        Some((cpu, seccomp::filter_with_disks(user_net, &seccomp::Sandboxed::Process(fds), &disk_fds)?))
    } else {
        None
    };

    let (tsc_hz, tsc_now) = match kvm_clock {
        Some(clock) => clock,
        None => (tsc_clock.as_ref().map_or(0, process::TscClock::hz), Some(process::rdtsc())),
    };
    let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    boot.tsc_hz = tsc_hz;
    boot.wall_nanos = wall.as_nanos() as u64;
    boot.tsc_at_wall = tsc_now.unwrap_or(0);
    mem.write_obj(GuestAddr(area.boot_info), &boot)?;
    if process {
        protect(&mem, &regions)?;
    }
    stats.guest.hz = tsc_hz;
    stats.guest.at_first_run = tsc_now;
    stats.timeline.vcpu_ready = Some(Instant::now());
    let profiler = match (&sampler, &config.profile) {
        (Some(sampler), Some(p)) => {
            let me = ThreadKicker::current();
            let target = if process { profile::Target::Process(me) } else { profile::Target::Kvm(me) };
            Some(profile::Profiler::start(sampler.clone(), p.hz, target)?)
        }
        _ => None,
    };
    // Last before the lockdown: see `Monitor::new`.
    monitor.spawn().map_err(TenderError::Watchdog)?;
    let mut cpu: Box<dyn serve::RunGuest> = match (vm, process_set_up) {
        (Some(vm), _) => {
            let how = seccomp::Sandboxed::Kvm(seccomp::KvmFds { vcpu: vm.vcpu_fd() });
            seccomp::lock_down_with_disks(user_net, &how, &disk_fds)?;
            Box::new(vm)
        }
        (None, Some((cpu, filter))) => {
            seccomp::install(&filter)?;
            Box::new(cpu)
        }
        (None, None) => unreachable!("process mode sets up its CPU"),
    };
    let mut guest = serve::Guest {
        mem: &mem,
        shared: area.shared,
        image: &image,
        regions: &regions,
        console,
        stats: &mut stats,
        deadline,
        nics: &nic_rings,
        disks: &disks,
        bounce: Vec::new(),
        io: &io_shared,
        monitor: monitor.state(),
        sampler: sampler.as_deref(),
    };
    let outcome = guest.serve(cpu.as_mut());
    // Before anything else: the vCPU thread is interrupted no more.
    let samples = profiler.map(profile::Profiler::finish);
    stats.guest.at_end = cpu.guest_tsc();
    monitor.stand_down();
    stats.net = io_thread.map(netio::IoThread::finish).unwrap_or_default();
    stats.timeline.ended = Some(Instant::now());
    stats.guest.ring3_entry = mem.read_obj(GuestAddr(area.shared + SHARED_TSC_RING3_ENTRY as u64)).unwrap_or(0);
    stats.guest.main = mem.read_obj(GuestAddr(area.shared + SHARED_TSC_MAIN as u64)).unwrap_or(0);
    let found: u64 = mem.read_obj(GuestAddr(area.shared + SHARED_SPIN_FOUND as u64)).unwrap_or(0);
    let missed: u64 = mem.read_obj(GuestAddr(area.shared + SHARED_SPIN_MISSED as u64)).unwrap_or(0);
    stats.guest_spins = (found != 0 || missed != 0).then_some((found, missed));
    if config.stats {
        stats.guest_resident = mem.resident_bytes();
        stats.tender_peak_rss = proc_status.peak_rss();
    }
    let profile = match (samples, &mut profile_file, &config.profile) {
        (Some(samples), Some(file), Some(p)) => {
            let name = config.image.file_name().map_or_else(|| "guest".into(), |n| n.to_string_lossy());
            let title = format!("{name}: {} samples at {} Hz", samples.samples(), p.hz);
            Some(samples.write(&image, file, &p.path, p.svg(), &title).map(|()| (samples.samples(), p.path.clone())))
        }
        _ => None,
    };
    Ok(RunReport {
        outcome,
        stats,
        profile,
        remains: Some(Remains { monitor, _sampler: sampler, _cpu: cpu, _mem: mem, _image: image }),
    })
}

/// Process mode: gives every page of guest memory the protection its
/// region has (W^X as in the page tables; read-only pages read-only), and
/// every page outside the regions none (page 0's neighbours, the
/// supervisor's segments, the stack's guard page, the gaps).
fn protect(mem: &GuestMemory, regions: &[paging::Region]) -> Result<(), TenderError> {
    let mut sorted: Vec<&paging::Region> = regions.iter().collect();
    sorted.sort_by_key(|r| r.start);
    let mut at = mem.low();
    for r in sorted {
        if r.start > at {
            mem.protect(at, r.start, libc::PROT_NONE)?;
        }
        let prot = libc::PROT_READ
            | if r.perm.write { libc::PROT_WRITE } else { 0 }
            | if r.perm.exec { libc::PROT_EXEC } else { 0 };
        // The mapping starts readable and writable: those regions (the
        // heap, most of it) need no call.
        if prot != libc::PROT_READ | libc::PROT_WRITE {
            mem.protect(r.start, r.end, prot)?;
        }
        at = r.end;
    }
    if at < mem.size() {
        mem.protect(at, mem.size(), libc::PROT_NONE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_nul_separated_and_bounded() {
        assert_eq!(encode_args(&["a".into(), "b c".into()]).unwrap(), b"a\0b c\0");
        assert!(matches!(encode_args(&["x\0y".into()]), Err(TenderError::ArgHasNul(0))));
        assert!(matches!(encode_args(&["x".repeat(ARGS_MAX)]), Err(TenderError::ArgsTooLong(_))));
    }

    #[test]
    fn outcomes_map_to_distinct_statuses() {
        let statuses = [
            Outcome::Exited(3).status(),
            Outcome::Aborted { reason: AbortReason::Panic, message: String::new() }.status(),
            Outcome::Aborted { reason: AbortReason::OutOfMemory, message: String::new() }.status(),
            Outcome::Fault { frame: FaultFrame::default(), report: String::new() }.status(),
            Outcome::BadHypercall(GuestError::PortRead(0)).status(),
            Outcome::Timeout(Duration::ZERO).status(),
            Outcome::Stopped("SIGTERM").status(),
            Outcome::VmFailure(VmFailure::Halted).status(),
        ];
        let mut sorted = statuses.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), statuses.len());
        assert_eq!(Outcome::Exited(0).message(), None);
    }
}
