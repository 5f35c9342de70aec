//! `skiff`: create, build, run and inspect Skiff services.
//!
//! - `skiff new NAME [--template https]` makes a service crate that builds
//!   and runs as it is.
//! - `skiff build [DIR]` compiles a service crate into a checked image.
//! - `skiff run [DIR|IMAGE] [-- ARGS]` builds when needed and boots the
//!   image with the tender (in this process), passing ARGS to the service;
//!   `--vmm qemu [--machine microvm|q35]` boots it under QEMU instead.
//! - `skiff inspect IMAGE` shows an image's size, segments, entry points,
//!   manifest and check results.
//! - `skiff package IMAGE [--tag NAME] [--output FILE]` writes the image as
//!   an OCI image archive for podman, skopeo and containerd.
//! - `skiff disk create|inspect|check|dump FILE` makes a key-value store
//!   on a disk image and looks into one (`disk.rs`).

#![forbid(unsafe_code)]

mod disk;
mod new;
mod qemu;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use skiff_build::{BuildOptions, Profile};
use skiff_tender::options::RunOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "skiff", version, about = "Build and run Rust services as Skiff unikernels")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new service crate.
    New(new::NewArgs),
    /// Build a service crate into an image.
    Build(BuildArgs),
    /// Build (when needed) and boot a service under the tender (or QEMU).
    #[command(after_help = skiff_tender::options::after_help())]
    Run(Box<RunArgs>),
    /// Show what is inside an image.
    Inspect {
        /// The image file.
        image: PathBuf,
    },
    /// Write an image as an OCI image archive (podman load, skopeo copy, ctr image import).
    Package(PackageArgs),
    /// Create, inspect, check or dump a key-value store on a disk image.
    Disk(disk::DiskArgs),
}

