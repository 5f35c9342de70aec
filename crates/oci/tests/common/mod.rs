//! What the container tests share: guest images built once into the
//! shared guest target directory and packaged with `skiff_oci::package`,
//! commands run with a time limit, and checks that the tools are there.

#![allow(dead_code, reason = "not every test binary uses everything")]

// The boot tests' helpers: one place builds guests and lists the site.
#[path = "../../../tender/tests/common/mod.rs"]
pub mod tender;
#[allow(unused_imports, reason = "not every test binary uses both")]
pub use tender::{guest, workspace};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The runtime under test.
pub fn runtime() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-oci")
}

/// Panics with what to do unless we are root with `/dev/kvm` and `tools`.
pub fn require(tools: &[&str]) {
    assert!(nix::unistd::geteuid().is_root(), "the container tests run rootful engines: run them as root");
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("the container tests boot guests and need read-write access to /dev/kvm ({e})");
    }
    for tool in tools {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is not installed: run scripts/setup (it installs podman, conmon, runc, skopeo and containerd)"
        );
    }
}

/// A fresh scratch directory for one test: `/tmp/skiff-oci/NAME-PID`
/// (short: podman refuses a run root over 50 characters).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("skiff-oci").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Writes the OCI archive of the ELF bytes `elf` named `name` into `dir`.
pub fn package_bytes(elf: &[u8], name: &str, dir: &Path) -> PathBuf {
    let facts = match skiff_tender::elf::Image::parse(elf.to_vec(), false) {
        Ok(image) => skiff_oci::package::Facts::of(&image),
        Err(_) => skiff_oci::package::Facts { abi_version: 0, nics: vec![], disks: vec![], memory: 64 << 20 },
    };
    let reference = skiff_oci::package::Reference::parse(name).expect("a valid name");
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let file = std::fs::File::create(&path).expect("create the archive");
    skiff_oci::package::write(elf, &facts, &reference, file).expect("write the archive");
    path
}

/// Writes the OCI archive of the guest crate at `dir` named `name`.
pub fn package(guest_dir: &'static str, name: &str, dir: &Path) -> PathBuf {
    package_bytes(&std::fs::read(guest(guest_dir)).expect("read the image"), name, dir)
}

/// A copy of the image `elf` whose manifest claims ABI version `abi`.
pub fn with_abi(elf: &[u8], abi: u32) -> Vec<u8> {
    use skiff_abi::manifest::{DESC_SIZE, NOTE_NAME, NOTE_NAMESZ, NOTE_TYPE};
    let mut header = Vec::new();
    header.extend_from_slice(&NOTE_NAMESZ.to_le_bytes());
    header.extend_from_slice(&(DESC_SIZE as u32).to_le_bytes());
    header.extend_from_slice(&NOTE_TYPE.to_le_bytes());
    header.extend_from_slice(&NOTE_NAME);
    let at = elf.windows(header.len()).position(|w| w == header).expect("the image has a manifest note");
    let mut out = elf.to_vec();
    out[at + header.len()..at + header.len() + 4].copy_from_slice(&abi.to_le_bytes());
    out
}

/// What a command did.
#[derive(Debug)]
pub struct Ran {
    /// Exit status (-1 for a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` with standard input closed; kills it and panics after
/// `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{what} did not end within {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Output { status, stdout, stderr } = child.wait_with_output().expect("wait");
    Ran {
        status: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
