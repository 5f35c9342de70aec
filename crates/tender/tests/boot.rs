//! Boot tests: real images under KVM, run by the real `skiff-tender`
//! binary. The probe guest (tests/guests/probe) does one thing per
//! scenario, most of them misbehaving on purpose.
//!
//! Every test runs twice: here under KVM, and in `boot_process.rs` (which
//! includes this file) in process mode; `common::sandbox()` tells which,
//! and the few expectations that differ say why.
//!
//! Under KVM these tests need `/dev/kvm`; without it they fail with a
//! message that says so.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, sandbox, workspace};

fn require_kvm() {
    if sandbox() == Sandbox::Process {
        return;
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!(
            "the boot tests run real guests and need read-write access to /dev/kvm ({e}); \
             run them on a Linux machine with KVM enabled, as root or in the kvm group"
        );
    }
}

fn probe() -> &'static Path {
    require_kvm();
    common::guest("tests/guests/probe")
}

fn hello() -> &'static Path {
    require_kvm();
    common::guest("examples/hello")
}

#[derive(Debug)]
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// The tender, with this binary's sandbox selected.
fn tender_cmd() -> Command {
    let mut cmd = Command::new(common::tender());
    cmd.args(common::sandbox_args());
    cmd
}

fn tender(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = tender_cmd().args(args).stdin(Stdio::null()).output().expect("run skiff-tender");
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn run_probe(scenario: &[&str]) -> Run {
    let image = probe().to_str().expect("utf-8 path");
    let mut args = vec!["--timeout", "30s", image, "--"];
    args.extend_from_slice(scenario);
    tender(&args)
}

#[track_caller]
fn expect(run: &Run, status: i32, needles: &[&str]) {
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.status, status, "unexpected status; output:\n{all}");
    for n in needles {
        assert!(all.contains(n), "output lacks {n:?}:\n{all}");
    }
}

#[test]
fn hello_logs_sleeps_and_exits_zero() {
    let image = hello().to_str().unwrap();
    let run = tender(&["--timeout", "30s", image, "--", "first", "second arg"]);
    expect(&run, 0, &["INFO  hello: Hello from Skiff!", "asked for 10 ms", r#"command line: ["first", "second arg"]"#]);
    // The measured sleep is at least what was asked for.
    let slept: f64 = run
        .stdout
        .split("slept ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("hello prints the measured sleep");
    assert!((10.0..200.0).contains(&slept), "slept {slept} ms");
}

#[test]
fn the_supervisors_ring_0_entry_still_boots_and_reports_faults() {
    // Images name their ring-3 start state and the tender sets it
    // directly; `SKIFF_RING0_START` makes it start at `_start` in ring 0
    // instead, as for an image without that note (process mode has no
    // ring 0 and ignores it).
    let run_ring0 = |args: &[&str]| {
        let out = tender_cmd().args(args).env("SKIFF_RING0_START", "1").stdin(Stdio::null()).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), all)
    };
    let (status, all) = run_ring0(&["--timeout", "30s", hello().to_str().unwrap(), "--", "--sleep-ms", "0"]);
    assert_eq!(status, 0, "{all}");
    assert!(all.contains("Hello from Skiff!"), "{all}");
    let (status, all) = run_ring0(&["--timeout", "30s", probe().to_str().unwrap(), "--", "stack-overflow"]);
    assert_eq!(status, 102, "{all}");
    assert!(all.contains("stack overflow") && all.contains("in ring 3"), "{all}");
}

#[test]
fn a_panic_prints_message_and_location_and_exits_101() {
    let run = run_probe(&["panic"]);
    expect(&run, 101, &["panicked at src/main.rs:", "probe panic 42", "guest aborted (panic)"]);
}

#[test]
fn cpu_exceptions_are_reported_with_vector_address_and_status() {
    // In process mode nothing is mapped below the boot area (0xf0000): the
    // page tables, boot GDT and low boot pages do not exist there.
    let below = "an unmapped page of the boot area below the image";
    let process = sandbox() == Sandbox::Process;
    let low = |kvm: &'static [&'static str], proc: &'static [&'static str]| if process { proc } else { kvm };
    let cases: &[(&str, &[&str])] = &[
        ("divzero", &["divide error (#DE, vector 0)", "in ring 3"]),
        ("read-null", &["page fault (#PF, vector 14)", "address 0x0: read of an unmapped page", "null pointer"]),
        ("write-text", &["write to a page whose protection forbids it", "the code of the image, read-only (r-x user"]),
        (
            "jump-data",
            &["instruction fetch from a page whose protection forbids it", "the data of the image (rw- user"],
        ),
        (
            "write-pagetable",
            low(&["address 0x10000: write", "page tables, reachable only from ring 0"], &["address 0x10000: write"]),
        ),
        ("write-bootinfo", low(&["address 0x1000: write", "boot info, read-only"], &["address 0x1000: write"])),
        // Mapped but protected pages are named for what they are.
        (
            "write-gdt",
            low(
                &[
                    "address 0xf000: write to a page whose protection forbids it",
                    "the boot GDT, read-only and reachable only from ring 0",
                ],
                &["address 0xf000: write to an unmapped page"],
            ),
        ),
        ("write-rodata", &["write to a page whose protection forbids it", "the read-only data of the image (r-- user"]),
        (
            "jump-shared",
            low(
                &[
                    "address 0x4000: instruction fetch from a page whose protection forbids it",
                    "the shared area (rw- user",
                ],
                &["address 0x4000: instruction fetch from an unmapped page"],
            ),
        ),
        ("stack-overflow", &["write to an unmapped page", "stack overflow", "probe::recurse"]),
        ("privileged", &["general protection fault (#GP, vector 13)"]),
        ("port", &["general protection fault (#GP, vector 13)"]),
        ("ud2", &["invalid opcode (#UD, vector 6)"]),
    ];
    for (scenario, needles) in cases {
        let run = run_probe(&[scenario]);
        let mut all = vec!["guest CPU exception in ring 3", "rip 0x"];
        all.extend_from_slice(needles);
        if process && ["write-pagetable", "write-bootinfo", "write-gdt", "jump-shared"].contains(scenario) {
            all.push(below);
        }
        expect(&run, 102, &all);
        assert!(!run.stderr.contains("hole"), "{scenario}: {}", run.stderr);
    }
}

