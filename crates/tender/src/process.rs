//! Process mode (`--sandbox process`): the guest runs on the tender's own
//! thread, in the tender's own address space, without a VM.
//!
//! The image's ring-3 segments are mapped at their link addresses with the
//! protections the page tables would give them ([`GuestMemory::new_at`],
//! [`GuestMemory::protect`]); nothing else of the guest's exists there
//! (no supervisor, no page tables, page 0 and the stack's guard page
//! unmapped). The tender switches to the guest's stack and jumps to the
//! image's process entry, as a coroutine: [`ProcessCpu::run`] returns when
//! the guest
//!
//! - calls the hypercall entry (`skiff_proc_hypercall`, whose address the
//!   boot info hands over): the guest's registers are saved, the tender's
//!   stack and callee-saved registers restored, and `run` returns
//!   [`Exit::Call`], which the same server as under KVM checks and answers
//!   ([`crate::serve`]); the next `run` returns from the guest's call;
//! - takes a CPU exception: the kernel's `SIGSEGV`, `SIGBUS`, `SIGILL`,
//!   `SIGFPE` or `SIGTRAP`, handled on an alternate signal stack, becomes a
//!   [`FaultFrame`] from the signal's machine context (trap number, error
//!   code, `cr2`, `rip`) and [`Exit::Fault`]; the signal handler returns
//!   into the tender's side of the switch instead of the guest;
//! - is interrupted because the guest must end (`--timeout`, a stop
//!   signal's grace period): the monitor's kick (`SIGUSR2`) does the same
//!   and `run` returns [`Exit::Interrupted`]; such a guest is never resumed.
//!
//! A fault whose `rip` is not the guest's is the tender's own: it is
//! reported as such and the process dies of the signal, as it would
//! without the handler.
//!
//! The switch's state lives in one static ([`CONTEXT`]): the hypercall
//! entry and the signal handlers are entered from code that passes the
//! tender nothing, so they find it by address. One guest per process.

use crate::elf::Image;
use crate::guest_memory::GuestMemory;
use crate::kvm::{Exit, KvmError};
use crate::profile::Sampler;
use crate::serve::{RunGuest, VmFailure};
use crate::sys::set_handler;
use skiff_abi::FaultFrame;
use std::cell::UnsafeCell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// What [`skiff_proc_resume`] returns: why the guest stopped.
const KIND_CALL: u64 = 1;
const KIND_FAULT: u64 = 2;
const KIND_INTERRUPTED: u64 = 3;

/// Default MXCSR (all exceptions masked, round to nearest) and x87 control
/// word: what the tender's code expects whatever the guest set.
const MXCSR_DEFAULT: u32 = 0x1f80;
const FPU_CW_DEFAULT: u16 = 0x037f;

/// The stack selector the guest's fault frame names (Linux's user data
/// segment): ring 3, like the guest's `cs`.
const USER_SS: u64 = 0x2b;

/// The switch's state. The assembly below uses the offsets in the comments;
/// a test checks them.
#[repr(C)]
struct Context {
    /// The tender while the guest runs: rsp, rbx, rbp, r12..r15.
    tender: [u64; 7], // 0
    /// The guest while the tender runs: rsp, rip, rbx, rbp, r12..r15, rdi.
    guest: [u64; 9], // 56
    /// The guest's MXCSR and x87 control word.
    guest_mxcsr: u32, // 128
    guest_fpu_cw: u16, // 132
    _pad: u16,
    /// Why the guest stopped (`KIND_*`).
    kind: u64, // 136
    /// A call's number and argument, as the guest passed them.
    nr: u64, // 144
    arg: u64, // 152
    /// An exception's frame.
    fault: FaultFrame, // 160
    /// Non-zero while the guest's code may be running.
    in_guest: u64, // 224
    /// The guest's memory, `[low, end)`: a fault with `rip` there is the
    /// guest's.
    low: u64, // 232
    end: u64, // 240
    /// The monitor's "ending" flag (non-zero: the guest must end), or null.
    ending: *const AtomicU8, // 248
    /// `--profile`: the sampler and the guest's memory its handler walks,
    /// or null.
    /// (Untyped: the assembly's view of the context is C's.)
    sampler: *const (), // 256
    mem: *const (), // 264
}

