//! The bundle's `config.json`: the part of the OCI runtime specification
//! skiff-oci reads, and the [`Plan`] it makes of it.
//!
//! Only the fields the runtime uses are declared, and every one has a
//! default, so any valid configuration an engine writes parses (podman's
//! seccomp profile, mounts, hooks and capabilities are read past; see
//! docs/containers.md for what is honoured).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The annotation that sets the guest memory (`128M`, `1G`); it wins over
/// `linux.resources.memory.limit`.
pub const ANNOTATION_MEM: &str = "org.skiff.mem";
/// The annotation that sets the tender's `--stop-grace` (`5s`, `500ms`).
pub const ANNOTATION_STOP_GRACE: &str = "org.skiff.stop-grace";
/// The annotation that chooses how the guest is isolated: `kvm`, `process`
/// or `auto` (the default: KVM when /dev/kvm can be used, else process
/// mode).
pub const ANNOTATION_SANDBOX: &str = "org.skiff.sandbox";

/// How the guest is isolated, as the annotation asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxChoice {
    /// KVM when /dev/kvm can be used, else process mode.
    #[default]
    Auto,
    /// A KVM virtual machine; no /dev/kvm is an error.
    Kvm,
    /// The tender's seccomp-sandboxed process mode.
    Process,
}

impl SandboxChoice {
    fn parse(value: &str) -> Option<SandboxChoice> {
        match value {
            "auto" => Some(SandboxChoice::Auto),
            "kvm" => Some(SandboxChoice::Kvm),
            "process" => Some(SandboxChoice::Process),
            _ => None,
        }
    }
}

/// What a memory limit leaves for the tender itself (its code, threads
/// and buffers) when it sets the guest memory.
pub const TENDER_RESERVE: u64 = 16 << 20;

/// `config.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No readable `config.json`.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON for the specification.
    #[error("{path} is not a valid OCI runtime configuration: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// No root file system.
    #[error("the bundle {0} has no root file system: config.json has no root.path")]
    NoRoot(PathBuf),
    /// The root file system is not there.
    #[error("the bundle's root file system {0} does not exist")]
    RootMissing(PathBuf),
    /// Nothing to run.
    #[error("config.json has no process.args: nothing to run (a Skiff image's entrypoint is its ELF file)")]
    NoArgs,
    /// The entrypoint is not in the root file system.
    #[error(
        "{arg} is not in the container's root file system ({path}); a Skiff image made by `skiff package` \
         has its ELF at {image}",
        image = crate::package::IMAGE_PATH
    )]
    ImageMissing {
        /// `process.args[0]`.
        arg: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The entrypoint leads out of the root file system (a symbolic link).
    #[error("{arg} leads out of the container's root file system (to {target}): refused")]
    ImageOutside {
        /// `process.args[0]`.
        arg: String,
        /// Where it leads.
        target: PathBuf,
    },
    /// A user namespace was asked for.
    #[error("user namespaces are not supported: run the container rootful (the tender needs /dev/kvm)")]
    UserNamespace,
    /// An unknown namespace type.
    #[error("unknown namespace type {0:?} in config.json")]
    UnknownNamespace(String),
    /// An `org.skiff.sandbox` annotation that names no sandbox.
    #[error("annotation {ANNOTATION_SANDBOX}={0:?}: expected kvm, process or auto")]
    Sandbox(String),
    /// A bad `org.skiff.*` annotation.
    #[error("annotation {key}={value:?}: {source}")]
    Annotation {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        source: skiff_tender::options::OptionError,
    },
    /// The memory limit leaves no room for the guest.
    #[error(
        "the container's memory limit of {limit} bytes is too small: the tender needs {} MiB of it and the \
         guest at least 2 MiB (set a larger --memory, or the guest's memory with the annotation {ANNOTATION_MEM})",
        TENDER_RESERVE >> 20
    )]
    MemoryLimit {
        /// `linux.resources.memory.limit`.
        limit: i64,
    },
}

