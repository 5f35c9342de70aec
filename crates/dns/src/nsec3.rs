//! NSEC3 hashing (RFC 5155 section 5) and the base32hex owner labels.

use alloc::vec::Vec;

use domain::base::name::Name;
use sha1::{Digest, Sha1};

/// The most hash iterations served: RFC 9276 says 0, and validators treat
/// more than 150 as insecure; beyond this the zone's NSEC3 proofs are left
/// out rather than spending the CPU.
pub const MAX_ITERATIONS: u16 = 500;

/// The NSEC3 hash of `name` (lowercased, wire format) with `salt` and
/// `iterations` extra rounds.
pub fn hash(name: &Name<[u8]>, salt: &[u8], iterations: u16) -> Vec<u8> {
    let mut wire: Vec<u8> = name.as_slice().to_vec();
    // Lowercase the labels' bytes, not the length octets.
    let mut i = 0;
    while i < wire.len() {
        let len = usize::from(wire[i]);
        for b in &mut wire[i + 1..i + 1 + len] {
            b.make_ascii_lowercase();
        }
        i += len + 1;
    }
    let mut h = Sha1::new();
    h.update(&wire);
    h.update(salt);
    let mut digest = h.finalize();
    for _ in 0..iterations {
        let mut h = Sha1::new();
        h.update(digest);
        h.update(salt);
        digest = h.finalize();
    }
    digest.to_vec()
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'v' => Some(c - b'a' + 10),
        b'A'..=b'V' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes an unpadded base32hex label (RFC 4648 section 7), any case.
pub fn base32hex_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        acc = (acc << 5) | u32::from(value(c)?);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of less than a byte.
    if bits >= 5 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5155_appendix_a_hashes() {
        // RFC 5155 appendix A: salt aabbccdd, 12 iterations.
        let salt = [0xaa, 0xbb, 0xcc, 0xdd];
        let cases = [
            ("example.", "0p9mhaveqvm6t7vbl5lop2u3t2rp3tom"),
            ("a.example.", "35mthgpgcu1qg68fab165klnsnk3dpvl"),
            ("ai.example.", "gjeqe526plbf1g8mklp59enfd789njgi"),
            ("*.w.example.", "r53bq7cc2uvmubfu5ocmm6pers9tk9en"),
        ];
        for (name, expect) in cases {
            let n: Name<Vec<u8>> = name.parse().unwrap();
            let h = hash(n.for_slice(), &salt, 12);
            assert_eq!(h, base32hex_decode(expect.as_bytes()).unwrap(), "{name}");
        }
    }

    #[test]
    fn base32hex_rejects_bad_input() {
        assert_eq!(base32hex_decode(b"00"), Some(alloc::vec![0]));
        assert!(base32hex_decode(b"0w").is_none());
        assert!(base32hex_decode(b"0").is_none());
    }
}
