//! The guest side of the console: under the tender a byte ring in the
//! shared area ([`ConsoleRing`]); under the PVH entry a buffer in front of
//! the 16550 serial port ([`SerialBuffer`]).
//!
//! Writing a line costs no exit: bytes go into the ring, and the tender
//! drains it at the guest's next exit (a poll, an exit, a fault report).
//! Only when the ring is full does the guest ask for a drain with the
//! `ConsoleFlush` hypercall, so a burst of lines costs at most one exit per
//! [`skiff_abi::CONSOLE_RING_SIZE`] bytes. The protocol is described on
//! [`skiff_abi::SharedArea`].

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use skiff_abi::{CONSOLE_RING_SIZE, SHARED_CONSOLE_DATA, SHARED_CONSOLE_HEAD, SHARED_CONSOLE_TAIL, SharedArea};

/// The producer end of the console ring.
pub struct ConsoleRing {
    area: NonNull<SharedArea>,
    flush: fn(),
}

// SAFETY: the ring is only a pointer to the shared area, which lives for
// the whole life of the guest; its indices are accessed atomically, and
// the single-producer rule is kept by the owner (the logger's lock).
unsafe impl Send for ConsoleRing {}

impl ConsoleRing {
    /// Wraps the shared area at `area`. `flush` must make the consumer
    /// drain the ring (the `ConsoleFlush` hypercall in a guest).
    ///
    /// # Safety
    /// `area` must point to a [`SharedArea`] that stays valid and writable
    /// for the life of the returned value, whose `console_tail` only the
    /// consumer writes, and of which this is the only producer.
    pub const unsafe fn new(area: NonNull<SharedArea>, flush: fn()) -> ConsoleRing {
        ConsoleRing { area, flush }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is the offset of one of the two `u32` indices of
        // the area, which is valid per `new`'s contract and 4-byte aligned;
        // all accesses to the indices from this side are atomic.
        unsafe { AtomicU32::from_ptr(self.area.as_ptr().cast::<u8>().add(offset).cast::<u32>()) }
    }

    /// Appends `bytes`, asking the consumer to drain when the ring is full.
    /// Bytes are dropped only if a drain request frees no space (a broken
    /// consumer), so the guest can never hang on its console.
    pub fn write(&self, mut bytes: &[u8]) {
        let head_index = self.index(SHARED_CONSOLE_HEAD);
        let tail_index = self.index(SHARED_CONSOLE_TAIL);
        let mut flushed_without_progress = false;
        while !bytes.is_empty() {
            let head = head_index.load(Ordering::Relaxed);
            let tail = tail_index.load(Ordering::Acquire);
            let used = head.wrapping_sub(tail) as usize;
            let free = CONSOLE_RING_SIZE.saturating_sub(used);
            if free == 0 {
                if flushed_without_progress {
                    return;
                }
                (self.flush)();
                flushed_without_progress = true;
                continue;
            }
            flushed_without_progress = false;
            let n = free.min(bytes.len());
            let start = head as usize % CONSOLE_RING_SIZE;
            let first = n.min(CONSOLE_RING_SIZE - start);
            // SAFETY: the data array is CONSOLE_RING_SIZE bytes at
            // SHARED_CONSOLE_DATA inside the valid area; `start + first` and
            // `n - first` are within it, and the consumer does not read the
            // free part of the ring until `head` is published below.
            unsafe {
                let data = self.area.as_ptr().cast::<u8>().add(SHARED_CONSOLE_DATA);
                core::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(start), first);
                core::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, n - first);
            }
            head_index.store(head.wrapping_add(n as u32), Ordering::Release);
            bytes = &bytes[n..];
        }
    }

    /// Asks the consumer to drain the ring now.
    pub fn flush(&self) {
        (self.flush)()
    }
}

impl core::fmt::Write for &ConsoleRing {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// Where log lines go.
#[allow(clippy::large_enum_variant, reason = "one value, held in the logger's static and never moved")]
pub enum Console {
    /// The tender's shared-memory ring.
    Ring(ConsoleRing),
    /// A serial port, buffered.
    Serial(SerialBuffer),
}

impl Console {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        match self {
            Console::Ring(ring) => ring.write(bytes),
            Console::Serial(serial) => serial.write(bytes),
        }
    }

    /// Sends what is buffered: the tender drains its ring, the serial
    /// buffer goes out on the port.
    pub fn flush(&mut self) {
        match self {
            Console::Ring(ring) => ring.flush(),
            Console::Serial(serial) => serial.flush(),
        }
    }
}

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// Bytes of the serial console's buffer.
pub const SERIAL_BUFFER_SIZE: usize = 4096;

/// A console on a serial port: bytes collect in a buffer that goes out
/// (through `send`, which writes them to the port) when it is full, when
/// the guest goes idle, exits, panics or faults. Under a hypervisor every
/// port write is a VM exit, so a burst of lines costs the service nothing
/// until it waits, as the tender's ring does.
pub struct SerialBuffer {
    bytes: [u8; SERIAL_BUFFER_SIZE],
    len: usize,
    send: fn(&[u8]),
}

impl SerialBuffer {
    /// An empty buffer in front of `send`.
    pub const fn new(send: fn(&[u8])) -> SerialBuffer {
        SerialBuffer { bytes: [0; SERIAL_BUFFER_SIZE], len: 0, send }
    }

