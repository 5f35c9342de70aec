//! Disks: the driver for the tender's block devices, through the request
//! ring ([`skiff_abi::blk`]) the tender sets up for every disk.
//!
//! A request is queued in the ring and the doorbell (`BlockNotify`) rung;
//! the tender serves every queued request before the call returns, so a
//! request is complete when [`BlockCalls::block_notify`] returns. The
//! hypercall comes through [`BlockCalls`], so the driver is tested on the
//! host against a fake tender.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};
use skiff_abi::{BlockInfo, blk, ring};

/// Why a block operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The sectors asked for lie (partly) past the end of the disk.
    OutOfRange {
        /// First sector.
        start: u64,
        /// One past the last (saturated).
        end: u64,
        /// The disk's size in sectors.
        capacity: u64,
    },
    /// A buffer that is not a whole number of sectors.
    Misaligned {
        /// Its length.
        len: usize,
        /// The sector size.
        sector_size: u32,
    },
    /// The disk was attached read-only.
    ReadOnly,
    /// The host's I/O failed.
    Io {
        /// The host's `errno`.
        errno: i32,
    },
    /// The host cannot discard on this disk.
    Unsupported,
    /// The disk did not answer a request (its ring is broken).
    Gone,
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockError::OutOfRange { start, end, capacity } => {
                write!(f, "sectors {start}..{end} are past the end of the disk ({capacity} sectors)")
            }
            BlockError::Misaligned { len, sector_size } => {
                write!(f, "a buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")
            }
            BlockError::ReadOnly => write!(f, "the disk is read-only"),
            BlockError::Io { errno } => write!(f, "the host's I/O failed (errno {errno})"),
            BlockError::Unsupported => write!(f, "the host cannot discard on this disk"),
            BlockError::Gone => write!(f, "the disk did not answer"),
        }
    }
}

impl core::error::Error for BlockError {}

/// A disk lent to the service. Requests complete before the methods
/// return.
pub trait BlockDevice {
    /// Bytes per sector: 512 or 4096.
    fn sector_size(&self) -> u32;
    /// Size in sectors.
    fn capacity(&self) -> u64;
    /// Whether writes and discards are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len() / sector_size` sectors from `sector` on.
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Reads many runs of sectors, each `(sector, buf)` as in
    /// [`read`](Self::read); the first error, if any (every buffer's
    /// contents are then undefined). A driver with a request ring queues
    /// them together and notifies the host once per ring-full; the default
    /// reads them one after another.
    fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), BlockError> {
        for (sector, buf) in reads.iter_mut() {
            self.read(*sector, buf)?;
        }
        Ok(())
    }
    /// Writes `buf.len() / sector_size` sectors from `sector` on; durable
    /// after the next [`flush`](Self::flush).
    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every write before it durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// `count` sectors from `sector` on are unused; they read as anything
    /// afterwards (zeros on the tender's disks).
    fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError>;
    /// Sends a raw request ([`blk::Request`] fields) without the driver's
    /// checks: for tests of the host's checks, which must see requests the
    /// driver refuses. Drivers without a request ring answer `Gone`.
    #[doc(hidden)]
    fn submit_unchecked(&self, op: u32, sector: u64, count: u32, buf: u64) -> Result<(), BlockError> {
        let _ = (op, sector, count, buf);
        Err(BlockError::Gone)
    }
}

/// The disk hypercall the driver makes.
pub trait BlockCalls {
    /// `BlockNotify`: the tender serves the ring of device `device`.
    fn block_notify(&self, device: u32);
}

/// A disk of the tender's.
pub struct Disk<C: BlockCalls> {
    index: u32,
    info: BlockInfo,
    base: usize,
    producer: Cell<u32>,
    calls: C,
}

impl<C: BlockCalls> Disk<C> {
    /// # Safety
    /// The ring `info` describes must be the one the tender set up for
    /// device `index`, mapped writable for the guest's life.
    pub unsafe fn new(index: u32, info: BlockInfo, calls: C) -> Disk<C> {
        let base = info.ring as usize;
        // SAFETY: the caller vouches for the ring (see above).
        let producer = unsafe { AtomicU32::from_ptr((base + ring::PRODUCER as usize) as *mut u32) };
        Disk { index, info, base, producer: Cell::new(producer.load(Ordering::Relaxed)), calls }
    }

    fn word(&self, offset: u64) -> &AtomicU32 {
        // SAFETY: the header's index words are inside the mapped ring (see
        // `new`), 4-byte aligned, and accessed atomically by both sides.
        unsafe { AtomicU32::from_ptr((self.base + offset as usize) as *mut u32) }
    }

    fn check(&self, sector: u64, len: usize) -> Result<u32, BlockError> {
        let ss = self.info.sector_size;
        if !len.is_multiple_of(ss as usize) {
            return Err(BlockError::Misaligned { len, sector_size: ss });
        }
        self.check_count(sector, (len / ss as usize) as u64)
    }

