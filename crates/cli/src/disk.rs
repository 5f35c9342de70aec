//! `skiff disk create|inspect|check|dump FILE`: make a store on a disk
//! image and look into one without booting, with the same code the guest
//! runs (`skiff-store`).

use clap::{Args, Subcommand};
use skiff_store::format::{PAGE_SIZE, Superblock};
use skiff_store::{FileDevice, Options, Store, StoreError, block_on};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DiskArgs {
    #[command(subcommand)]
    command: DiskCmd,
}

#[derive(Subcommand, Debug)]
enum DiskCmd {
    /// Create a disk image holding an empty store.
    Create {
        /// The image file to create.
        file: PathBuf,
        /// Its size: 64M, 1G, 262144B (at least 256K).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Bytes per sector of the disk it will be: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        sector_size: u32,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show a store's format, sizes, generation and usage.
    Inspect(Target),
    /// Verify every page, the tree and the space accounting; one line per problem.
    Check(Target),
    /// Print keys and values (escaped), one `KEY<TAB>VALUE` line each, in key order.
    Dump {
        #[command(flatten)]
        target: Target,
        /// Only the keys that start with this (escapes like \x00 allowed).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// The disk image.
    file: PathBuf,
    /// The disk's sector size (default: the one the store records).
    #[arg(long)]
    sector_size: Option<u32>,
}

/// Why a `skiff disk` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot create {path}: {source}{}", if source.kind() == std::io::ErrorKind::AlreadyExists { " (--force overwrites it)" } else { "" })]
    Create { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("a prefix with a bad escape: {0:?}")]
    Prefix(String),
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),
}

fn parse_size(s: &str) -> Result<u64, String> {
    skiff_tender::options::parse_size(s).map_err(|e| e.to_string())
}

/// Runs a `skiff disk` command; the exit status.
pub fn run(a: DiskArgs) -> Result<u8, DiskError> {
    match a.command {
        DiskCmd::Create { file, size, sector_size, force } => create(&file, size, sector_size, force),
        DiskCmd::Inspect(t) => inspect(&t),
        DiskCmd::Check(t) => check(&t),
        DiskCmd::Dump { target, prefix } => dump(&target, prefix.as_deref()),
    }
}

fn store_err(path: &Path) -> impl Fn(StoreError) -> DiskError + '_ {
    move |source| DiskError::Store { path: path.to_path_buf(), source }
}

fn create(path: &Path, size: u64, sector_size: u32, force: bool) -> Result<u8, DiskError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(store_err(path)(StoreError::UnsupportedSectorSize(sector_size)));
    }
    if force {
        let _ = std::fs::remove_file(path);
    }
    let dev = FileDevice::create(path, sector_size, size)
        .map_err(|source| DiskError::Create { path: path.to_path_buf(), source })?;
    let store = match block_on(Store::create(dev, Options::default())) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(store_err(path)(e));
        }
    };
    let info = store.info();
    println!(
        "created {}: a store of {} bytes ({} pages of {} bytes, {}-byte sectors)",
        path.display(),
        info.pages * u64::from(info.page_size),
        info.pages,
        info.page_size,
        info.sector_size
    );
    Ok(0)
}

/// The newest valid superblock on `path`, if there is one.
fn recorded(path: &Path) -> Result<Option<Superblock>, DiskError> {
    let dev =
        FileDevice::open(path, 512, true).map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
    let mut best: Option<Superblock> = None;
    for slot in 0..2u64 {
        let mut page = vec![0; PAGE_SIZE];
        if block_on(skiff_store::BlockDevice::read(&dev, slot * 8, &mut page)).is_ok()
            && let Ok(sb) = Superblock::decode(&page)
            && best.is_none_or(|b| sb.rank() > b.rank())
        {
            best = Some(sb);
        }
    }
    Ok(best)
}

