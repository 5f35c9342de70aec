//! The boot-test guest. One image; the first argument picks what it does.
//! Most scenarios misbehave on purpose, to check that the supervisor and
//! the tender report each misdeed and end the guest with the right status.
//! The `unsafe` blocks here are deliberate faults, not runtime code.
#![no_std]
#![no_main]

use core::arch::asm;
use core::hint::black_box;
use skiff::prelude::*;
use skiff::time::{sleep, timeout};

/// Where the tender puts the page tables (see skiff-tender's `paging`).
const PAGE_TABLES: u64 = 0x1_0000;
/// Where the tender puts the boot info.
const BOOT_INFO: u64 = 0x1000;
/// Where the tender puts the shared area (console ring).
const SHARED: u64 = 0x4000;
/// Where the tender puts the GDT the vCPU starts with.
const BOOT_GDT: u64 = 0xf000;
/// Hypercall numbers (see skiff-abi).
const CALL_WALLTIME: u16 = 0;
const CALL_POLL: u16 = 2;
const CALL_ABORT: u16 = 4;

unsafe extern "C" {
    /// Where the runtime's hypercalls go: its own `out` stub under a VM,
    /// the tender's entry (tender code) in process mode.
    static skiff_hypercall_entry: u64;
}

/// The address hypercalls jump to.
fn hypercall_target() -> u64 {
    // SAFETY: a plain read of the runtime's word, written once at entry.
    unsafe { core::ptr::read_volatile(&raw const skiff_hypercall_entry) }
}

static mut DATA: [u8; 64] = [0xc3; 64]; // `ret` bytes, in a no-execute page
static RODATA: [u8; 64] = [0x5a; 64]; // in the image's read-only data