/// The runtime configuration (the fields skiff-oci reads).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    /// The specification's version.
    pub oci_version: String,
    /// The container's process.
    pub process: Option<Process>,
    /// The root file system.
    pub root: Option<Root>,
    /// The UTS namespace's host name.
    pub hostname: Option<String>,
    /// Free-form annotations.
    pub annotations: BTreeMap<String, String>,
    /// Mounts (only the source of `/etc/resolv.conf` is used).
    pub mounts: Vec<Mount>,
    /// Linux specifics.
    pub linux: Option<Linux>,
}

/// One of `mounts`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// Where it is mounted in the container.
    pub destination: String,
    /// What is mounted: for a bind mount, a path on the host.
    pub source: Option<String>,
}

/// `process`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Process {
    /// Whether a terminal is attached (`podman run -t`).
    pub terminal: bool,
    /// The entrypoint and its arguments.
    pub args: Vec<String>,
    /// The user the process runs as.
    pub user: User,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
}

/// `process.user`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct User {
    /// User ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// One of `process.rlimits`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE` and the like.
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// `root`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Root {
    /// The root file system, relative to the bundle or absolute.
    pub path: String,
}

/// `linux`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Linux {
    /// Namespaces to join (with a path) or create.
    pub namespaces: Vec<Namespace>,
    /// The cgroup, as the engine names it.
    pub cgroups_path: Option<String>,
    /// Limits.
    pub resources: Option<Resources>,
}

/// One of `linux.namespaces`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Namespace {
    /// `network`, `mount`, `pid`, `ipc`, `uts`, `cgroup`, `user`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The namespace to join; none means a new one.
    pub path: Option<String>,
}

/// `linux.resources`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Memory.
    pub memory: Option<MemoryResources>,
    /// Process count.
    pub pids: Option<PidsResources>,
    /// Device access rules (cgroup v1's devices controller).
    pub devices: Vec<DeviceRule>,
}

/// `linux.resources.memory`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct MemoryResources {
    /// Bytes; negative means none.
    pub limit: Option<i64>,
}

/// `linux.resources.pids`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PidsResources {
    /// Processes; 0 or negative means none.
    pub limit: i64,
}

/// One of `linux.resources.devices`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// `a`, `c` or `b`; none means all.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Major number; none means all.
    pub major: Option<i64>,
    /// Minor number; none means all.
    pub minor: Option<i64>,
    /// `rwm` or part of it.
    pub access: Option<String>,
}

impl DeviceRule {
    /// The line for `devices.allow` / `devices.deny`.
    pub fn line(&self) -> String {
        let n = |v: Option<i64>| v.filter(|v| *v >= 0).map_or("*".to_string(), |v| v.to_string());
        let kind = self.kind.as_deref().filter(|k| !k.is_empty()).unwrap_or("a");
        let access = self.access.as_deref().filter(|a| !a.is_empty()).unwrap_or("rwm");
        format!("{kind} {}:{} {access}", n(self.major), n(self.minor))
    }
}

/// A namespace kind skiff-oci handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    /// Network.
    Network,
    /// Mounts.
    Mount,
    /// Process IDs.
    Pid,
    /// System V IPC.
    Ipc,
    /// Host name.
    Uts,
    /// The cgroup view.
    Cgroup,
}

impl NsKind {
    fn parse(s: &str) -> Result<NsKind, SpecError> {
        Ok(match s {
            "network" => NsKind::Network,
            "mount" => NsKind::Mount,
            "pid" => NsKind::Pid,
            "ipc" => NsKind::Ipc,
            "uts" => NsKind::Uts,
            "cgroup" => NsKind::Cgroup,
            "user" => return Err(SpecError::UserNamespace),
            other => return Err(SpecError::UnknownNamespace(other.to_string())),
        })
    }
}

impl Spec {
    /// Reads `BUNDLE/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read { path: path.clone(), source })?;
        serde_json::from_slice(&text).map_err(|source| SpecError::Json { path, source })
    }
}

