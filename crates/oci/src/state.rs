//! Containers' state: one directory per container under the runtime's
//! root (`--root`, by default [`DEFAULT_ROOT`]) holding `state.json` and,
//! until `start`, the `exec.fifo` the container's process waits on.
//!
//! The status is never stored: it is read from the process (alive, and
//! the same process: its start time in `/proc/PID/stat` must match) and
//! from whether the FIFO is still there.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where containers' state lives when `--root` is not given.
pub const DEFAULT_ROOT: &str = "/run/skiff-oci";
/// The OCI runtime specification version skiff-oci implements.
pub const OCI_VERSION: &str = "1.0.2";
/// The FIFO `create` leaves and `start` opens.
pub const FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";

/// A container's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An ID that cannot name a directory.
    #[error("{0:?} is not a valid container ID: use letters, digits and + - . _ (not . or ..)")]
    BadId(String),
    /// No such container.
    #[error("container {0} does not exist")]
    Unknown(String),
    /// The ID is taken.
    #[error("container {0} already exists")]
    Exists(String),
    /// File system trouble.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A corrupt state file.
    #[error("the state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// The container's lifecycle status, as `state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up, waiting for `start`.
    Created,
    /// The guest is running.
    Running,
    /// The process has ended.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What `create` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The container's ID.
    pub id: String,
    /// The container's process, in the runtime's PID namespace.
    pub pid: i32,
    /// Its start time (field 22 of `/proc/PID/stat`), to tell it from a
    /// later process with the same PID.
    pub start_time: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// When `create` ran (RFC 3339, UTC).
    pub created: String,
    /// The configuration's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The cgroup directories the runtime made, to remove on `delete`.
    pub cgroups: Vec<PathBuf>,
}

/// runc's `state` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuncState<'a> {
    /// [`OCI_VERSION`].
    pub oci_version: &'static str,
    /// The ID.
    pub id: &'a str,
    /// The process (0 once stopped).
    pub pid: i32,
    /// The status.
    pub status: Status,
    /// The bundle.
    pub bundle: &'a Path,
    /// The root file system.
    pub rootfs: &'a Path,
    /// Creation time.
    pub created: &'a str,
    /// The owner (empty: rootful).
    pub owner: &'static str,
    /// The annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

/// The state directory of one container.
#[derive(Clone, Debug)]
pub struct Container {
    /// `ROOT/ID`.
    pub dir: PathBuf,
    /// The ID.
    pub id: String,
}

impl Container {
    /// The container `id` under `root` (whether or not it exists).
    pub fn new(root: &Path, id: &str) -> Result<Container, StateError> {
        let ok = !id.is_empty()
            && id != "."
            && id != ".."
            && id.len() <= 1024
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b));
        if !ok {
            return Err(StateError::BadId(id.to_string()));
        }
        Ok(Container { dir: root.join(id), id: id.to_string() })
    }

    /// The FIFO's path.
    pub fn fifo(&self) -> PathBuf {
        self.dir.join(FIFO)
    }

    /// Makes the state directory; fails if the container exists.
    pub fn make(&self) -> Result<(), StateError> {
        if let Some(root) = self.dir.parent() {
            std::fs::create_dir_all(root).map_err(|source| StateError::Io {
                what: "cannot create the state root",
                path: root.to_owned(),
                source,
            })?;
        }
        match std::fs::create_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists(self.id.clone())),
            Err(source) => Err(StateError::Io { what: "cannot create", path: self.dir.clone(), source }),
        }
    }

    /// Writes `state.json` (through a temporary file, so readers never see
    /// half of it).
    pub fn save(&self, saved: &Saved) -> Result<(), StateError> {
        let tmp = self.dir.join(".state.json.tmp");
        let path = self.dir.join(STATE_FILE);
        let io = |source| StateError::Io { what: "cannot write", path: path.clone(), source };
        std::fs::write(&tmp, serde_json::to_vec(saved).expect("the state serialises")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Reads `state.json`.
    pub fn load(&self) -> Result<Saved, StateError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::Unknown(self.id.clone())),
            Err(source) => return Err(StateError::Io { what: "cannot read", path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// The container's status now.
    pub fn status(&self, saved: &Saved) -> Status {
        if !alive(saved.pid, saved.start_time) {
            Status::Stopped
        } else if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// Removes the state directory.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { what: "cannot remove", path: self.dir.clone(), source }),
        }
    }
}

impl Saved {
    /// runc's JSON for this container with status `status`.
    pub fn runc_json(&self, status: Status) -> String {
        let state = RuncState {
            oci_version: OCI_VERSION,
            id: &self.id,
            pid: if status == Status::Stopped { 0 } else { self.pid },
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: "",
            annotations: &self.annotations,
        };
        serde_json::to_string_pretty(&state).expect("the state serialises")
    }
}

/// The state letter and start time of a process, from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: split
    // after its last ')'. Then: state is field 3, start time field 22.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is still the process that started at `start_time` and
/// has not ended (a zombie has ended).
pub fn alive(pid: i32, start_time: u64) -> bool {
    pid > 0 && matches!(proc_stat(pid), Some((state, start)) if start == start_time && state != 'Z' && state != 'X')
}

/// RFC 3339 (UTC, nanoseconds) for a time since the epoch.
pub fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        let root = Path::new("/run/x");
        assert_eq!(Container::new(root, "abc-1.2_3+4").unwrap().dir, Path::new("/run/x/abc-1.2_3+4"));
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\0"] {
            assert!(matches!(Container::new(root, bad), Err(StateError::BadId(_))), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(Duration::new(951_782_400, 5)), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(Duration::new(1_798_761_599, 0)), "2026-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn state_round_trips_and_reports_as_runc_does() {
        let root = std::env::temp_dir().join(format!("skiff-oci-state-{}", std::process::id()));
        let c = Container::new(&root, "web").unwrap();
        assert!(matches!(c.load(), Err(StateError::Unknown(id)) if id == "web"));
        c.make().unwrap();
        assert!(matches!(c.make(), Err(StateError::Exists(_))));
        let me = std::process::id() as i32;
        let (_, start_time) = proc_stat(me).unwrap();
        let saved = Saved {
            id: "web".into(),
            pid: me,
            start_time,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: rfc3339(Duration::ZERO),
            annotations: BTreeMap::from([("k".into(), "v".into())]),
            cgroups: vec![],
        };
        c.save(&saved).unwrap();
        assert_eq!(c.load().unwrap(), saved);
        // This process is alive and there is no FIFO: running.
        assert_eq!(c.status(&saved), Status::Running);
        std::fs::write(c.fifo(), b"").unwrap();
        assert_eq!(c.status(&saved), Status::Created);
        // Another start time is another process: the container's is gone.
        let other = Saved { start_time: start_time + 1, ..saved.clone() };
        assert_eq!(c.status(&other), Status::Stopped);
        let json: serde_json::Value = serde_json::from_str(&saved.runc_json(Status::Stopped)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ociVersion": OCI_VERSION, "id": "web", "pid": 0, "status": "stopped", "bundle": "/b",
                "rootfs": "/b/rootfs", "created": "1970-01-01T00:00:00.000000000Z", "owner": "",
                "annotations": {"k": "v"}
            })
        );
        let json: serde_json::Value = serde_json::from_str(&saved.runc_json(Status::Running)).unwrap();
        assert_eq!(json["pid"], me);
        c.remove().unwrap();
        assert!(!c.dir.exists());
        let _ = std::fs::remove_dir_all(root);
    }
}