fn device(t: &Target) -> Result<FileDevice, DiskError> {
    let sector_size = match t.sector_size {
        Some(s) => s,
        // The one the store records (512 when there is none: opening then
        // says why).
        None => recorded(&t.file)?.map_or(512, |sb| sb.sector_size),
    };
    if sector_size != 512 && sector_size != 4096 {
        return Err(store_err(&t.file)(StoreError::UnsupportedSectorSize(sector_size)));
    }
    FileDevice::open(&t.file, sector_size, true).map_err(|source| DiskError::Open { path: t.file.clone(), source })
}

fn open(t: &Target) -> Result<Store<FileDevice>, DiskError> {
    block_on(Store::open(device(t)?, Options::default())).map_err(store_err(&t.file))
}

fn inspect(t: &Target) -> Result<u8, DiskError> {
    let store = open(t)?;
    // Walk the tree now (open leaves it for later when the newest commit
    // is confirmed): damage is what `info` reports below.
    match block_on(store.finish_open()) {
        Ok(()) | Err(StoreError::Damaged(_)) => {}
        Err(e) => return Err(store_err(&t.file)(e)),
    }
    let info = store.info();
    let kib = |pages: u64| pages * u64::from(info.page_size) / 1024;
    let confirmed = recorded(&t.file)?.is_some_and(|sb| sb.confirmed());
    let mode = if confirmed { "confirmed" } else { "not yet confirmed" };
    println!("store        {}", t.file.display());
    println!(
        "format       version {}, {}-byte pages, {}-byte sectors",
        info.format_version, info.page_size, info.sector_size
    );
    println!("size         {} bytes ({} pages)", info.pages * u64::from(info.page_size), info.pages);
    println!("generation   {} (last commit {mode})", info.generation);
    println!("keys         {}", info.keys);
    println!("used         {} pages ({} KiB)", info.used_pages, kib(info.used_pages));
    println!("free         {} pages ({} KiB)", info.free_pages, kib(info.free_pages));
    if let Some(g) = info.discarded {
        println!("note         generation {g} was incomplete (a crash during its commit) and is set aside");
    }
    if info.damage > 0 {
        println!("damage       {} problems: run `skiff disk check {}`", info.damage, t.file.display());
        return Ok(1);
    }
    Ok(0)
}

fn check(t: &Target) -> Result<u8, DiskError> {
    let dev = device(t)?;
    let report = block_on(skiff_store::check(&dev)).map_err(store_err(&t.file))?;
    if let Some(g) = report.discarded {
        println!("note: generation {g} was incomplete (a crash during its commit) and is set aside");
    }
    for p in &report.problems {
        println!("{}: {p}", t.file.display());
    }
    if !report.problems.is_empty() {
        eprintln!("skiff: {}: {} problems", t.file.display(), report.problems.len());
        return Ok(1);
    }
    println!(
        "{}: ok: generation {}, {} keys, depth {}, {} pages used, {} free",
        t.file.display(),
        report.superblock.generation,
        report.keys,
        report.depth,
        report.used,
        report.free
    );
    Ok(0)
}

/// Undoes `\xNN`, `\n`, `\t`, `\\` and the like in a prefix typed on the
/// command line.
fn unescape(s: &str) -> Result<Vec<u8>, DiskError> {
    let bad = || DiskError::Prefix(s.to_string());
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next().ok_or_else(bad)? {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'x' => {
                let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn dump(t: &Target, prefix: Option<&str>) -> Result<u8, DiskError> {
    let prefix = prefix.map(unescape).transpose()?.unwrap_or_default();
    let store = open(t)?;
    let snapshot = store.snapshot();
    let mut scan = snapshot.scan(&prefix);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut status = 0;
    block_on(async {
        while let Some(entry) = scan.next().await {
            match entry {
                Ok((k, v)) => writeln!(out, "{}\t{}", k.escape_ascii(), v.escape_ascii()).map_err(DiskError::Stdout)?,
                Err(e) => {
                    out.flush().map_err(DiskError::Stdout)?;
                    eprintln!("skiff: {}: {e}", t.file.display());
                    status = 1;
                    break;
                }
            }
        }
        out.flush().map_err(DiskError::Stdout)
    })?;
    Ok(status)
}