#[test]
fn bad_hypercall_arguments_end_the_guest_not_the_tender() {
    let cases: &[(&str, &str)] = &[
        (
            "bad-pointer",
            "walltime: argument at 0xfffff000: 8 bytes at guest address 0xfffff000 are outside guest memory",
        ),
        ("bad-length", "abort: message of 1048576 bytes is longer than 4096"),
        ("bad-range", "bytes at guest address 0x3fffff8 are outside guest memory"),
        (
            "pagetable-hypercall",
            match sandbox() {
                Sandbox::Kvm => "poll: argument at 0x10000: 16 bytes at 0x10000 are not writable memory of the service",
                // Below the process boot area there is no guest memory.
                Sandbox::Process => {
                    "poll: argument at 0x10000: 16 bytes at guest address 0x10000 are outside guest memory"
                }
            },
        ),
    ];
    for (scenario, needle) in cases {
        let run = run_probe(&[scenario]);
        expect(&run, 110, &["guest ended for a bad hypercall", needle]);
    }
    // A result the tender would write into read-only memory (in process
    // mode its own write would fault there): refused the same way in both.
    let run = run_probe(&["rodata-hypercall"]);
    expect(&run, 110, &["walltime: argument at 0x", "8 bytes at 0x", "are not writable memory of the service"]);
}

#[test]
fn float_and_simd_work_in_ring_3() {
    let run = run_probe(&["sse"]);
    // The same computation on the host, with the same libm.
    let mut acc = 0.0f64;
    for i in 1..=1000 {
        let x = f64::from(i);
        acc += libm::sqrt(x) * libm::sin(x / 7.0) + libm::fma(x, 0.5, 1.0) / 3.0;
    }
    let v: Vec<f32> = (0..64).map(|i| i as f32 * 1.25).collect();
    let dot: f32 = v.iter().zip(v.iter().rev()).map(|(a, b)| a * b).sum();
    let line = format!("sse acc={acc:.6} dot={dot:.3} pos=77777 count=99999 pi=3.1415926536");
    expect(&run, 0, &[&line]);
}

#[test]
fn running_out_of_memory_is_reported_clearly() {
    let run = run_probe(&["oom"]);
    expect(&run, 103, &["out of memory: an allocation of 1048576 bytes failed", "--mem"]);
}

