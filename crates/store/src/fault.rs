//! A block device that misbehaves on purpose, for tests: it keeps what is
//! durable apart from what was written since the last flush, and can cut
//! the power after a given number of operations. At a crash
//! ([`FaultDevice::crash`]) any subset of the unflushed sector writes may
//! have reached the disk (a multi-sector write can tear anywhere); bits can
//! flip at rest ([`FaultDevice::flip_bit`]).

use crate::device::{BlockDevice, BlockError, check_range};
use alloc::vec::Vec;
use core::cell::RefCell;

/// A small seeded generator (SplitMix64): the fault tests' randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Which unflushed writes a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// None of them.
    DropAll,
    /// All of them.
    KeepAll,
    /// Each sector write kept or not, at random.
    Random(u64),
}

#[derive(Debug)]
struct State {
    durable: Vec<u8>,
    visible: Vec<u8>,
    /// Unflushed writes, one sector each, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
    ops: u64,
    power_cut_after: Option<u64>,
    writes: u64,
    flushes: u64,
}

/// A device in memory with the crash model of a real disk.
#[derive(Debug)]
pub struct FaultDevice {
    sector_size: u32,
    read_only: bool,
    state: RefCell<State>,
}

impl FaultDevice {
    /// A device whose durable contents are `bytes`.
    pub fn new(sector_size: u32, bytes: Vec<u8>) -> FaultDevice {
        let state = State {
            visible: bytes.clone(),
            durable: bytes,
            pending: Vec::new(),
            ops: 0,
            power_cut_after: None,
            writes: 0,
            flushes: 0,
        };
        FaultDevice { sector_size, read_only: false, state: RefCell::new(state) }
    }

    /// The same device, refusing writes.
    pub fn into_read_only(mut self) -> FaultDevice {
        self.read_only = true;
        self
    }

    /// After `ops` more writes and flushes the power goes: every later
    /// write, flush and read fails with [`BlockError::Gone`].
    pub fn cut_power_after(&self, ops: u64) {
        let mut s = self.state.borrow_mut();
        s.power_cut_after = Some(s.ops + ops);
    }

    /// Whether the power is off.
    pub fn is_off(&self) -> bool {
        let s = self.state.borrow();
        s.power_cut_after.is_some_and(|n| s.ops >= n)
    }

    /// Writes and flushes so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.writes, s.flushes)
    }

    /// Sector writes not yet flushed.
    pub fn unflushed(&self) -> usize {
        self.state.borrow().pending.len()
    }

    /// What the disk holds after a crash now: the durable contents with the
    /// unflushed sector writes that `mode` keeps, in the order they were
    /// made.
    pub fn crash(&self, mode: CrashMode) -> Vec<u8> {
        let s = self.state.borrow();
        let mut disk = s.durable.clone();
        let mut rng = Rng::new(match mode {
            CrashMode::Random(seed) => seed,
            _ => 0,
        });
        for (sector, data) in &s.pending {
            let keep = match mode {
                CrashMode::DropAll => false,
                CrashMode::KeepAll => true,
                CrashMode::Random(_) => rng.below(2) == 0,
            };
            if keep {
                let at = (*sector * u64::from(self.sector_size)) as usize;
                disk[at..at + data.len()].copy_from_slice(data);
            }
        }
        disk
    }

    /// Flips one bit at rest (in what is durable and what is read).
    pub fn flip_bit(&self, byte: usize, bit: u8) {
        let mut s = self.state.borrow_mut();
        s.durable[byte] ^= 1 << bit;
        s.visible[byte] ^= 1 << bit;
    }

    /// The bytes a read sees now.
    pub fn visible(&self) -> Vec<u8> {
        self.state.borrow().visible.clone()
    }

    fn step(&self) -> Result<(), BlockError> {
        let mut s = self.state.borrow_mut();
        if s.power_cut_after.is_some_and(|n| s.ops >= n) {
            return Err(BlockError::Gone);
        }
        s.ops += 1;
        Ok(())
    }
}

impl BlockDevice for FaultDevice {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn capacity(&self) -> u64 {
        self.state.borrow().durable.len() as u64 / u64::from(self.sector_size)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        if self.is_off() {
            return Err(BlockError::Gone);
        }
        check_range(sector, buf.len(), self.sector_size, self.capacity())?;
        let at = (sector * u64::from(self.sector_size)) as usize;
        buf.copy_from_slice(&self.state.borrow().visible[at..at + buf.len()]);
        Ok(())
    }

    async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(sector, buf.len(), self.sector_size, self.capacity())?;
        self.step()?;
        let mut s = self.state.borrow_mut();
        s.writes += 1;
        let ss = self.sector_size as usize;
        for (i, chunk) in buf.chunks(ss).enumerate() {
            let at = (sector as usize + i) * ss;
            s.visible[at..at + ss].copy_from_slice(chunk);
            s.pending.push((sector + i as u64, chunk.to_vec()));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.step()?;
        let mut s = self.state.borrow_mut();
        s.flushes += 1;
        s.durable = s.visible.clone();
        s.pending.clear();
        Ok(())
    }

    async fn discard(&self, sector: u64, count: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = (count * u64::from(self.sector_size)) as usize;
        check_range(sector, len, self.sector_size, self.capacity())?;
        // Discard is a hint: the contents stay as they were.
        Ok(())
    }
}
