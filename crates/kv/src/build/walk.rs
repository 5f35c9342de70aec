//! The files of a directory tree, in a deterministic order.

use super::{BakeOptions, BuildError};
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::string::String;
use std::time::UNIX_EPOCH;
use std::vec::Vec;
use std::{format, vec};

/// One file to bake.
pub(super) struct File {
    /// Its key: `/` and the path below the baked directory.
    pub key: String,
    /// Where it was read from (through any symbolic links).
    pub source: PathBuf,
    /// Its bytes.
    pub body: Vec<u8>,
    /// Its modification time, seconds since the UNIX epoch, clamped.
    pub modified: u64,
}

/// The files below `dir`, sorted by key.
pub(super) fn walk(dir: &Path, options: &BakeOptions) -> Result<Vec<File>, BuildError> {
    let root = fs::canonicalize(dir).map_err(io(dir))?;
    if !fs::metadata(&root).map_err(io(dir))?.is_dir() {
        return Err(BuildError::NotADirectory(dir.into()));
    }
    let mut walker = Walker { root: root.clone(), open: vec![], files: vec![], options: *options };
    walker.dir(&root, dir, "")?;
    walker.files.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(walker.files)
}

/// The state of one walk.
struct Walker {
    /// The baked directory, canonical.
    root: PathBuf,
    /// The canonical paths of the directories being walked, outermost
    /// first: a symbolic link to one of them would loop.
    open: Vec<PathBuf>,
    /// The files found so far.
    files: Vec<File>,
    /// How to record them.
    options: BakeOptions,
}

impl Walker {
    /// Walks the directory whose canonical path is `real`, reached as
    /// `shown`, whose files get keys starting with `prefix`.
    fn dir(&mut self, real: &Path, shown: &Path, prefix: &str) -> Result<(), BuildError> {
        self.open.push(real.into());
        let mut entries = fs::read_dir(real).and_then(|dir| dir.collect::<Result<Vec<_>, _>>()).map_err(io(shown))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let os_name = entry.file_name();
            let shown = shown.join(&os_name);
            let Some(name) = os_name.to_str() else {
                return Err(BuildError::NonUtf8Name(shown));
            };
            if name.starts_with('.') {
                continue;
            }
            if name.contains('\\') || name.chars().any(char::is_control) {
                return Err(BuildError::UnservableName(shown));
            }
            let kind = entry.file_type().map_err(io(&shown))?;
            let (real, metadata) = if kind.is_symlink() {
                let target = fs::canonicalize(&shown).map_err(io(&shown))?;
                if !target.starts_with(&self.root) {
                    return Err(BuildError::SymlinkEscapes { link: shown, target });
                }
                let metadata = fs::metadata(&target).map_err(io(&shown))?;
                (target, metadata)
            } else {
                (real.join(name), entry.metadata().map_err(io(&shown))?)
            };
            let key = format!("{prefix}/{name}");
            if metadata.is_dir() {
                if self.open.contains(&real) {
                    return Err(BuildError::SymlinkCycle(shown));
                }
                self.dir(&real, &shown, &key)?;
            } else if metadata.is_file() {
                let body = fs::read(&real).map_err(io(&shown))?;
                let modified = self.modified(&metadata);
                self.files.push(File { key, source: shown, body, modified });
            } else {
                return Err(BuildError::NotAFile(shown));
            }
        }
        self.open.pop();
        Ok(())
    }

    /// The modification time to record: seconds since the UNIX epoch (0
    /// when unknown or earlier), clamped.
    fn modified(&self, metadata: &Metadata) -> u64 {
        let seconds = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_secs());
        self.options.mtime_clamp.map_or(seconds, |clamp| seconds.min(clamp))
    }
}

/// Wraps an I/O error with the path it concerns.
fn io(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.into(), source }
}
