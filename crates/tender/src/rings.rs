//! The tender's side of the shared-memory frame rings ([`skiff_abi::ring`]).
//!
//! A [`Ring`] is a view of one ring in guest memory: the tender produces
//! into a NIC's receive ring and consumes from its transmit ring. The guest
//! is untrusted, so every index it writes is checked: a producer more than
//! a ring ahead of the consumer, or a frame length out of range, is a
//! [`RingError`] that ends the guest.
//!
//! The protocol and its ordering (the guest's side is `skiff_rt::nic`):
//!
//! - Producer: write the slot (length word, then bytes), then store the
//!   producer index with `Release`. Consumer: load the producer index with
//!   `Acquire`, copy the slot out, then store the consumer index with
//!   `Release`; the producer loads it with `Acquire` before reusing a slot.
//!   So a slot is only ever read after it was published and only reused
//!   after it was released.
//! - The tender runs concurrently with the guest (the I/O thread), so slot
//!   bytes are copied with volatile accesses ([`GuestMemory`]) into host
//!   buffers, and the length word is read once and checked before the copy.
//!   A guest that writes a slot it has published races only with itself:
//!   its frame arrives garbled, as data.
//! - Sleep flags: a side about to sleep sets its flag (`CONSUMER_SLEEPING`
//!   on a transmit ring, `PRODUCER_WAITING` on a full receive ring), issues a
//!   `SeqCst` fence and looks at the ring once more; the other side, after
//!   publishing (or making room), issues a `SeqCst` fence and reads the flag.
//!   One of the two always sees the other, so no wake-up is lost; a wake-up
//!   is the doorbell (`NetNotify`).

use crate::guest_memory::{GuestAddr, GuestMemory, MemoryError};
use skiff_abi::{NET_FRAME_MAX, NET_FRAME_MIN, ring};
use std::sync::atomic::{AtomicU32, Ordering};

/// The guest broke the ring protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The producer index is more than a ring ahead of the consumer.
    #[error("{} ring indices are inconsistent (producer {producer}, consumer {consumer}, {slots} slots)", .ring.name())]
    Corrupt {
        /// Which ring.
        ring: Direction,
        /// Guest-written producer index.
        producer: u32,
        /// Tender-written consumer index.
        consumer: u32,
        /// Ring size.
        slots: u32,
    },
    /// A queued frame's length is impossible.
    #[error("a transmitted frame of {0} bytes is outside {NET_FRAME_MIN}..={NET_FRAME_MAX} bytes (MTU 1500)")]
    FrameLength(u32),
    /// The ring is outside guest memory (a tender bug).
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Which way a ring carries frames, seen from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Tender to guest: the tender produces, the guest consumes.
    Receive,
    /// Guest to tender: the guest produces, the tender consumes.
    Transmit,
}

impl Direction {
    /// "receive" or "transmit".
    pub fn name(self) -> &'static str {
        match self {
            Direction::Receive => "receive",
            Direction::Transmit => "transmit",
        }
    }
}

/// One ring in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    base: u64,
    slots: u32,
    direction: Direction,
}

impl Ring {
    /// The ring at `base` with `slots` slots (a power of two).
    pub fn new(base: u64, slots: u32, direction: Direction) -> Ring {
        debug_assert!(slots.is_power_of_two());
        Ring { base, slots, direction }
    }

