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

/// The process's standard output as the console's destination: each write
/// is one `write(2)`, so a signal interrupts a write blocked on a full pipe
/// (std's `Stdout` retries it, and would hold the tender there).
pub struct Stdout(std::fs::File);

impl Stdout {
    /// A second descriptor for standard output.
    pub fn new() -> std::io::Result<Stdout> {
        use std::os::fd::AsFd;
        Ok(Stdout(std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?)))
    }
}

impl Stdout {
    /// Its descriptor.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies every pending byte of the ring at `shared` to `out`, and marks
/// them consumed. Returns the number of bytes. A write interrupted by a
/// signal is retried unless `give_up()` says the guest is being ended;
/// then, or if `out` fails (a closed pipe), the bytes are dropped: the
/// service goes on, and the tender never hangs on its console.
pub fn drain(
    mem: &GuestMemory,
    shared: u64,
    out: &mut dyn Write,
    give_up: &dyn Fn() -> bool,
) -> Result<usize, ConsoleError> {
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
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match out.write(rest) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && !give_up() => {}
            Err(_) => break,
        }
    }
    let _ = out.flush();
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
        assert_eq!(drain(&mem, shared, &mut out, &|| false).unwrap(), 5);
        assert_eq!(out, b"abcde");
        assert_eq!(drain(&mem, shared, &mut out, &|| false).unwrap(), 0);
        assert_eq!(mem.read_obj::<u32>(GuestAddr(shared + 4)).unwrap(), tail.wrapping_add(5));
    }

    #[test]
    fn a_head_too_far_ahead_is_an_error() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        mem.write_obj(GuestAddr(0x4000), &(CONSOLE_RING_SIZE as u32 + 1)).unwrap();
        assert!(matches!(drain(&mem, 0x4000, &mut Vec::new(), &|| false), Err(ConsoleError::Corrupt { .. })));
    }
}
