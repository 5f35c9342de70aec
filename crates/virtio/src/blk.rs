//! virtio-blk: read, write and flush 512-byte sectors, synchronously.
//!
//! Each request goes through one DMA buffer the driver owns (header, up to
//! [`CHUNK`] bytes of data, status byte), so the device only ever touches
//! memory the driver allocated; longer requests are split.

use crate::dma::DmaBuf;
use crate::queue::{Buf, SplitQueue};
use crate::transport::{Transport, finish_init, negotiate, read_config64, reset};
use crate::{DEFAULT_SPIN_LIMIT, DeviceType, Error, features};

/// The device refuses writes.
pub const F_RO: u64 = 1 << 5;
/// The device takes flush requests.
pub const F_FLUSH: u64 = 1 << 9;
/// The device limits the bytes of one data buffer (`size_max`).
pub const F_SIZE_MAX: u64 = 1 << 1;

/// A sector.
pub const SECTOR: usize = 512;
/// The most data bytes per request.
pub const CHUNK: usize = 64 * 1024;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
// The DMA buffer: header, status byte, data from the second sector on.
const STATUS_AT: usize = 16;
const DATA_AT: usize = SECTOR;

/// A virtio-blk device.
pub struct VirtioBlk<T: Transport> {
    transport: T,
    queue: SplitQueue,
    buf: DmaBuf,
    capacity: u64,
    read_only: bool,
    flush: bool,
    chunk: usize,
    spins: u32,
}

impl<T: Transport> VirtioBlk<T> {
    /// Negotiates and sets up the request queue.
    pub fn new(mut transport: T) -> Result<VirtioBlk<T>, Error> {
        let accepted = negotiate(&mut transport, DeviceType::Block, 0, F_RO | F_FLUSH | F_SIZE_MAX)?;
        let capacity = read_config64(&mut transport, 0);
        let mut chunk = CHUNK;
        if accepted & F_SIZE_MAX != 0 {
            let size_max = transport.read_config32(8) as usize;
            chunk = chunk.min(size_max / SECTOR * SECTOR).max(SECTOR);
        }
        let queue = SplitQueue::new(&mut transport, 0, 16, accepted & features::RING_EVENT_IDX != 0)?;
        let buf = DmaBuf::zeroed(DATA_AT + CHUNK)?;
        finish_init(&mut transport);
        Ok(VirtioBlk {
            transport,
            queue,
            buf,
            capacity,
            read_only: accepted & F_RO != 0,
            flush: accepted & F_FLUSH != 0,
            chunk,
            spins: DEFAULT_SPIN_LIMIT,
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

    /// How many polls a request waits for its answer.
    pub fn set_spin_limit(&mut self, spins: u32) {
        self.spins = spins;
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), Error> {
        if !len.is_multiple_of(SECTOR) {
            return Err(Error::NotWholeSectors(len));
        }
        let end = sector.saturating_add((len / SECTOR) as u64);
        if end > self.capacity {
            return Err(Error::OutOfRange { sector, end, capacity: self.capacity });
        }
        Ok(())
    }

    /// Reads whole sectors from `sector` on into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_range(sector, buf.len())?;
        for (i, chunk) in buf.chunks_mut(self.chunk).enumerate() {
            let at = sector + (i * self.chunk / SECTOR) as u64;
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
        for (i, chunk) in buf.chunks(self.chunk).enumerate() {
            let at = sector + (i * self.chunk / SECTOR) as u64;
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

    fn request(&mut self, kind: u32, sector: u64, len: usize) -> Result<(), Error> {
        self.buf.write_u32(0, kind);
        self.buf.write_u32(4, 0);
        self.buf.write_u64(8, sector);
        // Anything but 0 (OK) if the device never writes it.
        self.buf.bytes_mut(STATUS_AT, 1)[0] = 0xff;
        let header = Buf { addr: self.buf.addr(0), len: 16, writable: false };
        let data = Buf { addr: self.buf.addr(DATA_AT), len: len as u32, writable: kind == T_IN };
        let status = Buf { addr: self.buf.addr(STATUS_AT), len: 1, writable: true };
        let head =
            if len == 0 { self.queue.add(&[header, status])? } else { self.queue.add(&[header, data, status])? };
        self.queue.kick(&mut self.transport);
        let used = self.queue.wait(head, self.spins, DeviceType::Block)?;
        match self.buf.bytes(STATUS_AT, 1)[0] {
            0 => {}
            1 => return Err(Error::IoError),
            2 => return Err(Error::Unsupported),
            other => return Err(Error::BadStatus(other)),
        }
        // A read must have filled the whole buffer, or stale bytes would
        // pass for data.
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
