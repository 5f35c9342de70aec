//! Seeds for protocol randomness (TCP initial sequence numbers, ephemeral
//! ports, DHCP transaction ids).
//!
//! In a guest: `RDRAND` when the CPU has it, mixed with the TSC; otherwise
//! the TSC alone, which is unpredictable enough to spread ports and ids but
//! is no cryptographic source (TLS gets its own, checked source).

/// A 64-bit seed, different on every call.
pub fn seed() -> u64 {
    mix(source())
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(skiff_guest)]
fn source() -> u64 {
    // The TSC never repeats, so neither does the seed.
    crate::arch::cpu::rdtsc() ^ crate::arch::cpu::rdrand().unwrap_or(0)
}

#[cfg(not(skiff_guest))]
fn source() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::{mix, seed};

    #[test]
    fn seeds_are_distinct_and_every_bit_varies() {
        let seeds: std::vec::Vec<u64> = (0..1000).map(|_| seed()).collect();
        let distinct: std::collections::BTreeSet<u64> = seeds.iter().copied().collect();
        assert_eq!(distinct.len(), seeds.len(), "a seed repeated");
        // Each bit is set in about half of them (a standard deviation is
        // 16 of 1000; the bounds are nine away), so no port or id bit is
        // stuck.
        for bit in 0..64 {
            let set = seeds.iter().filter(|s| *s >> bit & 1 == 1).count();
            assert!((350..=650).contains(&set), "bit {bit} set in {set} of 1000 seeds");
        }
    }

    #[test]
    fn mixing_spreads_every_input_bit() {
        // Neighbouring inputs (successive TSC readings) give unrelated
        // seeds: one flipped input bit flips about half the output bits.
        for input in [0u64, 1, 0x1234_5678_9abc_def0, u64::MAX] {
            for bit in 0..64 {
                let flipped = (mix(input) ^ mix(input ^ (1 << bit))).count_ones();
                assert!((12..=52).contains(&flipped), "input {input:#x} bit {bit}: {flipped} output bits changed");
            }
        }
    }
}