struct ContextCell(UnsafeCell<Context>);

// SAFETY: the context is used by one thread only, the one that runs the
// guest (its signal handlers run on it too); `run` documents that.
unsafe impl Sync for ContextCell {}

static CONTEXT: ContextCell = ContextCell(UnsafeCell::new(Context {
    tender: [0; 7],
    guest: [0; 9],
    guest_mxcsr: MXCSR_DEFAULT,
    guest_fpu_cw: FPU_CW_DEFAULT,
    _pad: 0,
    kind: 0,
    nr: 0,
    arg: 0,
    fault: FaultFrame { cr2: 0, vector: 0, error_code: 0, rip: 0, cs: 0, rflags: 0, rsp: 0, ss: 0 },
    in_guest: 0,
    low: 0,
    end: 0,
    ending: std::ptr::null(),
    sampler: std::ptr::null(),
    mem: std::ptr::null(),
}));

fn context() -> *mut Context {
    CONTEXT.0.get()
}

core::arch::global_asm!(
    r#"
    .text
    /* u64 skiff_proc_resume(Context *ctx): run the guest until it stops. */
    .p2align 4
    .globl skiff_proc_resume
skiff_proc_resume:
    mov [rdi + 0], rsp
    mov [rdi + 8], rbx
    mov [rdi + 16], rbp
    mov [rdi + 24], r12
    mov [rdi + 32], r13
    mov [rdi + 40], r14
    mov [rdi + 48], r15
    mov rax, rdi
    mov rsp, [rax + 56]
    mov rbx, [rax + 72]
    mov rbp, [rax + 80]
    mov r12, [rax + 88]
    mov r13, [rax + 96]
    mov r14, [rax + 104]
    mov r15, [rax + 112]
    ldmxcsr [rax + 128]
    fldcw [rax + 132]
    mov rdi, [rax + 120]
    mov rcx, [rax + 64]
    /* Leave the guest none of the tender's values. */
    xor eax, eax
    xor edx, edx
    xor esi, esi
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    pxor xmm0, xmm0
    pxor xmm1, xmm1
    pxor xmm2, xmm2
    pxor xmm3, xmm3
    pxor xmm4, xmm4
    pxor xmm5, xmm5
    pxor xmm6, xmm6
    pxor xmm7, xmm7
    pxor xmm8, xmm8
    pxor xmm9, xmm9
    pxor xmm10, xmm10
    pxor xmm11, xmm11
    pxor xmm12, xmm12
    pxor xmm13, xmm13
    pxor xmm14, xmm14
    pxor xmm15, xmm15
    jmp rcx

    /* The hypercall entry the guest calls: edi = number, esi = argument. */
    .p2align 4
    .globl skiff_proc_hypercall
skiff_proc_hypercall:
    lea rax, [rip + {ctx}]
    pop rcx
    mov [rax + 64], rcx
    mov [rax + 56], rsp
    mov [rax + 72], rbx
    mov [rax + 80], rbp
    mov [rax + 88], r12
    mov [rax + 96], r13
    mov [rax + 104], r14
    mov [rax + 112], r15
    stmxcsr [rax + 128]
    fnstcw [rax + 132]
    mov [rax + 144], rdi
    mov [rax + 152], rsi
    mov ecx, {call}
    /* rax = ctx, rcx = kind: back to the tender, as skiff_proc_resume's
       return. Flags (DF, AC, TF), MXCSR and the x87 control word are the
       tender's again whatever the guest left in them. */
skiff_proc_back:
    mov rsp, [rax + 0]
    push 0x202
    popfq
    ldmxcsr [rip + skiff_proc_mxcsr]
    fldcw [rip + skiff_proc_fpu_cw]
    mov rbx, [rax + 8]
    mov rbp, [rax + 16]
    mov r12, [rax + 24]
    mov r13, [rax + 32]
    mov r14, [rax + 40]
    mov r15, [rax + 48]
    mov rax, rcx
    ret

    /* A signal handler sent the guest here (a fault, or the end): the
       kind is in the context. */
    .p2align 4
    .globl skiff_proc_signal_exit
skiff_proc_signal_exit:
    lea rax, [rip + {ctx}]
    mov rcx, [rax + 136]
    jmp skiff_proc_back

    .section .rodata.skiff_proc, "a"
    .p2align 2
skiff_proc_mxcsr:
    .long {mxcsr}
skiff_proc_fpu_cw:
    .short {fpu_cw}
    .text
"#,
    ctx = sym CONTEXT,
    call = const KIND_CALL,
    mxcsr = const MXCSR_DEFAULT,
    fpu_cw = const FPU_CW_DEFAULT,
);

