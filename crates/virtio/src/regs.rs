//! Register windows: the one trait a transport reads and writes its device
//! through, the volatile implementation for mapped MMIO, and room for a
//! simulated device in tests.

/// A device's register window (an MMIO region, or one of a PCI function's
/// capability windows). Offsets are bytes from the window's start; values
/// are little-endian as the device sees them.
pub trait Mmio {
    /// Reads a byte.
    fn read8(&mut self, offset: usize) -> u8;
    /// Reads a 16-bit register.
    fn read16(&mut self, offset: usize) -> u16;
    /// Reads a 32-bit register.
    fn read32(&mut self, offset: usize) -> u32;
    /// Writes a byte.
    fn write8(&mut self, offset: usize, value: u8);
    /// Writes a 16-bit register.
    fn write16(&mut self, offset: usize, value: u16);
    /// Writes a 32-bit register.
    fn write32(&mut self, offset: usize, value: u32);
}

/// A mapped MMIO window, accessed with volatile loads and stores.
pub struct VolatileMmio {
    base: usize,
    len: usize,
}

impl VolatileMmio {
    /// # Safety
    /// `base..base + len` must be a device's register window, mapped
    /// uncached and accessible for as long as the value lives, and used by
    /// nothing else.
    pub unsafe fn new(base: usize, len: usize) -> VolatileMmio {
        VolatileMmio { base, len }
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset.checked_add(size_of::<T>()).is_some_and(|end| end <= self.len)
                && offset.is_multiple_of(size_of::<T>()),
            "register access at {offset:#x} outside a {:#x}-byte window",
            self.len
        );
        core::ptr::with_exposed_provenance_mut(self.base + offset)
    }
}

impl Mmio for VolatileMmio {
    fn read8(&mut self, offset: usize) -> u8 {
        // SAFETY: inside the mapped window (`at` checks; `new`'s contract).
        unsafe { self.at::<u8>(offset).read_volatile() }
    }
    fn read16(&mut self, offset: usize) -> u16 {
        // SAFETY: as in `read8`; aligned.
        u16::from_le(unsafe { self.at::<u16>(offset).read_volatile() })
    }
    fn read32(&mut self, offset: usize) -> u32 {
        // SAFETY: as in `read8`; aligned.
        u32::from_le(unsafe { self.at::<u32>(offset).read_volatile() })
    }
    fn write8(&mut self, offset: usize, value: u8) {
        // SAFETY: as in `read8`.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }
    fn write16(&mut self, offset: usize, value: u16) {
        // SAFETY: as in `read8`; aligned.
        unsafe { self.at::<u16>(offset).write_volatile(value.to_le()) }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read8`; aligned.
        unsafe { self.at::<u32>(offset).write_volatile(value.to_le()) }
    }
}

impl<M: Mmio + ?Sized> Mmio for &mut M {
    fn read8(&mut self, offset: usize) -> u8 {
        (**self).read8(offset)
    }
    fn read16(&mut self, offset: usize) -> u16 {
        (**self).read16(offset)
    }
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write8(&mut self, offset: usize, value: u8) {
        (**self).write8(offset, value)
    }
    fn write16(&mut self, offset: usize, value: u16) {
        (**self).write16(offset, value)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
}