#[test]
fn service_exit_statuses_pass_through() {
    expect(&run_probe(&["exit", "7"]), 7, &[]);
    expect(&run_probe(&["fail"]), 1, &["main failed: the probe was asked to fail"]);
    expect(&run_probe(&["hello", "x"]), 0, &[r#"args ["hello", "x"]"#]);
}

#[test]
fn a_deadlocked_guest_is_ended_with_a_message() {
    expect(&run_probe(&["deadlock"]), 104, &["deadlock: main is waiting"]);
}

#[test]
fn timers_spawned_tasks_and_timeouts_behave() {
    let run = run_probe(&["timers"]);
    expect(&run, 0, &["order=[10, 20, 30] outputs=[30, 10, 20] timeout-expired=true timeout-passed=true"]);
}

#[test]
fn the_timeout_option_ends_a_long_guest() {
    let image = probe().to_str().unwrap();
    let run = tender(&["--timeout", "300ms", image, "--", "sleep", "20000"]);
    expect(&run, 111, &["--timeout of 0.300 s expired"]);
    assert!(run.elapsed < Duration::from_secs(5), "took {:?}", run.elapsed);
}

#[test]
fn a_sleeping_guest_burns_no_host_cpu() {
    let image = probe().to_str().unwrap();
    let start = Instant::now();
    // Reaped by wait4 below, which also returns the child's CPU usage.
    #[allow(clippy::zombie_processes)]
    let mut child =
        tender_cmd().args([image, "--", "sleep", "1000"]).stdout(Stdio::piped()).spawn().expect("spawn tender");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; wait4 fills the two
    // out-parameters, which live on this stack frame.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    let wall = start.elapsed();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("slept 10"), "{out}");
    let cpu = Duration::from_micros(
        (usage.ru_utime.tv_sec * 1_000_000
            + usage.ru_utime.tv_usec
            + usage.ru_stime.tv_sec * 1_000_000
            + usage.ru_stime.tv_usec) as u64,
    );
    eprintln!("sleep 1000 ms: wall {wall:?}, tender CPU {cpu:?}");
    assert!(wall >= Duration::from_secs(1));
    assert!(cpu < Duration::from_millis(100), "the tender used {cpu:?} of CPU while the guest slept");
}

#[test]
fn a_burst_of_log_lines_costs_few_exits_and_loses_nothing() {
    let image = probe().to_str().unwrap();
    let run = tender(&["--stats", image, "--", "log-burst", "3000"]);
    expect(&run, 0, &["burst line 00000", "burst line 02999"]);
    let lines: Vec<&str> = run.stdout.lines().filter(|l| l.contains("burst line")).collect();
    assert_eq!(lines.len(), 3000);
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!("burst line {i:05}")), "line {i} out of order: {l}");
    }
    let exits: u64 = run
        .stderr
        .split("exits ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("--stats prints the exit count");
    // ~240 KB of text through a 16 KiB ring: about 15 flushes, plus exit.
    assert!(exits < 40, "{exits} exits for 3000 lines:\n{}", run.stderr);
}

