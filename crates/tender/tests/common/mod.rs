//! What the boot test binaries share: the repository root, and guest
//! images built once per binary into the shared guest target directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a boot test binary runs its guests. One parameter of the harness:
/// a test file compiled as a binary whose name has `_process` in it (see
/// `boot_process.rs`, which includes `boot.rs`) runs every guest with
/// `--sandbox process`, the others under KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code, reason = "not every test binary uses it")]
pub enum Sandbox {
    /// A KVM virtual machine.
    Kvm,
    /// A seccomp-sandboxed process, no /dev/kvm.
    Process,
}

/// This test binary's sandbox.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn sandbox() -> Sandbox {
    if env!("CARGO_CRATE_NAME").contains("_process") { Sandbox::Process } else { Sandbox::Kvm }
}

/// The tender options that select this binary's sandbox.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn sandbox_args() -> &'static [&'static str] {
    match sandbox() {
        Sandbox::Kvm => &[],
        Sandbox::Process => &["--sandbox", "process"],
    }
}

/// Fails unless this binary's sandbox can run here: under KVM, read-write
/// access to /dev/kvm; process mode needs nothing.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn require_sandbox() {
    if sandbox() == Sandbox::Kvm {
        skiff_testnet::require_kvm();
    }
}

/// The tender this test binary runs: the one cargo built for the tests,
/// or, for a binary whose name ends in `_static` (see `boot_static.rs`,
/// which includes `boot.rs`), the statically linked release tender that
/// `scripts/build-tender` builds, the first time it is asked for. That one
/// is linked against musl, whose system calls differ from glibc's and
/// must pass the same seccomp allow-lists.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn tender() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if !env!("CARGO_CRATE_NAME").ends_with("_static") {
        // Other packages' tests share this module but not the binary.
        match option_env!("CARGO_BIN_EXE_skiff-tender") {
            Some(path) => return Path::new(path),
            None => panic!("only the tender's own tests run its binary"),
        }
    }
    BUILT.get_or_init(|| {
        let out = std::process::Command::new(workspace().join("scripts/build-tender"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/build-tender");
        assert!(out.status.success(), "scripts/build-tender failed (see above)");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The image of the guest crate at `dir` (relative to the repository),
/// built (release, checked) the first time it is asked for.
pub fn guest(dir: &'static str) -> &'static Path {
    static BUILT: Mutex<BTreeMap<&str, &'static Path>> = Mutex::new(BTreeMap::new());
    // Held across the build: a second test asking for the same guest waits
    // for the first build instead of starting its own.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = built.get(dir) {
        return image;
    }
    let mut opts = skiff_build::BuildOptions::new(workspace().join(dir));
    opts.target_dir = Some(workspace().join("target/guest"));
    opts.quiet = true;
    let image = match skiff_build::build(&opts) {
        Ok(b) => Box::leak(b.image.into_boxed_path()),
        Err(e) => panic!("building {dir} failed: {e}"),
    };
    built.insert(dir, image);
    image
}

/// A copy of the image `elf` whose symbol table is replaced by one of
/// `count` function labels (size 0, every 16 bytes from 1 MiB) that all
/// share the name `name`: a hostile image for the budget tests.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn with_symbols(elf: &[u8], count: usize, name: &[u8]) -> Vec<u8> {
    fn pad(d: &mut Vec<u8>) {
        d.resize(d.len().next_multiple_of(8), 0);
    }
    let mut d = elf.to_vec();
    pad(&mut d);
    let symtab = d.len() as u64;
    d.extend_from_slice(&[0; 24]);
    for i in 0..count as u64 {
        // st_name 1, STB_GLOBAL | STT_FUNC, st_shndx 1, value, size 0.
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&[0x12, 0, 1, 0]);
        d.extend_from_slice(&(0x10_0000 + 16 * i).to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes());
    }
    let strtab = d.len() as u64;
    d.push(0);
    d.extend_from_slice(name);
    d.push(0);
    let shstrtab = d.len() as u64;
    let names = b"\0.symtab\0.strtab\0.shstrtab\0";
    d.extend_from_slice(names);
    pad(&mut d);
    let shoff = d.len() as u64;
    let section = |d: &mut Vec<u8>, name: u32, kind: u32, offset: u64, size: u64, link: u32, entsize: u64| {
        for v in [name, kind] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0, 0, offset, size] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        for v in [link, 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        for v in [1, entsize] {
            d.extend_from_slice(&v.to_le_bytes());
        }
    };
    d.extend_from_slice(&[0; 64]);
    section(&mut d, 1, 2, symtab, strtab - symtab, 2, 24);
    section(&mut d, 9, 3, strtab, name.len() as u64 + 2, 0, 0);
    section(&mut d, 17, 3, shstrtab, names.len() as u64, 0, 0);
    d[40..48].copy_from_slice(&shoff.to_le_bytes());
    d[58..64].copy_from_slice(&[64, 0, 4, 0, 3, 0]);
    d
}

/// How a child process ended and what it cost.
#[derive(Debug)]
#[allow(dead_code, reason = "not every test binary uses it")]
pub struct Measured {
    /// Its exit status (-1 if a signal ended it).
    pub status: i32,
    /// Its standard output and error, one after the other.
    pub output: String,
    /// Wall time from start to end.
    pub elapsed: std::time::Duration,
    /// Its peak resident memory, in bytes (from `wait4`'s resource usage).
    pub peak_rss: u64,
    /// The CPU time it used, user and system.
    pub cpu: std::time::Duration,
}

/// Runs `cmd` to its end and measures it.
#[allow(clippy::zombie_processes, reason = "wait4 reaps the child, with its resource usage")]
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn run_measured(cmd: &mut std::process::Command) -> Measured {
    use std::io::Read;
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only into the two locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4: {}", std::io::Error::last_os_error());
    let elapsed = start.elapsed();
    let output = out.join().expect("stdout") + &err.join().expect("stderr");
    let status = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let time = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    Measured { status, output, elapsed, peak_rss: usage.ru_maxrss as u64 * 1024, cpu }
}

/// Every file of examples/static-website's site, as (URL path, bytes), in
/// path order (dot files left out).
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn site_files() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
                out.push((format!("/{rel}"), std::fs::read(&p).unwrap()));
            }
        }
    }
    let site = workspace().join("examples/static-website/site");
    let mut out = Vec::new();
    walk(&site, &site, &mut out);
    assert!(out.len() >= 10, "the site has {} files", out.len());
    out
}
