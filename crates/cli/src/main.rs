//! `skiff`: create, build, run and inspect Skiff services.
//!
//! - `skiff new NAME [--template https]` makes a service crate that builds
//!   and runs as it is.
//! - `skiff build [DIR]` compiles a service crate into a checked image.
//! - `skiff run [DIR|IMAGE] [-- ARGS]` builds when needed and boots the
//!   image with the tender (in this process), passing ARGS to the service.
//! - `skiff inspect IMAGE` shows an image's size, segments, entry points,
//!   manifest and check results.

#![forbid(unsafe_code)]

mod new;

use clap::{Args, Parser, Subcommand};
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
    /// Build (when needed) and boot a service under the tender.
    #[command(after_help = skiff_tender::options::after_help())]
    Run(Box<RunArgs>),
    /// Show what is inside an image.
    Inspect {
        /// The image file.
        image: PathBuf,
    },
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

fn run(a: RunArgs) -> Result<u8, CliError> {
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
    let config = options.config(image, a.args);
    let mut stdout = skiff_tender::console::Stdout::new().map_err(CliError::Stdout)?;
    let report = skiff_tender::run(&config, &mut stdout)?;
    if let Some(message) = report.outcome.message() {
        eprintln!("skiff: {message}");
    }
    if options.stats {
        eprintln!("{}", report.stats.report());
    }
    Ok(report.outcome.status())
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

fn main() -> ExitCode {
    // Before `skiff build` starts its first thread: the tender's seccomp
    // allow-list depends on it (see the function).
    skiff_tender::sys::use_one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return skiff_tender::options::usage_error(&e),
    };
    let result = match cli.command {
        Cmd::New(a) => new::create(&a).map(|()| 0).map_err(CliError::from),
        Cmd::Build(a) => build(a),
        Cmd::Run(a) => run(*a),
        Cmd::Inspect { image } => inspect(&image),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("skiff: {e}");
            ExitCode::from(skiff_abi::exit::TENDER_ERROR)
        }
    }
}
