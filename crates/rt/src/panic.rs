//! The panic handler: message and location on the console, then an abort
//! with the panic status (or the out-of-memory status when an allocation
//! failed).

use crate::logger::LOGGER;
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};
use skiff_abi::AbortReason;

/// A fixed buffer: the panic path must not allocate.
struct Buf {
    bytes: [u8; 1024],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Buf {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("(panic message is not UTF-8)")
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        crate::platform::abort(AbortReason::Panic, "panicked while panicking");
    }
    let mut buf = Buf { bytes: [0; 1024], len: 0 };
    let _ = write!(buf, "{}", info.message());
    // The default allocation-error handler panics with this message; the
    // heap's record tells it apart from a service's own text.
    let oom = crate::heap::last_failure().filter(|_| buf.as_str().starts_with("memory allocation of"));
    buf.len = 0;
    let reason = match oom {
        Some(size) => {
            let _ = write!(
                buf,
                "out of memory: an allocation of {size} bytes failed (heap: {} KiB, {} KiB in use; \
                 give the guest more with --mem)",
                crate::heap::size() / 1024,
                crate::heap::used() / 1024
            );
            AbortReason::OutOfMemory
        }
        None => {
            let _ = write!(buf, "panicked");
            if let Some(loc) = info.location() {
                let _ = write!(buf, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
            }
            let _ = write!(buf, ": {}", info.message());
            AbortReason::Panic
        }
    };
    LOGGER.write_raw(b"\n");
    LOGGER.write_raw(buf.as_str().as_bytes());
    LOGGER.write_raw(b"\n");
    crate::platform::abort(reason, buf.as_str())
}