#[test]
fn the_wall_clock_matches_the_host() {
    let run = run_probe(&["wallclock"]);
    let secs: u64 = run
        .stdout
        .split("wall clock: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("wall clock line");
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(secs.abs_diff(host) <= 5, "guest {secs}, host {host}");
}

#[test]
fn the_guest_draws_random_bytes_from_the_hardware_source_without_a_system_call() {
    let run = run_probe(&["random"]);
    assert_eq!(run.status, 0, "{}", run.stdout);
    let line = run.stdout.lines().find(|l| l.contains("random: source")).expect("random line");
    assert!(line.contains("source RDSEED") || line.contains("source RDRAND"), "{line}");
    assert!(line.contains("draws differ true"), "{line}");
    assert!(line.contains("256 byte values"), "{line}");
    let fraction: f64 = line.rsplit(", ").next().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((0.49..0.51).contains(&fraction), "{line}");
}

#[test]
fn the_heap_serves_many_allocations() {
    let run = run_probe(&["heap"]);
    let mut blocks: Vec<Vec<u64>> = (0..200).map(|i| vec![i as u64; 1000 + i * 37]).collect();
    blocks.retain(|b| b[0] % 3 != 0);
    let sum: u64 = blocks.iter().map(|b| b.iter().sum::<u64>()).sum();
    expect(&run, 0, &[&format!("heap checksum {sum}")]);
}

#[test]
fn stats_break_down_the_boot() {
    let image = hello().to_str().unwrap();
    let run = tender(&["--stats", image]);
    let first = match sandbox() {
        Sandbox::Kvm => "open KVM, create VM and vCPU",
        Sandbox::Process => "read image, map guest memory",
    };
    expect(&run, 0, &["skiff-tender stats", first, "ring 3 -> main", "exits 2", "exit 1", "poll 1"]);
}

fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = workspace().join("target/test-images");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn malformed_images_are_refused_with_a_clear_message() {
    let good = std::fs::read(probe()).unwrap();
    let mut wrong_abi = good.clone();
    let at = good.windows(8).position(|w| w == b"Skiff\0\0\0").expect("manifest note") + 8;
    wrong_abi[at..at + 4].copy_from_slice(&999u32.to_le_bytes());
    let mut wx = good.clone();
    // Program header 2 is the user text segment: make it writable too.
    let ph = 64 + 56 * 2 + 4;
    wx[ph] |= 2;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not an ELF file"),
        ("random", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), "not an ELF file"),
        ("truncated", good[..100].to_vec(), "runs past the end of the file"),
        ("wrong-abi", wrong_abi, "built for Skiff ABI version 999"),
        ("wx", wx, "writable and executable"),
    ];
    for (name, data, needle) in cases {
        let path = temp_file(name, &data);
        let run = tender(&[path.to_str().unwrap()]);
        expect(&run, 125, &[needle]);
    }
    let run = tender(&["/nonexistent/image"]);
    expect(&run, 125, &["cannot read /nonexistent/image"]);
}

/// A 44-byte Rust (v0) symbol name whose back-references demangle to
/// about a megabyte.
const NAME_BOMB: &[u8] = b"_RYFG_FGyyEvRYFF_EvRYFFEvERLB_B_B_ERLRjB_B_B_";

#[test]
fn images_full_of_hostile_symbol_names_boot_and_fault_within_budget() {
    // 4,000 function symbols sharing the bomb once took the tender a minute
    // and 4 GB before the guest started, and 100,000 sharing a 1 MiB name
    // meant reading 100 GB; now the table is read in place only for a
    // report, and a name is read and demangled to a bounded length.
    let probe_bytes = std::fs::read(probe()).unwrap();
    let long = vec![b'x'; 1 << 20];
    for (tag, count, name) in [("name-bombs", 4000, NAME_BOMB), ("long-names", 100_000, &long[..])] {
        let path = temp_file(tag, &common::with_symbols(&probe_bytes, count, name));
        let mut cmd = tender_cmd();
        let run = common::run_measured(cmd.args(["--timeout", "10s", path.to_str().unwrap(), "--", "ud2"]));
        assert_eq!(run.status, 102, "{tag}: {}", run.output);
        let rip = run.output.lines().find(|l| l.contains("rip 0x")).expect("a fault report");
        let name = rip.split(" in ").nth(1).expect("the function is named");
        assert!(name.contains("...+0x") && name.len() <= skiff_tender::elf::NAME_MAX + 16, "{tag}: {rip}");
        assert!(run.elapsed < Duration::from_secs(2), "{tag}: took {:?}", run.elapsed);
        assert!(run.peak_rss < 64 << 20, "{tag}: peak RSS {} bytes", run.peak_rss);
    }
}

#[test]
fn the_timeout_counts_from_the_tender_start_loading_included() {
    // The image arrives through a pipe in two parts a second apart: a
    // 300 ms budget is spent before the guest starts, so the guest (hello,
    // which would exit 0 after 10 ms) is ended at once.
    let image = std::fs::read(hello()).unwrap();
    let fifo = workspace().join(format!("target/test-images/slow-image-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            pipe.write_all(&image[..64]).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            let _ = pipe.write_all(&image[64..]);
        })
    };
    let run = tender(&["--timeout", "300ms", fifo.to_str().unwrap()]);
    writer.join().unwrap();
    let _ = std::fs::remove_file(&fifo);
    expect(&run, 111, &["--timeout of 0.300 s expired"]);
    assert!(!run.stdout.contains("Hello from Skiff"), "{}", run.stdout);
}

