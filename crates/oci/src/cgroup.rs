//! The container's cgroup: made at `cgroupsPath` in every mounted
//! hierarchy (cgroup v1, each controller's; or the one v2 tree), limited
//! by `linux.resources` (memory, pids; under v1 the device rules, with
//! `/dev/kvm` and `/dev/net/tun` always allowed since the tender needs
//! them), and joined by the container's process before it runs.

use crate::spec::{DeviceRule, Resources};
use std::path::{Path, PathBuf};

/// Devices allowed whatever the rules say: those runc always allows
/// (`mknod` of any; null, zero, full, random, urandom, tty, console, the
/// terminals), and those the tender opens: `/dev/kvm` (10:232) and
/// `/dev/net/tun` (10:200).
const TENDER_DEVICES: [&str; 13] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:232 rwm",
    "c 10:200 rwm",
];

/// The cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be made or written.
    #[error("cgroup: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cgroups path leaves the hierarchy.
    #[error("cgroup: the cgroups path {0:?} is not a valid cgroup name")]
    BadPath(String),
}

/// The mounted cgroup hierarchies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchies {
    /// cgroup v2: one tree.
    Unified(PathBuf),
    /// cgroup v1 (and a hybrid's empty v2 tree): a tree per mount, with
    /// its mount options (which name its controllers).
    V1(Vec<(PathBuf, Vec<String>)>),
}

impl Hierarchies {
    /// The hierarchies in `/proc/self/mounts` under `/sys/fs/cgroup`.
    pub fn mounted() -> Result<Hierarchies, CgroupError> {
        let path = Path::new("/proc/self/mounts");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            what: "read",
            path: path.to_owned(),
            source,
        })?;
        Ok(Hierarchies::parse(&text))
    }

    /// The hierarchies in a mount table's text.
    pub fn parse(mounts: &str) -> Hierarchies {
        let mut v1 = Vec::new();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dir), Some(kind), Some(options)) = (f.get(1), f.get(2), f.get(3)) else { continue };
            if !dir.starts_with("/sys/fs/cgroup") {
                continue;
            }
            match *kind {
                "cgroup2" if *dir == "/sys/fs/cgroup" => return Hierarchies::Unified(PathBuf::from(dir)),
                "cgroup" | "cgroup2" => v1.push((PathBuf::from(dir), options.split(',').map(str::to_string).collect())),
                _ => {}
            }
        }
        Hierarchies::V1(v1)
    }
}

/// The cgroup's path relative to each hierarchy's root, from
/// `cgroupsPath`: a path (`/libpod_parent/libpod-ID`, containerd's
/// `/default/ID`), or with `--systemd-cgroup` systemd's
/// `SLICE:PREFIX:NAME` (made as `SLICE/PREFIX-NAME.scope`, since the
/// runtime does not ask systemd). None: `/skiff-oci/ID`.
pub fn relative_path(cgroups_path: Option<&str>, systemd: bool, id: &str) -> Result<PathBuf, CgroupError> {
    let given = cgroups_path.filter(|p| !p.is_empty());
    let path = match given {
        None => format!("skiff-oci/{id}"),
        Some(p) if systemd || (!p.starts_with('/') && p.matches(':').count() == 2) => {
            let parts: Vec<&str> = p.split(':').collect();
            match parts.as_slice() {
                [slice, prefix, name] => {
                    let slice = if slice.is_empty() { "system.slice" } else { slice };
                    format!("{slice}/{prefix}-{name}.scope")
                }
                _ => return Err(CgroupError::BadPath(p.to_string())),
            }
        }
        Some(p) => p.trim_start_matches('/').to_string(),
    };
    let rel = PathBuf::from(&path);
    let ok = !path.is_empty()
        && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        && !path.contains('\n');
    if !ok {
        return Err(CgroupError::BadPath(given.unwrap_or(id).to_string()));
    }
    Ok(rel)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io { what: "write", path: path.to_owned(), source })
}

/// Makes `dir` and its missing parents; returns the ones it made, deepest
/// last.
fn make_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_owned());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    missing.reverse();
    for m in &missing {
        match std::fs::create_dir(m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Io { what: "create", path: m.clone(), source }),
        }
    }
    Ok(missing)
}

