//! Session tickets: the server encrypts resumption state with a key only it
//! knows and hands it to the client, so resuming needs no server memory.
//!
//! ChaCha20-Poly1305 with a random 96-bit nonce per ticket; a ticket is
//! `key name (16) || nonce (12) || ciphertext || tag (16)`. Keys come from
//! the entropy pool and rotate every [`LIFETIME`]: tickets made with the
//! previous key still open, older ones do not.

use crate::TlsError;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::server::ProducesTickets;
use skiff_rt::time::Instant;

/// How long one key encrypts tickets, and how long a ticket is good for.
pub const LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);

const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Tickets longer than this are refused before any decryption (rustls's own
/// state is a few hundred bytes).
const MAX_TICKET: usize = 4096;

struct Key {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
    made: Instant,
}

impl Key {
    fn new() -> Result<Key, TlsError> {
        let mut name = [0u8; NAME_LEN];
        let mut bytes = [0u8; 32];
        skiff_rt::random::fill(&mut name).map_err(TlsError::NoEntropy)?;
        skiff_rt::random::fill(&mut bytes).map_err(TlsError::NoEntropy)?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| {
            // A 32-byte key is always the right length for ChaCha20-Poly1305.
            TlsError::NoEntropy(skiff_rt::random::RandomError::HardwareFailed)
        })?;
        Ok(Key { name, key: LessSafeKey::new(unbound), made: Instant::now() })
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// Encrypts and decrypts session tickets with rotating keys.
pub struct Ticketer {
    keys: spinning_top::Spinlock<Keys>,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticketer")
    }
}

impl Ticketer {
    /// A ticketer with a fresh key.
    pub fn new() -> Result<Ticketer, TlsError> {
        Ok(Ticketer { keys: spinning_top::Spinlock::new(Keys { current: Key::new()?, previous: None }) })
    }

    fn rotate_if_due(keys: &mut Keys) {
        if keys.current.made.elapsed() < LIFETIME {
            return;
        }
        if let Ok(fresh) = Key::new() {
            keys.previous = Some(core::mem::replace(&mut keys.current, fresh));
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut keys = self.keys.lock();
        Self::rotate_if_due(&mut keys);
        let mut nonce = [0u8; NONCE_LEN];
        skiff_rt::random::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&keys.current.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        keys.current
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&keys.current.name), &mut body)
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() > MAX_TICKET || cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.lock();
        let key = [Some(&keys.current), keys.previous.as_ref()].into_iter().flatten().find(|k| k.name == name)?;
        if key.made.elapsed() >= LIFETIME * 2 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain_len = key.key.open_in_place(nonce, Aad::from(&key.name), &mut body).ok()?.len();
        body.truncate(plain_len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_forgeries_fail() {
        let t = Ticketer::new().unwrap();
        let sealed = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&sealed).as_deref(), Some(&b"session state"[..]));
        // Any flipped bit is refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i}");
        }
        // Another server's tickets do not open here.
        let other = Ticketer::new().unwrap();
        assert_eq!(other.decrypt(&sealed), None);
        assert_eq!(t.decrypt(&[0; 10]), None);
        assert_eq!(t.decrypt(&alloc::vec![0; MAX_TICKET + 1]), None);
    }
}
