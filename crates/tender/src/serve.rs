//! Serving a running guest: the vCPU loop and the hypercall handlers.
//!
//! Every exit drains the console ring first, so the guest's last words come
//! out before the tender's own message. Every argument is checked against
//! guest memory and against the guest's page tables ([`Guest::check_user`])
//! before it is read or written.

use crate::elf::Image;
use crate::guest_memory::{GuestAddr, GuestMemory, MemoryError, Pod};
use crate::kvm::{Exit, KvmError, Vm};
use crate::monitor::{Ending, MonitorState};
use crate::net::{self, FrameError, Nic};
use crate::netio::IoShared;
use crate::paging::Region;
use crate::stats::Stats;
use crate::{Outcome, console, fault, paging};
use skiff_abi::{
    ABORT_MESSAGE_MAX, AbortArgs, AbortReason, ExitArgs, FAULT_PORT, FaultFrame, HYPERCALL_PORT_BASE, Hypercall,
    NET_BATCH_MAX, NET_FRAME_MAX, NetFrame, NetIoArgs, NetNotifyArgs, PollArgs, WalltimeArgs, exit,
};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant, SystemTime};

/// A hypercall argument the guest may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Outside guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Inside guest memory, but not memory the service may access so.
    #[error("{len} bytes at {addr:#x} are not {} memory of the service", if *.write { "writable" } else { "readable" })]
    NotUser {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// Whether the tender would write it.
        write: bool,
    },
}

/// How a guest broke the hypercall contract. Ends the guest with
/// [`exit::BAD_HYPERCALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// A call's argument (or a buffer it points to) is unusable.
    #[error("{call}: argument at {addr:#x}: {source}")]
    BadArgument {
        /// The call.
        call: &'static str,
        /// The argument's address.
        addr: u32,
        /// What is wrong with it.
        source: ArgError,
    },
    /// A hypercall port written with a 1- or 2-byte `out`.
    #[error("{0}: a hypercall is a 32-bit `out`; this one was another width")]
    WrongWidth(&'static str),
    /// An `out` to a port that is no hypercall.
    #[error("the guest wrote to I/O port {0:#x}, which is no hypercall")]
    UnknownPort(u16),
    /// An `in` from any port.
    #[error("the guest read from I/O port {0:#x}")]
    PortRead(u16),
    /// `exit` with a status the runtime reserves.
    #[error("exit: status {0} is not a service status (0..={max})", max = exit::SERVICE_MAX)]
    BadExitStatus(u32),
    /// `abort` with an unknown reason.
    #[error("abort: unknown reason {0}")]
    UnknownAbortReason(u32),
    /// `abort` with an over-long message.
    #[error("abort: message of {0} bytes is longer than {ABORT_MESSAGE_MAX}")]
    MessageTooLong(u32),
    /// The console ring is broken.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// The supervisor's fault report is unreadable.
    #[error("fault report: {0}")]
    FaultReport(MemoryError),
    /// A network call names a device that does not exist.
    #[error("{call}: there is no device {device}")]
    NoDevice {
        /// The call.
        call: &'static str,
        /// The index given.
        device: u32,
    },
    /// Too many frames in one call.
    #[error("{call}: a batch of {count} frames is larger than {NET_BATCH_MAX}")]
    Batch {
        /// The call.
        call: &'static str,
        /// Frames given.
        count: u32,
    },
    /// A frame is unusable, or the NIC's ring is broken.
    #[error("NIC {nic:?}: {source}")]
    Frame {
        /// The NIC.
        nic: String,
        /// What is wrong.
        source: FrameError,
    },
    /// `NetRead`/`NetWrite` on a NIC served by rings, or `NetNotify` on one
    /// that is not.
    #[error("{call}: NIC {nic:?} {}", if *.rings { "moves frames through its rings" } else { "has no rings" })]
    WrongMode {
        /// The call.
        call: &'static str,
        /// The NIC.
        nic: String,
        /// Whether the NIC has rings.
        rings: bool,
    },
}