/// A v1 cpuset cgroup needs CPUs and memory nodes before it takes a
/// process: copy them down from the nearest ancestor that has them.
fn fill_cpuset(made: &[PathBuf]) -> Result<(), CgroupError> {
    for dir in made {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if !own.trim().is_empty() {
                continue;
            }
            let parent = dir.parent().map(|p| p.join(file));
            let value = parent.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            if !value.trim().is_empty() {
                write(&dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Puts `pid` in the cgroup `rel` of every hierarchy, with `resources`'s
/// limits. Returns the directories it made (to remove on delete), deepest
/// first.
pub fn join(
    hierarchies: &Hierarchies,
    rel: &Path,
    resources: Option<&Resources>,
    pid: i32,
) -> Result<Vec<PathBuf>, CgroupError> {
    let memory = resources.and_then(|r| r.memory.as_ref()).and_then(|m| m.limit).filter(|l| *l > 0);
    let pids = resources.and_then(|r| r.pids.as_ref()).map(|p| p.limit).filter(|l| *l > 0);
    let mut made = Vec::new();
    match hierarchies {
        Hierarchies::Unified(root) => {
            let dir = root.join(rel);
            made.extend(make_dirs(&dir)?);
            if let Some(limit) = memory {
                write(&dir.join("memory.max"), &limit.to_string())?;
            }
            if let Some(limit) = pids {
                write(&dir.join("pids.max"), &limit.to_string())?;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Hierarchies::V1(roots) => {
            for (root, options) in roots {
                let dir = root.join(rel);
                let new = make_dirs(&dir)?;
                let controllers: Vec<&str> = options.iter().map(String::as_str).collect();
                if controllers.contains(&"cpuset") {
                    fill_cpuset(&new)?;
                }
                if let (true, Some(limit)) = (controllers.contains(&"memory"), memory) {
                    write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                }
                if let (true, Some(limit)) = (controllers.contains(&"pids"), pids) {
                    write(&dir.join("pids.max"), &limit.to_string())?;
                }
                if controllers.contains(&"devices") {
                    let rules = resources.map(|r| r.devices.as_slice()).unwrap_or(&[]);
                    devices(&dir, rules)?;
                }
                write(&dir.join("cgroup.procs"), &pid.to_string())?;
                made.extend(new);
            }
        }
    }
    made.reverse();
    Ok(made)
}

fn devices(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    for rule in rules {
        let file = if rule.allow { "devices.allow" } else { "devices.deny" };
        write(&dir.join(file), &rule.line())?;
    }
    for line in TENDER_DEVICES {
        write(&dir.join("devices.allow"), line)?;
    }
    Ok(())
}

/// Removes the cgroup directories `create` made (deepest first). A
/// directory still in use or already gone is left alone.
pub fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        for _ in 0..50 {
            match std::fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_cgroup_paths_become_relative_paths() {
        let p = |path, systemd| relative_path(path, systemd, "c1").map(|p| p.display().to_string());
        assert_eq!(p(Some("/libpod_parent/libpod-c1"), false).unwrap(), "libpod_parent/libpod-c1");
        assert_eq!(p(Some("/default/c1"), false).unwrap(), "default/c1");
        assert_eq!(p(Some("machine.slice:libpod:c1"), true).unwrap(), "machine.slice/libpod-c1.scope");
        assert_eq!(p(Some("machine.slice:libpod:c1"), false).unwrap(), "machine.slice/libpod-c1.scope");
        assert_eq!(p(None, false).unwrap(), "skiff-oci/c1");
        assert!(p(Some("/a/../../etc"), false).is_err());
        assert!(p(Some("a:b"), true).is_err());
    }

    #[test]
    fn hierarchies_are_read_from_the_mount_table() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                      proc /proc proc rw 0 0\n";
        assert_eq!(
            Hierarchies::parse(hybrid),
            Hierarchies::V1(vec![
                ("/sys/fs/cgroup/unified".into(), vec!["rw".into()]),
                ("/sys/fs/cgroup/memory".into(), vec!["rw".into(), "memory".into()]),
                ("/sys/fs/cgroup/cpu,cpuacct".into(), vec!["rw".into(), "cpu".into(), "cpuacct".into()])
            ])
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(Hierarchies::parse(v2), Hierarchies::Unified("/sys/fs/cgroup".into()));
    }

    #[test]
    fn the_tender_keeps_its_devices_after_the_engines_rules() {
        let dir = std::env::temp_dir().join(format!("skiff-oci-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deny_all = DeviceRule { allow: false, access: Some("rwm".into()), ..Default::default() };
        devices(&dir, &[deny_all]).unwrap();
        // Ordinary files keep only the last write of each.
        assert_eq!(std::fs::read_to_string(dir.join("devices.deny")).unwrap(), "a *:* rwm");
        assert_eq!(std::fs::read_to_string(dir.join("devices.allow")).unwrap(), "c 10:200 rwm");
        assert!(TENDER_DEVICES.contains(&"c 10:232 rwm"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
