//! The block device the store runs over, and an in-memory one.
//!
//! A device is an array of sectors (512 or 4096 bytes). Reads and writes
//! move whole sectors, many at a time; `flush` returns once every write
//! before it is durable. Until a flush, a write may or may not survive a
//! crash, sector by sector: that is the whole crash model the store is
//! built against (see `docs/storage.md`).
//!
//! The methods are `async` because the guest's backends (the tender's block
//! rings, virtio-blk) complete later; the host backends here complete at
//! once. The guest's executor is single-threaded, so the futures need not
//! be `Send`.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Why a block operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The sectors asked for lie (partly) past the end of the device.
    #[error("sectors {start}..{end} are past the end of the device ({capacity} sectors)")]
    OutOfRange { start: u64, end: u64, capacity: u64 },
    /// A buffer that is not a whole number of sectors.
    #[error("a buffer of {len} bytes is not a whole number of {sector_size}-byte sectors")]
    Misaligned { len: usize, sector_size: u32 },
    /// The device was attached read-only.
    #[error("the device is read-only")]
    ReadOnly,
    /// The host's I/O failed (an `errno` value where there is one).
    #[error("I/O error (errno {errno})")]
    Io { errno: i32 },
    /// The device is gone: powered off, detached, or failed earlier.
    #[error("the device is no longer available")]
    Gone,
}

/// A block device: what the store needs from a disk.
///
/// `async fn` in a public trait: its futures are not `Send`, which is what
/// Skiff's single-threaded executor wants.
#[allow(async_fn_in_trait)]
pub trait BlockDevice {
    /// Bytes per sector: 512 or 4096.
    fn sector_size(&self) -> u32;
    /// The device's size in sectors.
    fn capacity(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }
    /// Reads `buf.len() / sector_size` sectors from `sector` on.
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Reads many runs of sectors, each `(sector, buf)` as in
    /// [`read`](Self::read); the first error, if any (the buffers' contents
    /// are then undefined). Devices that queue requests (the tender's
    /// ring, virtio-blk) send them together, so that the host is notified
    /// once for many; the default reads them one after another.
    async fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), BlockError> {
        for (sector, buf) in reads.iter_mut() {
            self.read(*sector, buf).await?;
        }
        Ok(())
    }
    /// Writes `buf.len() / sector_size` sectors from `sector` on. Not
    /// durable until [`flush`](Self::flush) returns.
    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Returns once every write completed before the call is durable.
    async fn flush(&self) -> Result<(), BlockError>;
    /// Tells the device that `count` sectors from `sector` on are unused.
    /// Their contents are undefined afterwards.
    async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError>;
}

/// Checks that `len` bytes from `sector` on are whole sectors inside a
/// device of `capacity` sectors.
pub fn check_range(sector: u64, len: usize, sector_size: u32, capacity: u64) -> Result<(), BlockError> {
    if !len.is_multiple_of(sector_size as usize) {
        return Err(BlockError::Misaligned { len, sector_size });
    }
    let count = (len / sector_size as usize) as u64;
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        end => Err(BlockError::OutOfRange { start: sector, end: end.unwrap_or(u64::MAX), capacity }),
    }
}

/// A device in memory: for tests and tools. Every write is durable at once.
#[derive(Debug)]
pub struct MemDevice {
    sector_size: u32,
    read_only: bool,
    data: RefCell<Vec<u8>>,
}

impl MemDevice {
    /// A zeroed device of `sectors` sectors of `sector_size` bytes.
    pub fn new(sector_size: u32, sectors: u64) -> MemDevice {
        MemDevice::from_bytes(sector_size, vec![0; (sectors * u64::from(sector_size)) as usize])
    }

    /// A device holding `bytes` (cut to whole sectors).
    pub fn from_bytes(sector_size: u32, mut bytes: Vec<u8>) -> MemDevice {
        bytes.truncate(bytes.len() - bytes.len() % sector_size as usize);
        MemDevice { sector_size, read_only: false, data: RefCell::new(bytes) }
    }

    /// The same device, refusing writes.
    pub fn into_read_only(mut self) -> MemDevice {
        self.read_only = true;
        self
    }

    /// The device's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data.into_inner()
    }

    /// A copy of the device's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }
}

impl BlockDevice for MemDevice {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn capacity(&self) -> u64 {
        self.data.borrow().len() as u64 / u64::from(self.sector_size)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(sector, buf.len(), self.sector_size, self.capacity())?;
        let at = (sector * u64::from(self.sector_size)) as usize;
        buf.copy_from_slice(&self.data.borrow()[at..at + buf.len()]);
        Ok(())
    }

    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(sector, buf.len(), self.sector_size, self.capacity())?;
        let at = (sector * u64::from(self.sector_size)) as usize;
        self.data.borrow_mut()[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        Ok(())
    }

    async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = (count * u64::from(self.sector_size)) as usize;
        check_range(sector, len, self.sector_size, self.capacity())?;
        let at = (sector * u64::from(self.sector_size)) as usize;
        self.data.borrow_mut()[at..at + len].fill(0);
        Ok(())
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &T {
    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read(sector, buf).await
    }
    async fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), BlockError> {
        (**self).read_many(reads).await
    }
    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        (**self).write(sector, buf).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        (**self).flush().await
    }
    async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        (**self).discard(sector, count).await
    }
}