    /// Its guest address.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn index<'m>(&self, mem: &'m GuestMemory, offset: u64) -> Result<&'m AtomicU32, MemoryError> {
        mem.atomic_u32(GuestAddr(self.base + offset))
    }

    fn slot(&self, i: u32) -> u64 {
        self.base + ring::HEADER_SIZE + u64::from(i % self.slots) * ring::SLOT_SIZE
    }

    /// Frames queued and not yet consumed, checked for consistency.
    ///
    /// Two tender threads consume a transmit ring (the vCPU thread sends a
    /// few frames itself when the guest rings, the I/O thread the rest,
    /// each under the NIC's send lock), and this is also called without
    /// that lock, so the consumer index may move between the loads. It is
    /// therefore read before and after the producer: an honest producer is
    /// at or past the consumer as it was before (the producer never goes
    /// back) and at most a ring past the consumer as it is after. Checking
    /// one consumer load against a producer loaded earlier would call an
    /// honest ring corrupt when the other thread consumed frames the guest
    /// queued in between.
    pub fn pending(&self, mem: &GuestMemory) -> Result<u32, RingError> {
        let consumer_index = self.index(mem, ring::CONSUMER)?;
        let before = consumer_index.load(Ordering::Acquire);
        let producer = self.index(mem, ring::PRODUCER)?.load(Ordering::Acquire);
        let consumer = consumer_index.load(Ordering::Acquire);
        // Frames consumed between the two loads, and frames the producer
        // is past the consumer as it was before.
        let moved = u64::from(consumer.wrapping_sub(before));
        let ahead = u64::from(producer.wrapping_sub(before));
        if ahead > moved + u64::from(self.slots) {
            return Err(RingError::Corrupt { ring: self.direction, producer, consumer, slots: self.slots });
        }
        // Zero if the other thread consumed past the producer we loaded.
        Ok(ahead.saturating_sub(moved) as u32)
    }

    /// Consumer side: copies the oldest frame into `buf` and releases its
    /// slot; `Ok(None)` if the ring is empty.
    pub fn pop(&self, mem: &GuestMemory, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        if self.pending(mem)? == 0 {
            return Ok(None);
        }
        let consumer = self.index(mem, ring::CONSUMER)?;
        let c = consumer.load(Ordering::Relaxed);
        let slot = self.slot(c);
        let len: u32 = mem.read_obj(GuestAddr(slot + ring::SLOT_LEN))?;
        if !(NET_FRAME_MIN..=NET_FRAME_MAX).contains(&len) || len as usize > buf.len() {
            return Err(RingError::FrameLength(len));
        }
        mem.read(GuestAddr(slot + ring::SLOT_DATA), &mut buf[..len as usize])?;
        consumer.store(c.wrapping_add(1), Ordering::Release);
        Ok(Some(len as usize))
    }

    /// Whether the producer (us) has a free slot.
    pub fn has_room(&self, mem: &GuestMemory) -> Result<bool, RingError> {
        Ok(self.pending(mem)? < self.slots)
    }

    /// Producer side: queues `frame`; `Ok(false)` if the ring is full.
    pub fn push(&self, mem: &GuestMemory, frame: &[u8]) -> Result<bool, RingError> {
        if !self.has_room(mem)? {
            return Ok(false);
        }
        let producer = self.index(mem, ring::PRODUCER)?;
        let p = producer.load(Ordering::Relaxed);
        let slot = self.slot(p);
        mem.write_obj(GuestAddr(slot + ring::SLOT_LEN), &(frame.len() as u32))?;
        mem.write(GuestAddr(slot + ring::SLOT_DATA), frame)?;
        producer.store(p.wrapping_add(1), Ordering::Release);
        Ok(true)
    }

    /// The producer's "waiting for room" flag (receive rings).
    pub fn producer_waiting<'m>(&self, mem: &'m GuestMemory) -> Result<&'m AtomicU32, MemoryError> {
        self.index(mem, ring::PRODUCER_WAITING)
    }

    /// The consumer's "asleep" flag.
    pub fn sleeping<'m>(&self, mem: &'m GuestMemory) -> Result<&'m AtomicU32, MemoryError> {
        self.index(mem, ring::CONSUMER_SLEEPING)
    }

    /// How many listeners the guest started (transmit rings; see
    /// [`Ring::listening`]).
    pub fn listeners(&self, mem: &GuestMemory) -> Result<u32, MemoryError> {
        Ok(self.index(mem, ring::LISTENING)?.load(Ordering::Acquire))
    }

    /// The guest's listeners (transmit rings): how many it started, and
    /// the ports of the first [`ring::LISTEN_PORTS_MAX`]. Guest-written and
    /// only reported, never trusted.
    pub fn listening(&self, mem: &GuestMemory) -> Result<(u32, Vec<u16>), MemoryError> {
        let count = self.index(mem, ring::LISTENING)?.load(Ordering::Acquire);
        let mut raw = [0u8; 2 * ring::LISTEN_PORTS_MAX as usize];
        mem.read(GuestAddr(self.base + ring::LISTEN_PORTS), &mut raw)?;
        let n = count.min(ring::LISTEN_PORTS_MAX) as usize;
        Ok((count, raw.chunks_exact(2).take(n).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        vec![fill; n]
    }

    #[test]
    fn frames_go_round_and_wrap() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let r = Ring::new(0x10_0000, 4, Direction::Transmit);
        let mut buf = [0u8; 2048];
        assert_eq!(r.pop(&mem, &mut buf).unwrap(), None);
        for round in 0..10u8 {
            for i in 0..4 {
                assert!(r.push(&mem, &frame(60 + i, round)).unwrap());
            }
            assert!(!r.push(&mem, &frame(60, 0)).unwrap(), "full after 4");
            for i in 0..4 {
                assert_eq!(r.pop(&mem, &mut buf).unwrap(), Some(60 + i));
                assert!(buf[..60 + i].iter().all(|&b| b == round));
            }
        }
    }

    #[test]
    fn a_corrupt_producer_or_length_is_an_error() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let r = Ring::new(0x10_0000, 4, Direction::Transmit);
        mem.write_obj(GuestAddr(0x10_0000 + ring::PRODUCER), &9u32).unwrap();
        let err = r.pending(&mem).unwrap_err();
        assert!(matches!(err, RingError::Corrupt { producer: 9, .. }));
        assert!(err.to_string().starts_with("transmit ring"), "{err}");
        let rx = Ring::new(0x20_0000, 4, Direction::Receive);
        mem.write_obj(GuestAddr(0x20_0000 + ring::CONSUMER), &9u32).unwrap();
        assert!(rx.pending(&mem).unwrap_err().to_string().starts_with("receive ring"));
        mem.write_obj(GuestAddr(0x10_0000 + ring::PRODUCER), &1u32).unwrap();
        mem.write_obj(GuestAddr(0x10_0000 + ring::HEADER_SIZE), &9000u32).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(r.pop(&mem, &mut buf), Err(RingError::FrameLength(9000)));
        mem.write_obj(GuestAddr(0x10_0000 + ring::HEADER_SIZE), &3u32).unwrap();
        assert_eq!(r.pop(&mem, &mut buf), Err(RingError::FrameLength(3)));
    }

    /// The guest queues frames while two tender threads take turns
    /// consuming them under a lock and a third looks at the ring without
    /// it, as the vCPU thread does before it rings: an honest ring is
    /// never called corrupt, and nothing is lost or taken twice.
    #[test]
    fn concurrent_consumers_never_see_an_honest_ring_as_corrupt() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        const FRAMES: u32 = 500_000;
        let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
        let r = Ring::new(0x10_0000, 8, Direction::Transmit);
        let send_lock = Arc::new(Mutex::new(()));
        let taken = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let consumer = |mem: Arc<GuestMemory>, lock: Arc<Mutex<()>>, taken: Arc<AtomicU64>, done: Arc<AtomicBool>| {
            std::thread::spawn(move || -> Result<(), RingError> {
                let mut buf = [0u8; 2048];
                while !done.load(Ordering::Relaxed) {
                    let _guard = lock.lock().unwrap();
                    while let Some(n) = r.pop(&mem, &mut buf)? {
                        assert_eq!(n, 60);
                        taken.fetch_add(u64::from(buf[0]), Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        };
        let a = consumer(mem.clone(), send_lock.clone(), taken.clone(), done.clone());
        let b = consumer(mem.clone(), send_lock.clone(), taken.clone(), done.clone());
        let looker = {
            let (mem, done) = (mem.clone(), done.clone());
            std::thread::spawn(move || -> Result<(), RingError> {
                while !done.load(Ordering::Relaxed) {
                    r.pending(&mem)?;
                }
                Ok(())
            })
        };
        // The guest's side: write the slot, then publish it.
        let producer = mem.atomic_u32(GuestAddr(0x10_0000 + ring::PRODUCER)).unwrap();
        let consumer_index = mem.atomic_u32(GuestAddr(0x10_0000 + ring::CONSUMER)).unwrap();
        let mut expected = 0u64;
        for i in 0..FRAMES {
            while i.wrapping_sub(consumer_index.load(Ordering::Acquire)) >= 8 {
                std::hint::spin_loop();
            }
            let slot = r.slot(i);
            let fill = (i % 7 + 1) as u8;
            mem.write_obj(GuestAddr(slot + ring::SLOT_LEN), &60u32).unwrap();
            mem.write(GuestAddr(slot + ring::SLOT_DATA), &[fill; 60]).unwrap();
            producer.store(i + 1, Ordering::Release);
            expected += u64::from(fill);
        }
        while consumer_index.load(Ordering::Acquire) != FRAMES {
            std::thread::yield_now();
        }
        done.store(true, Ordering::Relaxed);
        for t in [a, b, looker] {
            t.join().unwrap().unwrap();
        }
        assert_eq!(taken.load(Ordering::Relaxed), expected);
    }

    #[test]
    fn indices_wrap_at_u32() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let r = Ring::new(0x10_0000, 4, Direction::Transmit);
        mem.write_obj(GuestAddr(0x10_0000 + ring::PRODUCER), &(u32::MAX - 1)).unwrap();
        mem.write_obj(GuestAddr(0x10_0000 + ring::CONSUMER), &(u32::MAX - 1)).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..3 {
            assert!(r.push(&mem, &frame(100, i)).unwrap());
        }
        assert_eq!(r.pending(&mem).unwrap(), 3);
        for i in 0..3 {
            assert_eq!(r.pop(&mem, &mut buf).unwrap(), Some(100));
            assert_eq!(buf[0], i);
        }
    }
}
