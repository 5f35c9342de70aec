//! The host backend: a regular file (or a block device node) as a block
//! device, with `pread`, `pwrite` and `fdatasync`. `skiff disk` uses it, and
//! so do the host tests and benchmarks.

use crate::device::{BlockDevice, BlockError, check_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::vec;

/// A file as a block device. Its capacity is the file's size in whole
/// sectors at the time it was opened.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    sector_size: u32,
    capacity: u64,
    read_only: bool,
}

fn io_error(e: &io::Error) -> BlockError {
    BlockError::Io { errno: e.raw_os_error().unwrap_or(0) }
}

impl FileDevice {
    /// Opens `path` read-write (or read-only) with sectors of `sector_size`.
    pub fn open(path: &Path, sector_size: u32, read_only: bool) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        FileDevice::from_file(file, sector_size, read_only)
    }

    /// Creates `path` (which must not exist) with `bytes` bytes of zeroes,
    /// written out rather than left as a hole: a host disk that is full
    /// fails here, not in the middle of a commit later, and writes to the
    /// image never need the file system to allocate blocks.
    pub fn create(path: &Path, sector_size: u32, bytes: u64) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        FileDevice::from_file(file, sector_size, false)
    }

    /// An open file as a device.
    pub fn from_file(file: File, sector_size: u32, read_only: bool) -> io::Result<FileDevice> {
        let len = file.metadata()?.len();
        Ok(FileDevice { file, sector_size, capacity: len / u64::from(sector_size), read_only })
    }
}

impl BlockDevice for FileDevice {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(sector, buf.len(), self.sector_size, self.capacity)?;
        self.file.read_exact_at(buf, sector * u64::from(self.sector_size)).map_err(|e| io_error(&e))
    }

    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(sector, buf.len(), self.sector_size, self.capacity)?;
        self.file.write_all_at(buf, sector * u64::from(self.sector_size)).map_err(|e| io_error(&e))
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.file.sync_data().map_err(|e| io_error(&e))
    }

    async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = count.saturating_mul(u64::from(self.sector_size));
        check_range(sector, usize::try_from(len).unwrap_or(usize::MAX), self.sector_size, self.capacity)?;
        // Zeroes rather than punching holes: the same everywhere, and a
        // discarded range reads back as zeroes (never as old data).
        let zeros = vec![0u8; 1 << 20];
        let mut at = sector * u64::from(self.sector_size);
        let end = at + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at).map_err(|e| io_error(&e))?;
            at += n as u64;
        }
        Ok(())
    }
}
