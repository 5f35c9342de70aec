//! The hvt platform: the guest's side of the tender's hypercalls.
//!
//! Each call is one `out` from ring 3 (see [`skiff_abi`]); the argument
//! structure lives on the caller's stack, which is below 4 GiB like all
//! guest memory.

use crate::arch::cpu::hypercall;
use core::time::Duration;
use skiff_abi::{ABORT_MESSAGE_MAX, AbortArgs, AbortReason, ExitArgs, Hypercall, PollArgs, WalltimeArgs};

fn addr_of<T>(arg: &mut T) -> u32 {
    // Guest memory is at most 3 GiB (abi::layout::MEM_MAX), so every
    // address fits in 32 bits.
    arg as *mut T as usize as u32
}

/// Blocks until a device is ready or `timeout` passes (`None`: wait for a
/// device only). Returns the ready set, one bit per device.
pub fn poll(timeout: Option<Duration>) -> u64 {
    let timeout_nanos = match timeout {
        Some(t) => u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1),
        None => u64::MAX,
    };
    let mut args = PollArgs { timeout_nanos, ready: 0 };
    // SAFETY: `args` is a live PollArgs for the duration of the call.
    unsafe { hypercall(Hypercall::Poll, addr_of(&mut args)) };
    args.ready
}

/// The wall clock as the tender reads it now (ns since the UNIX epoch).
pub fn walltime() -> u64 {
    let mut args = WalltimeArgs::default();
    // SAFETY: `args` is a live WalltimeArgs for the duration of the call.
    unsafe { hypercall(Hypercall::Walltime, addr_of(&mut args)) };
    args.nanos
}

/// Asks the tender to drain the console ring.
pub fn console_flush() {
    // SAFETY: ConsoleFlush takes no argument.
    unsafe { hypercall(Hypercall::ConsoleFlush, 0) };
}

/// Ends the guest with `status` (`0..=99`).
pub fn exit(status: u8) -> ! {
    let mut args = ExitArgs { status: u32::from(status), reserved: 0 };
    // SAFETY: `args` is a live ExitArgs; the call does not return.
    unsafe { hypercall(Hypercall::Exit, addr_of(&mut args)) };
    halt_forever()
}

/// Ends the guest for `reason` with `message` (truncated to the ABI limit
/// on a character boundary).
pub fn abort(reason: AbortReason, message: &str) -> ! {
    let mut len = message.len().min(ABORT_MESSAGE_MAX as usize);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    let mut args = AbortArgs { reason: reason as u32, message_len: len as u32, message: message.as_ptr() as u64 };
    // SAFETY: `args` is live and points at `len` readable bytes of
    // `message`; the call does not return.
    unsafe { hypercall(Hypercall::Abort, addr_of(&mut args)) };
    halt_forever()
}

/// Reached only if the tender resumed a guest it should have ended: the
/// invalid-opcode fault makes the tender report it.
fn halt_forever() -> ! {
    crate::arch::cpu::trap()
}

/// The executor's view of this platform.
pub struct Hvt;

impl crate::executor::Platform for Hvt {
    fn poll(&mut self, timeout: Option<Duration>) -> u64 {
        poll(timeout)
    }

    fn has_devices(&self) -> bool {
        false
    }
}
