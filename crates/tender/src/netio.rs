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
//! vCPU thread, kicked out of `KVM_RUN`, ends the guest with it.

use crate::guest_memory::GuestMemory;
use crate::net::{Counters, FrameError, Host, Nic, recv_from_host};
use crate::sys::ThreadKicker;
use skiff_usernet::UserNet;
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
    /// Written by the I/O thread when frames arrive for a waiting guest.
    pub rx_notify: EventFd,
    /// Written by the vCPU thread to wake the I/O thread (`NetNotify`, or
    /// shutdown).
    pub doorbell: EventFd,
    /// Set when the I/O thread must stop.
    pub stop: AtomicBool,
    /// The guest broke the ring protocol (set once; the I/O thread stops).
    pub error: Mutex<Option<(String, FrameError)>>,
    /// Frame counters.
    pub counters: Counters,
    /// The user networks' counters, when the thread ends.
    pub user_stats: Mutex<Vec<(String, skiff_usernet::Stats)>>,
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
            counters: Counters::default(),
            user_stats: Mutex::new(Vec::new()),
        })
    }

    /// The error the I/O thread found, if any.
    pub fn take_error(&self) -> Option<(String, FrameError)> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The running I/O thread.
pub struct IoThread {
    shared: Arc<IoShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IoThread {
    /// Starts serving `nics` (which must all have rings); `users` holds
    /// the user network of each NIC whose host end is `Host::User`, by NIC
    /// index. `vcpu` is kicked when the guest must be ended.
    pub fn start(
        nics: Arc<Vec<Nic>>,
        users: Vec<(usize, UserNet)>,
        mem: Arc<GuestMemory>,
        shared: Arc<IoShared>,
        spin: Duration,
        vcpu: ThreadKicker,
    ) -> std::io::Result<IoThread> {
        let s = shared.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("skiff-net-io".into()).spawn(move || {
            // Thread start-up makes system calls the seccomp allow-list does
            // not have; the lockdown waits for this.
            let _ = started_tx.send(());
            let mut users = users;
            let result = serve(&nics, &mut users, &mem, &s, spin);
            *s.user_stats.lock().unwrap_or_else(|e| e.into_inner()) =
                users.iter().map(|(i, u)| (nics[*i].name.clone(), u.stats())).collect();
            if let Err((nic, e)) = result {
                *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some((nic, e));
                vcpu.kick();
            }
        })?;
        let _ = started_rx.recv();
        Ok(IoThread { shared, thread: Some(thread) })
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.doorbell.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    nics: &[Nic],
    users: &mut [(usize, UserNet)],
    mem: &GuestMemory,
    shared: &IoShared,
    spin: Duration,
) -> Result<(), (String, FrameError)> {
    let mut buf = Box::new([0u8; 65536]);
    let mut last_work = Instant::now();
    let fail = |nic: &Nic, e: FrameError| (nic.name.clone(), e);
    while !shared.stop.load(Ordering::Relaxed) {
        let mut moved = false;
        // NICs whose receive ring got frames, and whose ring is full while
        // their host end holds more (one bit each).
        let mut produced = 0u64;
        let mut full = 0u64;
        for (index, nic) in nics.iter().enumerate() {
            let Some((rx, tx)) = nic.rings else { continue };
            let mut user = users.iter_mut().find(|(i, _)| *i == index).map(|(_, u)| u);
            // Everything the guest queued goes to the host end.
            while let Some(n) = tx.pop(mem, &mut buf[..]).map_err(|e| fail(nic, e.into()))? {
                match (&nic.host, user.as_deref_mut()) {
                    (Host::Tap(tap), _) => match tap.send(&buf[..n]) {
                        Ok(true) => shared.counters.tx.fetch_add(1, Ordering::Relaxed),
                        Ok(false) => shared.counters.dropped.fetch_add(1, Ordering::Relaxed),
                        Err(e) => return Err(fail(nic, FrameError::Host(e.to_string()))),
                    },
                    (Host::User, Some(u)) => {
                        u.receive_frame(&buf[..n]);
                        shared.counters.tx.fetch_add(1, Ordering::Relaxed)
                    }
                    (Host::User, None) => shared.counters.dropped.fetch_add(1, Ordering::Relaxed),
                };
                moved = true;
            }
            if let Some(u) = user.as_deref_mut() {
                u.poll();
            }
            // Everything the host end holds goes to the guest, while there
            // is room.
            loop {
                if !rx.has_room(mem).map_err(|e| fail(nic, e.into()))? {
                    let more = match (&nic.host, user.as_deref()) {
                        (Host::User, Some(u)) => u.has_frames(),
                        _ => true,
                    };
                    if more {
                        full |= 1 << index;
                    }
                    break;
                }
                let delivered = match (&nic.host, user.as_deref_mut()) {
                    (Host::Tap(tap), _) => {
                        match recv_from_host(tap, &mut buf, &shared.counters).map_err(|e| fail(nic, e))? {
                            Some(n) => rx.push(mem, &buf[..n]).map_err(|e| fail(nic, e.into()))?,
                            None => false,
                        }
                    }
                    (Host::User, Some(u)) => match u.take_frame() {
                        Some(frame) => rx.push(mem, &frame).map_err(|e| fail(nic, e.into()))?,
                        None => false,
                    },
                    (Host::User, None) => false,
                };
                if !delivered {
                    break;
                }
                shared.counters.rx.fetch_add(1, Ordering::Relaxed);
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
            last_work = now;
            continue;
        }
        if full == 0 && now.duration_since(last_work) < spin {
            std::hint::spin_loop();
            continue;
        }
        // Going to sleep: tell the guest to ring when it sends, and when it
        // makes room in a full receive ring; then look once more.
        set_sleeping(nics, mem, 1).map_err(|(nic, e)| fail(nic, e))?;
        set_waiting(nics, mem, full, 1).map_err(|(nic, e)| fail(nic, e))?;
        fence(Ordering::SeqCst);
        let mut queued = false;
        for (index, nic) in nics.iter().enumerate() {
            if let Some((rx, tx)) = nic.rings {
                queued |= tx.pending(mem).map_err(|e| fail(nic, e.into()))? > 0;
                queued |= full & (1 << index) != 0 && rx.has_room(mem).map_err(|e| fail(nic, e.into()))?;
            }
        }
        if !queued {
            // A TAP device whose receive ring is full stays readable: leave
            // it out until the guest makes room (the doorbell).
            let mut fds: Vec<(i32, bool)> = nics
                .iter()
                .enumerate()
                .filter(|(i, _)| full & (1 << i) == 0)
                .filter_map(|(_, n)| n.tap())
                .map(|t| (t.fd(), false))
                .collect();
            fds.push((shared.doorbell.as_raw_fd(), false));
            let mut timeout: Option<Duration> = None;
            for (_, u) in users.iter_mut() {
                fds.extend(u.poll_fds());
                if let Some(d) = u.poll_delay() {
                    timeout = Some(timeout.map_or(d, |t| t.min(d)));
                }
            }
            let _ = crate::tap::wait(&fds, timeout);
        }
        set_sleeping(nics, mem, 0).map_err(|(nic, e)| fail(nic, e))?;
        set_waiting(nics, mem, full, 0).map_err(|(nic, e)| fail(nic, e))?;
        let _ = shared.doorbell.read();
        last_work = Instant::now();
    }
    Ok(())
}

/// Sets the "waiting for room" flag of the receive rings of the NICs in
/// `which`.
fn set_waiting<'n>(nics: &'n [Nic], mem: &GuestMemory, which: u64, value: u32) -> Result<(), (&'n Nic, FrameError)> {
    for (index, nic) in nics.iter().enumerate() {
        if which & (1 << index) != 0
            && let Some((rx, _)) = nic.rings
        {
            rx.producer_waiting(mem).map_err(|e| (nic, FrameError::Ring(e.into())))?.store(value, Ordering::SeqCst);
        }
    }
    Ok(())
}

fn set_sleeping<'n>(nics: &'n [Nic], mem: &GuestMemory, value: u32) -> Result<(), (&'n Nic, FrameError)> {
    for nic in nics {
        if let Some((_, tx)) = nic.rings {
            tx.sleeping(mem).map_err(|e| (nic, FrameError::Ring(e.into())))?.store(value, Ordering::SeqCst);
        }
    }
    Ok(())
}
