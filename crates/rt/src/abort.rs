//! Ending the guest when the runtime cannot go on.

use skiff_abi::AbortReason;

/// Ends the guest for `reason`, handing `message` to the tender, which
/// prints it and exits with the reason's status. The console ring is
/// drained by that same exit, so nothing logged before is lost.
#[cfg(skiff_guest)]
pub fn abort(reason: AbortReason, message: &str) -> ! {
    crate::platform::abort(reason, message)
}

/// Host builds: aborting is a test failure.
#[cfg(not(skiff_guest))]
pub fn abort(reason: AbortReason, message: &str) -> ! {
    panic!("guest abort ({}): {message}", reason.describe())
}
