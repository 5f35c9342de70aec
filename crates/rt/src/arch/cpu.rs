//! Instructions ring-3 code uses directly.

use skiff_abi::Hypercall;

/// Makes a hypercall: one call through `skiff_hypercall_entry` (see
/// [`super::process`]), which under a VM executes `out` to the call's port
/// with the 32-bit address of its argument structure (zero for calls
/// without one), and in process mode is the tender's entry.
///
/// # Safety
/// `arg` must be zero or the address of a live argument structure of the
/// type the call expects, which the tender may read and write during the
/// call.
#[inline(always)]
pub unsafe fn hypercall(call: Hypercall, arg: u32) {
    // SAFETY: the caller's promise, for a known call.
    unsafe { raw_hypercall(call as u16, arg) }
}

/// [`hypercall`] with any call number, for tests of the tender's checks.
///
/// # Safety
/// As for [`hypercall`]; the tender ends the guest for a bad number or
/// argument, so this returns only for a good call.
#[inline(always)]
pub unsafe fn raw_hypercall(nr: u16, arg: u32) {
    // SAFETY: the word holds the `out` stub or, in process mode, the
    // tender's entry (written once at the process entry, before any Rust
    // code); both follow the C calling convention, which `clobber_abi`
    // declares, and the stack is aligned for a call (no `nostack`). The
    // tender reads and writes only the argument structure the caller
    // vouches for.
    unsafe {
        core::arch::asm!(
            "call qword ptr [rip + skiff_hypercall_entry]",
            in("edi") u32::from(nr),
            in("esi") arg,
            clobber_abi("C"),
        );
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the counter; it is allowed in ring 3
    // (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Raises an invalid-opcode exception, which the supervisor reports to the
/// tender as a CPU exception. For states that must never be reached.
pub fn trap() -> ! {
    // SAFETY: `ud2` only raises #UD; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// A random value from `RDRAND`, if the CPU has it and it delivers.
pub fn rdrand() -> Option<u64> {
    // CPUID leaf 1, ECX bit 30: RDRAND.
    let has = core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0;
    if !has {
        return None;
    }
    // SAFETY: CPUID says the instruction exists.
    unsafe { rdrand_step() }
}

#[target_feature(enable = "rdrand")]
fn rdrand_step() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..10 {
        if core::arch::x86_64::_rdrand64_step(&mut v) == 1 {
            return Some(v);
        }
    }
    None
}

/// A random value from `RDSEED`, if the CPU has it and it delivers (it can
/// run dry briefly under load; callers fall back or retry).
pub fn rdseed() -> Option<u64> {
    // CPUID leaf 7 (subleaf 0), EBX bit 18: RDSEED.
    if core::arch::x86_64::__cpuid(0).eax < 7 || core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 18) == 0 {
        return None;
    }
    // SAFETY: CPUID says the instruction exists.
    unsafe { rdseed_step() }
}

#[target_feature(enable = "rdseed")]
fn rdseed_step() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..100 {
        if core::arch::x86_64::_rdseed64_step(&mut v) == 1 {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// Writes `value` to I/O port `port`. Only the ports the PVH TSS opens
/// (`supervisor::PVH_PORTS`) are reachable from ring 3; any other raises
/// #GP, reported as a CPU exception.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: an `out` to a legacy port touches no guest memory; the TSS
    // I/O bitmap decides whether ring 3 may use the port.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes the 16-bit `value` to I/O ports `port` and `port + 1` (see
/// [`outb`] for which ports ring 3 may use).
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`: no guest memory is touched.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads I/O port `port` (see [`outb`] for which ports ring 3 may use).
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`: no guest memory is touched.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes the 32-bit `value` to I/O port `port` (see [`outb`]).
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`: no guest memory is touched.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads 32 bits from I/O port `port` (see [`outb`]).
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`: no guest memory is touched.
    unsafe {
        core::arch::asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}
