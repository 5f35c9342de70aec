//! Boot under QEMU (issue 9): whole-process time of QEMU microvm booting
//! `examples/hello` to its exit, against a Debian Linux kernel with a
//! one-line busybox initramfs under the same QEMU command, interleaved in
//! one run; with the tender booting the same image as context.
//!
//! QEMU's command line is the one `skiff run IMAGE --vmm qemu` writes
//! (recorded through `SKIFF_QEMU`), run directly for both guests; for Linux
//! only `-kernel` and `-append` change and `-initrd` is added. Both get the
//! same memory (`--mem`, 128 MiB: a Debian kernel with an initramfs does not
//! come up in less). Each guest ends by writing 0 to `isa-debug-exit`, so
//! QEMU exits with status 1 for both, and the benchmark checks it. Linux's
//! bzImage starts in ring 0, which this machine's KVM (PVM) emulates; when
//! Linux does not come up under KVM within the probe's time, both run under
//! TCG (`-accel tcg`) and the output says so.
//!
//! `cargo run --release -p skiff-bench --bin qemu [-- RUNS]` (default 10).
//! Needs qemu-system-x86_64 (`qemu-system-x86`), a kernel in /boot
//! (`linux-image-amd64`), a static /bin/busybox (`busybox-static`) and
//! `cpio`.

use skiff_bench::{Linking, Sample, guest, measure, ms, release_skiff, release_tender, summary};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Guest memory for both guests.
const MEM: &str = "128M";
/// The Linux command line: its console on COM1 as Skiff's, errors only,
/// and a panic (init failing) resets at once, which ends QEMU.
const LINUX_APPEND: &str = "console=ttyS0 quiet panic=-1";
/// The initramfs's `/init`: make `/dev/port`, write 0 to `isa-debug-exit`.
const INIT: &str = "#!/bin/busybox sh\n/bin/busybox mknod /dev/port c 1 4 && printf '\\000' | /bin/busybox dd \
                    of=/dev/port bs=1 seek=244 count=1\n";
/// How long Linux gets under KVM before the benchmark falls back to TCG.
const KVM_PROBE: Duration = Duration::from_secs(20);
/// QEMU's exit status when the guest wrote 0 to `isa-debug-exit`.
const GUEST_OK: i32 = 1;

/// What the benchmark needs and did not find.
#[derive(Debug, thiserror::Error)]
enum Missing {
    /// A program is not on `PATH`.
    #[error("{program} not found on PATH: apt-get install {package}")]
    Program { program: &'static str, package: &'static str },
    /// No kernel in /boot.
    #[error("no Linux kernel (/boot/vmlinuz-*): apt-get install linux-image-amd64")]
    Kernel,
    /// /bin/busybox is missing or dynamically linked.
    #[error("/bin/busybox {0}: the initramfs needs a static one: apt-get install busybox-static")]
    Busybox(&'static str),
}

/// What went wrong while setting up a run.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// The programs and files the Linux baseline needs.
struct Tools {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
    cpio: PathBuf,
}

fn on_path(program: &'static str, package: &'static str) -> Result<PathBuf, Missing> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(Missing::Program { program, package })
}

/// Whether the ELF file at `path` asks for a program interpreter
/// (PT_INTERP), i.e. is dynamically linked.
fn dynamically_linked(path: &Path) -> std::io::Result<bool> {
    let elf = std::fs::read(path)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    for i in 0..count {
        let o = phoff + i * size;
        let ty = elf.get(o..o + 4).ok_or_else(bad)?;
        if ty == 3u32.to_le_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Tools {
    fn find() -> Result<Tools, Missing> {
        let qemu = on_path("qemu-system-x86_64", "qemu-system-x86")?;
        let cpio = on_path("cpio", "cpio")?;
        let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
            .map_err(|_| Missing::Kernel)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .collect();
        kernels.sort();
        let kernel = kernels.pop().ok_or(Missing::Kernel)?;
        let busybox = PathBuf::from("/bin/busybox");
        match dynamically_linked(&busybox) {
            Ok(false) => {}
            Ok(true) => return Err(Missing::Busybox("is dynamically linked")),
            Err(_) => return Err(Missing::Busybox("is missing or not an ELF file")),
        }
        Ok(Tools { qemu, kernel, busybox, cpio })
    }
}

/// Builds the initramfs (uncompressed newc cpio: nothing to inflate at
/// boot) with `/bin/busybox`, `/dev` and the one-line `/init`.
fn initramfs(tools: &Tools, dir: &Path) -> Result<PathBuf, BenchError> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).map_err(io("make the initramfs tree"))?;
    std::fs::create_dir_all(root.join("dev")).map_err(io("make the initramfs tree"))?;
    std::fs::copy(&tools.busybox, root.join("bin/busybox")).map_err(io("copy busybox"))?;
    let init = root.join("init");
    std::fs::write(&init, INIT).map_err(io("write /init"))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod /init"))?;
    let out = dir.join("initramfs.cpio");
    let file = std::fs::File::create(&out).map_err(io("create the initramfs"))?;
    let mut child = Command::new(&tools.cpio)
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .map_err(io("run cpio"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(b".\nbin\nbin/busybox\ndev\ninit\n").map_err(io("feed cpio"))?;
    }
    let status = child.wait().map_err(io("wait for cpio"))?;
    if !status.success() {
        return Err(BenchError::Failed(format!("cpio failed ({status})")));
    }
    Ok(out)
}

/// QEMU's arguments as `skiff run IMAGE --vmm qemu --mem MEM -- ARGS`
/// writes them: `SKIFF_QEMU` names a script that records them and exits as
/// QEMU does after a guest's status 0.
fn recorded_arguments(skiff: &Path, image: &Path, dir: &Path, args: &[&str]) -> Result<Vec<OsString>, BenchError> {
    let record = dir.join("arguments");
    let script = dir.join("record-qemu");
    let text = format!("#!/bin/sh\nprintf '%s\\0' \"$@\" > '{}'\nexit {GUEST_OK}\n", record.display());
    std::fs::write(&script, text).map_err(io("write the recording script"))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod the script"))?;
    let _ = std::fs::remove_file(&record);
    let out = Command::new(skiff)
        .arg("run")
        .arg(image)
        .args(["--vmm", "qemu", "--mem", MEM, "--"])
        .args(args)
        .env("SKIFF_QEMU", &script)
        .output()
        .map_err(io("run skiff"))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "skiff run --vmm qemu failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let bytes = std::fs::read(&record).map_err(io("read the recorded QEMU arguments"))?;
    use std::os::unix::ffi::OsStringExt;
    Ok(bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| OsString::from_vec(a.to_vec())).collect())
}