/// The virtual machine stopped working.
#[derive(Debug, thiserror::Error)]
pub enum VmFailure {
    /// An access to guest-physical memory that does not exist.
    #[error(
        "the guest {} guest-physical address {addr:#x}, which has no memory behind it",
        if *.write { "wrote to" } else { "read from" }
    )]
    Unbacked {
        /// The address.
        addr: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// `hlt`.
    #[error("the guest halted the CPU")]
    Halted,
    /// A triple fault.
    #[error("the guest triple-faulted (a fault while handling a fault)")]
    TripleFault,
    /// KVM's internal error (on PVM: usually an instruction its emulator lacks).
    #[error(
        "KVM could not run the guest (internal error, suberror {suberror}{})",
        if *.suberror == 1 { ": instruction emulation failed" } else { "" }
    )]
    Internal {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// The hardware refused to enter.
    #[error("KVM could not enter the guest (hardware reason {0:#x})")]
    EntryFailed(u64),
    /// Any other exit reason.
    #[error("unexpected VM exit: {0}")]
    UnexpectedExit(String),
    /// An ioctl failed while running.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// A range of guest memory checked writable for the service
/// ([`Guest::writable`]); hypercall handlers write to the guest only
/// through one.
#[derive(Clone, Copy, Debug)]
struct Writable {
    addr: u64,
    len: u64,
}

enum Flow {
    Continue,
    End(Outcome),
}

impl From<GuestError> for Flow {
    fn from(e: GuestError) -> Flow {
        Flow::End(Outcome::BadHypercall(e))
    }
}

/// The guest while it runs: what the hypercall handlers need.
pub(crate) struct Guest<'a> {
    pub mem: &'a GuestMemory,
    pub image: &'a Image,
    pub regions: &'a [Region],
    pub console: &'a mut dyn Write,
    pub stats: &'a mut Stats,
    /// `--timeout`: when, and how long it was.
    pub deadline: Option<(Instant, Duration)>,
    /// The attached NICs.
    pub nics: &'a [Nic],
    /// State shared with the network I/O thread (its counters are used in
    /// hypercall mode too).
    pub io: &'a IoShared,
    /// Whether frames move through rings (an I/O thread runs).
    pub rings: bool,
    /// The timeout and stop signals.
    pub monitor: &'a MonitorState,
}

