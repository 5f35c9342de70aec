//! The monitor thread: ends the guest when `--timeout` expires, and turns
//! `SIGTERM`/`SIGINT` into a stop request the guest can act on.
//!
//! A stop signal sets [`SharedArea::stop_requested`](skiff_abi::SharedArea)
//! in guest memory and wakes the vCPU thread; the runtime sees the flag
//! whenever it wakes and resolves `Env::stopping`, and a service that does
//! not wait for it is ended by the runtime after its network work settles.
//! If the guest has not ended after the grace period, or a second signal
//! comes, the monitor ends it ([`Ending::Stopped`]). To end the guest, the
//! monitor interrupts the vCPU thread (`KVM_RUN`, a `Poll` wait, a console
//! write blocked on a full pipe) every few milliseconds until the vCPU
//! thread returns.
//!
//! The stop signals are blocked in every thread of the tender (from
//! [`sys::block_stop_signals`], called before any thread starts) and taken
//! here with `sigtimedwait`, so no signal handler touches the tender's state.

use crate::guest_memory::{GuestAddr, GuestMemory};
use crate::sys::{self, StopSignal, ThreadKicker};
use skiff_abi::SHARED_STOP_REQUESTED;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// The grace period when `--stop-grace` is not given.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long the monitor keeps kicking a vCPU thread that does not come
/// back before it ends the process itself. Under KVM the thread always
/// comes back (`KVM_RUN` returns on a signal); in process mode a guest
/// running arbitrary code can block the kick signal (`rt_sigprocmask` is
/// allowed), and `--timeout` must still hold.
pub const GIVE_BACK_LIMIT: Duration = Duration::from_secs(1);

/// Why the monitor ends the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `--timeout` expired.
    Timeout,
    /// A stop signal came and the grace period passed, or a second signal.
    Stopped,
}

/// What the vCPU thread and the monitor share.
pub struct MonitorState {
    ending: AtomicU8,
    /// The first stop signal and when it came.
    stop: Mutex<Option<(StopSignal, Instant)>>,
    /// Readable once a stop was requested or the guest must end: wakes the
    /// vCPU thread from a `Poll` wait without a race against the signal.
    pub wake: EventFd,
    finished: std::sync::atomic::AtomicBool,
    /// Held while the monitor kicks the vCPU thread and while `finished` is
    /// set: once the drop has set it, the vCPU thread (which may then end)
    /// is never kicked again.
    kicking: Mutex<()>,
    /// The monitor thread, once it runs (`None` until then): it publishes
    /// itself here before it first reads `finished`, and the drop sets
    /// `finished` before it reads this, so whichever takes the lock second
    /// sees what the other did: the drop kicks the thread, or the thread
    /// sees `finished`.
    monitor: Mutex<Option<ThreadKicker>>,
}

impl MonitorState {
    /// Whether the guest must end now, and why.
    pub fn ending(&self) -> Option<Ending> {
        match self.ending.load(Ordering::SeqCst) {
            1 => Some(Ending::Timeout),
            2 => Some(Ending::Stopped),
            _ => None,
        }
    }

    /// The flag behind [`MonitorState::ending`] (non-zero: the guest must
    /// end), for process mode's kick handler.
    pub fn ending_flag(&self) -> &AtomicU8 {
        &self.ending
    }

    /// The stop signal that came, if any.
    pub fn stop_signal(&self) -> Option<StopSignal> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).map(|(s, _)| s)
    }

    fn end(&self, why: Ending) {
        let code = match why {
            Ending::Timeout => 1,
            Ending::Stopped => 2,
        };
        let _ = self.ending.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }
}

/// The running monitor thread; dropping it stops the thread.
pub struct Monitor {
    state: Arc<MonitorState>,
    /// What the thread starts with, until [`Monitor::spawn`].
    start: Option<Start>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Start {
    limits: Limits,
    mem: Weak<GuestMemory>,
    shared: u64,
    vcpu: ThreadKicker,
}

/// The monitor thread's stack: it waits for signals and formats a message
/// or two.
const STACK: usize = 256 * 1024;

/// When the guest must end and how long a stop may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--timeout`, counted from `started`.
    pub deadline: Option<Instant>,
    /// `--stop-grace`.
    pub grace: Duration,
}

impl Monitor {
    /// The guest has ended: from now on the monitor kicks no vCPU and
    /// ends when it next wakes.
    pub fn stand_down(&self) {
        let _held = self.state.kicking.lock().unwrap_or_else(|e| e.into_inner());
        self.state.finished.store(true, Ordering::SeqCst);
    }

    /// The monitor for a guest in `mem` whose shared area is at `shared`,
    /// run by the calling thread (which it interrupts). Its thread starts
    /// with [`Monitor::spawn`]: as late as the set-up allows, because a
    /// starting thread takes the allocator's lock (one arena,
    /// [`sys::use_one_malloc_arena`]) and the calling thread would wait
    /// for it, for the length of a cross-CPU wake-up, on every allocation
    /// meanwhile.
    pub fn new(limits: Limits, mem: &Arc<GuestMemory>, shared: u64) -> std::io::Result<Monitor> {
        sys::install_kick_handler()?;
        let state = Arc::new(MonitorState {
            ending: AtomicU8::new(0),
            stop: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            finished: std::sync::atomic::AtomicBool::new(false),
            kicking: Mutex::new(()),
            monitor: Mutex::new(None),
        });
        // The guest memory is only needed while the guest runs: a thread
        // that has not ended yet when `run` returns keeps none of it.
        let start = Some(Start { limits, mem: Arc::downgrade(mem), shared, vcpu: ThreadKicker::current() });
        Ok(Monitor { state, start, thread: None })
    }

