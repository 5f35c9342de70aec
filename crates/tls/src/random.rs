//! Randomness for TLS: Skiff's entropy pool (hardware-seeded ChaCha20), as
//! rustls's `SecureRandom`. *ring*'s own key generation reaches the same
//! pool through getrandom.

use crate::TlsError;
use rustls::crypto::{GetRandomFailed, SecureRandom};

/// Fails unless the CPU has a hardware entropy source and it delivers.
/// [`crate::TlsAcceptor::new`] and [`crate::TlsConnector::new`] call it, so
/// TLS never starts on weak randomness.
pub fn check() -> Result<skiff_rt::random::HardwareSource, TlsError> {
    let source = skiff_rt::random::hardware_source().map_err(TlsError::NoEntropy)?;
    let mut probe = [0u8; 16];
    skiff_rt::random::fill(&mut probe).map_err(TlsError::NoEntropy)?;
    Ok(source)
}

/// rustls's random source: [`skiff_rt::random::fill`].
#[derive(Debug)]
pub struct PoolRandom;

impl SecureRandom for PoolRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        skiff_rt::random::fill(buf).map_err(|_| GetRandomFailed)
    }
}