unsafe extern "C" {
    fn skiff_proc_resume(ctx: *mut Context) -> u64;
    fn skiff_proc_hypercall();
    fn skiff_proc_signal_exit();
}

/// The address the guest calls for a hypercall ([`skiff_abi::BootInfo::hypercall`]).
pub fn hypercall_entry() -> u64 {
    skiff_proc_hypercall as *const () as u64
}

/// Process mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The image has no process entry.
    #[error(
        "this image has no process entry note: it was built before process mode; rebuild it with this \
         version's `skiff build`"
    )]
    NoEntry,
    /// A signal handler or the signal stack could not be installed.
    #[error("cannot set up the signal handlers of process mode: {0}")]
    Signals(io::Error),
}

/// The guest's CPU in process mode: this thread.
pub struct ProcessCpu {
    /// The guest was stopped by a signal at an arbitrary instruction: its
    /// registers are gone, it cannot go on.
    interrupted: bool,
}

impl ProcessCpu {
    /// The guest `image`, loaded into `mem`: entered at its process entry
    /// (checked by [`Image::parse`] to be in its ring-3 code) on top of its
    /// stack segment, with `rdi` = `boot_info`. `ending` is the monitor's
    /// flag, which lets its kick stop the guest's code. Installs the signal
    /// handlers; call it on the thread that will run the guest, after the
    /// monitor has started (its kick handler is replaced).
    ///
    /// What the guest's code does once [`ProcessCpu::run`] enters it is
    /// outside Rust's guarantees, as any foreign code is: it runs in this
    /// process, held by the protections of `mem` and the seccomp filter the
    /// caller installs (docs/threat-model.md).
    pub fn new(
        image: &Image,
        mem: &GuestMemory,
        boot_info: u64,
        ending: &AtomicU8,
    ) -> Result<ProcessCpu, ProcessError> {
        let entry = image.process_entry.ok_or(ProcessError::NoEntry)?;
        let stack_top = image.stack().vaddr + image.stack().memsz;
        let ctx = context();
        // SAFETY: only this thread touches the context, and no guest runs
        // yet; plain stores into the static.
        unsafe {
            (*ctx).guest = [stack_top, entry, 0, 0, 0, 0, 0, 0, boot_info];
            (*ctx).guest_mxcsr = MXCSR_DEFAULT;
            (*ctx).guest_fpu_cw = FPU_CW_DEFAULT;
            (*ctx).low = mem.low();
            (*ctx).end = mem.size();
            (*ctx).ending = ending;
        }
        install_handlers().map_err(ProcessError::Signals)?;
        Ok(ProcessCpu { interrupted: false })
    }
}