    /// Starts the monitor's thread.
    ///
    /// It does not wait for the thread to run: on a busy machine a new
    /// thread can wait milliseconds for a CPU, and the guest need not wait
    /// with it. The thread may so still be starting when the seccomp
    /// lockdown comes (the allow-list has what thread start-up calls), and
    /// a kick may come before it waits: it starts with the kick signal
    /// blocked and takes it with the stop signals, so none is lost.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let Some(Start { limits, mem, shared, vcpu }) = self.start.take() else { return Ok(()) };
        let s = self.state.clone();
        let thread = {
            // A new thread inherits the creating thread's signal mask.
            let _blocked = sys::KickBlocked::new()?;
            std::thread::Builder::new().name("skiff-monitor".into()).stack_size(STACK).spawn(move || {
                *s.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(ThreadKicker::current());
                watch(&s, limits, &mem, shared, vcpu)
            })?
        };
        self.thread = Some(thread);
        Ok(())
    }

    /// The state the vCPU thread checks.
    pub fn state(&self) -> &MonitorState {
        &self.state
    }
}

fn watch(s: &MonitorState, limits: Limits, mem: &Weak<GuestMemory>, shared: u64, vcpu: ThreadKicker) {
    let mut grace_end: Option<Instant> = None;
    let mut ending_since: Option<Instant> = None;
    while !s.finished.load(Ordering::SeqCst) {
        let now = Instant::now();
        if let Some(why) = s.ending() {
            let since = *ending_since.get_or_insert(now);
            if now.duration_since(since) > GIVE_BACK_LIMIT {
                let status = match why {
                    Ending::Timeout => skiff_abi::exit::TIMEOUT,
                    Ending::Stopped => skiff_abi::exit::STOPPED,
                };
                sys::end_process_now(
                    &format!(
                        "skiff-tender: the guest did not give its thread back within {:.1} s of being ended ({}); \
                     ending the process (status {status})\n",
                        GIVE_BACK_LIMIT.as_secs_f64(),
                        match why {
                            Ending::Timeout => "--timeout",
                            Ending::Stopped => "stop signal",
                        }
                    ),
                    status,
                );
            }
            // Keep interrupting until the vCPU thread notices: a kick that
            // lands between two system calls is lost.
            kick_unless_finished(s, vcpu);
            if let Some(sig) = sys::wait_for_stop_or_kick(Duration::from_millis(5)) {
                eprintln!("skiff-tender: {}: already ending the guest", sig.name());
            }
            continue;
        }
        if limits.deadline.is_some_and(|d| now >= d) {
            s.end(Ending::Timeout);
            continue;
        }
        if grace_end.is_some_and(|g| now >= g) {
            eprintln!("skiff-tender: the guest did not stop within {:.1} s; ending it", limits.grace.as_secs_f64());
            s.end(Ending::Stopped);
            continue;
        }
        let next = [limits.deadline, grace_end].into_iter().flatten().min();
        // Without a deadline, wait in long steps; the drop interrupts it.
        let wait = next.map_or(Duration::from_secs(3600), |n| n.saturating_duration_since(now));
        let Some(signal) = sys::wait_for_stop_or_kick(wait) else { continue };
        let now = Instant::now();
        if grace_end.is_some() {
            eprintln!("skiff-tender: {} again: ending the guest now", signal.name());
            s.end(Ending::Stopped);
            continue;
        }
        eprintln!(
            "skiff-tender: {}: asking the guest to stop (it has {:.1} s; send it again to end it now)",
            signal.name(),
            limits.grace.as_secs_f64()
        );
        *s.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some((signal, now));
        grace_end = Some(now + limits.grace);
        if let Some(mem) = mem.upgrade() {
            let _ = mem.write_obj(GuestAddr(shared + SHARED_STOP_REQUESTED as u64), &1u32);
        }
        let _ = s.wake.write(1);
        kick_unless_finished(s, vcpu);
    }
}

/// Kicks the vCPU thread while the run lasts.
fn kick_unless_finished(s: &MonitorState, vcpu: ThreadKicker) {
    let _held = s.kicking.lock().unwrap_or_else(|e| e.into_inner());
    if !s.finished.load(Ordering::SeqCst) {
        vcpu.kick();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stand_down();
        if let Some(thread) = self.thread.take() {
            // One kick is enough (it waits in `sigtimedwait` with the kick
            // signal blocked, so the kick stays pending until it looks),
            // and the thread is not waited for: it sees `finished` and ends
            // as soon as it runs, holding nothing the caller needs (the
            // guest memory only weakly), and a busy machine may not run it
            // for milliseconds. One that has not run yet has nothing to
            // kick: it sees `finished` first. Dropping the handle detaches
            // it.
            if let Some(kicker) = *self.state.monitor.lock().unwrap_or_else(|e| e.into_inner()) {
                kicker.kick();
            }
            drop(thread);
        }
    }
}
