//! The tender side of the console ring: drained on every exit.

use crate::guest_memory::{GuestAddr, GuestMemory, MemoryError};
use skiff_abi::{CONSOLE_RING_SIZE, SHARED_CONSOLE_DATA, SHARED_CONSOLE_HEAD, SHARED_CONSOLE_TAIL};
use std::io::Write;

/// The ring is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// The guest's head index is more than a ring ahead of the tail.
    #[error("console ring indices are inconsistent (head {head}, tail {tail}, ring size {CONSOLE_RING_SIZE})")]
    Corrupt {
        /// Guest's producer index.
        head: u32,
        /// Tender's consumer index.
        tail: u32,
    },
    /// The shared area is outside guest memory (a tender bug).
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Copies every pending byte of the ring at `shared` to `out`, and marks
/// them consumed. Returns the number of bytes.
pub fn drain(mem: &GuestMemory, shared: u64, out: &mut dyn Write) -> Result<usize, ConsoleError> {
    let head: u32 = mem.read_obj(GuestAddr(shared + SHARED_CONSOLE_HEAD as u64))?;
    let tail: u32 = mem.read_obj(GuestAddr(shared + SHARED_CONSOLE_TAIL as u64))?;
    let pending = head.wrapping_sub(tail) as usize;
    if pending == 0 {
        return Ok(0);
    }
    if pending > CONSOLE_RING_SIZE {
        return Err(ConsoleError::Corrupt { head, tail });
    }
    let data = shared + SHARED_CONSOLE_DATA as u64;
    let start = tail as usize % CONSOLE_RING_SIZE;
    let first = pending.min(CONSOLE_RING_SIZE - start);
    let mut buf = vec![0u8; pending];
    mem.read(GuestAddr(data + start as u64), &mut buf[..first])?;
    mem.read(GuestAddr(data), &mut buf[first..])?;
    // A closed stdout must not stop the guest: its output is lost, the
    // service goes on.
    let _ = out.write_all(&buf).and_then(|()| out.flush());
    mem.write_obj(GuestAddr(shared + SHARED_CONSOLE_TAIL as u64), &head)?;
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_wrapped_data_and_advances_the_tail() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let shared = 0x4000;
        let data = shared + SHARED_CONSOLE_DATA as u64;
        // Three bytes at the end of the ring, two at its start.
        mem.write(GuestAddr(data + CONSOLE_RING_SIZE as u64 - 3), b"abc").unwrap();
        mem.write(GuestAddr(data), b"de").unwrap();
        let tail = (CONSOLE_RING_SIZE as u32).wrapping_mul(7).wrapping_sub(3);
        mem.write_obj(GuestAddr(shared + 4), &tail).unwrap();
        mem.write_obj(GuestAddr(shared), &tail.wrapping_add(5)).unwrap();
        let mut out = Vec::new();
        assert_eq!(drain(&mem, shared, &mut out).unwrap(), 5);
        assert_eq!(out, b"abcde");
        assert_eq!(drain(&mem, shared, &mut out).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddr(shared + 4)).unwrap(), tail.wrapping_add(5));
    }

    #[test]
    fn a_head_too_far_ahead_is_an_error() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        mem.write_obj(GuestAddr(0x4000), &(CONSOLE_RING_SIZE as u32 + 1)).unwrap();
        assert!(matches!(drain(&mem, 0x4000, &mut Vec::new()), Err(ConsoleError::Corrupt { .. })));
    }
}
