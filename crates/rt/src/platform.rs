//! The platform the guest runs on, chosen by its entry point: the
//! tender's hvt entry (`_start`) or a standard hypervisor's PVH entry
//! (`skiff_pvh_start`, the virtio platform).
//!
//! Exiting and aborting are free functions (the panic handler and
//! `skiff::exit` have no value to hold a platform in), so the choice is
//! one flag, written once by the PVH boot path before anything else runs.

use core::sync::atomic::{AtomicBool, Ordering};
use skiff_abi::AbortReason;

static VIRTIO: AtomicBool = AtomicBool::new(false);

/// Records that the guest came in through the PVH entry.
pub(crate) fn enter_virtio() {
    VIRTIO.store(true, Ordering::Relaxed);
}

/// Ends the guest with `status` (`0..=99`).
pub fn exit(status: u8) -> ! {
    if VIRTIO.load(Ordering::Relaxed) { crate::virtio::exit(status) } else { crate::hvt::exit(status) }
}

/// Ends the guest for `reason`, with `message`.
pub(crate) fn abort(reason: AbortReason, message: &str) -> ! {
    if VIRTIO.load(Ordering::Relaxed) {
        crate::virtio::abort(reason, message)
    } else {
        crate::hvt::abort(reason, message)
    }
}
