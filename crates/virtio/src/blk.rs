//! virtio-blk: read, write, flush and discard sectors, and the device's
//! serial number, synchronously.
//!
//! The protocol counts in 512-byte sectors whatever the device's logical
//! block size (`blk_size`, which a device such as QEMU's with
//! `logical_block_size=4096` also enforces: requests must be aligned to
//! it). Each request goes through one DMA buffer the driver owns (header,
//! up to [`CHUNK`] bytes of data, status byte), so the device only ever
//! touches memory the driver allocated; longer requests are split.

use crate::dma::DmaBuf;
use crate::queue::{Buf, SplitQueue};
use crate::transport::{Transport, finish_init, negotiate, read_config64, reset};
use crate::{DEFAULT_SPIN_LIMIT, DeviceType, Error, features};
use alloc::boxed::Box;

/// The device limits the bytes of one data buffer (`size_max`).
pub const F_SIZE_MAX: u64 = 1 << 1;
/// The device refuses writes.
pub const F_RO: u64 = 1 << 5;
/// The device reports its logical block size (`blk_size`).
pub const F_BLK_SIZE: u64 = 1 << 6;
/// The device takes flush requests.
pub const F_FLUSH: u64 = 1 << 9;
/// The device takes discard requests.
pub const F_DISCARD: u64 = 1 << 13;

/// A sector: the unit of the protocol.
pub const SECTOR: usize = 512;
/// The most data bytes per request.
pub const CHUNK: usize = 64 * 1024;
/// Bytes of a device's serial number (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;

// Configuration fields (`struct virtio_blk_config`).
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SIZE_MAX: usize = 8;
const CONFIG_BLK_SIZE: usize = 20;
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;

// The DMA buffer: header, status byte, data from the second sector on.
const STATUS_AT: usize = 16;
const DATA_AT: usize = SECTOR;

/// How a request waits for its answer: asked before each poll of the used
/// ring with the number of empty polls so far; `false` gives up (the
/// request fails with [`Error::NoResponse`] and the queue stays broken).
pub type Patience = Box<dyn FnMut(u64) -> bool>;

/// A virtio-blk device.
pub struct VirtioBlk<T: Transport> {
    transport: T,
    queue: SplitQueue,
    buf: DmaBuf,
    capacity: u64,
    read_only: bool,
    flush: bool,
    blk_size: Option<u32>,
    /// Most sectors one discard segment may cover (with `DISCARD`).
    max_discard: Option<u32>,
    chunk: usize,
    spins: u32,
    patience: Option<Patience>,
}

impl<T: Transport> VirtioBlk<T> {
    /// Negotiates and sets up the request queue.
    pub fn new(mut transport: T) -> Result<VirtioBlk<T>, Error> {
        let wanted = F_RO | F_FLUSH | F_SIZE_MAX | F_BLK_SIZE | F_DISCARD;
        let accepted = negotiate(&mut transport, DeviceType::Block, 0, wanted)?;
        let capacity = read_config64(&mut transport, CONFIG_CAPACITY);
        let blk_size = (accepted & F_BLK_SIZE != 0).then(|| transport.read_config32(CONFIG_BLK_SIZE));
        // Whole logical blocks per request, where the block size is sane.
        let block = blk_size.filter(|&b| b.is_power_of_two() && (SECTOR..=CHUNK).contains(&(b as usize)));
        let block = block.map_or(SECTOR, |b| b as usize);
        let mut chunk = CHUNK;
        if accepted & F_SIZE_MAX != 0 {
            let size_max = transport.read_config32(CONFIG_SIZE_MAX) as usize;
            chunk = chunk.min(size_max / block * block).max(block);
        }
        let max_discard = (accepted & F_DISCARD != 0).then(|| {
            let max = transport.read_config32(CONFIG_MAX_DISCARD_SECTORS);
            let per_block = (block / SECTOR) as u32;
            (max / per_block * per_block).max(per_block)
        });
        let mut queue = SplitQueue::new(&mut transport, 0, 16, accepted & features::RING_EVENT_IDX != 0)?;
        // Requests are polled: an interrupt would only cost the device work.
        queue.set_interrupts(false);
        let buf = DmaBuf::zeroed(DATA_AT + CHUNK)?;
        finish_init(&mut transport);
        Ok(VirtioBlk {
            transport,
            queue,
            buf,
            capacity,
            read_only: accepted & F_RO != 0,
            flush: accepted & F_FLUSH != 0,
            blk_size,
            max_discard,
            chunk,
            spins: DEFAULT_SPIN_LIMIT,
            patience: None,
        })
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The logical block size the device reports (`BLK_SIZE`), if it does.
    pub fn blk_size(&self) -> Option<u32> {
        self.blk_size
    }

    /// Whether the device takes discard requests.
    pub fn can_discard(&self) -> bool {
        self.max_discard.is_some()
    }

    /// How many polls a request waits for its answer (when no
    /// [`set_patience`](Self::set_patience) is given).
    pub fn set_spin_limit(&mut self, spins: u32) {
        self.spins = spins;
        self.patience = None;
    }

    /// How long a request waits for its answer: a clock-based limit, say.
    pub fn set_patience(&mut self, patience: Patience) {
        self.patience = Some(patience);
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), Error> {
        if !len.is_multiple_of(SECTOR) {
            return Err(Error::NotWholeSectors(len));
        }
        self.check_sectors(sector, (len / SECTOR) as u64)
    }

    fn check_sectors(&self, sector: u64, count: u64) -> Result<(), Error> {
        let end = sector.saturating_add(count);
        if end > self.capacity {
            return Err(Error::OutOfRange { sector, end, capacity: self.capacity });
        }
        Ok(())
    }

    /// Reads whole sectors from `sector` on into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_range(sector, buf.len())?;
        self.read_unchecked(sector, buf)
    }