/// What the runtime will do, checked before anything is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The Skiff image: `process.args[0]` inside the root file system.
    pub image: PathBuf,
    /// The guest's arguments: `process.args` after the first.
    pub args: Vec<String>,
    /// Guest memory, when the configuration sets it.
    pub mem: Option<u64>,
    /// The tender's stop grace, when an annotation sets it.
    pub stop_grace: Option<std::time::Duration>,
    /// Namespaces in the order to enter them: a path to join, or none for
    /// a new one.
    pub namespaces: Vec<(NsKind, Option<PathBuf>)>,
    /// The UTS name, when there is a new UTS namespace.
    pub hostname: Option<String>,
    /// Whether `-t` asked for a terminal.
    pub terminal: bool,
    /// How the guest is isolated (`auto` until `create` has looked at
    /// /dev/kvm).
    pub sandbox: SandboxChoice,
    /// The host file the engine mounts at the container's
    /// `/etc/resolv.conf` (podman's), where the guest's DNS servers come
    /// from.
    pub resolv_conf: Option<PathBuf>,
}

impl Plan {
    /// The plan for `spec` in the bundle directory `bundle`.
    pub fn new(spec: &Spec, bundle: &Path) -> Result<Plan, SpecError> {
        let root = spec.root.as_ref().filter(|r| !r.path.is_empty()).ok_or(SpecError::NoRoot(bundle.to_owned()))?;
        let rootfs = bundle.join(&root.path);
        if !rootfs.is_dir() {
            return Err(SpecError::RootMissing(rootfs));
        }
        let process = spec.process.clone().unwrap_or_default();
        let (first, args) = process.args.split_first().ok_or(SpecError::NoArgs)?;
        let image = rootfs.join(first.trim_start_matches('/'));
        if !image.is_file() {
            return Err(SpecError::ImageMissing { arg: first.clone(), path: image });
        }
        // The tender reads the image as the runtime's user, on the host: a
        // link in the image's file system must not lead it elsewhere.
        let (real, real_root) = (image.canonicalize(), rootfs.canonicalize());
        if let (Ok(real), Ok(real_root)) = (&real, &real_root)
            && !real.starts_with(real_root)
        {
            return Err(SpecError::ImageOutside { arg: first.clone(), target: real.clone() });
        }
        let mem = match spec.annotations.get(ANNOTATION_MEM) {
            Some(v) => Some(skiff_tender::options::parse_size(v).map_err(|source| SpecError::Annotation {
                key: ANNOTATION_MEM,
                value: v.clone(),
                source,
            })?),
            None => memory_from_limit(spec)?,
        };
        let stop_grace = match spec.annotations.get(ANNOTATION_STOP_GRACE) {
            Some(v) => Some(skiff_tender::options::parse_duration(v).map_err(|source| SpecError::Annotation {
                key: ANNOTATION_STOP_GRACE,
                value: v.clone(),
                source,
            })?),
            None => None,
        };
        let sandbox = match spec.annotations.get(ANNOTATION_SANDBOX) {
            Some(v) => SandboxChoice::parse(v).ok_or_else(|| SpecError::Sandbox(v.clone()))?,
            None => SandboxChoice::Auto,
        };
        let mut namespaces = Vec::new();
        for ns in spec.linux.iter().flat_map(|l| &l.namespaces) {
            namespaces.push((NsKind::parse(&ns.kind)?, ns.path.as_ref().filter(|p| !p.is_empty()).map(PathBuf::from)));
        }
        let new_uts = namespaces.iter().any(|(k, p)| *k == NsKind::Uts && p.is_none());
        Ok(Plan {
            image,
            args: args.to_vec(),
            mem,
            stop_grace,
            namespaces,
            hostname: spec.hostname.clone().filter(|h| new_uts && !h.is_empty()),
            terminal: process.terminal,
            sandbox,
            resolv_conf: spec
                .mounts
                .iter()
                .rev()
                .find(|m| m.destination == "/etc/resolv.conf")
                .and_then(|m| m.source.as_ref())
                .filter(|s| s.starts_with('/'))
                .map(PathBuf::from),
        })
    }
}