#[skiff::main]
async fn main(env: skiff::Env) -> Result<(), String> {
    let args = env.args();
    let scenario = args.first().map(String::as_str).unwrap_or("hello");
    let arg = |i: usize| -> Result<u64, String> {
        args.get(i).ok_or(format!("{scenario} needs argument {i}"))?.parse().map_err(|e| format!("{e}"))
    };
    match scenario {
        "hello" => info!("probe says hello; args {args:?}"),
        "exit" => skiff::exit(arg(1)? as u8),
        "fail" => return Err("the probe was asked to fail".into()),
        "panic" => panic!("probe panic {}", black_box(42)),
        "divzero" => {
            // SAFETY: deliberately divides by zero to raise #DE.
            unsafe { asm!("xor edx, edx", "div {0}", in(reg) black_box(0u64), inout("rax") 1u64 => _, out("rdx") _) };
        }
        "read-null" => {
            // SAFETY: deliberately reads page 0 to raise #PF.
            unsafe { asm!("mov {0}, qword ptr [{1}]", out(reg) _, in(reg) black_box(0u64)) };
        }
        "write-text" => {
            let f = main as fn(skiff::Env) -> _ as *const () as u64;
            // SAFETY: deliberately writes to read-only code to raise #PF.
            unsafe { asm!("mov byte ptr [{0}], 0", in(reg) black_box(f)) };
        }
        "jump-data" => {
            let target = &raw const DATA as u64;
            // SAFETY: deliberately calls into a no-execute data page.
            unsafe { asm!("call {0}", in(reg) black_box(target), clobber_abi("C")) };
        }
        "write-pagetable" => {
            // SAFETY: deliberately writes to the supervisor-only page tables.
            unsafe { asm!("mov qword ptr [{0}], {1}", in(reg) black_box(PAGE_TABLES), in(reg) 0x83u64) };
        }
        "write-bootinfo" => {
            // SAFETY: deliberately writes to the read-only boot info page.
            unsafe { asm!("mov qword ptr [{0}], 0", in(reg) black_box(BOOT_INFO)) };
        }
        "write-gdt" => {
            // SAFETY: deliberately writes to the supervisor-only boot GDT.
            unsafe { asm!("mov qword ptr [{0}], 0", in(reg) black_box(BOOT_GDT)) };
        }
        "write-rodata" => {
            let target = &raw const RODATA as u64;
            // SAFETY: deliberately writes to the image's read-only data.
            unsafe { asm!("mov byte ptr [{0}], 0", in(reg) black_box(target)) };
        }
        "jump-shared" => {
            // SAFETY: deliberately calls into the no-execute shared area.
            unsafe { asm!("call {0}", in(reg) black_box(SHARED), clobber_abi("C")) };
        }
        "stack-overflow" => {
            info!("recursing: {}", recurse(black_box(1)));
        }
        "privileged" => {
            // SAFETY: deliberately executes a ring-0 instruction in ring 3.
            unsafe { asm!("cli") };
        }
        "port" => {
            // SAFETY: deliberately uses an I/O port the TSS bitmap keeps closed.
            unsafe { asm!("out dx, al", in("dx") 0x80u16, in("al") 0u8) };
        }
        "hidden-syscall" => {
            // `mov ecx, 0x9090050f` (b9 0f 05 90 90) carries `syscall`
            // (0f 05) in its immediate: the build's check decodes a `mov`
            // and passes the image. Jumping one byte into it executes the
            // `syscall` (openat, 257, in eax): under a VM ring 3 cannot use
            // it (EFER.SCE is off: #UD); in process mode the tender's
            // seccomp filter stops it.
            // SAFETY: deliberately executes a hidden system call instruction.
            unsafe {
                asm!(
                    "mov eax, 257",
                    "lea {t}, [rip + 2f + 1]",
                    "jmp {t}",
                    "2:",
                    "mov ecx, 0x9090050f",
                    t = out(reg) _,
                    out("eax") _,
                    out("ecx") _,
                    out("r11") _,
                )
            };
        }
        "hidden-int80" => {
            // The same with `int 0x80` (cd 80), the 32-bit system call
            // gate, asking for i386 call 20 (getpid).
            // SAFETY: deliberately executes a hidden system call instruction.
            unsafe {
                asm!(
                    "mov eax, 20",
                    "lea {t}, [rip + 2f + 1]",
                    "jmp {t}",
                    "2:",
                    "mov ecx, 0x909080cd",
                    t = out(reg) _,
                    out("eax") _,
                    out("ecx") _,
                )
            };
        }
        "write-hypercall-target" => {
            // A wild write at the code hypercalls jump to: the runtime's
            // stub under a VM, the tender's own code in process mode.
            let target = hypercall_target();
            info!("writing to {target:#x}");
            // SAFETY: deliberately writes to code.
            unsafe { asm!("mov byte ptr [{0}], 0", in(reg) black_box(target)) };
        }
        "hypercall-arg-at-target" => {
            // An abort whose message is the code hypercalls jump to: the
            // tender reads it only if the service itself may.
            let args: [u64; 2] = [4 | (64u64 << 32), hypercall_target()];
            // SAFETY: the tender checks the range and ends the guest.
            unsafe { skiff::__private::raw_hypercall(CALL_ABORT, args.as_ptr() as u32) };
        }
        "block-kick-and-spin" => {
            // A hostile guest's trick in process mode: block SIGUSR2 (the
            // tender's kick) with a hidden `syscall` to rt_sigprocmask (14),
            // then spin. Under a VM the `syscall` faults.
            let set: u64 = 1 << (12 - 1);
            info!("blocking the kick signal and spinning");
            // SAFETY: deliberately executes a hidden system call instruction.
            unsafe {
                asm!(
                    "mov eax, 14",
                    "lea {t}, [rip + 2f + 1]",
                    "jmp {t}",
                    "2:",
                    "mov ecx, 0x9090050f",
                    t = out(reg) _,
                    in("rdi") 0u64,
                    in("rsi") &raw const set,
                    in("rdx") 0u64,
                    in("r10") 8u64,
                    out("eax") _,
                    out("ecx") _,
                    out("r11") _,
                )
            };
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "spin" => {
            // Busy forever, never yielding or calling the tender: only an
            // interruption from outside ends it.
            info!("spinning");
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "profile-spin" => {
            // Busy in a known function under a known caller for ARG ms,
            // then half as long asleep, for the profiler's tests.
            let ms = arg(1)?;
            info!("profile spin {}", profile_caller(ms));
            sleep(Duration::from_millis(ms / 2)).await;
        }
        "profile-corrupt" => {
            // Busy for ARG ms with the frame pointer pointing anywhere.
            info!("profile corrupt {}", profile_corrupt(arg(1)?));
        }
        "ud2" => {
            // SAFETY: deliberately raises #UD.
            unsafe { asm!("ud2") };
        }
        "bad-pointer" => {
            // A hypercall whose argument lies beyond guest memory.
            // SAFETY: the tender checks the address and ends the guest.
            unsafe { skiff::__private::raw_hypercall(CALL_WALLTIME, 0xffff_f000u32) };
        }
        "bad-length" => {
            // An abort whose message length is far over the limit.
            let msg = b"x";
            let args: [u64; 2] = [2 | ((1u64 << 20) << 32), msg.as_ptr() as u64];
            // SAFETY: the tender checks the length and ends the guest.
            unsafe { skiff::__private::raw_hypercall(CALL_ABORT, args.as_ptr() as u32) };
        }
        "bad-range" => {
            // An abort whose message runs past the end of guest memory.
            let args: [u64; 2] = [1 | (64u64 << 32), (64 << 20) - 8];
            // SAFETY: the tender checks the range and ends the guest.
            unsafe { skiff::__private::raw_hypercall(CALL_ABORT, args.as_ptr() as u32) };
        }
        "pagetable-hypercall" => {
            // Asks the tender to write poll results over the page tables.
            // SAFETY: the tender refuses: the guest may not write there.
            unsafe { skiff::__private::raw_hypercall(CALL_POLL, PAGE_TABLES as u32) };
        }
        "rodata-hypercall" => {
            // Asks the tender to write the wall clock into the image's
            // read-only data: in process mode the tender's own write would
            // fault there, so it must refuse first.
            let target = &raw const RODATA as u32;
            // SAFETY: the tender refuses: the guest may not write there.
            unsafe { skiff::__private::raw_hypercall(CALL_WALLTIME, target) };
        }
        "sse" => sse(),
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "deadlock" => core::future::pending::<()>().await,
        "sleep" => {
            let ms = arg(1)?;
            let start = Instant::now();
            sleep(Duration::from_millis(ms)).await;
            info!("slept {} us", start.elapsed().as_micros());
        }
        "timers" => timers(&env).await?,
        "stop-watch" => {
            // Waits for the stop request, cleans up, and ends with status 3.
            env.stopping().await;
            info!("stop requested: cleaning up");
            sleep(Duration::from_millis(100)).await;
            info!("clean-up done");
            skiff::exit(3);
        }
        "stop-ignore" => {
            // Asks for the stop request, then goes on working forever.
            env.stopping().await;
            info!("stop requested: ignoring it");
            loop {
                sleep(Duration::from_millis(50)).await;
            }
        }
        "log-burst" => {
            let n = arg(1)?;
            for i in 0..n {
                info!("burst line {i:05} padding padding padding padding");
            }
        }
        "hypercalls" => {
            // Cost of one exit: N walltime calls, timed with the TSC.
            let n = arg(1)?;
            let start = Instant::now();
            let mut last = 0;
            for _ in 0..n {
                last = walltime_hypercall();
            }
            let per_call = start.elapsed().as_nanos() as u64 / n.max(1);
            info!("hypercall cost: {per_call} ns per call over {n} calls (last wall clock {last})");
        }
        "wallclock" => {
            let secs = skiff::time::wall_clock_nanos() / 1_000_000_000;
            info!("wall clock: {secs} s since the epoch");
        }
        "random" => {
            // Two draws from the pool, and 64 KiB to look at: every byte
            // value should turn up, and no two draws repeat.
            let source = skiff::random::hardware_source().map_err(|e| e.to_string())?;
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            skiff::random::fill(&mut a).map_err(|e| e.to_string())?;
            skiff::random::fill(&mut b).map_err(|e| e.to_string())?;
            let mut big = vec![0u8; 64 * 1024];
            skiff::random::fill(&mut big).map_err(|e| e.to_string())?;
            let mut seen = [false; 256];
            for &x in &big {
                seen[x as usize] = true;
            }
            let values = seen.iter().filter(|s| **s).count();
            let ones: u32 = big.iter().map(|x| x.count_ones()).sum();
            info!(
                "random: source {source}, draws differ {}, {values} byte values, {:.4} of bits set",
                a != b,
                ones as f64 / (big.len() * 8) as f64
            );
        }
        "heap" => {
            // Allocate and free a lot; check contents survive.
            let mut blocks: Vec<Vec<u64>> = (0..200).map(|i| vec![i as u64; 1000 + i * 37]).collect();
            blocks.retain(|b| b[0] % 3 != 0);
            let sum: u64 = blocks.iter().map(|b| b.iter().sum::<u64>()).sum();
            info!("heap checksum {sum}");
        }
        other => return Err(format!("unknown scenario {other:?}")),
    }
    Ok(())
}

fn walltime_hypercall() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a live WalltimeArgs (one u64) the tender fills in.
    unsafe { skiff::__private::raw_hypercall(CALL_WALLTIME, &raw mut nanos as u32) };
    nanos
}

/// The caller the profiler's tests look for above `profile_hot_loop`.
#[inline(never)]
fn profile_caller(ms: u64) -> u64 {
    black_box(profile_hot_loop(ms)).wrapping_add(1)
}

/// The function the profiler's tests expect most samples in.
#[inline(never)]
fn profile_hot_loop(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

/// Spins with `rbp` holding one bad frame pointer after another: odd, null,
/// in the supervisor, beyond memory, non-canonical, and a two-frame cycle
/// on the heap.
#[inline(never)]
fn profile_corrupt(ms: u64) -> u64 {
    let cycle = Box::leak(Box::new([0u64; 4]));
    let base = cycle.as_ptr() as u64;
    *cycle = [base + 16, 0x1234_5678, base, 0x8765_4321];
    let bad = [0x10_0001, 0, 0x10_2000, 0x7fff_ffff_fff0, 0xdead_beef_dead_bee0, base, PAGE_TABLES, 8];
    let end = Instant::now() + Duration::from_millis(ms);
    let mut rounds = 0u64;
    while Instant::now() < end {
        let frame = bad[rounds as usize % bad.len()];
        // SAFETY: rbp is saved and restored around a loop that touches
        // nothing else; the stack pointer is back where it was.
        unsafe {
            asm!(
                "push rbp",
                "mov rbp, {frame}",
                "2:",
                "pause",
                "dec {n}",
                "jnz 2b",
                "pop rbp",
                frame = in(reg) frame,
                n = inout(reg) 20_000u64 => _,
            );
        }
        rounds += 1;
    }
    rounds
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let pad = black_box([depth; 64]);
    if depth == u64::MAX { 0 } else { recurse(depth + 1) + pad[3] }
}

/// Floating point and SIMD in ring 3: f64 math through SSE2, libm,
/// float formatting, and memchr's SSE2 search.
fn sse() {
    let mut acc = 0.0f64;
    for i in 1..=1000 {
        let x = f64::from(black_box(i));
        acc += libm::sqrt(x) * libm::sin(x / 7.0) + libm::fma(x, 0.5, 1.0) / 3.0;
    }
    let v: Vec<f32> = (0..64).map(|i| i as f32 * 1.25).collect();
    let dot: f32 = v.iter().zip(v.iter().rev()).map(|(a, b)| a * b).sum();
    let mut haystack = vec![b'a'; 100_000];
    haystack[77_777] = b'z';
    let pos = memchr::memchr(b'z', black_box(&haystack)).unwrap_or(usize::MAX);
    let count = memchr::memchr_iter(b'a', &haystack).count();
    info!("sse acc={acc:.6} dot={dot:.3} pos={pos} count={count} pi={:.10}", core::f64::consts::PI);
}

async fn timers(env: &skiff::Env) -> Result<(), String> {
    let order = alloc::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
    let mut handles = Vec::new();
    for ms in [30u64, 10, 20] {
        let order = order.clone();
        handles.push(env.spawn(async move {
            sleep(Duration::from_millis(ms)).await;
            order.borrow_mut().push(ms);
            ms
        }));
    }
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.await);
    }
    let expired = timeout(Duration::from_millis(5), sleep(Duration::from_secs(10))).await.is_err();
    let finished = timeout(Duration::from_secs(10), async { 7 }).await == Ok(7);
    info!("timers order={:?} outputs={outs:?} timeout-expired={expired} timeout-passed={finished}", order.borrow());
    Ok(())
}

extern crate alloc;