    /// Appends `bytes`, sending the buffer whenever it fills.
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == SERIAL_BUFFER_SIZE {
                self.flush();
            }
            let n = (SERIAL_BUFFER_SIZE - self.len).min(bytes.len());
            self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.send)(&self.bytes[..self.len]);
            self.len = 0;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::boxed::Box;
    use std::cell::RefCell;
    use std::vec::Vec;

    std::thread_local! {
        pub(crate) static AREA: RefCell<Option<NonNull<SharedArea>>> = const { RefCell::new(None) };
        pub(crate) static DRAINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static FLUSHES: RefCell<usize> = const { RefCell::new(0) };
    }

    /// What the tender does: consume everything between tail and head.
    pub(crate) fn drain() {
        AREA.with(|a| {
            let area = a.borrow().expect("area installed");
            // SAFETY: the test owns the area (leaked box) for the thread.
            let shared = unsafe { &mut *area.as_ptr() };
            while shared.console_tail != shared.console_head {
                let i = shared.console_tail as usize % CONSOLE_RING_SIZE;
                DRAINED.with(|d| d.borrow_mut().push(shared.console[i]));
                shared.console_tail = shared.console_tail.wrapping_add(1);
            }
        });
        FLUSHES.with(|f| *f.borrow_mut() += 1);
    }

    fn never_drains() {}

    pub(crate) fn new_area() -> NonNull<SharedArea> {
        let area = Box::new(SharedArea {
            console_head: 0,
            console_tail: 0,
            tsc_ring3_entry: 0,
            tsc_main: 0,
            stop_requested: 0,
            reserved0: 0,
            spin_found: 0,
            spin_missed: 0,
            reserved: [0; 2],
            console: [0; CONSOLE_RING_SIZE],
        });
        let ptr = NonNull::from(Box::leak(area));
        AREA.with(|a| *a.borrow_mut() = Some(ptr));
        DRAINED.with(|d| d.borrow_mut().clear());
        FLUSHES.with(|f| *f.borrow_mut() = 0);
        ptr
    }

    std::thread_local! {
        static SENT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    fn record(bytes: &[u8]) {
        SENT.with(|s| s.borrow_mut().push(bytes.to_vec()));
    }

    #[test]
    fn the_serial_buffer_sends_when_full_or_flushed_and_loses_nothing() {
        SENT.with(|s| s.borrow_mut().clear());
        let mut serial = Console::Serial(SerialBuffer::new(record));
        serial.write(b"line one\n");
        assert!(SENT.with(|s| s.borrow().is_empty()), "a short line waits in the buffer");
        let big: Vec<u8> = (0..SERIAL_BUFFER_SIZE * 2 + 5).map(|i| (i % 251) as u8).collect();
        serial.write(&big);
        assert_eq!(SENT.with(|s| s.borrow().len()), 2, "two full buffers went out");
        serial.flush();
        serial.flush();
        let sent = SENT.with(|s| s.borrow().clone());
        assert_eq!(sent.len(), 3, "an empty buffer sends nothing");
        assert!(sent[..2].iter().all(|c| c.len() == SERIAL_BUFFER_SIZE));
        let mut expected = b"line one\n".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(sent.concat(), expected);
    }

    #[test]
    fn small_writes_need_no_flush() {
        let area = new_area();
        // SAFETY: the area is leaked and used only by this thread.
        let ring = unsafe { ConsoleRing::new(area, drain) };
        ring.write(b"hello ");
        ring.write(b"world\n");
        assert_eq!(FLUSHES.with(|f| *f.borrow()), 0);
        drain();
        assert_eq!(DRAINED.with(|d| d.borrow().clone()), b"hello world\n");
    }

    #[test]
    fn a_full_ring_is_flushed_and_nothing_is_lost() {
        let area = new_area();
        // SAFETY: as above.
        let ring = unsafe { ConsoleRing::new(area, drain) };
        let big: Vec<u8> = (0..(CONSOLE_RING_SIZE * 3 + 17)).map(|i| (i % 251) as u8).collect();
        ring.write(&big[..100]);
        ring.write(&big[100..]);
        assert_eq!(FLUSHES.with(|f| *f.borrow()), 3);
        drain();
        assert_eq!(DRAINED.with(|d| d.borrow().clone()), big);
    }

    #[test]
    fn indices_wrap_around_u32() {
        let area = new_area();
        // SAFETY: the test owns the area.
        unsafe {
            (*area.as_ptr()).console_head = u32::MAX - 3;
            (*area.as_ptr()).console_tail = u32::MAX - 3;
        }
        // SAFETY: as above.
        let ring = unsafe { ConsoleRing::new(area, drain) };
        ring.write(b"wrapping!");
        drain();
        assert_eq!(DRAINED.with(|d| d.borrow().clone()), b"wrapping!");
    }

    #[test]
    fn a_consumer_that_never_drains_does_not_hang_the_writer() {
        let area = new_area();
        // SAFETY: as above.
        let ring = unsafe { ConsoleRing::new(area, never_drains) };
        let big = std::vec![b'x'; CONSOLE_RING_SIZE + 10];
        ring.write(&big);
        // SAFETY: the test owns the area.
        let head = unsafe { (*area.as_ptr()).console_head };
        assert_eq!(head as usize, CONSOLE_RING_SIZE);
    }
}
