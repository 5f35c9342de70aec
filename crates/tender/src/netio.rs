//! The network I/O thread: moves frames between the guest's rings and the
//! host ends of its NICs (TAP devices, or the user-mode network) while the
//! guest runs, so a busy guest needs no VM exit.
//!
//! The loop: take everything from the transmit rings to the host ends, let
//! the user networks move their host sockets, put everything the host ends
//! hold into the receive rings, and if the guest is asleep in `Poll` and
//! frames arrived, wake its vCPU thread (an eventfd). With nothing to do it
//! keeps polling for `--net-spin`, then sleeps in `ppoll` on the TAP
//! devices, the user networks' sockets and the doorbell eventfd, after
//! setting each transmit ring's "consumer asleep" flag so the guest knows to
//! ring.
//!
//! A guest that breaks the ring protocol gets its error recorded here; the
//! vCPU thread, kicked out of `KVM_RUN` or woken from `Poll`, ends the guest
//! with it.

use crate::gso::Coalescer;
use crate::guest_memory::GuestMemory;
use crate::net::{FrameError, Host, Nic, NicError, NicRings};
use crate::ready::{Listening, Readiness};
use crate::stats::NetStats;
use crate::sys::ThreadKicker;
use crate::tap::Tap;
use skiff_abi::{NET_FRAME_MAX, NET_FRAME_MIN};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// A NIC's transmit side, as both threads see it. The I/O thread sends
/// what the guest queues while it is awake; when it sleeps, the guest rings
/// (`NetNotify`) and the vCPU thread, out of the guest for that call
/// anyway, sends the frames to a TAP device itself rather than waking the
/// I/O thread: no wake-up of another thread (which, on a busy host, often
/// took the vCPU thread's CPU until it slept again) and the frames leave at
/// once.
pub struct TxSide {
    /// Held while frames are taken from the transmit ring and sent, so they
    /// leave in order whichever thread sends them; it builds the TAP
    /// writes (runs of TCP segments merged, [`crate::gso`]).
    lock: Mutex<Coalescer>,
    /// A second descriptor of the NIC's TAP device; `None` on the user
    /// network, which only the I/O thread drives.
    tap: Option<Tap>,
    /// The guest's count of listeners the I/O thread last saw.
    listeners_seen: AtomicU32,
    /// The I/O thread sleeps until the guest makes room in this NIC's
    /// receive ring (only the doorbell wakes it).
    waits_for_room: AtomicBool,
}

impl TxSide {
    /// The transmit side of a NIC whose host end is `tap` (a descriptor of
    /// its own), or the user network (`None`).
    pub fn new(tap: Option<Tap>) -> TxSide {
        TxSide {
            lock: Mutex::new(Coalescer::new()),
            tap,
            listeners_seen: AtomicU32::new(0),
            waits_for_room: AtomicBool::new(false),
        }
    }

