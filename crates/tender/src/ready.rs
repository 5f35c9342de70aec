//! Readiness: the service listens.
//!
//! The guest's runtime counts its TCP listeners in each transmit ring's
//! header ([`skiff_abi::ring::LISTENING`], with the first ports); the I/O
//! thread notices the count change in its loop (the runtime rings the
//! doorbell if the thread sleeps). The first listener makes the service
//! ready: the tender prints `skiff: ready (listening on ...)` (at the
//! `--log` level `info` and above) and, with `--ready-file PATH`, writes
//! PATH atomically: the text goes to a temporary file beside it, created
//! before the seccomp lockdown, which is then renamed to PATH. A stale PATH
//! from an earlier run is removed at start, so PATH appears only once this
//! guest listens.
//!
//! The file holds one line per listening port and one per published host
//! address relayed to it (user network):
//!
//! ```text
//! listening service 443
//! published 127.0.0.1:8443 443
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The ready file could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("--ready-file {path}: {source}")]
pub struct ReadyFileError {
    /// The file, or its temporary companion.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The `--ready-file`, prepared before the lockdown.
#[derive(Debug)]
pub struct ReadyFile {
    path: PathBuf,
    tmp_path: PathBuf,
    tmp: Option<File>,
}

impl ReadyFile {
    /// Removes a stale `path` and creates the temporary file beside it.
    pub fn prepare(path: &Path) -> Result<ReadyFile, ReadyFileError> {
        let err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ReadyFileError { path: p, source }
        };
        let name = path
            .file_name()
            .ok_or_else(|| err(path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, "names no file")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp_path = path.with_file_name(tmp_name);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(path)(e)),
        }
        let tmp = File::create(&tmp_path).map_err(err(&tmp_path))?;
        Ok(ReadyFile { path: path.to_path_buf(), tmp_path, tmp: Some(tmp) })
    }

    /// Writes `text` and renames the file into place (once).
    pub fn commit(&mut self, text: &str) -> std::io::Result<()> {
        let Some(mut tmp) = self.tmp.take() else { return Ok(()) };
        tmp.write_all(text.as_bytes())?;
        drop(tmp);
        std::fs::rename(&self.tmp_path, &self.path)
    }

    /// The file it becomes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadyFile {
    /// A guest that never listened leaves no temporary file behind.
    fn drop(&mut self) {
        if self.tmp.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// What one NIC's guest listens on, as the I/O thread saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The NIC.
    pub nic: String,
    /// The guest's ports (the first few).
    pub ports: Vec<u16>,
    /// Published host addresses relayed to those ports (user network).
    pub published: Vec<(std::net::SocketAddr, u16)>,
}

/// The ready file's text.
pub fn file_text(listening: &[Listening]) -> String {
    let mut text = String::new();
    for l in listening {
        for p in &l.ports {
            text.push_str(&format!("listening {} {p}\n", l.nic));
        }
        for (host, p) in &l.published {
            text.push_str(&format!("published {host} {p}\n"));
        }
    }
    text
}

/// The line the tender prints.
pub fn message(listening: &[Listening]) -> String {
    let mut parts = Vec::new();
    for l in listening {
        for p in &l.ports {
            let mut part = format!("guest port {p} of NIC {:?}", l.nic);
            let hosts: Vec<String> = l.published.iter().filter(|(_, g)| g == p).map(|(h, _)| h.to_string()).collect();
            if !hosts.is_empty() {
                part.push_str(&format!(", published at {}", hosts.join(", ")));
            }
            parts.push(part);
        }
    }
    format!("skiff: ready (listening on {})", parts.join("; "))
}

/// What the I/O thread does when the service is ready.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The `--ready-file`.
    pub file: Option<ReadyFile>,
    /// Print the ready line (`--log info` and above).
    pub announce: bool,
}

impl Readiness {
    /// Says the service is ready, once; a ready file that cannot be written
    /// is one line on stderr, and the service keeps running.
    pub fn ready(&mut self, listening: &[Listening]) {
        if self.announce {
            eprintln!("{}", message(listening));
            self.announce = false;
        }
        if let Some(mut file) = self.file.take()
            && let Err(e) = file.commit(&file_text(listening))
        {
            eprintln!("skiff-tender: cannot write --ready-file {}: {e}", file.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> Vec<Listening> {
        vec![Listening {
            nic: "service".into(),
            ports: vec![443, 80],
            published: vec![("127.0.0.1:8443".parse().unwrap(), 443)],
        }]
    }

    #[test]
    fn the_file_and_the_line_name_the_ports() {
        assert_eq!(
            file_text(&listening()),
            "listening service 443\nlistening service 80\npublished 127.0.0.1:8443 443\n"
        );
        assert_eq!(
            message(&listening()),
            "skiff: ready (listening on guest port 443 of NIC \"service\", published at 127.0.0.1:8443; \
             guest port 80 of NIC \"service\")"
        );
    }

    #[test]
    fn the_file_appears_whole_once_and_a_stale_one_goes_at_start() {
        let dir = std::env::temp_dir().join(format!("skiff-ready-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready");
        std::fs::write(&path, "stale").unwrap();
        let mut f = ReadyFile::prepare(&path).unwrap();
        assert!(!path.exists(), "a stale file is removed at start");
        f.commit("listening service 7\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "listening service 7\n");
        f.commit("again\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "listening service 7\n", "written once");
        drop(f);
        // Never ready: no file, and no temporary file left.
        let other = dir.join("never");
        drop(ReadyFile::prepare(&other).unwrap());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("ready")]);
        std::fs::remove_dir_all(&dir).unwrap();
        let err = ReadyFile::prepare(Path::new("/nonexistent-dir-skiff/ready")).unwrap_err().to_string();
        assert!(err.starts_with("--ready-file /nonexistent-dir-skiff/.ready."), "{err}");
    }
}
