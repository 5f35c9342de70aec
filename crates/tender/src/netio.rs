//! The network I/O thread: moves frames between the guest's rings and the
//! host ends of its NICs (TAP devices, or the user-mode network) while the
//! guest runs, so a busy guest needs no VM exit.
//!
//! The loop: take everything from the transmit rings to the host ends, let
//! the user networks move their host sockets, put everything the host ends
//! hold into the receive rings, and if the guest is asleep in `Poll` and
//! frames arrived, wake its vCPU thread (an eventfd). With nothing to do it
//! keeps polling for a while (up to `--net-spin`, less while its sleeps
//! turn out long: [`SpinWindow`]), then sleeps in `ppoll` on the TAP
//! devices, the user networks' sockets and the doorbell eventfd, after
//! setting each transmit ring's "consumer asleep" flag so the guest knows to
//! ring.
//!
//! A guest that breaks the ring protocol gets its error recorded here; the
//! vCPU thread, kicked out of `KVM_RUN` or woken from `Poll`, ends the guest
//! with it.

use crate::guest_memory::GuestMemory;
use crate::net::{FrameError, Host, Nic, NicError};
use crate::ready::{Listening, Readiness};
use crate::stats::NetStats;
use crate::sys::ThreadKicker;
use crate::tap::Tap;
use skiff_abi::ring::SpinWindow;
use skiff_abi::{NET_FRAME_MAX, NET_FRAME_MIN};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

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
}

impl IoShared {
    /// Fresh shared state.
    pub fn new() -> std::io::Result<IoShared> {
        Ok(IoShared {
            guest_waiting: AtomicU64::new(0),
            rx_notify: EventFd::new(libc::EFD_NONBLOCK)?,
            doorbell: EventFd::new(libc::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
        })
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
    // How long to keep polling after the last frame (nanoseconds), up to
    // `spin`: as long as the sleeps that follow a spin turn out short.
    let mut window = SpinWindow::new(u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX));
    // Each NIC's count of guest listeners, as last seen.
    let mut listeners = vec![0u32; nics.len()];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut moved = check_listeners(nics, mem, &mut listeners, readiness)?;
        // NICs whose receive ring got frames, and whose ring is full while
        // their host end holds more (one bit each).
        let mut produced = 0u64;
        let mut full = 0u64;
        for (index, nic) in nics.iter_mut().enumerate() {
            let rings = &nic.rings;
            let host_error =
                |e: std::io::Error| NicError { nic: rings.nic.clone(), source: FrameError::Host(e.to_string()) };
            // Everything the guest queued goes to the host end.
            while let Some(n) = rings.tx.pop(mem, &mut buf[..]).map_err(|e| rings.error(e))? {
                let sent = match &mut nic.host {
                    Host::Tap(tap) => tap.send(&buf[..n]).map_err(host_error)?,
                    Host::User(u) => {
                        u.receive_frame(&buf[..n]);
                        true
                    }
                };
                *if sent { &mut stats.tx } else { &mut stats.dropped } += 1;
                moved = true;
            }
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
                        Some(n) => rings.rx.push(mem, &buf[..n]),
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
        if full == 0 && now.duration_since(last_work) < Duration::from_nanos(window.get()) {
            std::hint::spin_loop();
            continue;
        }
        // Going to sleep: tell the guest to ring when it sends, and when it
        // makes room in a full receive ring; then look once more.
        set_flags(nics, mem, full, 1)?;
        fence(Ordering::SeqCst);
        let mut queued = false;
        for (index, nic) in nics.iter().enumerate() {
            let rings = &nic.rings;
            queued |= rings.tx.pending(mem).map_err(|e| rings.error(e))? > 0;
            queued |= full & (1 << index) != 0 && rings.rx.has_room(mem).map_err(|e| rings.error(e))?;
            queued |= rings.tx.listening(mem).map_err(|e| rings.error(e))?.0 != listeners[index];
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
            let asleep = Instant::now();
            let _ = crate::tap::wait(&fds, timeout);
            window.slept(u64::try_from(asleep.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        set_flags(nics, mem, full, 0)?;
        let _ = shared.doorbell.read();
        last_work = Instant::now();
    }
    Ok(())
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
        let (count, _) = rings.tx.listening(mem).map_err(|e| rings.error(e))?;
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
fn set_flags(nics: &[Nic], mem: &GuestMemory, full: u64, value: u32) -> Result<(), NicError> {
    for (index, nic) in nics.iter().enumerate() {
        let rings = &nic.rings;
        rings.tx.sleeping(mem).map_err(|e| rings.error(e))?.store(value, Ordering::SeqCst);
        if full & (1 << index) != 0 {
            rings.rx.producer_waiting(mem).map_err(|e| rings.error(e))?.store(value, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// Reads one pending frame from a TAP device, dropping frames that do not
/// fit an MTU-sized frame. `Ok(None)` when nothing is pending.
fn recv_from_host(tap: &Tap, buf: &mut [u8; 65536], dropped: &mut u64) -> std::io::Result<Option<usize>> {
    loop {
        match tap.recv(buf)? {
            None => return Ok(None),
            Some(n) if (NET_FRAME_MIN as usize..=NET_FRAME_MAX as usize).contains(&n) => return Ok(Some(n)),
            Some(_) => {
                *dropped += 1;
            }
        }
    }
}
