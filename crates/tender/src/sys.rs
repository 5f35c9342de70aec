//! Process-level set-up that needs the C library directly: malloc tuning,
//! the signal that interrupts a running vCPU, the report of a blocked
//! system call, and the stop signals (`SIGTERM`, `SIGINT`).
//!
//! One of the modules of the tender with `unsafe` code (with `kvm`,
//! `process`, `guest_memory` and `tap`).

use skiff_abi::exit;
use std::io;
use std::time::Duration;
use vmm_sys_util::signal::{block_signal, create_sigset, register_signal_handler};

/// Makes every thread allocate from glibc's main malloc arena. A per-thread
/// arena, when it shrinks, reads `/proc/sys/vm/overcommit_memory`, which
/// the seccomp allow-list forbids; the main arena only uses `brk` and
/// `mmap`. It must run before the process starts its first thread: an
/// arena a finished thread leaves behind is handed to the next new thread
/// whatever the limit says. Both binaries call it first thing in `main`.
/// (The static, musl build allocates with dlmalloc instead, which has no
/// arenas: it does nothing there.)
pub fn use_one_malloc_arena() {
    // SAFETY: mallopt only changes malloc's tuning; M_ARENA_MAX is a valid
    // parameter and 1 a valid value for it.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
}

/// The signal that interrupts a running vCPU (or a blocked console write).
pub(crate) const KICK_SIGNAL: i32 = libc::SIGUSR2;

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Lets [`ThreadKicker::kick`] interrupt `KVM_RUN`: installs a handler
/// that does nothing, without `SA_RESTART`, so the ioctl (or a blocked
/// `write`) returns `EINTR`.
pub fn install_kick_handler() -> io::Result<()> {
    register_signal_handler(KICK_SIGNAL, on_kick).map_err(io::Error::from)
}

/// A handle that interrupts one thread's `KVM_RUN`: the thread's id in
/// this process, signalled with `tgkill` (both C libraries' `pthread_kill`
/// would do, but musl's calls `tkill`, which names a thread of any
/// process and which process mode's allow-list therefore does not have).
#[derive(Clone, Copy)]
pub struct ThreadKicker {
    pid: libc::pid_t,
    tid: libc::pid_t,
}

impl ThreadKicker {
    /// A kicker for the calling thread.
    pub fn current() -> ThreadKicker {
        // SAFETY: getpid and gettid have no preconditions.
        unsafe { ThreadKicker { pid: libc::getpid(), tid: libc::gettid() } }
    }

    /// Interrupts the thread (a no-op if it is not in a system call).
    /// The owner kicks only while the thread lives (the monitor stops
    /// kicking the vCPU thread before `run` returns); a kick that comes
    /// after all lands, at worst, on a later thread of this process that
    /// reuses the id, where the handler does nothing.
    pub fn kick(&self) {
        self.signal(KICK_SIGNAL);
    }

    /// Sends the thread `signal`, whose handler the caller installed
    /// (process mode's `SIGPROF` for the profiler).
    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: tgkill takes three integers and touches no memory; it
        // can only reach a thread of this process.
        unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, signal) };
    }
}

/// Where `si_call_addr`, `si_syscall` and `si_arch` sit in a `siginfo_t`
/// for `SIGSYS` on x86_64: after `si_signo`, `si_errno`, `si_code`
/// (padded to 16 bytes). The libc crate has no accessor for them.
const SI_CALL_ADDR_OFFSET: usize = 16;
const SI_SYSCALL_OFFSET: usize = 24;
const SI_ARCH_OFFSET: usize = 28;
/// `AUDIT_ARCH_X86_64`: a 64-bit `syscall`; anything else (`int 0x80`:
/// `AUDIT_ARCH_I386`) is a 32-bit call.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// A message built in a fixed buffer, so the `SIGSYS` handler needs no
/// allocation and no lock.
struct StackText {
    buf: [u8; 256],
    len: usize,
}

impl core::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let take = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// The name of system call `nr` on x86_64.
pub fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr).ok().and_then(syscalls::Sysno::new).map_or("unknown", |s| s.name())
}

/// Writes the report of a blocked call to stderr and ends the process.
/// `wide` is false for a 32-bit call (`int 0x80`); `guest_at` is where the
/// guest's code made it, in process mode.
fn report_blocked_call(nr: i64, wide: bool, thread: &[u8], guest_at: Option<u64>) -> ! {
    use core::fmt::Write as _;
    let mut text = StackText { buf: [0; 256], len: 0 };
    let thread = core::str::from_utf8(thread).unwrap_or("?");
    let _ = if wide {
        write!(text, "skiff-tender: blocked system call {} ({nr})", syscall_name(nr))
    } else {
        write!(text, "skiff-tender: blocked 32-bit system call {nr} (int 0x80)")
    };
    let _ = match guest_at {
        Some(at) => write!(text, ", made by the guest's code at {at:#x},"),
        None => Ok(()),
    };
    let _ = writeln!(text, " in thread {thread}; the tender ends (status {})", exit::BLOCKED_SYSCALL);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by
    // the filter; the buffer is valid for `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, text.buf.as_ptr().cast(), text.len);
        libc::_exit(i32::from(exit::BLOCKED_SYSCALL))
    }
}

pub(crate) extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler;
    // for a seccomp trap its `_sigsys` member holds the call's address, its
    // number and its architecture at these offsets, aligned inside the
    // structure.
    let (addr, nr, arch) = unsafe {
        let base = info.cast::<u8>();
        (
            base.add(SI_CALL_ADDR_OFFSET).cast::<u64>().read(),
            base.add(SI_SYSCALL_OFFSET).cast::<i32>().read(),
            base.add(SI_ARCH_OFFSET).cast::<u32>().read(),
        )
    };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the
    // buffer, which has 16; prctl(PR_GET_NAME) is allowed by the filter.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let guest_at = crate::process::is_guest_address(addr).then_some(addr);
    report_blocked_call(i64::from(nr), arch == AUDIT_ARCH_X86_64, &name[..len], guest_at);
}