    fn check_count(&self, sector: u64, count: u64) -> Result<u32, BlockError> {
        let capacity = self.info.capacity;
        match sector.checked_add(count) {
            Some(end) if end <= capacity => {
                u32::try_from(count).map_err(|_| BlockError::OutOfRange { start: sector, end, capacity })
            }
            end => Err(BlockError::OutOfRange { start: sector, end: end.unwrap_or(u64::MAX), capacity }),
        }
    }

    /// The address of the slot request number `index` goes in.
    fn slot(&self, index: u32) -> usize {
        self.base + (ring::HEADER_SIZE + u64::from(index % self.info.slots) * blk::SLOT_SIZE) as usize
    }

    /// Puts a request in the next free slot (not yet visible to the
    /// tender); the slot's address.
    fn queue(&self, op: u32, sector: u64, count: u32, buf: u64) -> usize {
        let p = self.producer.get();
        let slot = self.slot(p);
        let req = blk::Request { op, status: blk::status::PENDING, sector, count, errno: 0, buf };
        // SAFETY: the slot lies inside the mapped ring and the tender has
        // completed every earlier request (they complete before the
        // doorbell returns; callers queue at most `slots` between two
        // doorbells), so it is ours to write.
        unsafe { (slot as *mut blk::Request).write_volatile(req) };
        self.producer.set(p.wrapping_add(1));
        slot
    }

    /// Publishes the queued requests and rings the doorbell: every one of
    /// them is complete when it returns, or the ring is broken.
    fn ring(&self) -> Result<(), BlockError> {
        let next = self.producer.get();
        self.word(ring::PRODUCER).store(next, Ordering::Release);
        self.calls.block_notify(self.index);
        if self.word(ring::CONSUMER).load(Ordering::Acquire) != next {
            return Err(BlockError::Gone);
        }
        Ok(())
    }

    /// The outcome of the completed request in `slot`.
    fn outcome(slot: usize) -> Result<(), BlockError> {
        // SAFETY: `slot` is a slot of the mapped ring (from `slot`); the
        // tender wrote the outcome before releasing the consumer index,
        // which `ring` acquired.
        let done = unsafe { (slot as *const blk::Request).read_volatile() };
        match done.status {
            blk::status::OK => Ok(()),
            blk::status::READ_ONLY => Err(BlockError::ReadOnly),
            blk::status::IO_ERROR => Err(BlockError::Io { errno: done.errno as i32 }),
            blk::status::UNSUPPORTED => Err(BlockError::Unsupported),
            _ => Err(BlockError::Gone),
        }
    }

    /// Queues one request, rings the doorbell and returns its outcome.
    fn submit(&self, op: u32, sector: u64, count: u32, buf: u64) -> Result<(), BlockError> {
        let slot = self.queue(op, sector, count, buf);
        self.ring()?;
        Self::outcome(slot)
    }
}

impl<C: BlockCalls> BlockDevice for Disk<C> {
    fn sector_size(&self) -> u32 {
        self.info.sector_size
    }

    fn capacity(&self) -> u64 {
        self.info.capacity
    }

    fn read_only(&self) -> bool {
        self.info.read_only()
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let count = self.check(sector, buf.len())?;
        if count == 0 {
            return Ok(());
        }
        self.submit(blk::op::READ, sector, count, buf.as_mut_ptr() as u64)
    }

    fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), BlockError> {
        // Every request is checked before any is sent.
        for (sector, buf) in reads.iter() {
            self.check(*sector, buf.len())?;
        }
        let mut result = Ok(());
        for group in reads.chunks_mut(self.info.slots as usize) {
            let first = self.producer.get();
            for (sector, buf) in group.iter_mut() {
                let count = (buf.len() / self.info.sector_size as usize) as u32;
                if count > 0 {
                    self.queue(blk::op::READ, *sector, count, buf.as_mut_ptr() as u64);
                }
            }
            let queued = self.producer.get().wrapping_sub(first);
            if queued == 0 {
                continue;
            }
            self.ring()?;
            for i in 0..queued {
                if let Err(e) = Self::outcome(self.slot(first.wrapping_add(i))) {
                    result = result.and(Err(e));
                }
            }
        }
        result
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let count = self.check(sector, buf.len())?;
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        if count == 0 {
            return Ok(());
        }
        self.submit(blk::op::WRITE, sector, count, buf.as_ptr() as u64)
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.submit(blk::op::FLUSH, 0, 0, 0)
    }

    fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        let count = self.check_count(sector, count)?;
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        self.submit(blk::op::DISCARD, sector, count, 0)
    }

    fn submit_unchecked(&self, op: u32, sector: u64, count: u32, buf: u64) -> Result<(), BlockError> {
        self.submit(op, sector, count, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    /// A fake tender: serves the ring from a byte vector.
    struct Fake {
        ring: usize,
        data: RefCell<Vec<u8>>,
        read_only: bool,
        notifies: Cell<u32>,
    }

    impl BlockCalls for &Fake {
        fn block_notify(&self, _device: u32) {
            self.notifies.set(self.notifies.get() + 1);
            // SAFETY: the test's ring, live and aligned for the test.
            let word = |o: u64| unsafe { AtomicU32::from_ptr((self.ring + o as usize) as *mut u32) };
            loop {
                let (p, c) =
                    (word(ring::PRODUCER).load(Ordering::Acquire), word(ring::CONSUMER).load(Ordering::Relaxed));
                if p == c {
                    return;
                }
                let slot = self.ring + (ring::HEADER_SIZE + u64::from(c % 4) * blk::SLOT_SIZE) as usize;
                // SAFETY: test ring, live for the test.
                let mut req = unsafe { (slot as *const blk::Request).read() };
                let (at, len) = (req.sector as usize * 512, req.count as usize * 512);
                let mut data = self.data.borrow_mut();
                req.status = match req.op {
                    blk::op::READ => {
                        // SAFETY: the driver passed a live buffer of `len` bytes.
                        unsafe { core::ptr::copy_nonoverlapping(data[at..].as_ptr(), req.buf as *mut u8, len) };
                        blk::status::OK
                    }
                    blk::op::WRITE if self.read_only => blk::status::READ_ONLY,
                    blk::op::WRITE => {
                        // SAFETY: as above.
                        unsafe { core::ptr::copy_nonoverlapping(req.buf as *const u8, data[at..].as_mut_ptr(), len) };
                        blk::status::OK
                    }
                    _ => blk::status::IO_ERROR,
                };
                req.errno = 5;
                // SAFETY: as above.
                unsafe { (slot as *mut blk::Request).write(req) };
                word(ring::CONSUMER).store(c.wrapping_add(1), Ordering::Release);
            }
        }
    }

    #[test]
    fn requests_go_round_the_ring_and_errors_come_back() {
        let ring_mem: Box<[u64]> = vec![0u64; blk::ring_bytes(4) as usize / 8].into_boxed_slice();
        let fake = Fake {
            ring: ring_mem.as_ptr() as usize,
            data: RefCell::new(vec![0; 512 * 16]),
            read_only: false,
            notifies: Cell::new(0),
        };
        let info = BlockInfo { capacity: 16, sector_size: 512, flags: 0, ring: fake.ring as u64, slots: 4 };
        // SAFETY: the ring is the fake's, live for the test.
        let disk = unsafe { Disk::new(1, info, &fake) };
        for round in 0..10u8 {
            let block = vec![round; 1024];
            disk.write(u64::from(round % 8), &block).unwrap();
            let mut back = vec![0; 1024];
            disk.read(u64::from(round % 8), &mut back).unwrap();
            assert_eq!(back, block);
        }
        assert_eq!(disk.flush(), Err(BlockError::Io { errno: 5 }), "the fake fails flushes");
        assert!(matches!(disk.read(15, &mut [0; 1024]), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(disk.read(u64::MAX, &mut [0; 512]), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(disk.write(0, &[0; 100]), Err(BlockError::Misaligned { .. })));
        let ro = Fake { read_only: true, ..fake };
        let info = BlockInfo { ring: ro.ring as u64, ..info };
        // SAFETY: as above.
        let disk = unsafe { Disk::new(1, info, &ro) };
        assert_eq!(disk.submit_unchecked(blk::op::WRITE, 0, 1, [0u8; 512].as_ptr() as u64), Err(BlockError::ReadOnly));
    }

    #[test]
    fn many_reads_share_one_doorbell_per_ring_full() {
        let ring_mem: Box<[u64]> = vec![0u64; blk::ring_bytes(4) as usize / 8].into_boxed_slice();
        let data: Vec<u8> = (0..512 * 16).map(|i| (i / 512) as u8).collect();
        let fake = Fake {
            ring: ring_mem.as_ptr() as usize,
            data: RefCell::new(data),
            read_only: false,
            notifies: Cell::new(0),
        };
        let info = BlockInfo { capacity: 16, sector_size: 512, flags: 0, ring: fake.ring as u64, slots: 4 };
        // SAFETY: the ring is the fake's, live for the test.
        let disk = unsafe { Disk::new(1, info, &fake) };
        let mut bufs = vec![vec![0xffu8; 512]; 10];
        let mut reads: Vec<(u64, &mut [u8])> =
            bufs.iter_mut().enumerate().map(|(i, b)| ((i as u64 * 7) % 16, b.as_mut_slice())).collect();
        disk.read_many(&mut reads).unwrap();
        assert_eq!(fake.notifies.get(), 3, "10 reads through a ring of 4 slots: 3 doorbells");
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| u64::from(x) == (i as u64 * 7) % 16), "read {i} came back wrong");
        }
        // One bad request: nothing is sent.
        let (mut a, mut b) = ([0u8; 512], [0u8; 512]);
        let r = disk.read_many(&mut [(0, &mut a[..]), (16, &mut b[..])]);
        assert!(matches!(r, Err(BlockError::OutOfRange { .. })), "{r:?}");
        assert_eq!(fake.notifies.get(), 3);
    }
}
