//! Guest memory: one anonymous mapping, and the only place that turns guest
//! addresses into host memory accesses.
//!
//! Every access names a guest-physical address and a length and is checked
//! against the mapping before any byte moves; a bad one is a
//! [`MemoryError`], which the callers turn into "the guest misbehaved"
//! (for hypercall arguments) or "the image is broken" (for loading). Reads
//! copy out and writes copy in; the only references into guest memory that
//! leave this module are to atomic integers ([`GuestMemory::atomic_u32`]),
//! for the indices of the shared-memory rings.
//!
//! Concurrency: guest memory can change under the tender at any time. The
//! vCPU thread touches it while the vCPU is stopped, but the network I/O
//! thread and the monitor touch the rings and the shared area while the
//! guest runs (see [`crate::rings`] for the ring protocol and its
//! ordering). So every copy in or out is made with volatile accesses, each
//! byte read once into host memory, and only that host copy is ever
//! checked or used: nothing here assumes guest bytes stay as they were. A
//! guest that breaks the protocol can only garble its own frames, which the
//! tender treats as plain data.

use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddr(pub u64);

impl std::fmt::Display for GuestAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A guest access outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The range `[addr, addr + len)` is not inside guest memory.
    #[error("{len} bytes at guest address {addr} are outside guest memory ({size:#x} bytes)")]
    OutOfRange {
        /// Start of the access.
        addr: GuestAddr,
        /// Length of the access.
        len: u64,
        /// Size of guest memory.
        size: u64,
    },
    /// Process mode: guest addresses could not be mapped at their own
    /// addresses in the tender.
    #[error(
        "cannot map guest addresses {low:#x}..{size:#x} at the same addresses in the tender (errno {errno}): \
         something else is mapped there, or vm.mmap_min_addr is above {low:#x}"
    )]
    MapAt {
        /// First address.
        low: u64,
        /// One past the last.
        size: u64,
        /// `errno` of the failed `mmap`.
        errno: i32,
    },
    /// Process mode: a protection could not be set.
    #[error("cannot set the protection of guest addresses {start:#x}..{end:#x} (errno {errno})")]
    Protect {
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
        /// `errno` of the failed `mprotect`.
        errno: i32,
    },
    /// The host could not reserve the memory.
    #[error("cannot reserve {size} bytes of guest memory: {errno}")]
    Map {
        /// Bytes requested.
        size: u64,
        /// `errno` of the failed `mmap`.
        errno: i32,
    },
}

/// Plain-old-data types that may be copied to and from guest memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no padding, no pointers or
/// references, and be valid for every bit pattern.
pub unsafe trait Pod: Copy {}

// SAFETY: all four are #[repr(C)] structs of u32/u64 fields laid out without
// padding (their sizes are asserted by skiff-abi's tests), valid for any
// bit pattern.
unsafe impl Pod for skiff_abi::WalltimeArgs {}
// SAFETY: as above.
unsafe impl Pod for skiff_abi::PollArgs {}
// SAFETY: as above.
unsafe impl Pod for skiff_abi::ExitArgs {}
// SAFETY: as above.
unsafe impl Pod for skiff_abi::AbortArgs {}
// SAFETY: as above.
unsafe impl Pod for skiff_abi::FaultFrame {}
// SAFETY: as above.
unsafe impl Pod for skiff_abi::NetNotifyArgs {}
// SAFETY: two u32s, no padding.
unsafe impl Pod for skiff_abi::BlockNotifyArgs {}
// SAFETY: repr(C) u32, u32, u64, u32, u32, u64: no padding; any bits valid.
unsafe impl Pod for skiff_abi::blk::Request {}
// SAFETY: #[repr(C)], every field an integer or an array of them (the
// devices are DeviceInfo, u32s and byte arrays), laid out without padding:
// skiff-abi's tests pin its size and offsets.
unsafe impl Pod for skiff_abi::BootInfo {}
// SAFETY: integers are valid for every bit pattern and have no padding.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}

/// The guest's RAM, mapped into the tender at one address.
///
/// Under KVM it is all of `[0, size)` at an address of the kernel's
/// choosing. In process mode it is `[low, size)` mapped at the same
/// addresses in the tender ([`GuestMemory::new_at`]): the guest runs in the
/// tender's address space, so a guest address is the host address, and
/// nothing below `low` exists.
pub struct GuestMemory {
    /// The host address of guest address `low`.
    base: NonNull<u8>,
    low: u64,
    size: u64,
}