    /// The descriptor the vCPU thread sends on, if any.
    pub fn tap_fd(&self) -> Option<i32> {
        self.tap.as_ref().map(Tap::fd)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Coalescer> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// State shared by the vCPU thread and the I/O thread.
pub struct IoShared {
    /// The NICs (one bit each) the vCPU thread waits for, asleep in
    /// `Poll` on `rx_notify`; zero when it is not waiting.
    pub guest_waiting: AtomicU64,
    /// Written by the I/O thread when frames arrive for a waiting guest,
    /// or when it found a broken ring.
    pub rx_notify: EventFd,
    /// Written by the vCPU thread to wake the I/O thread (`NetNotify`, or
    /// shutdown).
    pub doorbell: EventFd,
    /// Set when the I/O thread must stop.
    pub stop: AtomicBool,
    /// The guest broke the ring protocol (set once; the I/O thread stops).
    pub error: Mutex<Option<NicError>>,
    /// Each NIC's transmit side.
    pub tx: Vec<TxSide>,
    /// Frames the vCPU thread sent, and dropped (a full host queue), and
    /// the writes that carried them.
    sent_by_vcpu: AtomicU64,
    dropped_by_vcpu: AtomicU64,
    writes_by_vcpu: AtomicU64,
}

impl IoShared {
    /// Fresh shared state for NICs with these transmit sides.
    pub fn new(tx: Vec<TxSide>) -> std::io::Result<IoShared> {
        Ok(IoShared {
            guest_waiting: AtomicU64::new(0),
            rx_notify: EventFd::new(libc::EFD_NONBLOCK)?,
            doorbell: EventFd::new(libc::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
            tx,
            sent_by_vcpu: AtomicU64::new(0),
            dropped_by_vcpu: AtomicU64::new(0),
            writes_by_vcpu: AtomicU64::new(0),
        })
    }

    /// On the vCPU thread, when the guest rang for NIC `index` (or is about
    /// to sleep with frames queued): sends the frames its transmit ring
    /// holds to its TAP device, unless the I/O thread is sending them now,
    /// and wakes the I/O thread only when it is needed: for the user
    /// network, when it waits for room in the receive ring, when the
    /// guest's listeners changed, or when there was nothing to send (the
    /// guest rang for another reason).
    pub fn transmit_now(&self, index: usize, rings: &NicRings, mem: &GuestMemory) -> Result<(), NicError> {
        if !self.send_for_guest(index, rings, mem)? {
            return Ok(());
        }
        let _ = self.doorbell.write(1);
        Ok(())
    }

    /// [`IoShared::transmit_now`] without the doorbell: whether the I/O
    /// thread must be woken.
    fn send_for_guest(&self, index: usize, rings: &NicRings, mem: &GuestMemory) -> Result<bool, NicError> {
        let Some(side) = self.tx.get(index) else { return Ok(true) };
        let Some(tap) = &side.tap else { return Ok(true) };
        // A long queue (a bulk sender) goes to the I/O thread, which sends
        // it while the guest runs on.
        if rings.tx.pending(mem).map_err(|e| rings.error(e))? > DIRECT_MAX {
            return Ok(true);
        }
        let Ok(mut gso) = side.lock.try_lock() else { return Ok(true) };
        let mut buf = [0u8; NET_FRAME_MAX as usize];
        let mut count = Sent::default();
        let host_error =
            |e: std::io::Error| NicError { nic: rings.nic.clone(), source: FrameError::Host(e.to_string()) };
        for _ in 0..DIRECT_MAX {
            let Some(n) = rings.tx.pop(mem, &mut buf).map_err(|e| rings.error(e))? else { break };
            count.queue(tap, &mut gso, &buf[..n]).map_err(host_error)?;
        }
        count.flush(tap, &mut gso).map_err(host_error)?;
        drop(gso);
        self.sent_by_vcpu.fetch_add(count.sent, Ordering::Relaxed);
        self.dropped_by_vcpu.fetch_add(count.dropped, Ordering::Relaxed);
        self.writes_by_vcpu.fetch_add(count.writes, Ordering::Relaxed);
        let listeners = rings.tx.listeners(mem).map_err(|e| rings.error(e))?;
        Ok(count.sent + count.dropped == 0
            || rings.tx.pending(mem).map_err(|e| rings.error(e))? > 0
            || side.waits_for_room.load(Ordering::SeqCst)
            || listeners != side.listeners_seen.load(Ordering::SeqCst))
    }

    /// The error the I/O thread found, if any.
    pub fn take_error(&self) -> Option<NicError> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The running I/O thread.
pub struct IoThread {
    shared: Arc<IoShared>,
    thread: Option<std::thread::JoinHandle<NetStats>>,
}

impl IoThread {
    /// Starts serving `nics`, whose host ends the thread takes over. `vcpu`
    /// is kicked when the guest must be ended; `readiness` says what to do
    /// when the guest first listens.
    pub fn start(
        mut nics: Vec<Nic>,
        mem: Arc<GuestMemory>,
        shared: Arc<IoShared>,
        spin: Duration,
        vcpu: ThreadKicker,
        mut readiness: Readiness,
    ) -> std::io::Result<IoThread> {
        let s = shared.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("skiff-net-io".into()).spawn(move || {
            // Thread start-up makes system calls the seccomp allow-list does
            // not have; the lockdown waits for this.
            let _ = started_tx.send(());
            let mut stats = NetStats::default();
            if let Err(e) = serve(&mut nics, &mem, &s, spin, &mut stats, &mut readiness) {
                *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                let _ = s.rx_notify.write(1);
                vcpu.kick();
            }
            for nic in &nics {
                if let Host::User(u) = &nic.host {
                    stats.user_nets.push((nic.rings.nic.clone(), u.stats()));
                }
            }
            stats.sent_by_vcpu = s.sent_by_vcpu.load(Ordering::Relaxed);
            stats.tx += stats.sent_by_vcpu;
            stats.tx_writes += s.writes_by_vcpu.load(Ordering::Relaxed);
            stats.dropped += s.dropped_by_vcpu.load(Ordering::Relaxed);
            stats
        })?;
        let _ = started_rx.recv();
        Ok(IoThread { shared, thread: Some(thread) })
    }

    /// Stops the thread and returns what it moved.
    pub fn finish(mut self) -> NetStats {
        self.stop().unwrap_or_default()
    }

    fn stop(&mut self) -> Option<NetStats> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.doorbell.write(1);
        self.thread.take()?.join().ok()
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Most frames the vCPU thread sends itself on a doorbell; a longer queue
/// wakes the I/O thread.
const DIRECT_MAX: u32 = 8;

fn serve(
    nics: &mut [Nic],
    mem: &GuestMemory,
    shared: &IoShared,
    spin: Duration,
    stats: &mut NetStats,
    readiness: &mut Readiness,
) -> Result<(), NicError> {
    let mut buf = Box::new([0u8; 65536]);
    let mut last_work = Instant::now();
    // Each NIC's count of guest listeners, as last seen.
    let mut listeners = vec![0u32; nics.len()];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut moved = check_listeners(nics, mem, &mut listeners, readiness)?;
        if moved {
            for (side, &seen) in shared.tx.iter().zip(&listeners) {
                side.listeners_seen.store(seen, Ordering::SeqCst);
            }
        }
        // NICs whose receive ring got frames, and whose ring is full while
        // their host end holds more (one bit each).
        let mut produced = 0u64;
        let mut full = 0u64;
        for (index, nic) in nics.iter_mut().enumerate() {
            let rings = &nic.rings;
            let host_error =
                |e: std::io::Error| NicError { nic: rings.nic.clone(), source: FrameError::Host(e.to_string()) };
            // Everything the guest queued goes to the host end.
            let mut sending = shared.tx.get(index).map(TxSide::lock);
            let mut count = Sent::default();
            while let Some(n) = rings.tx.pop(mem, &mut buf[..]).map_err(|e| rings.error(e))? {
                match (&mut nic.host, sending.as_deref_mut()) {
                    (Host::Tap(tap), Some(gso)) => count.queue(tap, gso, &buf[..n]).map_err(host_error)?,
                    (Host::Tap(tap), None) => count.add(tap.send(&buf[..n]).map_err(host_error)?, 1),
                    (Host::User(u), _) => {
                        u.receive_frame(&buf[..n]);
                        count.add(true, 1);
                    }
                }
                moved = true;
            }
            if let (Host::Tap(tap), Some(gso)) = (&nic.host, sending.as_deref_mut()) {
                count.flush(tap, gso).map_err(host_error)?;
            }
            drop(sending);
            stats.tx += count.sent;
            stats.dropped += count.dropped;
            stats.tx_writes += count.writes;
            if let Host::User(u) = &mut nic.host {
                u.poll();
            }
            // Everything the host end holds goes to the guest, while there
            // is room.
            loop {
                if !rings.rx.has_room(mem).map_err(|e| rings.error(e))? {
                    if !matches!(&nic.host, Host::User(u) if !u.has_frames()) {
                        full |= 1 << index;
                    }
                    break;
                }
                let pushed = match &mut nic.host {
                    Host::Tap(tap) => match recv_from_host(tap, &mut buf, &mut stats.dropped).map_err(host_error)? {
                        Some(r) => rings.rx.push(mem, &buf[r]),
                        None => break,
                    },
                    Host::User(u) => match u.take_frame() {
                        Some(frame) => rings.rx.push(mem, &frame),
                        None => break,
                    },
                };
                pushed.map_err(|e| rings.error(e))?;
                stats.rx += 1;
                moved = true;
                produced |= 1 << index;
            }
        }
        if produced != 0 {
            // Pairs with the vCPU thread's store of `guest_waiting` followed
            // by its check of the rings.
            fence(Ordering::SeqCst);
            if shared.guest_waiting.load(Ordering::SeqCst) & produced != 0 {
                let _ = shared.rx_notify.write(1);
            }
        }
        let now = Instant::now();
        if moved {
            stats.busy_passes += 1;
            last_work = now;
            continue;
        }
        stats.idle_passes += 1;
        if full == 0 && now.duration_since(last_work) < spin {
            std::hint::spin_loop();
            continue;
        }
        // Going to sleep: tell the guest to ring when it sends, and when it
        // makes room in a full receive ring; then look once more.
        set_flags(nics, shared, mem, full, 1)?;
        fence(Ordering::SeqCst);
        let mut queued = false;
        for (index, nic) in nics.iter().enumerate() {
            let rings = &nic.rings;
            queued |= rings.tx.pending(mem).map_err(|e| rings.error(e))? > 0;
            queued |= full & (1 << index) != 0 && rings.rx.has_room(mem).map_err(|e| rings.error(e))?;
            queued |= rings.tx.listeners(mem).map_err(|e| rings.error(e))? != listeners[index];
        }
        if !queued {
            // A TAP device whose receive ring is full stays readable: leave
            // it out until the guest makes room (the doorbell).
            let mut fds = vec![(shared.doorbell.as_raw_fd(), false)];
            let mut timeout: Option<Duration> = None;
            for (index, nic) in nics.iter_mut().enumerate() {
                match &mut nic.host {
                    Host::Tap(tap) if full & (1 << index) == 0 => fds.push((tap.fd(), false)),
                    Host::Tap(_) => {}
                    Host::User(u) => {
                        fds.extend(u.poll_fds());
                        if let Some(d) = u.poll_delay() {
                            timeout = Some(timeout.map_or(d, |t| t.min(d)));
                        }
                    }
                }
            }
            stats.sleeps += 1;
            let _ = crate::tap::wait(&fds, timeout);
        }
        set_flags(nics, shared, mem, full, 0)?;
        let _ = shared.doorbell.read();
        last_work = Instant::now();
    }
    Ok(())
}

/// Frames sent to a host end and dropped by it (a full queue), and the
/// writes that carried them.
#[derive(Default)]
struct Sent {
    sent: u64,
    dropped: u64,
    writes: u64,
}

impl Sent {
    fn add(&mut self, ok: bool, frames: u32) {
        *if ok { &mut self.sent } else { &mut self.dropped } += u64::from(frames);
        self.writes += 1;
    }

    /// Sends `frame` to `tap`: merged into the TCP segment `gso` builds
    /// when the device takes virtio-net headers (written when the next
    /// frame does not continue it, or by [`Sent::flush`]), else at once.
    fn queue(&mut self, tap: &Tap, gso: &mut Coalescer, frame: &[u8]) -> std::io::Result<()> {
        if !tap.vnet() {
            self.add(tap.send(frame)?, 1);
            return Ok(());
        }
        // Each refusal names a run to write first; an empty coalescer
        // takes any frame.
        while !gso.offer(frame) {
            self.write_one(tap, gso)?;
        }
        Ok(())
    }

    /// Writes one run `gso` holds; `false` when it held none.
    fn write_one(&mut self, tap: &Tap, gso: &mut Coalescer) -> std::io::Result<bool> {
        let Some((bytes, frames)) = gso.take() else { return Ok(false) };
        self.add(tap.send_with_header(bytes)?, frames);
        Ok(true)
    }

    /// Writes everything `gso` holds.
    fn flush(&mut self, tap: &Tap, gso: &mut Coalescer) -> std::io::Result<()> {
        while self.write_one(tap, gso)? {}
        Ok(())
    }
}

/// Looks at each NIC's count of guest listeners: a change hands the
/// connections the user network holds to the guest at once, and the first
/// listener makes the service ready. Returns whether anything changed.
fn check_listeners(
    nics: &mut [Nic],
    mem: &GuestMemory,
    seen: &mut [u32],
    readiness: &mut Readiness,
) -> Result<bool, NicError> {
    let mut changed = false;
    let mut first = false;
    for (index, nic) in nics.iter_mut().enumerate() {
        let rings = &nic.rings;
        let count = rings.tx.listeners(mem).map_err(|e| rings.error(e))?;
        if count == seen[index] {
            continue;
        }
        first |= seen.iter().all(|&n| n == 0);
        seen[index] = count;
        changed = true;
        if let Host::User(u) = &mut nic.host {
            u.guest_listens();
        }
    }
    if first {
        let mut listening = Vec::new();
        for nic in nics.iter() {
            let rings = &nic.rings;
            let (count, ports) = rings.tx.listening(mem).map_err(|e| rings.error(e))?;
            if count == 0 {
                continue;
            }
            let published = match &nic.host {
                Host::User(u) => u.published_tcp().into_iter().filter(|(_, p)| ports.contains(p)).collect(),
                Host::Tap(_) => Vec::new(),
            };
            listening.push(Listening { nic: rings.nic.clone(), ports, published });
        }
        readiness.ready(&listening);
    }
    Ok(changed)
}

/// Sets each transmit ring's "consumer asleep" flag, and the "waiting for
/// room" flag of the receive rings of the NICs in `full`.
fn set_flags(nics: &[Nic], shared: &IoShared, mem: &GuestMemory, full: u64, value: u32) -> Result<(), NicError> {
    for (index, nic) in nics.iter().enumerate() {
        let rings = &nic.rings;
        // Before the ring's flag: a guest that sees the flag and rings
        // finds this set on the vCPU thread (`IoShared::transmit_now`).
        if let Some(side) = shared.tx.get(index) {
            side.waits_for_room.store(value != 0 && full & (1 << index) != 0, Ordering::SeqCst);
        }
        rings.tx.sleeping(mem).map_err(|e| rings.error(e))?.store(value, Ordering::SeqCst);
        if full & (1 << index) != 0 {
            rings.rx.producer_waiting(mem).map_err(|e| rings.error(e))?.store(value, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// Reads one pending frame from a TAP device, dropping frames that do not
/// fit an MTU-sized frame. `Ok(None)` when nothing is pending; else where
/// the frame is in `buf`.
fn recv_from_host(
    tap: &Tap,
    buf: &mut [u8; 65536],
    dropped: &mut u64,
) -> std::io::Result<Option<std::ops::Range<usize>>> {
    loop {
        match tap.recv(buf)? {
            None => return Ok(None),
            Some(r) if (NET_FRAME_MIN as usize..=NET_FRAME_MAX as usize).contains(&r.len()) => return Ok(Some(r)),
            Some(_) => {
                *dropped += 1;
            }
        }
    }
}