impl RunGuest for ProcessCpu {
    fn run(&mut self) -> Result<Exit, KvmError> {
        if self.interrupted {
            return Ok(Exit::Failed(VmFailure::UnexpectedExit("the guest was stopped and cannot go on".into())));
        }
        let ctx = context();
        // SAFETY: the context describes a guest set up by `new` (its memory
        // mapped, its stack and entry valid), or one stopped at a call,
        // whose saved registers resume it; `in_guest` tells the signal
        // handlers (on this thread) that guest code may run. Volatile, so
        // the stores are not moved across the switch.
        let kind = unsafe {
            std::ptr::write_volatile(&raw mut (*ctx).in_guest, 1);
            let kind = skiff_proc_resume(ctx);
            std::ptr::write_volatile(&raw mut (*ctx).in_guest, 0);
            kind
        };
        // SAFETY: the guest is stopped; plain reads of the static.
        let (nr, arg, fault) = unsafe { ((*ctx).nr, (*ctx).arg, (*ctx).fault) };
        Ok(match kind {
            KIND_CALL => Exit::Call { nr, arg },
            KIND_FAULT => {
                self.interrupted = true;
                Exit::Fault(fault)
            }
            KIND_INTERRUPTED => {
                self.interrupted = true;
                Exit::Interrupted
            }
            other => Exit::Failed(VmFailure::UnexpectedExit(format!("process switch returned {other}"))),
        })
    }

    fn guest_tsc(&self) -> Option<u64> {
        Some(rdtsc())
    }
}

/// `--profile`: makes `SIGPROF` on this thread (the guest's) take a
/// sample of the guest's code it interrupts into `sampler`, walking
/// `mem`. Both must outlive the guest's run: the caller keeps them until
/// the process ends or the sampler has stopped ([`crate::profile`]).
/// Call it on the guest's thread, after [`ProcessCpu::new`] (which sets
/// up the alternate signal stack).
pub fn attach_sampler(sampler: &Arc<Sampler>, mem: &Arc<GuestMemory>) -> Result<(), ProcessError> {
    let ctx = context();
    // SAFETY: only this thread touches the context, and no guest runs yet;
    // plain stores of pointers whose targets the caller keeps alive.
    unsafe {
        (*ctx).sampler = Arc::as_ptr(sampler).cast();
        (*ctx).mem = Arc::as_ptr(mem).cast();
    }
    set_handler(libc::SIGPROF, on_profile).map_err(ProcessError::Signals)
}

extern "C" fn on_profile(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let ctx = context();
    // SAFETY: the kernel passes its ucontext to an SA_SIGINFO handler.
    let Some(gregs) = (unsafe { guest_context(uc) }) else { return };
    let (rip, rbp) = (gregs[libc::REG_RIP as usize] as u64, gregs[libc::REG_RBP as usize] as u64);
    // SAFETY: the pointers are null or set by `attach_sampler`, whose
    // caller keeps their targets alive while the guest can run (and the
    // guest runs: `guest_context` saw `in_guest`).
    let (sampler, mem) =
        unsafe { ((*ctx).sampler.cast::<Sampler>().as_ref(), (*ctx).mem.cast::<GuestMemory>().as_ref()) };
    if let (Some(sampler), Some(mem)) = (sampler, mem) {
        // Checked reads and atomic stores only: no allocation, no lock.
        sampler.record(mem, rip, rbp);
    }
}

/// Whether `addr` is in the guest's memory, for the `SIGSYS` report.
pub fn is_guest_address(addr: u64) -> bool {
    let ctx = context();
    // SAFETY: plain reads of two words of the static, written before the
    // guest first ran.
    let (low, end) = unsafe { (std::ptr::read_volatile(&raw const (*ctx).low), (*ctx).end) };
    low != 0 && (low..end).contains(&addr)
}

/// Bytes of the alternate signal stack: the handlers format at most a few
/// hundred bytes on it.
const SIGNAL_STACK: usize = 64 << 10;

fn install_handlers() -> io::Result<()> {
    // The alternate stack: the guest's own stack is the guest's memory,
    // maybe full or pointing anywhere, and must never hold a signal frame.
    // SAFETY: an anonymous mapping of our own, checked.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIGNAL_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ss = libc::stack_t { ss_sp: stack, ss_flags: 0, ss_size: SIGNAL_STACK };
    // SAFETY: `ss` describes the mapping above, which is never unmapped.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP] {
        set_handler(signal, on_fault)?;
    }
    // (`SIGSYS`, from the lockdown, also runs on the alternate stack.)
    set_handler(crate::sys::KICK_SIGNAL, on_kick)
}