/// The guest memory a memory limit leaves: the limit less
/// [`TENDER_RESERVE`], in whole MiB, at most the tender's maximum.
fn memory_from_limit(spec: &Spec) -> Result<Option<u64>, SpecError> {
    let limit = spec.linux.as_ref().and_then(|l| l.resources.as_ref()).and_then(|r| r.memory.as_ref());
    let Some(limit) = limit.and_then(|m| m.limit).filter(|l| *l > 0) else { return Ok(None) };
    let guest = (limit as u64).saturating_sub(TENDER_RESERVE) & !((1 << 20) - 1);
    if guest < skiff_abi::layout::MEM_MIN {
        return Err(SpecError::MemoryLimit { limit });
    }
    Ok(Some(guest.min(skiff_abi::layout::MEM_MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle directory with `config.json` and an image in its rootfs.
    fn bundle(name: &str, config: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-oci-spec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/skiff")).unwrap();
        std::fs::write(dir.join("rootfs/skiff/image"), b"\x7fELF").unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        dir
    }

    /// The shape of what podman 4 writes, trimmed, with fields skiff-oci
    /// does not read (they must not trouble the parser).
    const PODMAN: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0, "umask": 18},
            "args": ["/skiff/image", "a", "b c"],
            "env": ["PATH=/usr/bin", "TERM=xterm"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
            "oomScoreAdj": 0
        },
        "root": {"path": "rootfs"},
        "hostname": "abc123",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/containers/abc123/resolv.conf",
                    "options": ["bind", "rprivate"]}],
        "annotations": {"io.container.manager": "libpod"},
        "linux": {
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
                "memory": {"limit": 134217728, "swap": 134217728},
                "pids": {"limit": 2048}
            },
            "cgroupsPath": "/libpod_parent/libpod-abc123",
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/netns-1"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_NEW_ONE"],
                        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
            "maskedPaths": ["/proc/kcore"]
        }
    }"#;

    #[test]
    fn podman_config_gives_the_image_arguments_memory_and_namespaces() {
        let dir = bundle("podman", PODMAN);
        let spec = Spec::load(&dir).unwrap();
        let plan = Plan::new(&spec, &dir).unwrap();
        assert_eq!(plan.image, dir.join("rootfs/skiff/image"));
        assert_eq!(plan.args, ["a", "b c"]);
        assert_eq!(plan.mem, Some((128 << 20) - TENDER_RESERVE));
        assert_eq!(plan.hostname.as_deref(), Some("abc123"));
        assert_eq!(plan.resolv_conf, Some(PathBuf::from("/run/containers/abc123/resolv.conf")));
        assert_eq!(
            plan.namespaces,
            [
                (NsKind::Pid, None),
                (NsKind::Network, Some(PathBuf::from("/run/netns/netns-1"))),
                (NsKind::Ipc, None),
                (NsKind::Uts, None),
                (NsKind::Mount, None),
            ]
        );
        let linux = spec.linux.unwrap();
        assert_eq!(linux.cgroups_path.as_deref(), Some("/libpod_parent/libpod-abc123"));
        let rules: Vec<_> = linux.resources.unwrap().devices.iter().map(DeviceRule::line).collect();
        assert_eq!(rules, ["a *:* rwm", "c 1:3 rwm"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_sandbox_annotation_is_auto_by_default_and_checked() {
        let with = |ann: &str| PODMAN.replace(r#""io.container.manager": "libpod""#, ann);
        let plan = |name: &str, ann: &str| {
            let dir = bundle(name, &with(ann));
            let plan = Plan::new(&Spec::load(&dir).unwrap(), &dir);
            let _ = std::fs::remove_dir_all(dir);
            plan
        };
        assert_eq!(plan("sb-none", r#""io.container.manager": "libpod""#).unwrap().sandbox, SandboxChoice::Auto);
        assert_eq!(plan("sb-kvm", r#""org.skiff.sandbox": "kvm""#).unwrap().sandbox, SandboxChoice::Kvm);
        assert_eq!(plan("sb-proc", r#""org.skiff.sandbox": "process""#).unwrap().sandbox, SandboxChoice::Process);
        let err = plan("sb-bad", r#""org.skiff.sandbox": "vm""#).unwrap_err().to_string();
        assert_eq!(err, r#"annotation org.skiff.sandbox="vm": expected kvm, process or auto"#);
    }

    #[test]
    fn the_memory_annotation_wins_and_is_checked() {
        let with = |ann: &str| PODMAN.replace(r#""io.container.manager": "libpod""#, ann);
        let dir = bundle("ann", &with(r#""org.skiff.mem": "256M""#));
        assert_eq!(Plan::new(&Spec::load(&dir).unwrap(), &dir).unwrap().mem, Some(256 << 20));
        let dir = bundle("badann", &with(r#""org.skiff.mem": "lots""#));
        let err = Plan::new(&Spec::load(&dir).unwrap(), &dir).unwrap_err().to_string();
        assert!(err.starts_with("annotation org.skiff.mem=\"lots\": "), "{err}");
        let small = PODMAN.replace("134217728, \"swap\"", "17825792, \"swap\"");
        let dir = bundle("small", &small);
        let err = Plan::new(&Spec::load(&dir).unwrap(), &dir).unwrap_err();
        assert!(matches!(err, SpecError::MemoryLimit { limit: 17825792 }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_bundles_say_what_is_wrong() {
        let err = |config: &str| {
            let dir = bundle("bad", config);
            let e = Spec::load(&dir).and_then(|s| Plan::new(&s, &dir)).unwrap_err();
            let _ = std::fs::remove_dir_all(dir);
            e
        };
        assert!(matches!(err(r#"{"process": {"args": ["/skiff/image"]}}"#), SpecError::NoRoot(_)));
        assert!(matches!(
            err(r#"{"root": {"path": "nothere"}, "process": {"args": ["/x"]}}"#),
            SpecError::RootMissing(_)
        ));
        assert!(matches!(err(r#"{"root": {"path": "rootfs"}}"#), SpecError::NoArgs));
        let e = err(r#"{"root": {"path": "rootfs"}, "process": {"args": ["/bin/sh"]}}"#);
        assert!(e.to_string().starts_with("/bin/sh is not in the container's root file system"), "{e}");
        let e = err(r#"{"root": {"path": "rootfs"}, "process": {"args": ["/skiff/image"]},
                       "linux": {"namespaces": [{"type": "user"}]}}"#);
        assert!(matches!(e, SpecError::UserNamespace));
        assert!(matches!(err("{not json"), SpecError::Json { .. }));
        // A link out of the root file system is refused; one inside is not.
        let dir = bundle("link", r#"{"root": {"path": "rootfs"}, "process": {"args": ["/out", "x"]}}"#);
        std::os::unix::fs::symlink("/bin/true", dir.join("rootfs/out")).unwrap();
        let e = Plan::new(&Spec::load(&dir).unwrap(), &dir).unwrap_err();
        assert!(e.to_string().starts_with("/out leads out of the container's root file system"), "{e}");
        std::fs::remove_file(dir.join("rootfs/out")).unwrap();
        std::os::unix::fs::symlink("skiff/image", dir.join("rootfs/out")).unwrap();
        assert_eq!(Plan::new(&Spec::load(&dir).unwrap(), &dir).unwrap().args, ["x"]);
        let _ = std::fs::remove_dir_all(dir);
        let missing = Spec::load(Path::new("/nonexistent-bundle")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read /nonexistent-bundle/config.json: "), "{missing}");
    }
}
