//! A single-core cooperative async executor.
//!
//! The counterpart of MirageOS's Lwt scheduler: tasks are futures polled on
//! the one vCPU; a task runs until it awaits something that is not ready.
//! When no task is ready, the executor makes exactly one idle call to the
//! platform (the `Poll` hypercall) with the earliest timer deadline, so a
//! sleeping guest costs the host nothing.
//!
//! There is no global executor. Tasks are spawned through a [`Spawner`]
//! (handed to the service in [`crate::Env`]); timers find their executor
//! through the task's waker, which this executor creates itself (see
//! [`sleep`]).
//!
//! Fairness: ready tasks are polled in wake-up order, in rounds; timers are
//! checked between rounds, so a task that keeps waking itself cannot starve
//! timers.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use core::time::Duration;
use spinning_top::Spinlock;

use crate::time::Instant;

/// What the executor needs from the machine it runs on.
pub trait Platform {
    /// Blocks until a device in `interest` (one bit each) is ready or
    /// `timeout` passes; `None` waits for a device only. Returns the set of
    /// ready devices. Devices outside `interest` have no task waiting for
    /// them: what they hold must not wake the guest, or a service that
    /// never reads its NIC would keep a host core busy.
    fn poll(&mut self, timeout: Option<Duration>, interest: u64) -> u64;

    /// Whether anything outside the executor (a device) can wake a task.
    /// Without devices and timers, a blocked guest can never continue.
    fn has_devices(&self) -> bool;

    /// Devices with something ready, found without blocking and, where the
    /// platform allows, without a VM exit (shared-memory rings). Checked
    /// between rounds of ready tasks.
    fn ready_now(&mut self) -> u64 {
        0
    }

    /// Whether the guest has been asked to stop (the tender got `SIGTERM`
    /// or `SIGINT`). Checked whenever the executor wakes.
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// Why [`Executor::run`] stopped without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// The main task is waiting, no task is ready, no timer is pending and
    /// there is no device that could wake anything.
    Deadlock,
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Deadlock => f.write_str(
                "deadlock: main is waiting, but no task is ready, no timer is pending \
                 and no device could wake it",
            ),
        }
    }
}

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

/// State shared between the executor, its wakers and its timers. It is
/// `Send + Sync` because `Waker` must be; in a guest there is only one CPU
/// and the locks are never contended.
pub(crate) struct Shared {
    ready: Spinlock<VecDeque<(usize, u64)>>,
    timers: Spinlock<BTreeMap<(Instant, u64), Waker>>,
    next_timer: AtomicU64,
    devices: Spinlock<[Option<Waker>; skiff_abi::MAX_DEVICES]>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            ready: Spinlock::new(VecDeque::new()),
            timers: Spinlock::new(BTreeMap::new()),
            next_timer: AtomicU64::new(0),
            devices: Spinlock::new([const { None }; skiff_abi::MAX_DEVICES]),
        }
    }

    /// The devices a task waits for, one bit each.
    fn interest(&self) -> u64 {
        self.devices.lock().iter().enumerate().fold(0, |m, (i, w)| if w.is_some() { m | 1 << i } else { m })
    }

    /// Wakes the tasks waiting on the devices whose bits are set.
    fn wake_devices(&self, mask: u64) {
        if mask == 0 {
            return;
        }
        let mut woken = Vec::new();
        {
            let mut devices = self.devices.lock();
            for (i, slot) in devices.iter_mut().enumerate() {
                if mask & (1 << i) != 0
                    && let Some(w) = slot.take()
                {
                    woken.push(w);
                }
            }
        }
        for w in woken {
            w.wake();
        }
    }

    /// Registers `waker` to be woken at `deadline`; returns the key that
    /// [`Shared::cancel_timer`] and [`Shared::update_timer`] take.
    pub(crate) fn add_timer(&self, deadline: Instant, waker: Waker) -> (Instant, u64) {
        let key = (deadline, self.next_timer.fetch_add(1, Ordering::Relaxed));
        self.timers.lock().insert(key, waker);
        key
    }

    /// Replaces the waker of a registered timer, if it is still pending.
    pub(crate) fn update_timer(&self, key: (Instant, u64), waker: &Waker) {
        let old = {
            let mut timers = self.timers.lock();
            match timers.get_mut(&key) {
                Some(w) if !w.will_wake(waker) => Some(core::mem::replace(w, waker.clone())),
                _ => None,
            }
        };
        drop(old);
    }

    /// Removes a timer (no-op if it already fired).
    pub(crate) fn cancel_timer(&self, key: (Instant, u64)) {
        let removed = self.timers.lock().remove(&key);
        drop(removed);
    }

    /// Wakes every timer due at `now`; returns how many fired.
    fn fire_timers(&self, now: Instant) -> usize {
        let mut due = Vec::new();
        {
            let mut timers = self.timers.lock();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
        }
        let n = due.len();
        for waker in due {
            waker.wake();
        }
        n
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.lock().first_key_value().map(|(k, _)| k.0)
    }
}