impl Guest<'_> {
    /// Runs the vCPU until the guest ends.
    pub fn serve(&mut self, vm: &mut Vm) -> Outcome {
        loop {
            if let Some(ending) = self.monitor.ending() {
                let _ = self.drain_console();
                return match ending {
                    Ending::Timeout => Outcome::Timeout(self.deadline.map(|d| d.1).unwrap_or_default()),
                    Ending::Stopped => Outcome::Stopped(self.monitor.stop_signal().map_or("a signal", |s| s.name())),
                };
            }
            let exit = match vm.run() {
                Ok(e) => e,
                Err(e) => return Outcome::VmFailure(e.into()),
            };
            if let Err(e) = self.drain_console() {
                return Outcome::BadHypercall(e);
            }
            if let Some((nic, source)) = self.io.take_error() {
                return Outcome::BadHypercall(GuestError::Frame { nic, source });
            }
            let flow = match exit {
                Exit::IoOut { port, value } => self.io_out(port, value),
                Exit::Interrupted => {
                    self.stats.exit("interrupted");
                    Flow::Continue
                }
                Exit::IoIn(port) => {
                    self.stats.exit("bad-port");
                    GuestError::PortRead(port).into()
                }
                other => {
                    self.stats.exit("vm-failure");
                    Flow::End(Outcome::VmFailure(unexpected(other)))
                }
            };
            if let Flow::End(outcome) = flow {
                return outcome;
            }
        }
    }

    fn drain_console(&mut self) -> Result<(), GuestError> {
        let monitor = self.monitor;
        let n = console::drain(self.mem, paging::SHARED, self.console, &|| monitor.ending().is_some())?;
        self.stats.console_bytes += n as u64;
        Ok(())
    }

    /// Checks that `[addr, addr + len)` is guest memory the service itself
    /// may access (writably if `write`), so the tender can never be used to
    /// reach the page tables or the supervisor.
    fn check_user(&self, addr: u64, len: u64, write: bool) -> Result<(), ArgError> {
        self.mem.check(GuestAddr(addr), len)?;
        let not_user = ArgError::NotUser { addr, len, write };
        let end = addr.checked_add(len).ok_or_else(|| not_user.clone())?;
        let mut at = addr;
        while at < end {
            let r = self.regions.iter().find(|r| r.start <= at && at < r.end).ok_or_else(|| not_user.clone())?;
            if !r.perm.user || (write && !r.perm.write) || r.device {
                return Err(not_user);
            }
            at = r.end;
        }
        Ok(())
    }

    /// Guest memory the service may write, as [`Writable`]: the only way
    /// a hypercall handler writes to the guest.
    fn writable(&self, addr: u64, len: u64) -> Result<Writable, ArgError> {
        self.check_user(addr, len, true)?;
        Ok(Writable { addr, len })
    }

    /// Writes `bytes` at `offset` into a checked range; past its end is a
    /// bad argument, never a write.
    fn write_user(&self, to: Writable, offset: u64, bytes: &[u8]) -> Result<(), ArgError> {
        let len = bytes.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > to.len) {
            return Err(ArgError::NotUser { addr: to.addr.saturating_add(offset), len, write: true });
        }
        Ok(self.mem.write(GuestAddr(to.addr + offset), bytes)?)
    }

    /// Reads an argument the service may read.
    fn read_arg<T: Pod>(&self, addr: u32) -> Result<T, ArgError> {
        self.check_user(u64::from(addr), std::mem::size_of::<T>() as u64, false)?;
        Ok(self.mem.read_obj(GuestAddr(u64::from(addr)))?)
    }

    /// Reads an argument the tender answers in place: it must be writable
    /// by the service, and the handle returned is what `write_arg` takes.
    fn read_arg_mut<T: Pod>(&self, addr: u32) -> Result<(Writable, T), ArgError> {
        let to = self.writable(u64::from(addr), std::mem::size_of::<T>() as u64)?;
        Ok((to, self.mem.read_obj(GuestAddr(to.addr))?))
    }

    fn write_arg<T: Pod>(&self, to: Writable, value: &T) -> Result<(), ArgError> {
        self.write_obj(to, 0, value)
    }

    fn write_obj<T: Pod>(&self, to: Writable, offset: u64, value: &T) -> Result<(), ArgError> {
        let size = std::mem::size_of::<T>() as u64;
        if offset.checked_add(size).is_none_or(|end| end > to.len) {
            return Err(ArgError::NotUser { addr: to.addr.saturating_add(offset), len: size, write: true });
        }
        Ok(self.mem.write_obj(GuestAddr(to.addr + offset), value)?)
    }

    fn io_out(&mut self, port: u16, value: Option<u32>) -> Flow {
        if port == FAULT_PORT {
            self.stats.exit("fault");
            // Only the supervisor can use this port (ring 3's I/O bitmap
            // keeps it closed); the frame is on the supervisor's stack, so
            // it is only range-checked.
            let Some(addr) = value else {
                return GuestError::WrongWidth("fault report").into();
            };
            return match self.mem.read_obj::<FaultFrame>(GuestAddr(u64::from(addr))) {
                Ok(frame) => {
                    let report = fault::describe(&frame, self.image, self.regions, self.mem.size());
                    Flow::End(Outcome::Fault { frame, report })
                }
                Err(e) => GuestError::FaultReport(e).into(),
            };
        }
        let call = port.checked_sub(HYPERCALL_PORT_BASE).and_then(Hypercall::from_number);
        let Some(call) = call else {
            self.stats.exit("bad-port");
            return GuestError::UnknownPort(port).into();
        };
        self.stats.exit(call.name());
        let Some(arg) = value else {
            return GuestError::WrongWidth(call.name()).into();
        };
        let result = match call {
            Hypercall::NetWrite | Hypercall::NetRead | Hypercall::NetNotify => self.net_call(call, arg),
            Hypercall::Poll => self.poll(arg),
            _ => self.hypercall(call, arg).map(Ok),
        };
        match result {
            Ok(Ok(flow)) => flow,
            Ok(Err(e)) => e.into(),
            Err(source) => GuestError::BadArgument { call: call.name(), addr: arg, source }.into(),
        }
    }

    /// `Poll`: sleep until a NIC has frames or the timeout passes.
    fn poll(&mut self, arg: u32) -> Result<Result<Flow, GuestError>, ArgError> {
        let (to, mut a): (_, PollArgs) = self.read_arg_mut(arg)?;
        // Waiting forever without devices is allowed: a stop request (or
        // --timeout) still ends the wait.
        let mut wait = (a.timeout_nanos != u64::MAX).then(|| Duration::from_nanos(a.timeout_nanos));
        if let Some((deadline, _)) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if wait.is_none_or(|w| left < w) {
                wait = Some(left);
            }
        }
        let interest = a.ready;
        let ready = match self.wait_for_frames(wait, interest) {
            Ok(ready) => ready,
            Err(e) => return Ok(Err(e)),
        };
        // The wait can end early (a notification for frames the guest took
        // already, a signal): only a deadline that really passed ends the
        // guest.
        if let Some((deadline, limit)) = self.deadline
            && ready == 0
            && Instant::now() >= deadline
        {
            return Ok(Ok(Flow::End(Outcome::Timeout(limit))));
        }
        a.ready = ready;
        self.write_arg(to, &a)?;
        Ok(Ok(Flow::Continue))
    }

    /// Blocks up to `wait` (`None`: forever) for frames on the NICs in
    /// `interest`; returns those that have some. Frames on other NICs never
    /// end the wait (nobody in the guest waits for them). A stop request or
    /// the end of the guest (the monitor's eventfd) ends it early.
    fn wait_for_frames(&mut self, wait: Option<Duration>, interest: u64) -> Result<u64, GuestError> {
        let ring_error = |e: net::NicRingError| GuestError::Frame { nic: e.nic, source: FrameError::Ring(e.error) };
        let wake = self.monitor.wake.as_raw_fd();
        let nonblocking = wait.is_some_and(|w| w.is_zero());
        let mut fds: Vec<i32> = Vec::new();
        if !self.rings {
            fds = self
                .nics
                .iter()
                .enumerate()
                .filter(|(i, _)| interest & (1 << i) != 0)
                .filter_map(|(_, n)| n.tap())
                .map(|t| t.fd())
                .collect();
            let taps = fds.len();
            fds.push(wake);
            let ready = crate::tap::wait_readable(&fds, wait).map_err(|e| GuestError::Frame {
                nic: self.nics.first().map_or_else(|| "(none)".into(), |n| n.name.clone()),
                source: FrameError::Host(e.to_string()),
            })?;
            if ready & (1 << taps) != 0 {
                let _ = self.monitor.wake.read();
            }
            // Bit i of `ready` is the i-th NIC of interest: map it back.
            let mut out = 0;
            let mut k = 0;
            for i in 0..self.nics.len() {
                if interest & (1 << i) != 0 && self.nics[i].tap().is_some() {
                    if ready & (1 << k) != 0 {
                        out |= 1 << i;
                    }
                    k += 1;
                }
            }
            return Ok(out);
        }
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let ready = net::rx_ready(self.nics, self.mem).map_err(ring_error)? & interest;
            if ready != 0 || nonblocking {
                return Ok(ready);
            }
            if net::tx_pending(self.nics, self.mem).map_err(ring_error)? {
                let _ = self.io.doorbell.write(1);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(0);
            }
            fds.clear();
            fds.push(wake);
            if interest != 0 {
                fds.push(self.io.rx_notify.as_raw_fd());
            }
            self.io.guest_waiting.store(interest, Ordering::SeqCst);
            // Pairs with the I/O thread's fence between publishing frames and
            // reading `guest_waiting`: one of the two sees the other.
            fence(Ordering::SeqCst);
            let ready = net::rx_ready(self.nics, self.mem).map_err(ring_error)? & interest;
            let woke = if ready == 0 { crate::tap::wait_readable(&fds, left).unwrap_or(0) } else { 0 };
            self.io.guest_waiting.store(0, Ordering::SeqCst);
            let _ = self.io.rx_notify.read();
            if woke & 1 != 0 {
                // Asked to stop, or ending: let the guest (or the serve
                // loop) see it now.
                let _ = self.monitor.wake.read();
                return Ok(net::rx_ready(self.nics, self.mem).map_err(ring_error)? & interest);
            }
        }
    }

    fn nic(&self, call: Hypercall, device: u32, rings: bool) -> Result<&Nic, GuestError> {
        let nic = self.nics.get(device as usize).ok_or(GuestError::NoDevice { call: call.name(), device })?;
        if self.rings != rings {
            return Err(GuestError::WrongMode { call: call.name(), nic: nic.name.clone(), rings: self.rings });
        }
        Ok(nic)
    }

    /// `NetRead`, `NetWrite` and `NetNotify`.
    fn net_call(&mut self, call: Hypercall, arg: u32) -> Result<Result<Flow, GuestError>, ArgError> {
        if call == Hypercall::NetNotify {
            let a: NetNotifyArgs = self.read_arg(arg)?;
            return Ok(self.nic(call, a.device, true).map(|_| {
                let _ = self.io.doorbell.write(1);
                Flow::Continue
            }));
        }
        let (args_to, mut a): (_, NetIoArgs) = self.read_arg_mut(arg)?;
        let nic = match self.nic(call, a.device, false) {
            Ok(nic) => nic,
            Err(e) => return Ok(Err(e)),
        };
        // Without rings every NIC has a TAP device (user networking needs
        // rings, which `net::attach` enforces).
        let Some(tap) = nic.tap() else {
            return Ok(Err(GuestError::WrongMode { call: call.name(), nic: nic.name.clone(), rings: true }));
        };
        if a.count > NET_BATCH_MAX {
            return Ok(Err(GuestError::Batch { call: call.name(), count: a.count }));
        }
        let entry = std::mem::size_of::<NetFrame>() as u64;
        let list_len = u64::from(a.count) * entry;
        let list = if call == Hypercall::NetRead {
            Some(self.writable(a.frames, list_len)?)
        } else {
            self.check_user(a.frames, list_len, false)?;
            None
        };
        let frame_error = |source| GuestError::Frame { nic: nic.name.clone(), source };
        let mut done = 0;
        let mut buf = Box::new([0u8; 65536]);
        for i in 0..u64::from(a.count) {
            let mut f: NetFrame = self.mem.read_obj(GuestAddr(a.frames + i * entry))?;
            if call == Hypercall::NetWrite {
                if let Err(e) = net::check_frame_len(f.len) {
                    return Ok(Err(frame_error(e)));
                }
                self.check_user(f.addr, u64::from(f.len), false)?;
                if let Err(e) = net::send_to_host(tap, self.mem, f.addr, f.len, &self.io.counters) {
                    return Ok(Err(frame_error(e)));
                }
            } else {
                if f.cap < NET_FRAME_MAX {
                    return Ok(Err(frame_error(FrameError::Buffer(f.cap))));
                }
                let frame = self.writable(f.addr, u64::from(f.cap))?;
                let n = match net::recv_from_host(tap, &mut buf, &self.io.counters) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => return Ok(Err(frame_error(e))),
                };
                self.write_user(frame, 0, &buf[..n])?;
                f.len = n as u32;
                if let Some(list) = list {
                    self.write_obj(list, i * entry, &f)?;
                }
                self.io.counters.rx.fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
        }
        a.done = done;
        self.write_arg(args_to, &a)?;
        Ok(Ok(Flow::Continue))
    }

    fn hypercall(&mut self, call: Hypercall, arg: u32) -> Result<Flow, ArgError> {
        Ok(match call {
            Hypercall::Walltime => {
                let (to, mut a): (_, WalltimeArgs) = self.read_arg_mut(arg)?;
                let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                a.nanos = wall.as_nanos() as u64;
                self.write_arg(to, &a)?;
                Flow::Continue
            }
            // The console was drained when this exit began.
            Hypercall::ConsoleFlush => Flow::Continue,
            Hypercall::Exit => {
                let a: ExitArgs = self.read_arg(arg)?;
                if a.status > u32::from(exit::SERVICE_MAX) || a.reserved != 0 {
                    return Ok(GuestError::BadExitStatus(a.status).into());
                }
                Flow::End(Outcome::Exited(a.status as u8))
            }
            Hypercall::Poll | Hypercall::NetWrite | Hypercall::NetRead | Hypercall::NetNotify => {
                unreachable!("dispatched by io_out")
            }
            Hypercall::Abort => {
                let a: AbortArgs = self.read_arg(arg)?;
                let Some(reason) = AbortReason::from_raw(a.reason) else {
                    return Ok(GuestError::UnknownAbortReason(a.reason).into());
                };
                if a.message_len > ABORT_MESSAGE_MAX {
                    return Ok(GuestError::MessageTooLong(a.message_len).into());
                }
                self.check_user(a.message, u64::from(a.message_len), false)?;
                let bytes = self.mem.read_vec(GuestAddr(a.message), u64::from(a.message_len))?;
                Flow::End(Outcome::Aborted { reason, message: String::from_utf8_lossy(&bytes).into_owned() })
            }
        })
    }
}

fn unexpected(exit: Exit) -> VmFailure {
    match exit {
        Exit::Mmio { addr, write } => VmFailure::Unbacked { addr, write },
        Exit::Hlt => VmFailure::Halted,
        Exit::Shutdown => VmFailure::TripleFault,
        Exit::InternalError { suberror } => VmFailure::Internal { suberror },
        Exit::FailEntry(reason) => VmFailure::EntryFailed(reason),
        Exit::Other(s) => VmFailure::UnexpectedExit(s),
        e @ (Exit::IoOut { .. } | Exit::IoIn(_) | Exit::Interrupted) => VmFailure::UnexpectedExit(format!("{e:?}")),
    }
}