#[test]
fn bad_options_are_usage_errors() {
    let image = hello().to_str().unwrap();
    expect(&tender(&["--mem", "lots", image]), 124, &["is not a memory size"]);
    expect(&tender(&["--mem", "1M", image]), 125, &["out of range"]);
    expect(&tender(&["--timeout", "soon", image]), 124, &["is not a duration"]);
    expect(&tender(&["--log", "loud", image]), 124, &["[possible values: off, error, warn, info, debug, trace]"]);
}

#[test]
fn too_little_memory_for_the_image_is_an_error() {
    let image = probe().to_str().unwrap();
    expect(&tender(&["--mem", "2M", image]), 125, &["the image needs"]);
}

#[test]
fn every_image_passes_the_checks_and_a_planted_syscall_fails_them() {
    for image in [probe(), hello()] {
        let report = skiff_build::check_image(image).expect("built images pass");
        assert!(report.instructions > 1000);
        assert!(report.supervisor_instructions > 20);
    }
    // Plant `syscall` at the start of the user text segment of a copy.
    let mut data = std::fs::read(probe()).unwrap();
    let ph = 64 + 56 * 2;
    let offset = u64::from_le_bytes(data[ph + 8..ph + 16].try_into().unwrap()) as usize;
    data[offset..offset + 2].copy_from_slice(&[0x0f, 0x05]);
    let err = skiff_build::check::check_bytes(&data).unwrap_err().to_string();
    assert!(err.contains("system call instruction `syscall`"), "{err}");
    // Plant an SSE instruction at the supervisor's entry point.
    let mut data = std::fs::read(probe()).unwrap();
    let ph = 64;
    let offset = u64::from_le_bytes(data[ph + 8..ph + 16].try_into().unwrap());
    let vaddr = u64::from_le_bytes(data[ph + 16..ph + 24].try_into().unwrap());
    let entry = u64::from_le_bytes(data[24..32].try_into().unwrap());
    let at = (offset + entry - vaddr) as usize;
    data[at..at + 3].copy_from_slice(&[0x0f, 0x28, 0xc1]);
    let err = skiff_build::check::check_bytes(&data).unwrap_err().to_string();
    assert!(err.contains("SSE/AVX/MMX instruction `movaps xmm0,xmm1`"), "{err}");
}

/// The build's no-syscall check is a lint: a `syscall` hidden in another
/// instruction's immediate passes it. Under KVM what stops it is the
/// virtual CPU: a guest `syscall` never reaches the host. The tender leaves
/// EFER.SCE off and LSTAR zero, so it ends the guest with a CPU exception:
/// #UD where the CPU honours SCE, and under PVM (which sends it to LSTAR) a
/// fetch from the never-mapped page 0. In process mode the call reaches
/// the host kernel, whose seccomp filter traps it: the tender names the
/// call and says the guest's code made it (status 120).
#[test]
fn a_syscall_hidden_in_an_immediate_passes_the_check_and_is_stopped() {
    let report = skiff_build::check_image(probe()).expect("the probe, hidden syscall and all, passes the check");
    assert!(report.instructions > 1000);
    let run = run_probe(&["hidden-syscall"]);
    if sandbox() == Sandbox::Process {
        expect(&run, 120, &["blocked system call openat (257), made by the guest's code at 0x"]);
        return;
    }
    expect(&run, 102, &["guest CPU exception in ring 3"]);
    let ud = run.stderr.contains("invalid opcode (#UD, vector 6)");
    let page_zero = run.stderr.contains("address 0x0: instruction fetch from an unmapped page");
    assert!(ud || page_zero, "{}", run.stderr);
    assert!(!run.stderr.contains("blocked system call"), "{}", run.stderr);
}

/// The rest of a hostile guest's repertoire: `int 0x80` built at run time,
/// a wild write at the code its hypercalls jump to (in process mode the
/// tender's own code, whose address it knows), and a hypercall whose
/// argument points there. Each ends with its report and status; the
/// tender never crashes.
#[test]
fn hostile_guests_get_their_report_and_status() {
    let int80 = run_probe(&["hidden-int80"]);
    let write = run_probe(&["write-hypercall-target"]);
    let arg = run_probe(&["hypercall-arg-at-target"]);
    match sandbox() {
        Sandbox::Kvm => {
            // Ring 3 cannot use the gate (#GP; #UD under PVM).
            expect(&int80, 102, &["guest CPU exception in ring 3"]);
            expect(&write, 102, &["write to a page whose protection forbids it", "the code of the image"]);
            // The runtime's own code is the service's to read.
            expect(&arg, 104, &["guest aborted (abort)"]);
        }
        Sandbox::Process => {
            expect(&int80, 120, &["blocked 32-bit system call 20 (int 0x80), made by the guest's code at 0x"]);
            // The tender's code is read-only and outside guest memory.
            expect(&write, 102, &["write to a page whose protection forbids it", "beyond guest memory (64 MiB)"]);
            expect(&arg, 110, &["abort: argument at 0x", "are outside guest memory"]);
        }
    }
    for run in [&int80, &write, &arg] {
        assert!(!run.stderr.contains("tender's own code"), "{}", run.stderr);
    }
}

