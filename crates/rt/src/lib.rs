//! The Skiff guest runtime.
//!
//! A Skiff image is a service crate linked with this runtime into one static
//! ELF file. The runtime is split by privilege, because on the KVM these
//! machines run (PVM) guest ring-0 code is emulated instruction by
//! instruction and cannot execute SSE:
//!
//! - [`arch::supervisor`]: the ring-0 part, a few dozen hand-written
//!   instructions: GDT, TSS with the I/O bitmap that opens the hypercall
//!   ports, IDT, trap stubs that report CPU exceptions, the drop to ring 3.
//! - everything else runs in ring 3: [`start`] (boot in ring 3), [`heap`],
//!   [`time`] (TSC clock), [`console`] and [`logger`] (the `log` facade over
//!   the shared console ring), the panic handler, the [`executor`], and
//!   the platform the entry point chose: [`hvt`] (the tender's hypercalls)
//!   or [`virtio`] (a standard hypervisor through the PVH entry: COM1,
//!   `isa-debug-exit`, kvmclock, the APIC timer, virtio-net and virtio-rng).
//!
//! The tender builds the page tables on the host before the first
//! instruction, so the guest never walks page tables in ring 0.
//!
//! # Statics
//!
//! The runtime keeps four statics, each forced by Rust or by a facade it
//! serves: the global allocator, the `log` logger, the TSC calibration
//! written once at boot, and the entropy pool ([`random`]: getrandom's
//! backend is a free function); and one flag, set by the panic handler so a panic
//! inside a panic ends the guest at once. Devices, the executor and its
//! timers are values owned by the runtime and lent to the service.
//!
//! Host builds (without `--cfg skiff_guest`) contain only the portable
//! parts, for unit tests: there, time is a manual clock the test advances.
#![cfg_attr(skiff_guest, no_std)]
// Unsafe code lives only in the modules that allow it below: CPU and
// assembly (`arch`, `mem`), the heap, the boot path (`start`, `panic`),
// the hypercalls and shared memory (`hvt`, `console`, `nic`), the PVH
// entry's platform (`virtio`: linker symbols, the start info, kvmclock,
// device registers),
// the waker vtable (`executor`), and the statics of `logger` and `random`.
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(skiff_guest)]
#[allow(unsafe_code)]
pub mod arch;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
pub mod heap;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
pub mod hvt;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
mod mem;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
mod panic;
#[cfg(skiff_guest)]
mod platform;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
pub mod start;
#[cfg(skiff_guest)]
#[allow(unsafe_code)]
pub mod virtio;
#[cfg(skiff_guest)]
pub use platform::exit;

pub mod abort;
#[allow(unsafe_code)]
pub mod block;
#[allow(unsafe_code)]
pub mod console;
pub mod device;
pub mod entropy;
pub mod env;
#[allow(unsafe_code)]
pub mod executor;
pub mod fault;
#[allow(unsafe_code)]
pub mod logger;
pub mod main_result;
#[allow(unsafe_code)]
pub mod nic;
#[allow(unsafe_code)]
pub mod random;
pub mod time;
pub mod vdisk;

pub use block::{BlockDevice, BlockError};
pub use device::{DeviceError, NetDevice};

/// Heap figures (zero in host builds, which use the system allocator).
pub fn heap_size() -> usize {
    #[cfg(skiff_guest)]
    return heap::size();
    #[cfg(not(skiff_guest))]
    0
}

/// Bytes allocated now (zero in host builds).
pub fn heap_used() -> usize {
    #[cfg(skiff_guest)]
    return heap::used();
    #[cfg(not(skiff_guest))]
    0
}

/// The most bytes allocated at once (zero in host builds).
pub fn heap_peak() -> usize {
    #[cfg(skiff_guest)]
    return heap::peak();
    #[cfg(not(skiff_guest))]
    0
}
pub use env::Env;
pub use executor::{JoinHandle, Spawner};
pub use main_result::{ExitStatus, MainFuture, MainResult, boxed_main};
