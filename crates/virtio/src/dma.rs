//! Memory shared with a device: page-aligned, zeroed allocations from the
//! global allocator, read and written with volatile accesses because the
//! device writes them behind the compiler's back.

use crate::Error;
use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::NonNull;

/// Alignment of every DMA buffer (a page: legacy queues need it).
pub const DMA_ALIGN: usize = 4096;

/// An owned, zeroed, page-aligned buffer the device may read and write.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory like a `Box<[u8]>`; the raw pointer
// only stands in for the device's concurrent access.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// Allocates `len` (> 0) zeroed bytes.
    pub fn zeroed(len: usize) -> Result<DmaBuf, Error> {
        let layout = Layout::from_size_align(len.max(1), DMA_ALIGN).map_err(|_| Error::NoMemory(len))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(Error::NoMemory(len))?;
        Ok(DmaBuf { ptr, len: len.max(1) })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a buffer holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address the device uses for byte `offset` (identity mapping).
    pub fn addr(&self, offset: usize) -> u64 {
        assert!(offset <= self.len);
        (self.ptr.as_ptr().expose_provenance() + offset) as u64
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()),
            "DMA access out of bounds"
        );
        // SAFETY: in bounds (checked above) of one allocation.
        unsafe { self.ptr.as_ptr().add(offset).cast() }
    }

    /// Reads a little-endian `u16` at `offset` (aligned).
    pub fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: `at` checked bounds and alignment; the memory is ours and
        // initialised (zeroed at allocation).
        u16::from_le(unsafe { self.at::<u16>(offset).read_volatile() })
    }

    /// Reads a little-endian `u32` at `offset` (aligned).
    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read_u16`.
        u32::from_le(unsafe { self.at::<u32>(offset).read_volatile() })
    }

    /// Writes a little-endian `u16` at `offset` (aligned).
    pub fn write_u16(&mut self, offset: usize, value: u16) {
        // SAFETY: `at` checked bounds and alignment; we own the memory.
        unsafe { self.at::<u16>(offset).write_volatile(value.to_le()) }
    }

    /// Writes a little-endian `u32` at `offset` (aligned).
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `write_u16`.
        unsafe { self.at::<u32>(offset).write_volatile(value.to_le()) }
    }

    /// Writes a little-endian `u64` at `offset` (aligned).
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        // SAFETY: as in `write_u16`.
        unsafe { self.at::<u64>(offset).write_volatile(value.to_le()) }
    }

    /// The bytes `offset..offset + len`. Only for bytes the device has
    /// handed back (a used chain) or has not been given.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "DMA slice out of bounds");
        // SAFETY: in bounds, initialised, and not written by the device while
        // borrowed (the caller's rule above).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// The bytes `offset..offset + len`, writable; same rule as [`bytes`](Self::bytes).
    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "DMA slice out of bounds");
        // SAFETY: in bounds, initialised, uniquely borrowed through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout. A driver resets its
        // device before dropping its queues, so the device no longer uses it.
        unsafe { dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, DMA_ALIGN)) }
    }
}