/// The guest's registers at a signal, if the guest was running its own
/// code (or jumped somewhere in its memory, or to an unmapped address).
///
/// # Safety
/// `uc` must be the `ucontext_t` the kernel passed to a handler.
unsafe fn guest_context<'a>(uc: *mut libc::c_void) -> Option<&'a mut [libc::greg_t; 23]> {
    let ctx = context();
    // SAFETY: the kernel's ucontext (caller); plain reads of the static.
    unsafe {
        if std::ptr::read_volatile(&raw const (*ctx).in_guest) == 0 {
            return None;
        }
        let gregs = &mut (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
        let rip = gregs[libc::REG_RIP as usize] as u64;
        let fetch_fault = gregs[libc::REG_TRAPNO as usize] == 14 && gregs[libc::REG_CR2 as usize] as u64 == rip;
        ((*ctx).low..(*ctx).end).contains(&rip).then_some(()).or(fetch_fault.then_some(()))?;
        Some(gregs)
    }
}

extern "C" fn on_fault(signal: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes its ucontext to an SA_SIGINFO handler.
    if let Some(gregs) = unsafe { guest_context(uc) } {
        let reg = |r: i32| gregs[r as usize] as u64;
        let frame = FaultFrame {
            cr2: reg(libc::REG_CR2),
            vector: reg(libc::REG_TRAPNO),
            error_code: reg(libc::REG_ERR),
            rip: reg(libc::REG_RIP),
            cs: reg(libc::REG_CSGSFS) & 0xffff,
            rflags: reg(libc::REG_EFL),
            rsp: reg(libc::REG_RSP),
            ss: USER_SS,
        };
        let ctx = context();
        // SAFETY: this thread's context; the guest is stopped in this
        // handler. Returning resumes at the exit path, not the guest.
        unsafe {
            (*ctx).fault = frame;
            (*ctx).kind = KIND_FAULT;
        }
        gregs[libc::REG_RIP as usize] = skiff_proc_signal_exit as *const () as libc::greg_t;
        return;
    }
    // The tender's own fault: say so, then die of it as without a handler
    // (the default action is restored and the instruction faults again).
    crate::sys::report_tender_fault(signal, uc);
    // SAFETY: restoring the default action of a signal is always valid.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let ctx = context();
    // SAFETY: `ending` is null or the monitor's flag, which outlives the
    // guest's run (the monitor is dropped after serving ends).
    let ending = unsafe { (*ctx).ending.as_ref() }.is_some_and(|e| e.load(Ordering::SeqCst) != 0);
    if !ending {
        // Like the KVM mode's kick: only interrupts a blocking call.
        return;
    }
    // SAFETY: the kernel passes its ucontext to an SA_SIGINFO handler.
    if let Some(gregs) = unsafe { guest_context(uc) } {
        // SAFETY: as in `on_fault`.
        unsafe { (*ctx).kind = KIND_INTERRUPTED };
        gregs[libc::REG_RIP as usize] = skiff_proc_signal_exit as *const () as libc::greg_t;
    }
}

/// How long the TSC is measured against the monotonic clock when neither
/// CPUID nor the kernel gives its frequency. Each end is the closest of
/// three readings (within about 20 ns), so the frequency is good to about
/// 3e-5 (measured here: at worst 2e-5 over 200 us, 1.2e-5 over 400 us; a
/// guest's clock then drifts by a few seconds a day).
pub const TSC_WINDOW: std::time::Duration = std::time::Duration::from_micros(250);

/// The shortest measurement a frequency the kernel states is checked
/// against, and how far the two may differ: 40 ns of reading error over
/// 50 us is 8e-4, under the 2e-3 allowed, while a CPU's current clock rate
/// shown instead of its TSC rate is off by more than that.
const CHECK_WINDOW: std::time::Duration = std::time::Duration::from_micros(50);
const CHECK_TOLERANCE: f64 = 2e-3;

/// Finds the TSC frequency without KVM: started when the tender starts,
/// finished just before the guest's first instruction, so loading the
/// image is the measuring window.
pub struct TscClock {
    start: (u64, std::time::Instant),
}

impl TscClock {
    /// Takes the first reading.
    pub fn start() -> TscClock {
        TscClock { start: pair() }
    }

    /// The TSC frequency in Hz: the kernel's calibration
    /// ([`kernel_tsc_khz`]) when the TSC measured since
    /// [`TscClock::start`] agrees with it; else from the hypervisor's
    /// CPUID leaf 0x40000010 (kHz) or leaf 0x15 (crystal clock and ratio)
    /// when they say; else that measurement, waiting for the rest of
    /// [`TSC_WINDOW`] if need be. (The kernel's figure comes first because
    /// every CPUID is a trap to the hypervisor in a VM, about 4 us here.)
    pub fn hz(&self) -> u64 {
        if let Some(khz) = kernel_tsc_khz() {
            let hz = khz * 1000;
            let elapsed = self.start.1.elapsed();
            if elapsed < CHECK_WINDOW {
                std::thread::sleep(CHECK_WINDOW - elapsed);
            }
            let measured = self.measured();
            if (measured as f64 - hz as f64).abs() <= CHECK_TOLERANCE * hz as f64 {
                return hz;
            }
        }
        if let Some(hz) = cpuid_tsc_hz() {
            return hz;
        }
        let left = TSC_WINDOW.saturating_sub(self.start.1.elapsed());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        self.measured()
    }

    /// The TSC's rate since [`TscClock::start`].
    fn measured(&self) -> u64 {
        let end = pair();
        let ns = end.1.duration_since(self.start.1).as_nanos().max(1);
        (u128::from(end.0.wrapping_sub(self.start.0)) * 1_000_000_000 / ns) as u64
    }
}

/// The kernel's own TSC calibration, to 1 kHz, where it shows it: when
/// the kernel uses no APERF/MPERF counters (no `aperfmperf` among the
/// first processor's flags in `/proc/cpuinfo`; a VM's vCPUs lack them),
/// its `cpu MHz` line is the frequency it calibrated at boot, the TSC's;
/// with them it is a current clock rate, so `None`; also when `/proc` is
/// not there. [`TscClock::hz`] still checks it against a measurement.
fn kernel_tsc_khz() -> Option<u64> {
    use std::io::Read;
    // The first processor's block; the kernel formats the file as it is
    // read, so this costs one processor's lines whatever the host.
    let mut head = vec![0u8; 8192];
    let mut file = std::fs::File::open("/proc/cpuinfo").ok()?;
    let mut n = 0;
    while n < head.len() && !head[..n].windows(2).any(|w| w == b"\n\n") {
        match file.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(got) => n += got,
        }
    }
    calibrated_khz(std::str::from_utf8(&head[..n]).ok()?)
}

