//! The seeded transactions of the crash test, shared by the disk-test
//! guest (which runs them) and the boot test (which replays them to know
//! what the store must hold). Plain `core`, no allocation, so that both a
//! `no_std` guest and a host test can include it.

/// Keys the transactions touch.
pub const KEYS: u32 = 48;
/// The key that holds the number of the last transaction, in decimal.
pub const COUNTER: &[u8] = b"txn";
/// Longest value a transaction writes (longer than a leaf's inline limit,
/// so some values live in value pages).
pub const MAX_VALUE: usize = 3000;

/// One operation of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Set key `key` to a value of `len` bytes (see [`fill_value`]).
    Put { key: u32, len: usize },
    /// Remove key `key`.
    Delete { key: u32 },
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The operations of transaction `t` (1, 2, ...) of workload `seed`: one
/// to six puts and deletes.
pub fn ops(seed: u64, t: u64) -> impl Iterator<Item = Op> {
    let base = mix(seed ^ mix(t));
    let n = 1 + base % 6;
    (0..n).map(move |i| {
        let r = mix(base ^ mix(i + 1));
        let key = (r % u64::from(KEYS)) as u32;
        if (r >> 16).is_multiple_of(4) {
            Op::Delete { key }
        } else {
            // Mostly small values, some of several pages.
            let len =
                if (r >> 24).is_multiple_of(5) { (r >> 32) as usize % MAX_VALUE } else { (r >> 32) as usize % 200 };
            Op::Put { key, len }
        }
    })
}

/// The name of key `key`: `k` and four digits.
pub fn key_name(key: u32) -> [u8; 5] {
    let mut k = *b"k0000";
    let mut n = key;
    for d in k[1..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// The value that transaction `t` puts under `key`: `len` bytes (the buffer's
/// length) derived from all three.
pub fn fill_value(seed: u64, t: u64, key: u32, buf: &mut [u8]) {
    let start = mix(seed ^ mix(t ^ (u64::from(key) << 40)));
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = mix(start ^ i as u64).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}