    /// Reads without the range check, so the device's own is seen (tests).
    #[doc(hidden)]
    pub fn read_unchecked(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        if !buf.len().is_multiple_of(SECTOR) {
            return Err(Error::NotWholeSectors(buf.len()));
        }
        for (i, chunk) in buf.chunks_mut(self.chunk).enumerate() {
            let at = sector.wrapping_add((i * self.chunk / SECTOR) as u64);
            self.request(T_IN, at, chunk.len())?;
            chunk.copy_from_slice(self.buf.bytes(DATA_AT, chunk.len()));
        }
        Ok(())
    }

    /// Writes whole sectors from `sector` on.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(sector, buf.len())?;
        self.write_unchecked(sector, buf)
    }

    /// Writes without the read-only and range checks, so the device's own
    /// are seen (tests).
    #[doc(hidden)]
    pub fn write_unchecked(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        if !buf.len().is_multiple_of(SECTOR) {
            return Err(Error::NotWholeSectors(buf.len()));
        }
        for (i, chunk) in buf.chunks(self.chunk).enumerate() {
            let at = sector.wrapping_add((i * self.chunk / SECTOR) as u64);
            self.buf.bytes_mut(DATA_AT, chunk.len()).copy_from_slice(chunk);
            self.request(T_OUT, at, chunk.len())?;
        }
        Ok(())
    }

    /// Makes written sectors durable (nothing to do on a device without
    /// `FLUSH`, which writes through).
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.flush { self.request(T_FLUSH, 0, 0) } else { Ok(()) }
    }

    /// Tells the device that `count` sectors from `sector` on are unused:
    /// one segment per request, each at most the device's
    /// `max_discard_sectors`. [`Error::Unsupported`] on a device without
    /// `DISCARD`.
    pub fn discard(&mut self, sector: u64, count: u64) -> Result<(), Error> {
        let Some(max) = self.max_discard else {
            return Err(Error::Unsupported);
        };
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_sectors(sector, count)?;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(u64::from(max));
            self.buf.write_u64(DATA_AT, sector + done);
            self.buf.write_u32(DATA_AT + 8, n as u32);
            self.buf.write_u32(DATA_AT + 12, 0);
            self.request(T_DISCARD, 0, 16)?;
            done += n;
        }
        Ok(())
    }

    /// The device's serial number (`GET_ID`): up to [`ID_BYTES`] bytes, NUL
    /// padded when shorter; empty when the device has none (QEMU without
    /// `serial=`). [`Error::Unsupported`] from a device that does not
    /// answer the request.
    pub fn serial(&mut self) -> Result<([u8; ID_BYTES], usize), Error> {
        self.buf.bytes_mut(DATA_AT, ID_BYTES).fill(0);
        self.request(T_GET_ID, 0, ID_BYTES)?;
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(self.buf.bytes(DATA_AT, ID_BYTES));
        let len = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok((id, len))
    }

    fn request(&mut self, kind: u32, sector: u64, len: usize) -> Result<(), Error> {
        self.buf.write_u32(0, kind);
        self.buf.write_u32(4, 0);
        self.buf.write_u64(8, sector);
        // Anything but 0 (OK) if the device never writes it.
        self.buf.bytes_mut(STATUS_AT, 1)[0] = 0xff;
        let writable = kind == T_IN || kind == T_GET_ID;
        let header = Buf { addr: self.buf.addr(0), len: 16, writable: false };
        let data = Buf { addr: self.buf.addr(DATA_AT), len: len as u32, writable };
        let status = Buf { addr: self.buf.addr(STATUS_AT), len: 1, writable: true };
        let head =
            if len == 0 { self.queue.add(&[header, status])? } else { self.queue.add(&[header, data, status])? };
        self.queue.kick(&mut self.transport);
        let used = match &mut self.patience {
            Some(patience) => self.queue.wait_while(head, patience, DeviceType::Block)?,
            None => self.queue.wait(head, self.spins, DeviceType::Block)?,
        };
        match self.buf.bytes(STATUS_AT, 1)[0] {
            0 => {}
            1 => return Err(Error::IoError),
            2 => return Err(Error::Unsupported),
            other => return Err(Error::BadStatus(other)),
        }
        // A read must have filled the whole buffer, or stale bytes would
        // pass for data. (A serial number may be shorter: its buffer was
        // zeroed.)
        let expected = if kind == T_IN { len as u32 + 1 } else { 1 };
        if used.len < expected {
            return Err(Error::ShortCompletion { device: DeviceType::Block, len: used.len, expected });
        }
        Ok(())
    }
}

impl<T: Transport> Drop for VirtioBlk<T> {
    /// Resets the device, so it stops using the queues and buffers before
    /// their memory is freed.
    fn drop(&mut self) {
        let _ = reset(&mut self.transport);
    }
}