// SAFETY: the mapping is owned by this value and only accessed through it;
// moving it to another thread moves the only handle.
unsafe impl Send for GuestMemory {}

// SAFETY: every accessor copies bytes (valid for any value) or hands out
// atomics; no accessor creates a non-atomic reference into the mapping, so
// concurrent use from the vCPU and I/O threads cannot break any Rust
// invariant. Which bytes each thread touches is governed by the ring
// protocol (see the module documentation).
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Reserves `size` bytes of zeroed, private memory. Pages are only
    /// backed by the host when first touched.
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::Map { size, errno: libc::EOVERFLOW })?;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing aliases nothing; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map { size, errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0) });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(MemoryError::Map { size, errno: libc::EINVAL })?;
        Ok(GuestMemory { base, low: 0, size })
    }

    /// Process mode: maps guest addresses `[low, size)` at the same host
    /// addresses, zeroed, private and readable and writable (the caller
    /// sets the final protections with [`GuestMemory::protect`]). Fails if
    /// anything of the tender's is mapped there already.
    pub fn new_at(low: u64, size: u64) -> Result<GuestMemory, MemoryError> {
        let err = |errno| MemoryError::MapAt { low, size, errno };
        if low == 0 || !low.is_multiple_of(4096) || low >= size {
            return Err(err(libc::EINVAL));
        }
        let len = usize::try_from(size - low).map_err(|_| err(libc::EOVERFLOW))?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping (it
        // fails with EEXIST instead), so this aliases nothing of ours; the
        // result is checked.
        let ptr = unsafe {
            libc::mmap(
                low as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)));
        }
        if ptr as u64 != low {
            // A kernel older than 4.17 takes the flag as a hint.
            // SAFETY: the mapping just made, which nothing else refers to.
            unsafe { libc::munmap(ptr, len) };
            return Err(err(libc::EEXIST));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(err(libc::EINVAL))?;
        Ok(GuestMemory { base, low, size })
    }

    /// Process mode: gives the pages of `[start, end)` the protection
    /// `prot` (`PROT_*` bits) for the guest, which runs in this address
    /// space. The tender itself then writes only where the guest may (the
    /// hypercall checks) and reads only readable pages.
    pub fn protect(&self, start: u64, end: u64, prot: i32) -> Result<(), MemoryError> {
        let offset = self.check(GuestAddr(start), end.saturating_sub(start))?;
        if !start.is_multiple_of(4096) || !end.is_multiple_of(4096) {
            return Err(MemoryError::OutOfRange { addr: GuestAddr(start), len: end - start, size: self.size });
        }
        // SAFETY: a page-aligned range inside our own mapping (checked); a
        // protection change moves no memory, and no reference into the
        // mapping leaves this module except the ring atomics, which only
        // live in pages that stay writable.
        let rc = unsafe { libc::mprotect(self.base.as_ptr().add(offset).cast(), (end - start) as usize, prot) };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(MemoryError::Protect { start, end, errno });
        }
        Ok(())
    }

    /// The lowest guest address with memory behind it (0 under KVM).
    pub fn low(&self) -> u64 {
        self.low
    }

    /// Bytes of guest memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host address of guest address 0, for registering with KVM.
    pub fn host_base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Maps `len` bytes of `file` from `offset` at guest address `addr`,
    /// private and copy on write (the guest may write; the file never
    /// changes), in place of the zeroed memory there: the pages come from
    /// the page cache, shared by every mapping of the file. `addr`,
    /// `offset` and `len` are page multiples.
    pub fn map_file(&self, addr: GuestAddr, len: u64, file: &std::fs::File, offset: u64) -> Result<(), MemoryError> {
        use std::os::fd::AsRawFd;
        let at = self.check(addr, len)?;
        let page = 4096;
        if !(addr.0.is_multiple_of(page) && offset.is_multiple_of(page) && len.is_multiple_of(page)) {
            return Err(MemoryError::OutOfRange { addr, len, size: self.size });
        }
        let off = libc::off_t::try_from(offset).map_err(|_| MemoryError::Map { size: len, errno: libc::EOVERFLOW })?;
        // SAFETY: `check` proved the range lies inside the mapping this
        // value owns, and MAP_FIXED replaces exactly those pages with a
        // private mapping of the same protection; no Rust reference into
        // guest memory exists (accessors copy or use atomics).
        let ptr = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                size: len,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        Ok(())
    }

    /// Bytes of guest memory the host has backed so far (pages the guest or
    /// the tender touched), or `None` if the kernel will not say.
    pub fn resident_bytes(&self) -> Option<u64> {
        let page = 4096u64;
        let len = self.size - self.low;
        let pages = len.div_ceil(page) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: `base`/`len` describe our own live mapping, page aligned
        // (mmap returns page-aligned addresses); `vec` has one byte per page
        // as mincore requires.
        let rc = unsafe { libc::mincore(self.base.as_ptr().cast(), len as usize, vec.as_mut_ptr()) };
        (rc == 0).then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page)
    }

    /// Checks `[addr, addr + len)` and returns its offset.
    pub fn check(&self, addr: GuestAddr, len: u64) -> Result<usize, MemoryError> {
        match addr.0.checked_add(len) {
            Some(end) if end <= self.size && addr.0 >= self.low => Ok((addr.0 - self.low) as usize),
            _ => Err(MemoryError::OutOfRange { addr, len, size: self.size }),
        }
    }

    /// Copies `out.len()` bytes from guest memory.
    pub fn read(&self, addr: GuestAddr, out: &mut [u8]) -> Result<(), MemoryError> {
        let offset = self.check(addr, out.len() as u64)?;
        // SAFETY: `check` proved the range is inside the mapping, which
        // lives as long as `self`; `out` is a distinct host buffer.
        unsafe { copy_out(self.base.as_ptr().add(offset), out) };
        Ok(())
    }

    /// Copies `len` bytes from guest memory into a new vector.
    pub fn read_vec(&self, addr: GuestAddr, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(addr, len)?;
        let mut v = vec![0; len as usize];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Copies `data` into guest memory.
    pub fn write(&self, addr: GuestAddr, data: &[u8]) -> Result<(), MemoryError> {
        let offset = self.check(addr, data.len() as u64)?;
        // SAFETY: `check` proved the range is inside the mapping, which this
        // value owns; `data` is a distinct host buffer.
        unsafe { copy_in(data, self.base.as_ptr().add(offset)) };
        Ok(())
    }

    /// The `u32` at `addr` as an atomic, for ring indices shared with the
    /// running guest. `addr` must be 4-byte aligned.
    pub fn atomic_u32(&self, addr: GuestAddr) -> Result<&AtomicU32, MemoryError> {
        let offset = self.check(addr, 4)?;
        if !addr.0.is_multiple_of(4) {
            return Err(MemoryError::OutOfRange { addr, len: 4, size: self.size });
        }
        // SAFETY: the 4 bytes are inside the mapping (checked) and aligned
        // (checked; the mapping itself is page aligned); the mapping lives
        // as long as `self`, which bounds the returned reference; every
        // access through it is atomic, and the guest's own accesses to ring
        // indices are aligned 32-bit accesses, atomic on x86.
        Ok(unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) })
    }

    /// Reads a plain-old-data value.
    pub fn read_obj<T: Pod>(&self, addr: GuestAddr) -> Result<T, MemoryError> {
        let mut value = std::mem::MaybeUninit::<T>::zeroed();
        // SAFETY: the storage is zeroed, so initialised, bytes; `T: Pod` has
        // no padding and is valid for any bytes, so the storage may be viewed
        // as bytes, filled with any, and then read as a `T`.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), std::mem::size_of::<T>());
            self.read(addr, bytes)?;
            Ok(value.assume_init())
        }
    }

    /// Writes a plain-old-data value.
    pub fn write_obj<T: Pod>(&self, addr: GuestAddr, value: &T) -> Result<(), MemoryError> {
        // SAFETY: `T: Pod` has no padding, so all its bytes are initialised.
        let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) };
        self.write(addr, bytes)
    }
}

