//! getrandom 0.2's interface, for Skiff guests.
//!
//! Crates written for getrandom 0.2 (ring, rand_core 0.6) call
//! [`getrandom`]; here it forwards to getrandom 0.3, which guests build with
//! `--cfg getrandom_backend="custom"` so that the bytes come from Skiff's
//! entropy pool (`skiff_rt::random`) and no system call is linked.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

use core::fmt;
use core::mem::MaybeUninit;
use core::num::NonZeroU32;

/// An error code, as in getrandom 0.2.
#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

impl Error {
    /// This target has no random source.
    pub const UNSUPPORTED: Error = Error::internal(0);
    /// The first code of errors internal to this crate.
    pub const INTERNAL_START: u32 = 1 << 31;
    /// The first code of errors from a custom source.
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    const fn internal(n: u16) -> Error {
        match NonZeroU32::new(Self::INTERNAL_START + n as u32) {
            Some(c) => Error(c),
            None => panic!("non-zero"),
        }
    }

    /// The OS error number, if this is one (never, here).
    pub fn raw_os_error(self) -> Option<i32> {
        None
    }

    /// The error code.
    pub const fn code(self) -> NonZeroU32 {
        self.0
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Error {
        Error(code)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error {{ code: {} }}", self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Error::UNSUPPORTED {
            f.write_str("no hardware random source")
        } else {
            write!(f, "random source failed (code {})", self.0)
        }
    }
}

impl core::error::Error for Error {}

fn convert(e: getrandom03::Error) -> Error {
    if e == getrandom03::Error::UNSUPPORTED {
        return Error::UNSUPPORTED;
    }
    NonZeroU32::new(Error::CUSTOM_START | (e.raw_os_error().unwrap_or(1) as u32 & 0xffff))
        .map_or(Error::UNSUPPORTED, Error)
}

/// Fills `dest` with random bytes.
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    getrandom03::fill(dest).map_err(convert)
}

/// Fills possibly uninitialised `dest` with random bytes and returns it
/// initialised.
pub fn getrandom_uninit(dest: &mut [MaybeUninit<u8>]) -> Result<&mut [u8], Error> {
    getrandom03::fill_uninit(dest).map_err(convert)
}
