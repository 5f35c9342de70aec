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
use crate::net::{self, NicError, NicRings};
use crate::netio::IoShared;
use crate::paging::Region;
use crate::profile::{self, Sampler};
use crate::stats::Stats;
use crate::{Outcome, console, fault};
use skiff_abi::{
    ABORT_MESSAGE_MAX, AbortArgs, AbortReason, BlockNotifyArgs, ExitArgs, FAULT_PORT, FaultFrame, HYPERCALL_PORT_BASE,
    Hypercall, NetNotifyArgs, PollArgs, WalltimeArgs, exit,
};
use std::io::Write;
use std::marker::PhantomData;
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
    /// Process mode: a call number that names no hypercall.
    #[error("the guest called hypercall number {0}, which does not exist")]
    UnknownCall(u64),
    /// Process mode: an argument address wider than the 32 bits of the
    /// VM's `out` (no guest memory is there).
    #[error("{call}: argument address {arg:#x} is not a 32-bit guest address")]
    WideArgument {
        /// The call.
        call: &'static str,
        /// The address given.
        arg: u64,
    },
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
    /// A NIC's ring is broken, or its host end failed.
    #[error(transparent)]
    Nic(#[from] NicError),
    /// A disk request the guest may not make.
    #[error(transparent)]
    Disk(#[from] crate::disk::RequestError),
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

/// An argument of type `T` checked writable for the service
/// ([`Guest::read_arg_mut`]); hypercall handlers write to the guest only
/// through one.
struct Writable<T> {
    addr: u64,
    kind: PhantomData<T>,
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

/// A guest's CPU: a KVM vCPU, or in process mode the tender's own thread
/// running the guest's code ([`crate::process`]). Either stops at the
/// guest's next hypercall, exception or interruption.
pub trait RunGuest {
    /// Runs the guest until it stops.
    fn run(&mut self) -> Result<Exit, KvmError>;
    /// The guest's TSC now, for `--stats`.
    fn guest_tsc(&self) -> Option<u64>;
    /// The stopped guest's `rip` and `rbp`, for a profile's sample (process
    /// mode samples in its signal handler instead: `None`).
    fn ip_and_frame(&self) -> Option<(u64, u64)> {
        None
    }
}

impl RunGuest for Vm {
    fn run(&mut self) -> Result<Exit, KvmError> {
        Vm::run(self)
    }

    fn guest_tsc(&self) -> Option<u64> {
        Vm::guest_tsc(self)
    }

    fn ip_and_frame(&self) -> Option<(u64, u64)> {
        Vm::ip_and_frame(self)
    }
}

/// The guest while it runs: what the hypercall handlers need.
pub(crate) struct Guest<'a> {
    pub mem: &'a GuestMemory,
    /// The shared area's guest address.
    pub shared: u64,
    pub image: &'a Image,
    pub regions: &'a [Region],
    pub console: &'a mut dyn Write,
    pub stats: &'a mut Stats,
    /// `--timeout`: when, and how long it was.
    pub deadline: Option<(Instant, Duration)>,
    /// The rings of the attached NICs.
    pub nics: &'a [NicRings],
    /// The attached disks (device indices `nics.len()..`).
    pub disks: &'a [crate::disk::Disk],
    /// The disks' bounce buffer.
    pub bounce: Vec<u8>,
    /// State shared with the network I/O thread.
    pub io: &'a IoShared,
    /// The timeout and stop signals.
    pub monitor: &'a MonitorState,
    /// `--profile`: told what the vCPU thread does, asks for samples.
    pub sampler: Option<&'a Sampler>,
}

impl Guest<'_> {
    /// Runs the vCPU until the guest ends.
    pub fn serve(&mut self, vm: &mut dyn RunGuest) -> Outcome {
        loop {
            if let Some(ending) = self.monitor.ending() {
                let _ = self.drain_console();
                return match ending {
                    Ending::Timeout => Outcome::Timeout(self.deadline.map(|d| d.1).unwrap_or_default()),
                    Ending::Stopped => Outcome::Stopped(self.monitor.stop_signal().map_or("a signal", |s| s.name())),
                };
            }
            self.phase(profile::PHASE_GUEST);
            let exit = vm.run();
            self.phase(profile::PHASE_TENDER);
            let exit = match exit {
                Ok(e) => e,
                Err(e) => return Outcome::VmFailure(e.into()),
            };
            if let Err(e) = self.drain_console() {
                return Outcome::BadHypercall(e);
            }
            if let Some(e) = self.io.take_error() {
                return Outcome::BadHypercall(e.into());
            }
            let flow = match exit {
                Exit::IoOut { port, value } => self.io_out(port, value),
                Exit::Call { nr, arg } => self.call(nr, arg),
                Exit::Fault(frame) => {
                    self.stats.exit("fault");
                    self.fault(frame)
                }
                Exit::Interrupted => {
                    match self.sampler.filter(|s| s.take_request()) {
                        Some(sampler) => {
                            self.stats.exit("profile");
                            if let Some((rip, rbp)) = vm.ip_and_frame() {
                                sampler.record(self.mem, rip, rbp);
                            }
                        }
                        None => self.stats.exit("interrupted"),
                    }
                    Flow::Continue
                }
                Exit::IoIn(port) => {
                    self.stats.exit("bad-port");
                    GuestError::PortRead(port).into()
                }
                Exit::Failed(failure) => {
                    self.stats.exit("vm-failure");
                    Flow::End(Outcome::VmFailure(failure))
                }
            };
            if let Flow::End(outcome) = flow {
                return outcome;
            }
        }
    }

    /// Tells the profiler, if any, what the vCPU thread does now.
    fn phase(&self, phase: u32) {
        if let Some(s) = self.sampler {
            s.set_phase(phase);
        }
    }

    fn drain_console(&mut self) -> Result<(), GuestError> {
        let monitor = self.monitor;
        let n = console::drain(self.mem, self.shared, self.console, &|| monitor.ending().is_some())?;
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

    /// Reads an argument the service may read.
    fn read_arg<T: Pod>(&self, addr: u32) -> Result<T, ArgError> {
        self.check_user(u64::from(addr), std::mem::size_of::<T>() as u64, false)?;
        Ok(self.mem.read_obj(GuestAddr(u64::from(addr)))?)
    }

    /// Reads an argument the tender answers in place: it must be writable
    /// by the service, and the handle returned is what `write_arg` takes.
    fn read_arg_mut<T: Pod>(&self, addr: u32) -> Result<(Writable<T>, T), ArgError> {
        self.check_user(u64::from(addr), std::mem::size_of::<T>() as u64, true)?;
        let value = self.mem.read_obj(GuestAddr(u64::from(addr)))?;
        Ok((Writable { addr: u64::from(addr), kind: PhantomData }, value))
    }

    /// Writes an argument back, through the handle `read_arg_mut` gave.
    fn write_arg<T: Pod>(&self, to: Writable<T>, value: &T) -> Result<(), ArgError> {
        Ok(self.mem.write_obj(GuestAddr(to.addr), value)?)
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
                Ok(frame) => self.fault(frame),
                Err(e) => GuestError::FaultReport(e).into(),
            };
        }
        let call = port.checked_sub(HYPERCALL_PORT_BASE).and_then(Hypercall::from_number);
        let Some(call) = call else {
            self.stats.exit("bad-port");
            return GuestError::UnknownPort(port).into();
        };
        self.stats.exit(call.name());
        self.phase(profile::PHASE_HYPERCALL + call as u32);
        let Some(arg) = value else {
            return GuestError::WrongWidth(call.name()).into();
        };
        self.checked_hypercall(call, arg)
    }

    /// Process mode: a call into the tender's hypercall entry. The same
    /// calls and checks as an `out`, after the number and the address are
    /// narrowed to what an `out` can carry.
    fn call(&mut self, nr: u64, arg: u64) -> Flow {
        let Some(call) = u16::try_from(nr).ok().and_then(Hypercall::from_number) else {
            self.stats.exit("bad-call");
            return GuestError::UnknownCall(nr).into();
        };
        self.stats.exit(call.name());
        self.phase(profile::PHASE_HYPERCALL + call as u32);
        let Ok(arg) = u32::try_from(arg) else {
            return GuestError::WideArgument { call: call.name(), arg }.into();
        };
        self.checked_hypercall(call, arg)
    }

    fn checked_hypercall(&mut self, call: Hypercall, arg: u32) -> Flow {
        self.hypercall(call, arg)
            .unwrap_or_else(|source| GuestError::BadArgument { call: call.name(), addr: arg, source }.into())
    }

    /// A CPU exception: the report, and the end.
    fn fault(&self, frame: FaultFrame) -> Flow {
        let report = fault::describe(&frame, self.image, self.regions, self.mem.size());
        Flow::End(Outcome::Fault { frame, report })
    }

    /// `Poll`: sleep until a NIC has frames or the timeout passes.
    fn poll(&mut self, arg: u32) -> Result<Flow, ArgError> {
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
            Err(e) => return Ok(e.into()),
        };
        // The wait can end early (a notification for frames the guest took
        // already, a signal): only a deadline that really passed ends the
        // guest.
        if let Some((deadline, limit)) = self.deadline
            && ready == 0
            && Instant::now() >= deadline
        {
            return Ok(Flow::End(Outcome::Timeout(limit)));
        }
        a.ready = ready;
        self.write_arg(to, &a)?;
        Ok(Flow::Continue)
    }

    /// Blocks up to `wait` (`None`: forever) for frames on the NICs in
    /// `interest`; returns those that have some. Frames on other NICs never
    /// end the wait (nobody in the guest waits for them). A stop request or
    /// the end of the guest (the monitor's eventfd) ends it early, and so
    /// does a broken ring the I/O thread found.
    fn wait_for_frames(&mut self, wait: Option<Duration>, interest: u64) -> Result<u64, GuestError> {
        let fds = [self.monitor.wake.as_raw_fd(), self.io.rx_notify.as_raw_fd()];
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let ready = net::rx_ready(self.nics, self.mem)? & interest;
            if ready != 0 || wait.is_some_and(|w| w.is_zero()) {
                return Ok(ready);
            }
            for (index, rings) in self.nics.iter().enumerate() {
                if rings.tx.pending(self.mem).map_err(|e| rings.error(e))? > 0 {
                    self.io.transmit_now(index, rings, self.mem)?;
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(0);
            }
            self.io.guest_waiting.store(interest, Ordering::SeqCst);
            // Pairs with the I/O thread's fence between publishing frames and
            // reading `guest_waiting`: one of the two sees the other.
            fence(Ordering::SeqCst);
            let ready = net::rx_ready(self.nics, self.mem)? & interest;
            let woke = if ready == 0 {
                self.phase(profile::PHASE_HALTED);
                let asleep = Instant::now();
                let woke = crate::tap::wait_readable(&fds, left).unwrap_or(0);
                self.stats.halted += asleep.elapsed();
                self.stats.sleeps += 1;
                self.phase(profile::PHASE_HYPERCALL + Hypercall::Poll as u32);
                woke
            } else {
                0
            };
            self.io.guest_waiting.store(0, Ordering::SeqCst);
            let _ = self.io.rx_notify.read();
            if let Some(e) = self.io.take_error() {
                return Err(e.into());
            }
            if woke & 1 != 0 {
                // Asked to stop, or ending: let the guest (or the serve
                // loop) see it now.
                let _ = self.monitor.wake.read();
                return Ok(net::rx_ready(self.nics, self.mem)? & interest);
            }
        }
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
            Hypercall::Poll => self.poll(arg)?,
            Hypercall::NetNotify => {
                let a: NetNotifyArgs = self.read_arg(arg)?;
                if a.device as usize >= self.nics.len() {
                    return Ok(GuestError::NoDevice { call: call.name(), device: a.device }.into());
                }
                let index = a.device as usize;
                if let Err(e) = self.io.transmit_now(index, &self.nics[index], self.mem) {
                    return Ok(GuestError::from(e).into());
                }
                Flow::Continue
            }
            Hypercall::BlockNotify => {
                let a: BlockNotifyArgs = self.read_arg(arg)?;
                let disk = (a.device as usize).checked_sub(self.nics.len()).and_then(|i| self.disks.get(i));
                let Some(disk) = disk.filter(|_| a.reserved == 0) else {
                    return Ok(GuestError::NoDevice { call: call.name(), device: a.device }.into());
                };
                let mut bounce = std::mem::take(&mut self.bounce);
                let user = |addr: u64, len: u64, write: bool| self.check_user(addr, len, write).is_ok();
                let served = crate::disk::serve(disk, self.mem, &user, &mut bounce);
                self.bounce = bounce;
                match served {
                    Ok(n) => {
                        self.stats.disk_requests += u64::from(n);
                        Flow::Continue
                    }
                    Err(e) => GuestError::Disk(e).into(),
                }
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