/// Copies guest bytes at `src` into `out` with volatile reads: eight bytes
/// at a time where `src` is 8-byte aligned (frame slots are), else one by
/// one.
///
/// # Safety
/// `src..src + out.len()` must be inside a live mapping.
unsafe fn copy_out(src: *const u8, out: &mut [u8]) {
    let mut i = 0;
    if src.align_offset(8) == 0 {
        while i + 8 <= out.len() {
            // SAFETY: in range (caller), and aligned: `src` is, and `i` is a
            // multiple of 8.
            let word = unsafe { src.add(i).cast::<u64>().read_volatile() };
            out[i..i + 8].copy_from_slice(&word.to_ne_bytes());
            i += 8;
        }
    }
    for (k, b) in out.iter_mut().enumerate().skip(i) {
        // SAFETY: in range (caller).
        *b = unsafe { src.add(k).read_volatile() };
    }
}

/// Copies `data` to guest bytes at `dst` with volatile writes, like
/// [`copy_out`].
///
/// # Safety
/// `dst..dst + data.len()` must be inside a live, writable mapping.
unsafe fn copy_in(data: &[u8], dst: *mut u8) {
    let mut i = 0;
    if dst.align_offset(8) == 0 {
        while i + 8 <= data.len() {
            let word = u64::from_ne_bytes(data[i..i + 8].try_into().expect("8 bytes"));
            // SAFETY: in range (caller), and aligned: `dst` is, and `i` is a
            // multiple of 8.
            unsafe { dst.add(i).cast::<u64>().write_volatile(word) };
            i += 8;
        }
    }
    for (k, &b) in data.iter().enumerate().skip(i) {
        // SAFETY: in range (caller).
        unsafe { dst.add(k).write_volatile(b) };
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `base`, `low` and `size` describe the mapping made in
        // `new` or `new_at`, which no reference outlives (none ever leaves
        // this module).
        unsafe { libc::munmap(self.base.as_ptr().cast(), (self.size - self.low) as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_memory_is_zero_and_round_trips() {
        let m = GuestMemory::new(1 << 20).unwrap();
        assert_eq!(m.read_obj::<u64>(GuestAddr(0x1000)).unwrap(), 0);
        m.write_obj(GuestAddr(0x1003), &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(m.read_obj::<u64>(GuestAddr(0x1003)).unwrap(), 0x1122_3344_5566_7788);
        m.write(GuestAddr(10), b"skiff").unwrap();
        assert_eq!(m.read_vec(GuestAddr(10), 5).unwrap(), b"skiff");
    }

    #[test]
    fn copies_of_every_length_and_alignment_round_trip() {
        let m = GuestMemory::new(1 << 20).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        for start in 0x2000..0x2010u64 {
            for len in [0usize, 1, 7, 8, 9, 16, 17, 63, 64, 100] {
                m.write(GuestAddr(start), &data[..len]).unwrap();
                assert_eq!(m.read_vec(GuestAddr(start), len as u64).unwrap(), &data[..len], "at {start:#x}, {len}");
            }
        }
    }

    #[test]
    fn atomics_need_alignment_and_range() {
        use std::sync::atomic::Ordering;
        let m = GuestMemory::new(1 << 20).unwrap();
        m.atomic_u32(GuestAddr(0x100)).unwrap().store(7, Ordering::Release);
        assert_eq!(m.read_obj::<u32>(GuestAddr(0x100)).unwrap(), 7);
        assert!(m.atomic_u32(GuestAddr(0x101)).is_err());
        assert!(m.atomic_u32(GuestAddr((1 << 20) - 2)).is_err());
    }

    #[test]
    fn resident_bytes_count_touched_pages() {
        let m = GuestMemory::new(1 << 20).unwrap();
        assert_eq!(m.resident_bytes(), Some(0));
        m.write(GuestAddr(0x3000), b"x").unwrap();
        m.write(GuestAddr(0x8000), b"y").unwrap();
        assert_eq!(m.resident_bytes(), Some(2 * 4096));
    }

    #[test]
    fn accesses_past_the_end_or_wrapping_are_refused() {
        let m = GuestMemory::new(1 << 20).unwrap();
        assert!(m.read_obj::<u64>(GuestAddr((1 << 20) - 8)).is_ok());
        assert!(matches!(m.read_obj::<u64>(GuestAddr((1 << 20) - 7)), Err(MemoryError::OutOfRange { .. })));
        assert!(m.read_vec(GuestAddr(u64::MAX - 2), 8).is_err());
        assert!(m.write(GuestAddr(1 << 20), b"x").is_err());
        assert!(m.write(GuestAddr(1 << 20), b"").is_ok(), "an empty access at the end is in range");
        assert!(m.check(GuestAddr(0), u64::MAX).is_err());
    }
}