/// Process mode: writes that a signal hit the tender's own code (not the
/// guest's) to stderr. The caller then lets the signal kill the process.
pub(crate) fn report_tender_fault(signal: libc::c_int, uc: *mut libc::c_void) {
    use core::fmt::Write as _;
    // SAFETY: the kernel passes its ucontext to an SA_SIGINFO handler.
    let rip = unsafe { (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] };
    let mut text = StackText { buf: [0; 256], len: 0 };
    let _ = writeln!(text, "skiff-tender: signal {signal} in the tender's own code at {rip:#x}: a tender bug");
    // SAFETY: write(2) is async-signal-safe and allowed by the filter; the
    // buffer is valid for `len` bytes.
    unsafe { libc::write(libc::STDERR_FILENO, text.buf.as_ptr().cast(), text.len) };
}

/// Makes a call the seccomp filter traps (`SIGSYS`) end the process with
/// one line naming the call and the thread, and status
/// [`exit::BLOCKED_SYSCALL`].
pub fn install_blocked_call_reporter() -> io::Result<()> {
    set_handler(libc::SIGSYS, on_sigsys)
}

/// A handler with the `SA_SIGINFO` signature.
pub(crate) type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `signal`, run on the thread's alternate signal
/// stack when it has one (in process mode the guest's stack is the
/// guest's memory and must never hold a signal frame), without
/// `SA_RESTART`.
pub(crate) fn set_handler(signal: libc::c_int, handler: Handler) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
    // function with the SA_SIGINFO signature; the mask is emptied.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `message` to stderr and ends the whole process with `status`
/// at once, from any thread, without running destructors (another thread
/// may be anywhere).
pub fn end_process_now(message: &str, status: u8) -> ! {
    // SAFETY: write(2) of a valid buffer and _exit(2), both allowed by the
    // seccomp filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
        libc::_exit(i32::from(status))
    }
}

/// Blocks the kick signal in the calling thread while it lives, so that a
/// thread started meanwhile starts with it blocked; the old mask comes
/// back on drop.
pub(crate) struct KickBlocked(libc::sigset_t);

impl KickBlocked {
    pub(crate) fn new() -> io::Result<KickBlocked> {
        let set = create_sigset(&[KICK_SIGNAL]).map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: a zeroed sigset_t is a valid (empty) set for the old mask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid; pthread_sigmask only changes this
        // thread's mask.
        match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) } {
            0 => Ok(KickBlocked(old)),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl Drop for KickBlocked {
    fn drop(&mut self) {
        // SAFETY: the mask saved by `new`, a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// A signal asking the tender to stop the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// `SIGTERM` (`podman stop`, systemd, `kill`).
    Term,
    /// `SIGINT` (Ctrl-C).
    Int,
}

impl StopSignal {
    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }
}

/// Sends `signal` to the process `pid` (a child that `skiff run --vmm
/// qemu` passes a stop request on to).
pub fn send_stop(pid: u32, signal: StopSignal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let number = match signal {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Int => libc::SIGINT,
    };
    // SAFETY: kill takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, number) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Makes the process `cmd` starts begin with `SIGTERM` and `SIGINT`
/// unblocked (a child inherits the mask that [`block_stop_signals`] set).
pub fn unblock_stop_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; it only
    // fills a sigset on its stack and calls pthread_sigmask, all of them
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            match libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        });
    }
}

/// Makes the process `cmd` starts end (`SIGKILL`) when the thread that
/// started it dies, so a `skiff` killed outright leaves no QEMU behind.
pub fn end_with_parent_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes the async-signal-safe prctl call.
    unsafe {
        cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        });
    }
}

/// Blocks `SIGTERM` and `SIGINT` in the calling thread and in every thread
/// it starts afterwards, so they stay pending until [`wait_for_stop`]
/// takes them. They stay blocked after the guest ends: one that comes
/// then is answered by the process ending as it was going to anyway.
pub fn block_stop_signals() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        block_signal(signal).map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Waits up to `timeout` for a stop signal (blocked by
/// [`block_stop_signals`]) and takes it.
pub fn wait_for_stop(timeout: Duration) -> Option<StopSignal> {
    let set = create_sigset(&[libc::SIGTERM, libc::SIGINT]).ok()?;
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: the set and the timespec are valid; a null siginfo is allowed.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match signal {
        libc::SIGTERM => Some(StopSignal::Term),
        libc::SIGINT => Some(StopSignal::Int),
        _ => None,
    }
}

/// [`wait_for_stop`] for a thread that blocks the kick signal (the
/// monitor): a kick, pending or new, also ends the wait (and gives `None`).
pub(crate) fn wait_for_stop_or_kick(timeout: Duration) -> Option<StopSignal> {
    let set = create_sigset(&[libc::SIGTERM, libc::SIGINT, KICK_SIGNAL]).ok()?;
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: the set and the timespec are valid; a null siginfo is allowed.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match signal {
        libc::SIGTERM => Some(StopSignal::Term),
        libc::SIGINT => Some(StopSignal::Int),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_calls_are_named() {
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(16), "ioctl");
        assert_eq!(syscall_name(-1), "unknown");
        assert_eq!(syscall_name(100_000), "unknown");
    }

    #[test]
    fn the_stack_text_truncates_instead_of_overflowing() {
        use core::fmt::Write as _;
        let mut t = StackText { buf: [0; 256], len: 0 };
        for _ in 0..100 {
            let _ = write!(t, "0123456789");
        }
        assert_eq!(t.len, 256);
    }
}
