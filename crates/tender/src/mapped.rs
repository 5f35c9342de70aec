//! A read-only, private mapping of an image file: its pages come from the
//! page cache, so every tender running the same image shares one copy of
//! it instead of holding its own (about 2 MiB for the static website,
//! which counts for every instance on a host that runs hundreds).
//!
//! Images must be replaced, not rewritten in place, while tenders run
//! them (linkers and cargo write a new file and rename it): a file cut
//! short under a mapping ends a later read of the missing pages with
//! `SIGBUS`. Only the loader and fault reports read the bytes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A file mapped read-only.
pub struct MappedFile {
    base: NonNull<u8>,
    len: usize,
    file: File,
}

// SAFETY: the mapping is read-only and owned by this value alone; sharing
// or moving it between threads only shares immutable bytes.
unsafe impl Send for MappedFile {}
// SAFETY: as above: no method writes through the mapping.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (`len` > 0, at most its size).
    pub fn map(file: File, len: usize) -> std::io::Result<MappedFile> {
        if len == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new private read-only mapping at an address of the
        // kernel's choosing aliases no Rust object; the result is checked.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(MappedFile { base, len, file })
    }

    /// The mapped file, for mapping parts of it elsewhere (guest memory).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `base` points at `len` mapped, readable bytes that live
        // until `drop`; the mapping is never written (module docs: the
        // file is replaced, not rewritten, while it runs).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `map` made; no slice of it
        // outlives `self` (they borrow it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_a_file_and_refuses_an_empty_length() {
        let path = std::env::temp_dir().join(format!("skiff-mapped-{}", std::process::id()));
        std::fs::File::create(&path).unwrap().write_all(b"\x7fELF and more").unwrap();
        let m = MappedFile::map(File::open(&path).unwrap(), 13).unwrap();
        assert_eq!(&m[..], b"\x7fELF and more");
        assert!(MappedFile::map(File::open(&path).unwrap(), 0).is_err());
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