/// Copies the tender binary where an unprivileged user can run it.
fn world_readable_tender(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-tender-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("skiff-tender");
    std::fs::copy(common::tender(), &bin).unwrap();
    let image = dir.join("hello");
    std::fs::copy(hello(), &image).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&dir, &bin, &image] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test changes mount namespaces and users; run the suite as root (CI does)");
    }
}

/// Without /dev/kvm a VM cannot start and the tender says what to do;
/// process mode, which exists for such hosts, runs as if nothing were
/// missing (it never opens /dev/kvm).
#[test]
fn a_missing_dev_kvm_is_reported_with_what_to_do() {
    require_root();
    let dir = world_readable_tender("nokvm");
    // A private mount namespace whose /dev is an empty tmpfs.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /dev && exec \"$0\" \"$@\"")
        .arg(dir.join("skiff-tender"))
        .args(common::sandbox_args())
        .arg(dir.join("hello"))
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    match sandbox() {
        Sandbox::Kvm => {
            assert_eq!(out.status.code(), Some(125), "{err}");
            assert!(err.contains("/dev/kvm does not exist"), "{err}");
            assert!(err.contains("kvm module"), "{err}");
            assert!(err.contains("--sandbox process"), "{err}");
        }
        Sandbox::Process => {
            assert_eq!(out.status.code(), Some(0), "{err}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from Skiff!"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_permission_on_dev_kvm_is_reported_with_what_to_do() {
    require_root();
    let dir = world_readable_tender("noperm");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(dir.join("skiff-tender"))
        .args(common::sandbox_args())
        .arg(dir.join("hello"))
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    if sandbox() == Sandbox::Process {
        // An unprivileged user needs nothing more for process mode.
        assert_eq!(out.status.code(), Some(0), "{err}");
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("permission denied opening /dev/kvm"), "{err}");
    assert!(err.contains("usermod -aG kvm"), "{err}");
    assert!(err.contains("--sandbox process"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_tender_runs_the_guest_under_a_seccomp_allow_list() {
    let image = probe().to_str().unwrap();
    let child = tender_cmd()
        .args(["--timeout", "30s", image, "--", "sleep", "1500"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tender");
    // Wait until the guest is sleeping (it has printed nothing yet, so poll
    // /proc until the filter shows up, for at most a second).
    let status_path = format!("/proc/{}/status", child.id());
    let mut seccomp = String::new();
    for _ in 0..100 {
        let status = std::fs::read_to_string(&status_path).unwrap_or_default();
        seccomp = status.lines().filter(|l| l.starts_with("Seccomp")).collect::<Vec<_>>().join(" ");
        if seccomp.contains("Seccomp:\t2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(seccomp.contains("Seccomp:\t2"), "not in filter mode: {seccomp:?}");
    assert!(seccomp.contains("Seccomp_filters:\t1"), "{seccomp:?}");
}

#[test]
fn the_guest_starts_without_waiting_for_the_monitor_thread() {
    require_kvm();
    // On one CPU a new thread waits for the tender's main thread to block
    // or be preempted, so the monitor thread usually starts after the
    // seccomp lockdown: its start-up must pass the filter, and kicks sent
    // before it waits (at the guest's end) must not be lost.
    let image = hello().to_str().unwrap();
    for _ in 0..10 {
        let start = Instant::now();
        let out = Command::new("taskset")
            .args(["-c", "0"])
            .arg(common::tender())
            .args(common::sandbox_args())
            .args(["--timeout", "30s", image, "--", "--sleep-ms", "0"])
            .stdin(Stdio::null())
            .output()
            .expect("run taskset (util-linux)");
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(all.contains("Hello from Skiff!"), "{all}");
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    }
}
