//! The C memory primitives the compiler calls (`memcpy`, `memmove`,
//! `memset`, `memcmp`, `bcmp`), and the two unwinding symbols that the
//! precompiled `core`/`alloc` reference but never reach with `panic=abort`.
//!
//! They are written with string instructions in assembly: a plain Rust loop
//! would be recognised by LLVM and turned back into a call to `memcpy`,
//! recursing forever. The CPUs Skiff targets have fast short `rep movsb`.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`; the regions must not overlap.
///
/// # Safety
/// The C contract: both regions valid for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions are valid for `n` bytes;
    // the direction flag is clear per the ABI.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
/// The C contract: both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or the regions do not overlap: forward copy
        // never reads a byte it has already overwritten.
        // SAFETY: as for `memcpy`; forward copying is correct here.
        unsafe {
            asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags),
            );
        }
    } else {
        // `dest` overlaps the tail of `src`: copy backwards.
        // SAFETY: both regions are valid for `n` bytes, so the last byte of
        // each is at `ptr + n - 1`; the direction flag is restored before
        // returning, as the ABI requires.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.wrapping_add(n).wrapping_sub(1) => _,
                inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
                options(nostack),
            );
        }
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
/// The C contract: `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Compares `n` bytes; returns the difference of the first differing pair.
///
/// # Safety
/// The C contract: both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let left: usize;
    let pa: *const u8;
    let pb: *const u8;
    // SAFETY: both regions are valid for `n` bytes; `repe cmpsb` reads at
    // most `n` bytes of each and stops at the first difference.
    unsafe {
        asm!(
            "repe cmpsb",
            inout("rcx") n => left,
            inout("rsi") a => pa,
            inout("rdi") b => pb,
            options(nostack, readonly),
        );
    }
    let _ = left;
    // Both pointers have moved one past the last compared pair.
    // SAFETY: at least one pair was compared, so `p - 1` is inside each
    // region.
    let (x, y) = unsafe { (*pa.sub(1), *pb.sub(1)) };
    i32::from(x) - i32::from(y)
}

/// Like `memcmp`, but only equal or not matters.
///
/// # Safety
/// The C contract: both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core`; never called with `panic=abort`.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::abort::abort(skiff_abi::AbortReason::Other, "_Unwind_Resume reached")
}

/// Referenced by the precompiled `core`; never called with `panic=abort`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
