//! The tender's promises under a hostile or careless world: a system call
//! its allow-list forbids is reported and ends it with its own status; a
//! console pipe nobody reads cannot hold off `--timeout`; `SIGTERM` and
//! `SIGINT` stop the guest cleanly; exit statuses and command-line errors
//! never collide with the service's own statuses.
//!
//! Run twice, like the boot tests: here under KVM, in `hostile_process.rs`
//! in process mode (`common::sandbox()`).

mod common;

use skiff_abi::exit;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn probe() -> &'static Path {
    if common::sandbox() == common::Sandbox::Kvm {
        skiff_testnet::require_kvm();
    }
    common::guest("tests/guests/probe")
}

/// The tender, with this binary's sandbox selected.
fn tender_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff-tender"));
    cmd.args(common::sandbox_args());
    cmd
}

/// The test binary itself, running only `test` with `mode` in the
/// environment: for code that must run in a process of its own.
fn this_binary(test: &str, mode: &str) -> std::process::Output {
    // The test's full name: inside `hostile_process.rs` it is in a module.
    let test = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    };
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &test, "--nocapture", "--test-threads", "1"])
        .env("SKIFF_HOSTILE_CHILD", mode)
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary")
}

/// In a child process (see `this_binary`): installs the tender's real
/// allow-list and handler, checks that allowed calls still work, then
/// makes the forbidden call `mode` names from a thread named "forbidden".
#[test]
fn seccomp_child() {
    let Ok(mode) = std::env::var("SKIFF_HOSTILE_CHILD") else { return };
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    // A descriptor open before the lockdown, which process mode's filter
    // does not list.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) fills the two-element array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let process = mode.starts_with("process-");
    let thread = std::thread::Builder::new()
        .name("forbidden".into())
        .spawn(move || {
            // Thread start-up (naming it, its signal stack) makes calls the
            // allow-list does not have: the tender, too, starts its threads
            // before it locks down.
            ready_tx.send(()).expect("ready");
            go_rx.recv().expect("go");
            match mode.as_str() {
                "openat" => {
                    let _ = std::fs::File::open("/etc/hostname");
                }
                "ioctl" => {
                    // KVM_RUN on standard input: the request is allowed,
                    // the descriptor is not.
                    // SAFETY: an ioctl on fd 0 touches no memory of ours.
                    unsafe { libc::ioctl(0, 0xae80) };
                }
                "process-write" => {
                    // SAFETY: writes one byte from a live buffer.
                    unsafe { libc::write(pipe[1], b"x".as_ptr().cast(), 1) };
                }
                other => panic!("unknown mode {other}"),
            }
            eprintln!("the forbidden call returned");
        })
        .expect("spawn");
    ready_rx.recv().expect("thread started");
    let how = if process {
        skiff_tender::seccomp::Sandboxed::Process(skiff_tender::seccomp::ProcessFds {
            write: vec![1, 2],
            read: vec![pipe[0]],
            status: None,
            pid: std::process::id() as i32,
        })
    } else {
        skiff_tender::seccomp::Sandboxed::Kvm(skiff_tender::seccomp::KvmFds { vcpu: 1000 })
    };
    skiff_tender::seccomp::lock_down_as(skiff_tender::seccomp::UserNetCalls::default(), &how).expect("lock down");
    // Allowed after lock-down: clocks, writes, sleeping.
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    eprintln!("locked down; allowed calls work ({:?})", t.elapsed());
    go_tx.send(()).expect("go");
    let _ = thread.join();
    eprintln!("the process should have ended");
}

/// In a child process (see `this_binary`): sets up process mode's signal
/// handlers as the tender does, then faults in the tender's own code (this
/// test's), not the guest's.
#[test]
fn tender_fault_child() {
    if std::env::var("SKIFF_HOSTILE_CHILD").as_deref() != Ok("tender-fault") {
        return;
    }
    let low = skiff_tender::paging::PROCESS_LOW;
    let image = skiff_tender::load_image(probe(), true).expect("the probe image");
    let mem = skiff_tender::guest_memory::GuestMemory::new_at(low, 16 << 20).expect("guest memory");
    let ending = std::sync::atomic::AtomicU8::new(0);
    let _cpu = skiff_tender::process::ProcessCpu::new(&image, &mem, low, &ending).expect("handlers");
    eprintln!("handlers installed; faulting in tender code");
    // SAFETY: deliberately reads an unmapped address, to fault.
    let v = unsafe { std::ptr::read_volatile(16 as *const u64) };
    eprintln!("the read returned {v}");
}

