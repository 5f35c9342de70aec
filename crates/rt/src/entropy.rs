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
    #[test]
    fn seeds_differ() {
        assert_ne!(super::seed(), super::seed());
        assert_ne!(super::mix(1), super::mix(2));
    }
}