/// The same arguments booting `kernel` with `initrd` and Linux's command
/// line instead of the image.
fn linux_arguments(skiff: &[OsString], kernel: &Path, initrd: &Path) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = skiff.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-kernel") | Some("-append") => {
                it.next();
            }
            _ => out.push(a.clone()),
        }
    }
    out.extend(["-kernel".into(), kernel.into(), "-initrd".into(), initrd.into()]);
    out.extend(["-append".into(), LINUX_APPEND.into()]);
    out
}

/// The arguments with KVM swapped for TCG.
fn tcg(args: &[OsString]) -> Vec<OsString> {
    args.iter()
        .flat_map(|a| if a == "-enable-kvm" { vec!["-accel".into(), "tcg".into()] } else { vec![a.clone()] })
        .collect()
}

/// How a trial boot ended.
#[derive(Debug, PartialEq, Eq)]
enum Trial {
    /// The guest wrote status 0.
    Up,
    /// QEMU ended with another status (a reset ends it with 0).
    Status(Option<i32>),
    /// Still running at the limit (killed).
    TimedOut,
}

impl std::fmt::Display for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trial::Up => write!(f, "ended with the guest's status 0"),
            Trial::Status(Some(0)) => write!(f, "reset before its init ran (QEMU exit status 0)"),
            Trial::Status(Some(c)) => write!(f, "QEMU exited with status {c}"),
            Trial::Status(None) => write!(f, "QEMU was killed by a signal"),
            Trial::TimedOut => write!(f, "had not ended"),
        }
    }
}