#[derive(Args, Debug)]
struct PackageArgs {
    /// The image file, or a service crate directory (built first).
    image: PathBuf,
    /// The image's name (default: the image file's name, as
    /// localhost/NAME:latest).
    #[arg(long)]
    tag: Option<String>,
    /// The archive to write (default: NAME-oci.tar in this directory).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct BuildArgs {
    /// The service crate's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Build without optimisations (faster to compile, bigger and slower).
    #[arg(long)]
    debug: bool,
    /// The binary to build, if the crate has several.
    #[arg(long)]
    bin: Option<String>,
    /// Cargo's target directory for the guest build.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Print only errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A service crate directory (built first) or an image file.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Build without optimisations.
    #[arg(long)]
    debug: bool,
    /// The binary to build, if the crate has several.
    #[arg(long)]
    bin: Option<String>,
    /// Cargo's target directory for the guest build.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Print only errors while building.
    #[arg(long, short)]
    quiet: bool,
    /// The monitor: Skiff's own (`tender`, in this process) or QEMU
    /// (`qemu-system-x86_64`, through the image's PVH entry; `SKIFF_QEMU`
    /// names another binary). Under QEMU the tender's tuning options are
    /// refused and a stop signal ends the guest at once.
    #[arg(long, value_enum, default_value = "tender")]
    vmm: qemu::Vmm,
    /// QEMU's machine type (with --vmm qemu): microvm (virtio-mmio, no
    /// firmware, fast) or q35 (virtio-pci, SeaBIOS, seconds to boot).
    #[arg(long, value_enum)]
    machine: Option<qemu::Machine>,
    #[command(flatten)]
    options: RunOptions,
    /// Arguments for the service.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Failures of the `skiff` command itself.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Build(#[from] skiff_build::BuildError),
    #[error(transparent)]
    Tender(#[from] skiff_tender::TenderError),
    #[error(transparent)]
    Check(#[from] skiff_build::CheckError),
    #[error(transparent)]
    New(#[from] new::NewError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("cannot use standard output: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    #[error(transparent)]
    Package(#[from] skiff_oci::package::PackageError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
}

impl CliError {
    /// The exit status: options that do not go together are a bad command
    /// line, anything else means the guest could not be started.
    fn status(&self) -> u8 {
        match self {
            CliError::Qemu(qemu::QemuError::TenderOnly(_) | qemu::QemuError::MachineWithoutQemu) => {
                skiff_abi::exit::USAGE
            }
            // A disk image that cannot be read as a store: like a problem
            // `skiff disk check` finds, not a guest that failed to start.
            CliError::Disk(_) => 2,
            _ => skiff_abi::exit::TENDER_ERROR,
        }
    }
}

fn build_options(
    dir: &Path,
    debug: bool,
    bin: Option<String>,
    target_dir: Option<PathBuf>,
    quiet: bool,
) -> BuildOptions {
    BuildOptions {
        crate_dir: dir.to_path_buf(),
        target_dir,
        profile: if debug { Profile::Debug } else { Profile::Release },
        bin,
        quiet,
    }
}

fn build(a: BuildArgs) -> Result<u8, CliError> {
    let built = skiff_build::build(&build_options(&a.dir, a.debug, a.bin, a.target_dir, a.quiet))?;
    println!("{}", skiff_build::summary(&built));
    Ok(0)
}

/// The options of `skiff run` QEMU can carry out; any other given on the
/// command line is the tender's alone.
const QEMU_OPTIONS: &[&str] = &[
    "path",
    "debug",
    "bin",
    "target_dir",
    "quiet",
    "vmm",
    "machine",
    "mem",
    "timeout",
    "log",
    "net",
    "net_mac",
    "publish",
    "net_outbound",
    "disk",
    "args",
];

/// The tender-only options given on `skiff run`'s command line `m`, by
/// their long names.
fn tender_only(m: &ArgMatches) -> Vec<String> {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("the run subcommand");
    run.get_arguments()
        .filter(|arg| !QEMU_OPTIONS.contains(&arg.get_id().as_str()))
        .filter(|arg| m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| arg.get_long().map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}")))
        .collect()
}

fn run(a: RunArgs, matches: &ArgMatches) -> Result<u8, CliError> {
    if a.vmm == qemu::Vmm::Qemu {
        let refused = tender_only(matches);
        if !refused.is_empty() {
            return Err(qemu::QemuError::TenderOnly(refused).into());
        }
    } else if a.machine.is_some() {
        return Err(qemu::QemuError::MachineWithoutQemu.into());
    }
    if !a.path.exists() {
        return Err(CliError::Missing(a.path));
    }
    let image = if a.path.is_dir() {
        let built = skiff_build::build(&build_options(&a.path, a.debug, a.bin, a.target_dir, a.quiet))?;
        if !a.quiet {
            eprintln!("{}", skiff_build::summary(&built));
        }
        built.image
    } else {
        a.path
    };
    if a.vmm == qemu::Vmm::Qemu {
        return run_qemu(image, a.machine.unwrap_or_default(), a.options, a.args);
    }
    let mut options = a.options;
    // A service with NICs and no --net runs on the user network: reachable
    // through --publish, no TAP device or privileges needed.
    if options.net.is_empty() {
        let declared = skiff_tender::load_image(&image, true)?.devices;
        for d in declared.iter().filter(|d| d.kind == skiff_abi::DeviceKind::Net) {
            eprintln!("skiff: no --net given: NIC {:?} goes on the user network (--net {}=user)", d.name, d.name);
            options.net.push(skiff_tender::net::NicSpec { name: d.name.clone(), tap: "user".into() });
        }
    }
    let mut config = options.config(image, a.args);
    let mut stdout = skiff_tender::console::Stdout::new().map_err(CliError::Stdout)?;
    config.console_fd = Some(stdout.fd());
    let mut report = skiff_tender::run(&config, &mut stdout)?;
    report.leave_to_exit();
    if let Some(message) = report.outcome.message() {
        eprintln!("skiff: {message}");
    }
    if options.stats {
        eprintln!("{}", report.stats.report());
    }
    if let Some(line) = skiff_tender::profile::summary(&report) {
        eprintln!("skiff: {line}");
    }
    Ok(report.outcome.status())
}

fn run_qemu(image: PathBuf, machine: qemu::Machine, o: RunOptions, args: Vec<String>) -> Result<u8, CliError> {
    let elf = skiff_tender::load_image(&image, true)?;
    let declared = elf.devices.clone();
    let publish = qemu::choose_ports(&o.publish)?;
    let spec = qemu::Spec {
        qemu: std::env::var("SKIFF_QEMU").unwrap_or_else(|_| qemu::QEMU.into()),
        machine,
        image,
        mem: o.mem,
        log: o.log,
        args,
        declared,
        net: o.net,
        macs: o.net_mac,
        publish,
        outbound: o.net_outbound.unwrap_or(skiff_tender::net::Outbound::AsDeclared),
        disks: o.disk,
    };
    let arguments = qemu::arguments(&spec)?;
    qemu::prepare_disks(&spec.disks).map_err(qemu::QemuError::from)?;
    for d in spec.declared.iter().filter(|d| d.kind == skiff_abi::DeviceKind::Net) {
        match spec.net.iter().find(|s| s.name == d.name) {
            Some(s) if !s.is_user() => eprintln!("skiff: NIC {:?} is on TAP device {}", d.name, s.tap),
            _ => eprintln!("skiff: NIC {:?} is on QEMU's user network (guest 10.0.2.15 by DHCP)", d.name),
        }
    }
    for d in &spec.disks {
        let ro = if d.read_only { ", read-only" } else { "" };
        eprintln!("skiff: disk {:?} is {} (virtio-blk, serial {:?}{ro})", d.name, d.path.display(), d.name);
    }
    for p in &spec.publish {
        eprintln!("skiff: {}/{} -> guest port {}", p.host, p.proto, p.guest_port);
    }
    let ending = qemu::run(&spec.qemu, &arguments, o.timeout, move |rip| elf.symbolize(rip))?;
    if let Some(message) = ending.message() {
        eprintln!("skiff: {message}");
    }
    Ok(ending.status())
}

fn inspect(path: &Path) -> Result<u8, CliError> {
    let image = skiff_tender::load_image(path, false)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("image        {}", path.display());
    println!("file size    {size} bytes ({:.1} KiB)", size as f64 / 1024.0);
    let abi_note = if image.abi_version == skiff_abi::ABI_VERSION {
        "matches this tender".to_string()
    } else {
        format!("this tender speaks {}: it will refuse the image", skiff_abi::ABI_VERSION)
    };
    println!("ABI version  {} ({abi_note})", image.abi_version);
    println!("entry        {:#x} (hvt, 64-bit)", image.entry);
    match image.pvh_entry {
        Some(e) => println!("PVH entry    {e:#x} (32-bit, for QEMU/Firecracker)"),
        None => println!("PVH entry    none"),
    }
    match image.process_entry {
        Some(e) => println!("process entry {e:#x} (--sandbox process)"),
        None => println!("process entry none (built before process mode)"),
    }
    if image.devices.is_empty() {
        println!("devices      none");
    }
    for d in &image.devices {
        println!("device       {} {:?}", d.kind.name(), d.name);
    }
    println!("segments     address       memory      file   permissions");
    for s in &image.segments {
        let perm = |on, c| if on { c } else { '-' };
        let (r, w, x) = (perm(s.readable(), 'r'), perm(s.writable(), 'w'), perm(s.executable(), 'x'));
        let ring = if s.supervisor() { "supervisor" } else { "user" };
        let stack = if s.stack() { " stack" } else { "" };
        println!("             {:#010x} {:>9} {:>9}   {r}{w}{x} {ring}{stack}", s.vaddr, s.memsz, s.filesz);
    }
    println!("image end    {:#x} (the heap starts here)", image.end());
    let functions = image.symbols().filter(|s| s.code && !s.undefined).count();
    if functions > 0 {
        println!("symbols      {functions}");
    }
    match skiff_build::check::check(&image) {
        Ok(r) => println!(
            "checks       ok: {} instructions ({} in the supervisor), no system calls, no undefined symbols, no SIMD in ring 0",
            r.instructions, r.supervisor_instructions
        ),
        Err(e) => {
            println!("checks       FAILED");
            eprintln!("skiff: {e}");
            return Ok(1);
        }
    }
    Ok(0)
}

fn package(a: PackageArgs) -> Result<u8, CliError> {
    use skiff_oci::package::{Facts, Reference};
    if !a.image.exists() {
        return Err(CliError::Missing(a.image));
    }
    let path = if a.image.is_dir() {
        skiff_build::build(&build_options(&a.image, false, None, None, true))?.image
    } else {
        a.image
    };
    // The tender's own checks, the ABI version's included: an image the
    // runtime would refuse is not packaged.
    let image = skiff_tender::load_image(&path, true)?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let reference = Reference::parse(a.tag.as_deref().unwrap_or(&stem))?;
    let name = reference.repository.rsplit('/').next().unwrap_or("image").to_string();
    let output = a.output.unwrap_or_else(|| PathBuf::from(format!("{name}-oci.tar")));
    let tmp = output.with_extension("tar.part");
    let write_err = |source| CliError::Write { path: output.clone(), source };
    let file = std::fs::File::create(&tmp).map_err(write_err)?;
    let written =
        skiff_oci::package::write(&image.data, &Facts::of(&image), &reference, std::io::BufWriter::new(file))?;
    std::fs::rename(&tmp, &output).map_err(write_err)?;
    println!("{} -> {} ({reference})", path.display(), output.display());
    println!("manifest     {}", written.manifest_digest);
    println!("image ID     {}", written.config_digest);
    for (k, v) in Facts::of(&image).labels() {
        println!("label        {k}={v}");
    }
    println!("load it      podman load -i {}   (or: ctr image import {})", output.display(), output.display());
    println!("run it       podman run --rm --runtime skiff-oci {reference}");
    Ok(0)
}

fn main() -> ExitCode {
    // Before `skiff build` starts its first thread: the tender's seccomp
    // allow-list depends on it (see the function).
    skiff_tender::sys::use_one_malloc_arena();
    let parsed = Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return skiff_tender::options::usage_error(&e),
    };
    let result = match cli.command {
        Cmd::New(a) => new::create(&a).map(|()| 0).map_err(CliError::from),
        Cmd::Build(a) => build(a),
        Cmd::Run(a) => run(*a, matches.subcommand_matches("run").expect("run's matches")),
        Cmd::Inspect { image } => inspect(&image),
        Cmd::Package(a) => package(a),
        Cmd::Disk(a) => disk::run(a).map_err(CliError::from),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("skiff: {e}");
            ExitCode::from(e.status())
        }
    }
}