/// `cpu MHz\t\t: 2596.142` in cpuinfo text, as kHz, if its first block's
/// flags are there and say the kernel has no APERF/MPERF.
fn calibrated_khz(cpuinfo: &str) -> Option<u64> {
    let first = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    };
    if field("flags")?.split_ascii_whitespace().any(|f| f == "aperfmperf") {
        return None;
    }
    cpu_mhz_khz(field("cpu MHz")?)
}

/// `2596.142` (MHz) as kHz.
fn cpu_mhz_khz(value: &str) -> Option<u64> {
    let (mhz, frac) = value.split_once('.').unwrap_or((value, ""));
    let mhz: u64 = mhz.parse().ok()?;
    let mut khz = 0;
    for (i, digit) in frac.bytes().chain(std::iter::repeat(b'0')).take(3).enumerate() {
        if !digit.is_ascii_digit() {
            return None;
        }
        khz += u64::from(digit - b'0') * [100, 10, 1][i];
    }
    let khz = mhz.checked_mul(1000)?.checked_add(khz)?;
    (100_000..100_000_000).contains(&khz).then_some(khz)
}

/// A TSC reading and the monotonic clock at the same moment: the clock
/// read between two TSC readings, whose middle is taken; the closest of
/// three tries (a preempted or interrupted try is far apart).
fn pair() -> (u64, std::time::Instant) {
    let mut best: Option<(u64, u64, std::time::Instant)> = None;
    for _ in 0..3 {
        let a = rdtsc();
        let now = std::time::Instant::now();
        let b = rdtsc();
        let width = b.wrapping_sub(a);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, a + width / 2, now));
        }
    }
    let (_, tsc, now) = best.expect("three tries");
    (tsc, now)
}

