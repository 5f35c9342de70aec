//! Disks on virtio-blk devices (the virtio platform's, under a standard
//! hypervisor), lent through the same [`BlockDevice`] interface as the
//! tender's ring-backed disks.
//!
//! The device speaks 512-byte sectors; the disk's sector size is its
//! logical block size (`blk_size`: 512 or 4096, QEMU's
//! `logical_block_size`), and its capacity is counted in those. Requests
//! are checked here as the tender's driver checks them (whole sectors, a
//! range inside the disk, no writes to a read-only disk) before the device
//! sees them, and complete before the methods return. The device's answers
//! map onto [`BlockError`]: an I/O error is `Io` (errno 5, `EIO`: virtio
//! carries no error number), a write the device refuses on a read-only disk
//! is `ReadOnly`, a request it does not support is `Unsupported`, and a
//! device that breaks the protocol or stops answering is logged once and
//! `Gone` from then on.
//!
//! Declared disks are matched to devices by serial number (QEMU's
//! `serial=NAME`), then by order among the devices without one
//! ([`match_disks`]).

use crate::block::{BlockDevice, BlockError};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use skiff_virtio::Error;
use skiff_virtio::blk::{ID_BYTES, SECTOR, VirtioBlk};
use skiff_virtio::transport::Transport;

/// `EIO`, for the device's I/O errors.
const EIO: i32 = 5;

/// The sector size of a device reporting logical block size `blk_size`
/// (none: 512), or the unsupported size.
pub fn sector_size(blk_size: Option<u32>) -> Result<u32, u32> {
    match blk_size {
        None | Some(512) => Ok(512),
        Some(4096) => Ok(4096),
        Some(other) => Err(other),
    }
}

/// The part of `name` a 20-byte virtio-blk serial number holds.
pub fn serial_of(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(ID_BYTES)]
}

/// Which device each declared disk gets: the one whose serial is the
/// disk's name (its first 20 bytes), else the next device without a
/// serial, in device order. `Err` names the first disk left without one.
pub fn match_disks<'a>(declared: &'a [String], serials: &[&[u8]]) -> Result<Vec<usize>, &'a str> {
    let mut taken = vec![false; serials.len()];
    let mut chosen: Vec<Option<usize>> = declared
        .iter()
        .map(|name| {
            let i = serials.iter().enumerate().position(|(i, s)| !taken[i] && *s == serial_of(name))?;
            taken[i] = true;
            Some(i)
        })
        .collect();
    for (name, choice) in declared.iter().zip(&mut chosen) {
        if choice.is_none() {
            let i = serials.iter().enumerate().position(|(i, s)| !taken[i] && s.is_empty()).ok_or(name.as_str())?;
            taken[i] = true;
            *choice = Some(i);
        }
    }
    Ok(chosen.into_iter().flatten().collect())
}

/// A disk on a virtio-blk device.
pub struct VirtioDisk<T: Transport> {
    name: String,
    blk: RefCell<VirtioBlk<T>>,
    sector_size: u32,
    capacity: u64,
    read_only: bool,
    failed: Cell<bool>,
}

impl<T: Transport> VirtioDisk<T> {
    /// The disk `name` on `blk`; `Err` carries a logical block size other
    /// than 512 or 4096.
    pub fn new(name: String, blk: VirtioBlk<T>) -> Result<VirtioDisk<T>, u32> {
        let sector_size = sector_size(blk.blk_size())?;
        let capacity = blk.capacity() / u64::from(sector_size / SECTOR as u32);
        let read_only = blk.read_only();
        Ok(VirtioDisk { name, blk: RefCell::new(blk), sector_size, capacity, read_only, failed: Cell::new(false) })
    }

    /// 512-byte sectors per disk sector.
    fn per(&self) -> u64 {
        u64::from(self.sector_size) / SECTOR as u64
    }

    fn check(&self, sector: u64, len: usize) -> Result<u64, BlockError> {
        let ss = self.sector_size;
        if !len.is_multiple_of(ss as usize) {
            return Err(BlockError::Misaligned { len, sector_size: ss });
        }
        self.check_count(sector, (len / ss as usize) as u64)
    }