/// A fault in the tender's own code is never reported as the guest's CPU
/// exception (status 102): process mode's handler says whose it is and the
/// process dies of the signal, as without a handler.
#[test]
fn a_fault_in_the_tenders_own_code_is_not_reported_as_the_guests() {
    use std::os::unix::process::ExitStatusExt;
    let out = this_binary("tender_fault_child", "tender-fault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("handlers installed"), "{stderr}");
    assert!(stderr.contains("signal 11 in the tender's own code at 0x"), "{stderr}");
    assert!(!stderr.contains("guest CPU exception") && !stderr.contains("the read returned"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{stderr}");
}

/// Process mode's filter pins `write` to the descriptors the tender uses:
/// one opened before the lockdown but not listed is refused.
#[test]
fn process_mode_pins_writes_to_its_descriptors() {
    check_blocked("process-write", "write", 1);
}

fn check_blocked(mode: &str, name: &str, nr: u32) {
    let out = this_binary("seccomp_child", mode);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(exit::BLOCKED_SYSCALL)), "{stderr}");
    assert!(stderr.contains("locked down; allowed calls work"), "{stderr}");
    let line = format!("skiff-tender: blocked system call {name} ({nr}) in thread forbidden");
    assert!(stderr.contains(&line), "expected {line:?} in:\n{stderr}");
    assert!(!stderr.contains("returned"), "{stderr}");
}

#[test]
fn a_blocked_system_call_is_named_and_ends_the_tender_with_its_status() {
    check_blocked("openat", "openat", 257);
}

#[test]
fn kvm_ioctls_are_allowed_on_the_vcpu_descriptor_only() {
    check_blocked("ioctl", "ioctl", 16);
}

fn spawn_tender(args: &[&str]) -> Child {
    tender_cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff-tender")
}

/// Waits up to `limit` for the child; kills it (and fails) past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> (i32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code().unwrap_or(-1), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("skiff-tender did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

#[test]
fn the_timeout_fires_while_the_console_pipe_is_full() {
    let image = probe().to_str().unwrap();
    // Nobody reads standard output: the pipe fills after 64 KiB and every
    // console write blocks.
    let mut child = spawn_tender(&["--timeout", "1s", image, "--", "log-burst", "100000000"]);
    let (status, elapsed) = wait_bounded(&mut child, Duration::from_secs(20));
    let stderr = read_all(child.stderr.take());
    assert_eq!(status, i32::from(exit::TIMEOUT), "{stderr}");
    assert!(stderr.contains("--timeout of 1.000 s expired"), "{stderr}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}

/// A guest busy in its own code, never calling the tender, is still
/// ended at `--timeout`: under KVM the kick ends `KVM_RUN`; in process mode
/// its handler takes the thread back from the guest's code.
#[test]
fn the_timeout_ends_a_guest_that_never_calls_the_tender() {
    let image = probe().to_str().unwrap();
    let mut child = spawn_tender(&["--timeout", "500ms", image, "--", "spin"]);
    let (status, elapsed) = wait_bounded(&mut child, Duration::from_secs(20));
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    assert_eq!(status, i32::from(exit::TIMEOUT), "{stdout}{stderr}");
    assert!(stdout.contains("spinning"), "{stdout}");
    assert!(stderr.contains("--timeout of 0.500 s expired"), "{stderr}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

/// A guest that keeps the tender's kick away from its thread (in process
/// mode it can block the signal with a system call the filter allows) is
/// still ended at `--timeout`: the monitor ends the process after a
/// second of kicking. Under KVM the hidden `syscall` faults first.
#[test]
fn a_guest_that_blocks_the_kick_is_still_ended() {
    let image = probe().to_str().unwrap();
    let mut child = spawn_tender(&["--timeout", "500ms", image, "--", "block-kick-and-spin"]);
    let (status, elapsed) = wait_bounded(&mut child, Duration::from_secs(20));
    let stderr = read_all(child.stderr.take());
    match common::sandbox() {
        common::Sandbox::Kvm => assert_eq!(status, i32::from(exit::CPU_EXCEPTION), "{stderr}"),
        common::Sandbox::Process => {
            assert_eq!(status, i32::from(exit::TIMEOUT), "{stderr}");
            assert!(stderr.contains("did not give its thread back"), "{stderr}");
            assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Starts the probe with `args`, lets it boot, sends `signals` (with a
/// pause between them) and returns status, elapsed time since the first
/// signal, stdout and stderr.
fn stop_probe(tender_args: &[&str], probe_args: &[&str], signals: &[i32]) -> (i32, Duration, String, String) {
    let image = probe().to_str().unwrap();
    let mut args: Vec<&str> = tender_args.to_vec();
    args.push(image);
    args.push("--");
    args.extend_from_slice(probe_args);
    let mut child = spawn_tender(&args);
    // The tender blocks the stop signals within its first milliseconds.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for (i, &sig) in signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        signal(&child, sig);
    }
    let (status, _) = wait_bounded(&mut child, Duration::from_secs(20));
    let elapsed = start.elapsed();
    (status, elapsed, read_all(child.stdout.take()), read_all(child.stderr.take()))
}

#[test]
fn sigterm_ends_a_guest_that_does_not_wait_for_it_with_status_0() {
    let (status, elapsed, stdout, stderr) = stop_probe(&[], &["sleep", "20000"], &[libc::SIGTERM]);
    assert_eq!(status, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("SIGTERM: asking the guest to stop"), "{stderr}");
    assert!(stdout.contains("asked to stop: ending"), "{stdout}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn sigint_lets_a_guest_that_waits_for_it_clean_up_and_choose_its_status() {
    let (status, elapsed, stdout, stderr) = stop_probe(&[], &["stop-watch"], &[libc::SIGINT]);
    assert_eq!(status, 3, "{stdout}\n{stderr}");
    assert!(stderr.contains("SIGINT: asking the guest to stop"), "{stderr}");
    assert!(stdout.contains("stop requested: cleaning up") && stdout.contains("clean-up done"), "{stdout}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn a_guest_that_ignores_the_stop_is_ended_after_the_grace_period() {
    let (status, elapsed, stdout, stderr) = stop_probe(&["--stop-grace", "300ms"], &["stop-ignore"], &[libc::SIGTERM]);
    assert_eq!(status, i32::from(exit::STOPPED), "{stdout}\n{stderr}");
    assert!(stdout.contains("stop requested: ignoring it"), "{stdout}");
    assert!(stderr.contains("did not stop within 0.3 s"), "{stderr}");
    assert!(stderr.contains("guest ended: it did not stop by itself after SIGTERM"), "{stderr}");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn a_second_stop_signal_ends_the_guest_at_once() {
    let (status, elapsed, stdout, stderr) = stop_probe(&[], &["stop-ignore"], &[libc::SIGTERM, libc::SIGINT]);
    assert_eq!(status, i32::from(exit::STOPPED), "{stdout}\n{stderr}");
    assert!(stderr.contains("SIGINT again: ending the guest now"), "{stderr}");
    // Well inside the default 5 s grace period.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn command_line_errors_have_their_own_status_and_help_lists_every_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-tender")).arg("--no-such-option").output().unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::USAGE)));
    let help = Command::new(env!("CARGO_BIN_EXE_skiff-tender")).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for (lo, hi, what) in exit::TABLE {
        let range = if lo == hi { format!("{lo}") } else { format!("{lo}-{hi}") };
        assert!(text.contains(&format!("{range:>6}  {what}")), "--help lacks status {range}:\n{text}");
    }
}

#[test]
fn a_service_status_of_2_is_not_a_command_line_error() {
    let image = probe().to_str().unwrap();
    let out = tender_cmd().args([image, "--", "exit", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_ne!(exit::USAGE, 2);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