/// How QEMU with `args` ends within `limit`.
fn comes_up(qemu: &Path, args: &[OsString], limit: Duration) -> Result<Trial, BenchError> {
    let mut child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start QEMU"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(io("wait for QEMU"))? {
            return Ok(if status.code() == Some(GUEST_OK) { Trial::Up } else { Trial::Status(status.code()) });
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Trial::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run() -> Result<(), BenchError> {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let tools = Tools::find()?;
    let tender = release_tender(Linking::Static);
    let skiff = release_skiff();
    let hello = guest("examples/hello");
    let dir = std::env::temp_dir().join("skiff-bench-qemu");
    std::fs::create_dir_all(&dir).map_err(io("make the work directory"))?;
    let initrd = initramfs(&tools, &dir)?;
    // Boot to exit: hello without its 10 ms sleep.
    let guest_args = ["--sleep-ms", "0"];
    let skiff_kvm = recorded_arguments(&skiff, &hello, &dir, &guest_args)?;
    let linux_kvm = linux_arguments(&skiff_kvm, &tools.kernel, &initrd);

    eprintln!(
        "qemu benchmark: probing Linux ({}) under KVM for up to {} s",
        tools.kernel.display(),
        KVM_PROBE.as_secs()
    );
    let probe = comes_up(&tools.qemu, &linux_kvm, KVM_PROBE)?;
    let kvm = probe == Trial::Up;
    let (accel, skiff_args, linux_args) =
        if kvm { ("KVM", skiff_kvm.clone(), linux_kvm) } else { ("TCG", tcg(&skiff_kvm), tcg(&linux_kvm)) };
    for (what, args) in [("hello", &skiff_args), ("Linux", &linux_args)] {
        let trial = comes_up(&tools.qemu, args, Duration::from_secs(120))?;
        if trial != Trial::Up {
            return Err(BenchError::Failed(format!("{what} under QEMU ({accel}) {trial} after 120 s at most")));
        }
    }
    eprintln!("qemu benchmark: {runs} runs of each under {accel}, interleaved");

    let check = |what: &str, s: Sample, ok: i32| -> Result<Sample, BenchError> {
        if s.status == ok {
            Ok(s)
        } else {
            Err(BenchError::Failed(format!("{what} exited with {} (expected {ok})", s.status)))
        }
    };
    let (mut on_qemu, mut linux, mut on_kvm, mut on_tender) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        on_qemu.push(check("hello under QEMU", measure(Command::new(&tools.qemu).args(&skiff_args)), GUEST_OK)?);
        linux.push(check("Linux under QEMU", measure(Command::new(&tools.qemu).args(&linux_args)), GUEST_OK)?);
        if !kvm {
            on_kvm.push(check(
                "hello under QEMU (KVM)",
                measure(Command::new(&tools.qemu).args(&skiff_kvm)),
                GUEST_OK,
            )?);
        }
        let t = measure(Command::new(&tender).arg(&hello).arg("--").args(guest_args));
        on_tender.push(check("hello under the tender", t, 0)?);
        if (i + 1) % 5 == 0 {
            eprintln!("  {} / {runs}", i + 1);
        }
    }

    let display = |args: &[OsString]| {
        args.iter()
            .map(|a| {
                let a = a.to_string_lossy();
                if a.contains(' ') { format!("'{a}'") } else { a.into_owned() }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("## Boot under QEMU: whole process, boot to exit, median of {runs} (p10..p90), ms");
    println!();
    if kvm {
        println!("Both under KVM.");
    } else {
        println!(
            "Linux under this machine's KVM {probe} within {} s (KVM here emulates guest ring 0, where a bzImage \
             starts), so both guests run under TCG (`-accel tcg`) for the comparison.",
            KVM_PROBE.as_secs()
        );
    }
    println!();
    println!("| what | median | p10 | p90 | vs. hello under QEMU |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (base, _, _) = summary(&on_qemu);
    let row = |what: String, samples: &[Sample]| {
        let (m, p10, p90) = summary(samples);
        println!("| {what} | {} | {} | {} | {:.2} |", ms(m), ms(p10), ms(p90), m.as_secs_f64() / base.as_secs_f64());
        m
    };
    row(format!("hello (`--sleep-ms 0`), QEMU microvm, {accel}"), &on_qemu);
    let l = row(format!("Linux + busybox initramfs, QEMU microvm, {accel}"), &linux);
    if !kvm {
        row("hello, QEMU microvm, KVM (context)".into(), &on_kvm);
    }
    row("hello, the tender, KVM (context)".into(), &on_tender);
    println!();
    let ratio = l.as_secs_f64() / base.as_secs_f64();
    println!(
        "Skiff boots to exit {ratio:.1} times as fast as Linux under the same QEMU command ({accel}; target: at \
         least 20): {}",
        if ratio >= 20.0 { "met" } else { "NOT met" }
    );
    println!();
    println!("Commands (`{}`, guest memory {MEM} for both):", tools.qemu.display());
    println!();
    println!("    hello: qemu-system-x86_64 {}", display(&skiff_args));
    println!("    Linux: qemu-system-x86_64 {}", display(&linux_args));
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qemu benchmark: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn linux_gets_the_same_command_with_its_kernel_initrd_and_command_line() {
        let skiff = os(&["-M", "microvm", "-enable-kvm", "-m", "128M", "-kernel", "/img", "-append", "--sleep-ms 0"]);
        let linux = linux_arguments(&skiff, Path::new("/boot/vmlinuz"), Path::new("/tmp/i.cpio"));
        let want = ["-M", "microvm", "-enable-kvm", "-m", "128M", "-kernel", "/boot/vmlinuz", "-initrd", "/tmp/i.cpio"];
        let mut want = os(&want);
        want.extend(os(&["-append", LINUX_APPEND]));
        assert_eq!(linux, want);
    }

    #[test]
    fn tcg_replaces_kvm_only() {
        let args = os(&["-M", "microvm", "-enable-kvm", "-m", "128M"]);
        assert_eq!(tcg(&args), os(&["-M", "microvm", "-accel", "tcg", "-m", "128M"]));
    }

    #[test]
    fn a_dynamically_linked_program_is_told_apart() {
        // The test binary itself links the C library dynamically.
        let me = std::env::current_exe().unwrap();
        assert!(dynamically_linked(&me).unwrap());
        let not_elf = std::env::temp_dir().join(format!("skiff-bench-not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, b"#!/bin/sh\n").unwrap();
        assert!(dynamically_linked(&not_elf).is_err());
        std::fs::remove_file(&not_elf).unwrap();
    }
}