fn cpuid_tsc_hz() -> Option<u64> {
    use std::arch::x86_64::__cpuid;
    let hypervisor = __cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor && __cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = __cpuid(0x4000_0010).eax;
        if khz != 0 {
            return Some(u64::from(khz) * 1000);
        }
    }
    if __cpuid(0).eax >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax));
        }
    }
    None
}

/// The TSC now (the guest reads the same counter).
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn the_context_has_the_offsets_the_assembly_uses() {
        assert_eq!(offset_of!(Context, tender), 0);
        assert_eq!(offset_of!(Context, guest), 56);
        assert_eq!(offset_of!(Context, guest_mxcsr), 128);
        assert_eq!(offset_of!(Context, guest_fpu_cw), 132);
        assert_eq!(offset_of!(Context, kind), 136);
        assert_eq!(offset_of!(Context, nr), 144);
        assert_eq!(offset_of!(Context, arg), 152);
        assert_eq!(offset_of!(Context, fault), 160);
        assert_eq!(offset_of!(Context, in_guest), 224);
        assert_eq!(offset_of!(Context, sampler), 256);
    }

    #[test]
    fn cpuinfo_megahertz_reads_as_kilohertz_without_aperfmperf() {
        let block = |mhz: &str, flags: &str| format!("processor\t: 0\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n");
        assert_eq!(calibrated_khz(&block("2596.142", "fpu tsc constant_tsc")), Some(2_596_142));
        assert_eq!(calibrated_khz(&block("3000", "fpu tsc")), Some(3_000_000));
        assert_eq!(calibrated_khz(&block("1800.5", "fpu tsc")), Some(1_800_500));
        assert_eq!(calibrated_khz(&block("2x00.000", "fpu tsc")), None);
        assert_eq!(calibrated_khz(&block("0.000", "fpu tsc")), None);
        // A current clock rate, not the calibration.
        assert_eq!(calibrated_khz(&block("2596.142", "fpu tsc aperfmperf rapl")), None);
        // Without flags nothing says which it is.
        assert_eq!(calibrated_khz("processor\t: 0\ncpu MHz\t\t: 2596.142\n\n"), None);
        // Only the first processor's block counts.
        let two = block("2596.142", "fpu") + &block("999.000", "fpu aperfmperf");
        assert_eq!(calibrated_khz(&two), Some(2_596_142));
    }

    #[test]
    fn the_kernel_frequency_matches_a_measurement_where_it_is_shown() {
        let clock = TscClock::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let measured = clock.measured() as f64;
        if let Some(khz) = kernel_tsc_khz() {
            let error = (khz as f64 * 1000.0 - measured).abs() / measured;
            assert!(error < 1e-3, "cpuinfo says {khz} kHz, measured {measured} Hz over 20 ms");
        }
    }

    #[test]
    fn the_measured_tsc_frequency_matches_a_longer_measurement() {
        let clock = TscClock::start();
        let hz = clock.hz();
        assert!((500_000_000..10_000_000_000).contains(&hz), "{hz}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let long = clock.measured();
        let error = (hz as f64 - long as f64).abs() / long as f64;
        assert!(error < 1e-4, "{hz} Hz over {TSC_WINDOW:?}, {long} Hz over 50 ms");
    }
}
