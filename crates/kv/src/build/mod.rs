//! The builder (cargo feature `build`): bakes a directory into a blob that
//! [`Store`](crate::Store) reads. It runs on the build host, in a service's
//! build script, and uses `std`.
//!
//! Three steps, one module each:
//! - `walk`: the directory's files, recursively, in a deterministic order;
//!   hidden names (starting with `.`) are skipped, symbolic links are
//!   followed only while they stay inside the directory;
//! - [`mime`]: each file's content type from its extension, and whether it
//!   is worth compressing;
//! - `encode`: ETags (FNV-1a 64 of the content), gzip variants at best
//!   compression (kept when at least 10% smaller), and the
//!   [layout](crate::format).
//!
//! The blob depends only on the files' names, contents and modification
//! times (clamped by [`BakeOptions::mtime_clamp`], which
//! [`bake_for_build_script`] takes from `SOURCE_DATE_EPOCH`), so the same
//! tree bakes to the same bytes.

mod encode;
pub mod mime;
mod walk;

use std::format;
use std::io;
use std::path::{Path, PathBuf};
use std::println;
use std::string::String;
use std::vec::Vec;

/// The environment variable that makes [`bake_for_build_script`] print a
/// one-line summary as a cargo warning (when set, non-empty and not `0`).
pub const VERBOSE_ENV: &str = "SKIFF_KV_VERBOSE";

/// Baking failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A file or directory could not be read, or the blob written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The directory to bake is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A file name is not UTF-8, so it cannot be a key.
    #[error("{0}: the file name is not UTF-8")]
    NonUtf8Name(PathBuf),
    /// A file name holds a backslash or a control character, which no URL
    /// path can name (and which would break build script output).
    #[error("{0}: a file name with a backslash or a control character cannot be served")]
    UnservableName(PathBuf),
    /// A symbolic link points outside the baked directory.
    #[error("{link} is a symbolic link to {target}, outside the baked directory")]
    SymlinkEscapes {
        /// The link.
        link: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A symbolic link points to a directory that contains it.
    #[error("{0} is a symbolic link to a directory that contains it")]
    SymlinkCycle(PathBuf),
    /// An entry is neither a regular file nor a directory (a socket, a
    /// FIFO, a device).
    #[error("{0} is neither a regular file nor a directory")]
    NotAFile(PathBuf),
    /// The blob would not fit the format's 32-bit offsets.
    #[error("the store would be larger than 4 GiB")]
    TooLarge,
    /// A variable cargo sets for build scripts is missing.
    #[error("{0} is not set: bake_for_build_script must run in a build script")]
    MissingEnv(&'static str),
    /// The name given for the baked blob is not a plain file name.
    #[error("{0:?} is not a plain file name for the baked store")]
    BadOutputName(String),
    /// `SOURCE_DATE_EPOCH` is not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds")]
    BadSourceDateEpoch(String),
}

/// How to bake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BakeOptions {
    /// Modification times later than this (seconds since the UNIX epoch)
    /// are recorded as this, for reproducible images. `None` records them
    /// as they are.
    pub mtime_clamp: Option<u64>,
}

impl BakeOptions {
    /// Options with modification times clamped to `seconds`.
    pub fn with_mtime_clamp(seconds: u64) -> Self {
        BakeOptions { mtime_clamp: Some(seconds) }
    }
}

/// What a bake produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Files baked.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Bytes the gzip variants save over the bodies they replace.
    pub gzip_saved: u64,
    /// Size of the blob.
    pub blob_len: usize,
}

impl core::fmt::Display for Summary {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} files, {} bytes, gzip saves {} bytes, store {} bytes",
            self.files, self.bytes, self.gzip_saved, self.blob_len
        )
    }
}

/// A finished bake, with the files it read.
struct Baked {
    blob: Vec<u8>,
    summary: Summary,
    sources: Vec<PathBuf>,
}

/// Bakes the directory `dir` into a blob, recording modification times as
/// they are.
pub fn bake(dir: impl AsRef<Path>) -> Result<Vec<u8>, BuildError> {
    bake_with(dir, &BakeOptions::default()).map(|(blob, _)| blob)
}

/// Bakes the directory `dir` into a blob, and says what it holds.
pub fn bake_with(dir: impl AsRef<Path>, options: &BakeOptions) -> Result<(Vec<u8>, Summary), BuildError> {
    run(dir.as_ref(), options).map(|baked| (baked.blob, baked.summary))
}

/// Bakes the directory `dir` into the file `out`.
pub fn bake_to(dir: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<Summary, BuildError> {
    let baked = run(dir.as_ref(), &BakeOptions::default())?;
    write(out.as_ref(), &baked.blob)?;
    Ok(baked.summary)
}

/// For a service's build script: bakes `$CARGO_MANIFEST_DIR/<dir>` into
/// `$OUT_DIR/<name>`, where [`include_store!`](crate::include_store) finds
/// it.
///
/// Tells cargo to run the script again when the directory, any baked file,
/// `SOURCE_DATE_EPOCH` or [`VERBOSE_ENV`] changes. Modification times are
/// clamped to `SOURCE_DATE_EPOCH` when it is set. Prints nothing else,
/// unless [`VERBOSE_ENV`] is set: then a one-line summary as a cargo
/// warning.
pub fn bake_for_build_script(dir: &str, name: &str) -> Result<Summary, BuildError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control);
    if !plain {
        return Err(BuildError::BadOutputName(name.into()));
    }
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let out_dir = env_path("OUT_DIR")?;
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed={VERBOSE_ENV}");
    let options = BakeOptions { mtime_clamp: source_date_epoch()? };
    let root = manifest_dir.join(dir);
    println!("cargo:rerun-if-changed={}", root.display());
    let baked = run(&root, &options)?;
    for source in &baked.sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    write(&out_dir.join(name), &baked.blob)?;
    let verbose = std::env::var_os(VERBOSE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if verbose {
        println!("cargo:warning=skiff-kv: {dir} -> {name}: {}", baked.summary);
    }
    Ok(baked.summary)
}

/// Walks and encodes.
fn run(dir: &Path, options: &BakeOptions) -> Result<Baked, BuildError> {
    let files = walk::walk(dir, options)?;
    let (blob, summary) = encode::encode(&files)?;
    let sources = files.into_iter().map(|file| file.source).collect();
    Ok(Baked { blob, summary, sources })
}

/// Writes the blob to `out`.
fn write(out: &Path, blob: &[u8]) -> Result<(), BuildError> {
    std::fs::write(out, blob).map_err(|source| BuildError::Io { path: out.into(), source })
}

/// A path from a variable cargo sets for build scripts.
fn env_path(var: &'static str) -> Result<PathBuf, BuildError> {
    std::env::var_os(var).map(PathBuf::from).ok_or(BuildError::MissingEnv(var))
}

/// `SOURCE_DATE_EPOCH`, when set.
fn source_date_epoch() -> Result<Option<u64>, BuildError> {
    match std::env::var_os("SOURCE_DATE_EPOCH") {
        None => Ok(None),
        Some(value) => {
            let text = value.to_string_lossy();
            text.trim().parse().map(Some).map_err(|_| BuildError::BadSourceDateEpoch(format!("{text}")))
        }
    }
}
