//! The heap: all guest memory above the image and its stack.
//!
//! [`talc`] does the allocating; this wrapper remembers the last failed
//! request so the panic handler can tell an out-of-memory from any other
//! panic, and reports the heap's size in that message.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use talc::TalcLock;
use talc::source::Manual;

/// The global allocator.
pub struct Heap {
    talc: TalcLock<spinning_top::RawSpinlock, Manual>,
    size: AtomicUsize,
    failed_size: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

#[global_allocator]
static HEAP: Heap = Heap {
    talc: TalcLock::new(Manual),
    size: AtomicUsize::new(0),
    failed_size: AtomicUsize::new(0),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// Hands `[start, end)` to the allocator. Called once at boot.
///
/// # Safety
/// The range must be mapped, writable, unused by anything else, and stay
/// so for the life of the guest.
pub(crate) unsafe fn init(start: usize, end: usize) -> bool {
    let size = end.saturating_sub(start);
    // SAFETY: the caller hands over exclusive use of the range.
    let claimed = unsafe { HEAP.talc.lock().claim(start as *mut u8, size) };
    HEAP.size.store(size, Ordering::Relaxed);
    claimed.is_some()
}

/// Bytes handed to the allocator at boot.
pub fn size() -> usize {
    HEAP.size.load(Ordering::Relaxed)
}

/// Bytes allocated now (as requested; the allocator's own overhead and
/// fragmentation come on top).
pub fn used() -> usize {
    HEAP.used.load(Ordering::Relaxed)
}

/// The most bytes that were allocated at once since boot.
pub fn peak() -> usize {
    HEAP.peak.load(Ordering::Relaxed)
}

/// The size of the last allocation that failed, if the most recent
/// allocation attempt failed.
pub(crate) fn last_failure() -> Option<usize> {
    match HEAP.failed_size.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

impl Heap {
    /// Records the outcome of a request that would add `grown` bytes.
    fn note(&self, ptr: *mut u8, size: usize, grown: isize) -> *mut u8 {
        self.failed_size.store(if ptr.is_null() { size.max(1) } else { 0 }, Ordering::Relaxed);
        if !ptr.is_null() {
            let used = self.used.load(Ordering::Relaxed).saturating_add_signed(grown);
            self.used.store(used, Ordering::Relaxed);
            if used > self.peak.load(Ordering::Relaxed) {
                self.peak.store(used, Ordering::Relaxed);
            }
        }
        ptr
    }
}

// SAFETY: every method forwards to talc's `GlobalAlloc` implementation with
// the caller's arguments unchanged; the wrapper only records failures.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        let p = unsafe { self.talc.alloc(layout) };
        self.note(p, layout.size(), layout.size() as isize)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { self.talc.dealloc(ptr, layout) }
        let used = self.used.load(Ordering::Relaxed).saturating_sub(layout.size());
        self.used.store(used, Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { self.talc.alloc_zeroed(layout) };
        self.note(p, layout.size(), layout.size() as isize)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { self.talc.realloc(ptr, layout, new_size) };
        self.note(p, new_size, new_size as isize - layout.size() as isize)
    }
}