    fn check_count(&self, sector: u64, count: u64) -> Result<u64, BlockError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.capacity => Ok(count),
            end => Err(BlockError::OutOfRange { start: sector, end: end.unwrap_or(u64::MAX), capacity: self.capacity }),
        }
    }

    /// Runs `f` on the driver, unless the device has failed, and maps its
    /// error; `write` says whether the request writes.
    fn with(&self, write: bool, f: impl FnOnce(&mut VirtioBlk<T>) -> Result<(), Error>) -> Result<(), BlockError> {
        if self.failed.get() {
            return Err(BlockError::Gone);
        }
        let Ok(mut blk) = self.blk.try_borrow_mut() else {
            return Err(BlockError::Gone);
        };
        match f(&mut blk) {
            Ok(()) => Ok(()),
            Err(Error::ReadOnly) => Err(BlockError::ReadOnly),
            Err(Error::IoError) if write && self.read_only => Err(BlockError::ReadOnly),
            Err(Error::IoError) => Err(BlockError::Io { errno: EIO }),
            Err(Error::Unsupported) => Err(BlockError::Unsupported),
            Err(e) => {
                self.failed.set(true);
                log::error!("disk \"{}\" stops: its virtio-blk device failed: {e}", self.name);
                Err(BlockError::Gone)
            }
        }
    }
}

impl<T: Transport> BlockDevice for VirtioDisk<T> {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        if self.check(sector, buf.len())? == 0 {
            return Ok(());
        }
        self.with(false, |b| b.read(sector * self.per(), buf))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let count = self.check(sector, buf.len())?;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if count == 0 {
            return Ok(());
        }
        self.with(true, |b| b.write(sector * self.per(), buf))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.with(false, |b| b.flush())
    }

    /// [`BlockError::Unsupported`] when the device takes no discards
    /// (QEMU: a drive without `discard=unmap` takes them and ignores them,
    /// so the sectors keep their data).
    fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        let count = self.check_count(sector, count)?;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if !self.blk.try_borrow().is_ok_and(|b| b.can_discard()) {
            return Err(BlockError::Unsupported);
        }
        if count == 0 {
            return Ok(());
        }
        self.with(true, |b| b.discard(sector * self.per(), count * self.per()))
    }

    /// Sends the request to the device without this driver's checks, so
    /// tests see the device's own: reads and writes go through the
    /// driver's buffer (`buf` is not touched; a write writes zeros).
    fn submit_unchecked(&self, op: u32, sector: u64, count: u32, buf: u64) -> Result<(), BlockError> {
        use skiff_abi::blk::op;
        let _ = buf;
        let bytes = count as usize * self.sector_size as usize;
        let at = sector.wrapping_mul(self.per());
        match op {
            op::READ => self.with(false, |b| b.read_unchecked(at, &mut vec![0u8; bytes])),
            op::WRITE => self.with(true, |b| b.write_unchecked(at, &vec![0u8; bytes])),
            op::FLUSH => self.flush(),
            op::DISCARD => self.with(true, |b| b.discard(at, u64::from(count) * self.per())),
            _ => Err(BlockError::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| String::from(*s)).collect()
    }

    #[test]
    fn disks_match_by_serial_then_by_order() {
        let declared = names(&["data", "logs"]);
        // By serial, whatever the order.
        assert_eq!(match_disks(&declared, &[b"logs", b"data"]), Ok(vec![1, 0]));
        // No serials: in order.
        assert_eq!(match_disks(&declared, &[b"", b""]), Ok(vec![0, 1]));
        // One named, the other takes the first device without a serial.
        assert_eq!(match_disks(&declared, &[b"", b"data", b""]), Ok(vec![1, 0]));
        // A device with a serial that is no declared name is nobody's.
        assert_eq!(match_disks(&declared, &[b"other", b""]), Err("logs"));
        assert_eq!(match_disks(&declared, &[]), Err("data"));
        // Names longer than a serial match on their first 20 bytes.
        let long = names(&["a-very-long-disk-name-indeed"]);
        assert_eq!(match_disks(&long, &[b"a-very-long-disk-nam"]), Ok(vec![0]));
    }

    #[test]
    fn sector_sizes_are_512_or_4096() {
        assert_eq!(sector_size(None), Ok(512));
        assert_eq!(sector_size(Some(4096)), Ok(4096));
        assert_eq!(sector_size(Some(1024)), Err(1024));
    }
}