/// The data behind every waker this executor creates.
struct TaskWaker {
    slot: usize,
    generation: u64,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl TaskWaker {
    fn wake_by_ref(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.ready.lock().push_back((self.slot, self.generation));
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

fn raw_waker(task: Arc<TaskWaker>) -> RawWaker {
    RawWaker::new(Arc::into_raw(task).cast::<()>(), &VTABLE)
}

unsafe fn waker_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` came from `Arc::into_raw` in `raw_waker` and the waker
    // being cloned still owns that reference; we add one for the clone.
    unsafe { Arc::increment_strong_count(data.cast::<TaskWaker>()) };
    RawWaker::new(data, &VTABLE)
}

unsafe fn waker_wake(data: *const ()) {
    // SAFETY: `wake` consumes the waker, so we take over its reference.
    let task = unsafe { Arc::from_raw(data.cast::<TaskWaker>()) };
    task.wake_by_ref();
}

unsafe fn waker_wake_by_ref(data: *const ()) {
    // SAFETY: the waker owns a reference for as long as it lives, which
    // covers this call.
    let task = unsafe { &*data.cast::<TaskWaker>() };
    task.wake_by_ref();
}

unsafe fn waker_drop(data: *const ()) {
    // SAFETY: dropping the waker releases the reference it owned.
    drop(unsafe { Arc::from_raw(data.cast::<TaskWaker>()) });
}

/// Arranges for the task behind `waker` to be woken when device `index`
/// reports something ready (the executor learns it from the platform).
///
/// # Panics
/// If `waker` was not made by the Skiff executor (see [`sleep`]), or the
/// index is out of range.
pub fn wake_on_device(waker: &Waker, index: usize) {
    let Some(shared) = shared_of(waker) else {
        panic!(
            "a skiff device was polled with a waker from another executor or from a combinator \
             that wraps wakers; poll devices from tasks spawned on the skiff executor"
        );
    };
    let old = shared.devices.lock()[index].replace(waker.clone());
    drop(old);
}

/// The executor's shared state behind `waker`, if this executor made it.
/// Timers use it to find their executor without any global.
pub(crate) fn shared_of(waker: &Waker) -> Option<Arc<Shared>> {
    if !core::ptr::eq(waker.vtable(), &VTABLE) {
        return None;
    }
    // SAFETY: the vtable is ours, so the data pointer is a live
    // `Arc<TaskWaker>` owned by `waker`, which outlives this borrow.
    let task = unsafe { &*waker.data().cast::<TaskWaker>() };
    Some(task.shared.clone())
}

struct Slot {
    generation: u64,
    future: Option<TaskFuture>,
    waker: Option<Waker>,
}

/// Spawns tasks onto the executor that made it. Cheap to clone; not `Send`
/// (tasks need not be `Send` on a single core).
#[derive(Clone)]
pub struct Spawner {
    incoming: Rc<RefCell<Vec<TaskFuture>>>,
    exit_work: Rc<RefCell<Vec<ExitWork>>>,
    stop: Rc<RefCell<StopState>>,
}

/// The stop request as the executor knows it.
#[derive(Default)]
struct StopState {
    /// The platform reported a stop request.
    requested: bool,
    /// The service asked for it ([`Spawner::stopping`]): it ends itself.
    watched: bool,
    /// Tasks of the service waiting for it.
    waiters: Vec<Waker>,
    /// The runtime's own wait ([`Spawner::until_unwatched_stop`]).
    runtime: Option<Waker>,
}

impl StopState {
    fn wait(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }
}

/// Resolves when the guest is asked to stop; see [`Spawner::stopping`].
pub struct Stopping {
    stop: Rc<RefCell<StopState>>,
}

impl Future for Stopping {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.stop.borrow_mut();
        s.watched = true;
        if s.requested {
            return Poll::Ready(());
        }
        s.wait(cx.waker());
        Poll::Pending
    }
}

/// A check that says whether work remains that should finish before the
/// guest ends (see [`Spawner::before_exit`]).
type ExitWork = Box<dyn Fn() -> bool>;

impl Spawner {
    /// Starts `future` as a new task; it first runs when the current task
    /// yields. The returned handle resolves to its output; dropping the
    /// handle detaches the task.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let state = Rc::new(RefCell::new(JoinState { output: None, waiter: None, finished: false }));
        let task_state = state.clone();
        self.incoming.borrow_mut().push(Box::pin(async move {
            let output = future.await;
            let waiter = {
                let mut s = task_state.borrow_mut();
                s.output = Some(output);
                s.finished = true;
                s.waiter.take()
            };
            if let Some(w) = waiter {
                w.wake();
            }
        }));
        JoinHandle { state }
    }

    /// Registers a check that reports whether work remains that should
    /// finish before the guest ends: when `main` returns, the runtime keeps
    /// running tasks (for at most [`EXIT_SETTLE`]) until no check reports
    /// any. The network stack uses it so that data and closes still queued
    /// reach the peer.
    pub fn before_exit(&self, pending: impl Fn() -> bool + 'static) {
        self.exit_work.borrow_mut().push(Box::new(pending));
    }

    /// Resolves once the guest is asked to stop: the tender got `SIGTERM`
    /// (`podman stop`, systemd) or `SIGINT` (Ctrl-C). A service that awaits
    /// this (once is enough) ends itself, within the tender's grace period
    /// (`--stop-grace`, 5 s by default). A service that never asks is ended
    /// by the runtime when the request comes: `main` is dropped, queued
    /// network work settles, and the guest exits with status 0.
    pub fn stopping(&self) -> Stopping {
        Stopping { stop: self.stop.clone() }
    }

    /// Runs `main` until it finishes, or until a stop request comes that
    /// no task asked for with [`stopping`](Self::stopping) (then `None`).
    pub async fn until_unwatched_stop<T>(&self, main: Pin<Box<dyn Future<Output = T>>>) -> Option<T> {
        let mut main = main;
        core::future::poll_fn(|cx| {
            if let Poll::Ready(out) = main.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let mut s = self.stop.borrow_mut();
            if s.requested && !s.watched {
                return Poll::Ready(None);
            }
            s.runtime = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until no [`before_exit`](Self::before_exit) check reports
    /// work, or `limit` passes. Returns at once when none does.
    pub async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.exit_work.borrow().iter().any(|pending| pending()) && Instant::now() < deadline {
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// How long the runtime lets remaining work finish after `main` returns.
pub const EXIT_SETTLE: Duration = Duration::from_secs(1);

struct JoinState<T> {
    output: Option<T>,
    waiter: Option<Waker>,
    finished: bool,
}

/// Resolves to a spawned task's output.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.output.take() {
            Some(out) => Poll::Ready(out),
            None => {
                assert!(!s.finished, "JoinHandle polled after it returned the output");
                s.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Counters for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Task polls.
    pub polls: u64,
    /// Idle calls to the platform.
    pub idle_calls: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Tasks spawned (not counting main).
    pub spawned: u64,
}

/// The executor. One per guest, owned by the runtime's boot path.
pub struct Executor {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    incoming: Rc<RefCell<Vec<TaskFuture>>>,
    exit_work: Rc<RefCell<Vec<ExitWork>>>,
    stop: Rc<RefCell<StopState>>,
    live: usize,
    stats: ExecutorStats,
}

impl Default for Executor {
    fn default() -> Self {
        Executor::new()
    }
}

impl Executor {
    /// An executor with no tasks.
    pub fn new() -> Executor {
        Executor {
            shared: Arc::new(Shared::new()),
            slots: Vec::new(),
            free: Vec::new(),
            incoming: Rc::new(RefCell::new(Vec::new())),
            exit_work: Rc::new(RefCell::new(Vec::new())),
            stop: Rc::new(RefCell::new(StopState::default())),
            live: 0,
            stats: ExecutorStats::default(),
        }
    }

    /// A spawner for this executor.
    pub fn spawner(&self) -> Spawner {
        Spawner { incoming: self.incoming.clone(), exit_work: self.exit_work.clone(), stop: self.stop.clone() }
    }

    /// Counters so far.
    pub fn stats(&self) -> ExecutorStats {
        self.stats
    }

    /// Number of tasks that have not finished, main included.
    pub fn live_tasks(&self) -> usize {
        self.live
    }

    fn insert(&mut self, future: TaskFuture) -> usize {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, future: None, waker: None });
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[slot];
        s.generation += 1;
        let task = Arc::new(TaskWaker {
            slot,
            generation: s.generation,
            queued: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        // SAFETY: `raw_waker` builds a RawWaker from an owned Arc with our
        // vtable, whose functions keep the Arc's reference count right.
        let waker = unsafe { Waker::from_raw(raw_waker(task)) };
        waker.wake_by_ref();
        s.future = Some(future);
        s.waker = Some(waker);
        self.live += 1;
        slot
    }

    fn accept_spawned(&mut self) {
        let incoming = core::mem::take(&mut *self.incoming.borrow_mut());
        for future in incoming {
            self.stats.spawned += 1;
            self.insert(future);
        }
    }

    /// Polls the task in `slot` once; returns true if it finished.
    fn poll_slot(&mut self, slot: usize, generation: u64) -> bool {
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        if s.generation != generation {
            return false;
        }
        let (Some(mut future), Some(waker)) = (s.future.take(), s.waker.clone()) else {
            return false;
        };
        // Clear `queued` before polling, so a wake during the poll requeues.
        clear_queued(&waker);
        self.stats.polls += 1;
        let mut cx = Context::from_waker(&waker);
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                let s = &mut self.slots[slot];
                s.waker = None;
                self.free.push(slot);
                self.live -= 1;
                true
            }
            Poll::Pending => {
                self.slots[slot].future = Some(future);
                false
            }
        }
    }

    /// Runs `main` (and every task spawned meanwhile) until `main` finishes,
    /// idling on `platform` when nothing is ready. Other tasks still
    /// running when `main` finishes are dropped, as in a process.
    pub fn run<T: 'static>(
        &mut self,
        main: impl Future<Output = T> + 'static,
        platform: &mut impl Platform,
    ) -> Result<T, RunError> {
        let result: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
        let out = result.clone();
        let main_slot = self.insert(Box::pin(async move {
            let value = main.await;
            *out.borrow_mut() = Some(value);
        }));
        let main_generation = self.slots[main_slot].generation;
        loop {
            self.accept_spawned();
            // One round: everything ready now, in wake-up order.
            let round = self.shared.ready.lock().len();
            for _ in 0..round {
                let Some((slot, generation)) = self.shared.ready.lock().pop_front() else {
                    break;
                };
                let finished = self.poll_slot(slot, generation);
                if finished && slot == main_slot && generation == main_generation {
                    self.drop_all_tasks();
                    let value = result.borrow_mut().take();
                    return Ok(value.expect("main stored its output"));
                }
                self.accept_spawned();
            }
            let now = Instant::now();
            self.stats.timers_fired += self.shared.fire_timers(now) as u64;
            self.check_stop(platform);
            if platform.has_devices() {
                self.shared.wake_devices(platform.ready_now());
            }
            if !self.shared.ready.lock().is_empty() || !self.incoming.borrow().is_empty() {
                continue;
            }
            let timeout = match self.shared.next_deadline() {
                Some(deadline) => Some(deadline.saturating_duration_since(Instant::now())),
                // A device, or a stop request a task waits for, can still
                // wake the guest.
                None if platform.has_devices() || self.stop_can_wake() => None,
                None => {
                    self.drop_all_tasks();
                    return Err(RunError::Deadlock);
                }
            };
            self.stats.idle_calls += 1;
            let ready = platform.poll(timeout, self.shared.interest());
            self.shared.wake_devices(ready);
        }
    }

    /// Whether a task waits for a stop request that has not come yet.
    fn stop_can_wake(&self) -> bool {
        let s = self.stop.borrow();
        !s.requested && !s.waiters.is_empty()
    }

    /// Wakes the tasks waiting for a stop request once the platform
    /// reports one.
    fn check_stop(&mut self, platform: &mut impl Platform) {
        if self.stop.borrow().requested || !platform.stop_requested() {
            return;
        }
        let waiters = {
            let mut s = self.stop.borrow_mut();
            s.requested = true;
            let mut all = core::mem::take(&mut s.waiters);
            all.extend(s.runtime.take());
            all
        };
        for w in waiters {
            w.wake();
        }
    }

    fn drop_all_tasks(&mut self) {
        for s in &mut self.slots {
            s.future = None;
            s.waker = None;
        }
        self.live = 0;
    }
}

fn clear_queued(waker: &Waker) {
    if core::ptr::eq(waker.vtable(), &VTABLE) {
        // SAFETY: our vtable, so the data is a live TaskWaker owned by
        // `waker`.
        let task = unsafe { &*waker.data().cast::<TaskWaker>() };
        task.queued.store(false, Ordering::Release);
    }
}

/// A future that completes at a deadline. Made by [`sleep`] and
/// [`sleep_until`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    registration: Option<(Arc<Shared>, (Instant, u64))>,
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, registration: None }
}

impl Sleep {
    /// When this sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some((shared, key)) = self.registration.take() {
                shared.cancel_timer(key);
            }
            return Poll::Ready(());
        }
        match &self.registration {
            Some((shared, key)) => shared.update_timer(*key, cx.waker()),
            None => {
                let Some(shared) = shared_of(cx.waker()) else {
                    panic!(
                        "a skiff timer was polled with a waker from another executor or from a \
                         combinator that wraps wakers (such as FuturesUnordered); run timers \
                         inside tasks spawned on the skiff executor"
                    );
                };
                let key = shared.add_timer(self.deadline, cx.waker().clone());
                self.registration = Some((shared, key));
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((shared, key)) = self.registration.take() {
            shared.cancel_timer(key);
        }
    }
}

/// The error of [`timeout`]: the time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl core::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl core::error::Error for Elapsed {}

/// A future with a deadline. Made by [`timeout`].
#[must_use = "futures do nothing unless awaited"]
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

/// Runs `future` for at most `duration`.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout { future: Box::pin(future), sleep: sleep(duration) }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Lets other ready tasks run before this one continues.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Made by [`yield_now`].
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::advance_manual_clock;
    use std::vec;

    /// A platform whose idle call jumps the manual clock to the deadline,
    /// recording each timeout it was given.
    #[derive(Default)]
    struct FakePlatform {
        idles: Vec<Option<Duration>>,
        devices: bool,
    }

    impl Platform for FakePlatform {
        fn poll(&mut self, timeout: Option<Duration>, _interest: u64) -> u64 {
            self.idles.push(timeout);
            if let Some(t) = timeout {
                advance_manual_clock(t);
            }
            0
        }
        fn has_devices(&self) -> bool {
            self.devices
        }
    }

    /// A platform that reports a stop request at its `stop_at`-th idle
    /// call, each idle call advancing the clock by 1 ms.
    struct StopPlatform {
        idles: usize,
        stop_at: usize,
    }

    impl Platform for StopPlatform {
        fn poll(&mut self, _: Option<Duration>, _interest: u64) -> u64 {
            self.idles += 1;
            advance_manual_clock(Duration::from_millis(1));
            0
        }
        fn has_devices(&self) -> bool {
            true
        }
        fn stop_requested(&mut self) -> bool {
            self.idles >= self.stop_at
        }
    }

    #[test]
    fn a_service_that_waits_for_the_stop_request_ends_itself() {
        let mut ex = Executor::new();
        let spawner = ex.spawner();
        let mut p = StopPlatform { idles: 0, stop_at: 3 };
        let main: Pin<Box<dyn Future<Output = u8>>> = Box::pin(async move {
            spawner.stopping().await;
            // Clean-up work after the request still runs.
            sleep(Duration::from_millis(5)).await;
            7
        });
        let s2 = ex.spawner();
        let out = ex.run(async move { s2.until_unwatched_stop(main).await }, &mut p).unwrap();
        assert_eq!(out, Some(7));
        assert!(p.idles >= 3 + 5, "the clean-up ran after the request ({} idles)", p.idles);
    }

    #[test]
    fn a_service_that_never_asks_is_ended_at_the_stop_request() {
        let mut ex = Executor::new();
        let mut p = StopPlatform { idles: 0, stop_at: 4 };
        let main: Pin<Box<dyn Future<Output = u8>>> = Box::pin(core::future::pending());
        let spawner = ex.spawner();
        let out = ex.run(async move { spawner.until_unwatched_stop(main).await }, &mut p).unwrap();
        assert_eq!(out, None);
        assert_eq!(p.idles, 4);
    }

    #[test]
    fn only_devices_a_task_waits_for_are_of_interest() {
        /// Device 0 always has something; the platform records the
        /// interest of each idle call.
        struct Busy {
            interests: Vec<u64>,
        }
        impl Platform for Busy {
            fn poll(&mut self, timeout: Option<Duration>, interest: u64) -> u64 {
                self.interests.push(interest);
                if let Some(t) = timeout {
                    advance_manual_clock(t);
                }
                interest & 1
            }
            fn has_devices(&self) -> bool {
                true
            }
        }
        let mut ex = Executor::new();
        let mut p = Busy { interests: Vec::new() };
        ex.run(
            async {
                let mut waited = false;
                // Nobody waits on the device: the sleep's idle call must
                // not ask for it.
                sleep(Duration::from_millis(5)).await;
                // Now a task waits for it: the next idle call asks.
                core::future::poll_fn(|cx| {
                    if waited {
                        return Poll::Ready(());
                    }
                    waited = true;
                    wake_on_device(cx.waker(), 0);
                    Poll::Pending
                })
                .await;
            },
            &mut p,
        )
        .unwrap();
        assert_eq!(p.interests, vec![0, 1]);
    }

    #[test]
    fn main_value_is_returned() {
        let mut ex = Executor::new();
        let mut p = FakePlatform::default();
        assert_eq!(ex.run(async { 42 }, &mut p), Ok(42));
        assert!(p.idles.is_empty());
    }

    #[test]
    fn sleep_idles_once_with_the_deadline() {
        let mut ex = Executor::new();
        let mut p = FakePlatform::default();
        let start = Instant::now();
        ex.run(async { sleep(Duration::from_millis(10)).await }, &mut p).unwrap();
        assert_eq!(p.idles, vec![Some(Duration::from_millis(10))]);
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
        assert_eq!(ex.stats().timers_fired, 1);
    }

    #[test]
    fn timers_fire_in_deadline_order_across_tasks() {
        let mut ex = Executor::new();
        let spawner = ex.spawner();
        let order = Rc::new(RefCell::new(Vec::new()));
        let o = order.clone();
        let mut p = FakePlatform::default();
        ex.run(
            async move {
                let mut handles = Vec::new();
                for ms in [30u64, 10, 20] {
                    let o = o.clone();
                    handles.push(spawner.spawn(async move {
                        sleep(Duration::from_millis(ms)).await;
                        o.borrow_mut().push(ms);
                        ms * 2
                    }));
                }
                let mut outs = Vec::new();
                for h in handles {
                    outs.push(h.await);
                }
                assert_eq!(outs, vec![60, 20, 40]);
            },
            &mut p,
        )
        .unwrap();
        assert_eq!(*order.borrow(), vec![10, 20, 30]);
        // One idle call per distinct deadline, each for the gap to it.
        assert_eq!(
            p.idles,
            vec![Some(Duration::from_millis(10)), Some(Duration::from_millis(10)), Some(Duration::from_millis(10))]
        );
    }

    #[test]
    fn timeout_expires_and_cancels_its_timer() {
        let mut ex = Executor::new();
        let mut p = FakePlatform::default();
        let r = ex
            .run(
                async {
                    let slow = timeout(Duration::from_millis(5), sleep(Duration::from_secs(60))).await;
                    let fast = timeout(Duration::from_secs(60), async { 7 }).await;
                    (slow, fast)
                },
                &mut p,
            )
            .unwrap();
        assert_eq!(r, (Err(Elapsed), Ok(7)));
        // The 60 s sleep was dropped with its timeout: no timer remains.
        assert_eq!(ex.shared.next_deadline(), None);
        assert_eq!(p.idles, vec![Some(Duration::from_millis(5))]);
    }

    #[test]
    fn wakeups_from_another_task_run_the_waiter() {
        let mut ex = Executor::new();
        let spawner = ex.spawner();
        let mut p = FakePlatform::default();
        let slot: Rc<RefCell<(Option<u32>, Option<Waker>)>> = Rc::new(RefCell::new((None, None)));
        let producer_slot = slot.clone();
        let got = ex
            .run(
                async move {
                    spawner.spawn(async move {
                        yield_now().await;
                        let w = {
                            let mut s = producer_slot.borrow_mut();
                            s.0 = Some(99);
                            s.1.take()
                        };
                        w.expect("consumer registered").wake();
                    });
                    core::future::poll_fn(|cx| {
                        let mut s = slot.borrow_mut();
                        match s.0.take() {
                            Some(v) => Poll::Ready(v),
                            None => {
                                s.1 = Some(cx.waker().clone());
                                Poll::Pending
                            }
                        }
                    })
                    .await
                },
                &mut p,
            )
            .unwrap();
        assert_eq!(got, 99);
        assert!(p.idles.is_empty(), "no idle call was needed");
    }

    #[test]
    fn a_task_woken_twice_is_polled_once_per_wakeup_round() {
        let mut ex = Executor::new();
        let mut p = FakePlatform::default();
        let polls = Rc::new(RefCell::new(0));
        let c = polls.clone();
        ex.run(
            core::future::poll_fn(move |cx| {
                *c.borrow_mut() += 1;
                if *c.borrow() == 1 {
                    cx.waker().wake_by_ref();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }),
            &mut p,
        )
        .unwrap();
        assert_eq!(*polls.borrow(), 2);
    }

    #[test]
    fn blocked_main_without_timers_or_devices_is_a_deadlock() {
        let mut ex = Executor::new();
        let mut p = FakePlatform::default();
        let r = ex.run(core::future::pending::<()>(), &mut p);
        assert_eq!(r, Err(RunError::Deadlock));
    }

    #[test]
    fn blocked_main_with_devices_waits_for_them() {
        struct OneShotDevice {
            polls: usize,
        }
        impl Platform for OneShotDevice {
            fn poll(&mut self, timeout: Option<Duration>, _interest: u64) -> u64 {
                assert_eq!(timeout, None);
                self.polls += 1;
                1
            }
            fn has_devices(&self) -> bool {
                true
            }
        }
        let mut ex = Executor::new();
        let mut p = OneShotDevice { polls: 0 };
        let mut first = true;
        ex.run(
            core::future::poll_fn(move |cx| {
                if first {
                    first = false;
                    // Simulate a driver that will be woken by the device:
                    // wake ourselves only after one idle call.
                    let w = cx.waker().clone();
                    DEFERRED.with(|d| *d.borrow_mut() = Some(w));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }),
            &mut WakeAfterPoll(&mut p),
        )
        .unwrap();
        assert_eq!(p.polls, 1);
    }

    std::thread_local! {
        static DEFERRED: RefCell<Option<Waker>> = const { RefCell::new(None) };
    }

    struct WakeAfterPoll<'a, P>(&'a mut P);
    impl<P: Platform> Platform for WakeAfterPoll<'_, P> {
        fn poll(&mut self, timeout: Option<Duration>, interest: u64) -> u64 {
            let r = self.0.poll(timeout, interest);
            if let Some(w) = DEFERRED.with(|d| d.borrow_mut().take()) {
                w.wake();
            }
            r
        }
        fn has_devices(&self) -> bool {
            self.0.has_devices()
        }
    }

    #[test]
    fn spawned_tasks_still_running_are_dropped_when_main_ends() {
        struct DropFlag(Rc<RefCell<bool>>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                *self.0.borrow_mut() = true;
            }
        }
        let dropped = Rc::new(RefCell::new(false));
        let flag = DropFlag(dropped.clone());
        let mut ex = Executor::new();
        let spawner = ex.spawner();
        let mut p = FakePlatform::default();
        ex.run(
            async move {
                spawner.spawn(async move {
                    let _f = flag;
                    core::future::pending::<()>().await;
                });
                yield_now().await;
            },
            &mut p,
        )
        .unwrap();
        assert!(*dropped.borrow());
        assert_eq!(ex.live_tasks(), 0);
    }

    #[test]
    fn a_self_waking_task_does_not_starve_timers() {
        let mut ex = Executor::new();
        let spawner = ex.spawner();
        let mut p = FakePlatform::default();
        ex.run(
            async move {
                spawner.spawn(async {
                    loop {
                        advance_manual_clock(Duration::from_millis(1));
                        yield_now().await;
                    }
                });
                sleep(Duration::from_millis(3)).await;
            },
            &mut p,
        )
        .unwrap();
        assert!(p.idles.is_empty(), "the busy task kept the CPU, yet the timer fired");
    }

    #[test]
    fn device_readiness_wakes_the_waiting_task() {
        /// A platform with one device that becomes ready on the second
        /// idle call.
        struct Dev {
            idles: usize,
        }
        impl Platform for Dev {
            fn poll(&mut self, _timeout: Option<Duration>, _interest: u64) -> u64 {
                self.idles += 1;
                if self.idles >= 2 { 1 } else { 0 }
            }
            fn has_devices(&self) -> bool {
                true
            }
        }
        let mut ex = Executor::new();
        let mut p = Dev { idles: 0 };
        let polls = Rc::new(RefCell::new(0));
        let c = polls.clone();
        ex.run(
            core::future::poll_fn(move |cx| {
                *c.borrow_mut() += 1;
                if *c.borrow() == 1 {
                    wake_on_device(cx.waker(), 0);
                    // Woken spuriously by the first idle call? No: only the
                    // device bit wakes it.
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            }),
            &mut p,
        )
        .unwrap();
        assert_eq!(p.idles, 2);
        assert_eq!(*polls.borrow(), 2);
    }

    #[test]
    fn foreign_wakers_are_rejected_clearly() {
        let r = std::panic::catch_unwind(|| {
            let mut s = core::pin::pin!(sleep(Duration::from_secs(1)));
            let mut cx = Context::from_waker(Waker::noop());
            let _ = s.as_mut().poll(&mut cx);
        });
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<&str>().copied().unwrap_or("");
        assert!(msg.contains("another executor"), "{msg}");
    }
}
