//! Cryptographic randomness for the guest: keys, nonces, TLS.
//!
//! The CPU's entropy source seeds a ChaCha20 generator: `RDSEED` (raw
//! conditioned entropy) when the CPU has it, `RDRAND` (the CPU's own
//! hardware-reseeded generator) otherwise, both checked with CPUID; on a
//! CPU with neither, an entropy device the platform installed
//! ([`EntropyDevice`]: virtio-rng under a standard hypervisor). There is
//! no fallback to anything weaker: without any, [`fill`] fails with
//! [`RandomError::NoHardwareSource`], and what needs randomness (TLS)
//! refuses to start.
//!
//! The generator erases its key after every request (the next key is the
//! first 32 bytes of the next block, so earlier output cannot be recomputed
//! from the state) and mixes in fresh hardware entropy every
//! [`RESEED_BYTES`] of output.
//!
//! This is the guest's one entropy pool, like a kernel's: crates reach it
//! through the `getrandom` custom backend (getrandom 0.3, and 0.2 through
//! the forwarding crate `skiff build` patches in), so it lives in a static
//! behind a lock rather than in a value the service owns. On one core with
//! a cooperative executor the lock is never contended.
//!
//! Host builds (unit tests) run the same pool, with the operating system's
//! generator standing in for the hardware instruction.

use core::fmt;

/// Output after which hardware entropy is mixed in again.
pub const RESEED_BYTES: u64 = 1 << 20;

/// Why no random bytes could be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomError {
    /// CPUID shows neither RDSEED nor RDRAND.
    NoHardwareSource,
    /// The hardware source kept failing (or returned a stuck value).
    HardwareFailed,
    /// The entropy device failed (it said why in the log).
    DeviceFailed,
}

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RandomError::NoHardwareSource => f.write_str(
                "the CPU has no hardware random source (RDSEED or RDRAND) and there is no entropy device \
                 (virtio-rng); refusing to use a weaker one",
            ),
            RandomError::HardwareFailed => f.write_str("the CPU's hardware random source kept failing"),
            RandomError::DeviceFailed => f.write_str("the entropy device (virtio-rng) failed"),
        }
    }
}

impl core::error::Error for RandomError {}

/// Which instruction seeds the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareSource {
    /// `RDSEED`: entropy straight from the conditioner.
    Rdseed,
    /// `RDRAND`: the CPU's hardware-reseeded generator.
    Rdrand,
    /// The hypervisor's entropy device (virtio-rng).
    VirtioRng,
}

/// An entropy device (virtio-rng) that seeds the pool when the CPU has no
/// RDSEED or RDRAND, or when the platform prefers it.
pub trait EntropyDevice: Send {
    /// Fills `out` with entropy; on failure the device logs why.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError>;
}

impl fmt::Display for HardwareSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardwareSource::Rdseed => "RDSEED",
            HardwareSource::Rdrand => "RDRAND",
            HardwareSource::VirtioRng => "virtio-rng",
        })
    }
}

/// Fills `dest` with cryptographically secure random bytes.
pub fn fill(dest: &mut [u8]) -> Result<(), RandomError> {
    imp::fill(dest)
}

/// A random `u64`.
pub fn next_u64() -> Result<u64, RandomError> {
    let mut b = [0u8; 8];
    fill(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The hardware source the generator uses, or why there is none.
pub fn hardware_source() -> Result<HardwareSource, RandomError> {
    imp::hardware_source()
}

/// A ChaCha20 generator with fast key erasure and periodic reseeding, fed
/// by `seed`. Portable, so that host tests exercise the same code.
pub struct Generator {
    rng: rand_chacha::ChaCha20Rng,
    since_reseed: u64,
}

impl Generator {
    /// A generator keyed with `seed`.
    pub fn new(seed: [u8; 32]) -> Generator {
        use rand_chacha::rand_core::SeedableRng;
        Generator { rng: rand_chacha::ChaCha20Rng::from_seed(seed), since_reseed: 0 }
    }

    /// Fills `dest`, then replaces the key. `reseed` is asked for 32 bytes
    /// of fresh entropy every [`RESEED_BYTES`].
    pub fn fill(
        &mut self,
        dest: &mut [u8],
        reseed: impl FnOnce(&mut [u8; 32]) -> Result<(), RandomError>,
    ) -> Result<(), RandomError> {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        if self.since_reseed >= RESEED_BYTES {
            let mut fresh = [0u8; 32];
            reseed(&mut fresh)?;
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            for (k, f) in key.iter_mut().zip(fresh) {
                *k ^= f;
            }
            self.rng = rand_chacha::ChaCha20Rng::from_seed(key);
            self.since_reseed = 0;
        }
        self.rng.fill_bytes(dest);
        let mut next = [0u8; 32];
        self.rng.fill_bytes(&mut next);
        self.rng = rand_chacha::ChaCha20Rng::from_seed(next);
        self.since_reseed = self.since_reseed.saturating_add(dest.len() as u64 + 32);
        Ok(())
    }
}

/// The pool: a [`Generator`] keyed from the entropy source on first use.
/// A failed seeding leaves it unkeyed, so the next request tries again.
pub(crate) struct Pool {
    generator: Option<Generator>,
}

impl Pool {
    /// An unkeyed pool.
    pub(crate) const fn new() -> Pool {
        Pool { generator: None }
    }

    /// Fills `dest`; `source` gives 32 bytes of fresh entropy, for the key
    /// on the first request and for every reseed after it.
    pub(crate) fn fill(
        &mut self,
        dest: &mut [u8],
        mut source: impl FnMut(&mut [u8; 32]) -> Result<(), RandomError>,
    ) -> Result<(), RandomError> {
        let generator = match &mut self.generator {
            Some(g) => g,
            None => {
                let mut seed = [0u8; 32];
                source(&mut seed)?;
                self.generator.insert(Generator::new(seed))
            }
        };
        generator.fill(dest, source)
    }
}

/// 32 bytes from an instruction that gives 64 bits a call, or `None` when
/// it fails (RDSEED, RDRAND). A source that repeats a value is broken (some
/// CPUs return all ones after a firmware fault) and is refused.
pub(crate) fn hardware_words(out: &mut [u8; 32], mut next: impl FnMut() -> Option<u64>) -> Result<(), RandomError> {
    let mut last = None;
    for chunk in out.chunks_exact_mut(8) {
        let v = next().ok_or(RandomError::HardwareFailed)?;
        if last == Some(v) {
            return Err(RandomError::HardwareFailed);
        }
        last = Some(v);
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Gives the pool an entropy device: used when the CPU has no RDSEED or
/// RDRAND, or always when `preferred`. Installed once, at boot.
#[cfg(skiff_guest)]
pub(crate) fn install_device(device: alloc::boxed::Box<dyn EntropyDevice>, preferred: bool) {
    *imp::DEVICE.lock() = Some(imp::Device { device, preferred });
}

#[cfg(skiff_guest)]
mod imp {
    use super::{EntropyDevice, HardwareSource, Pool, RandomError};
    use alloc::boxed::Box;
    use spinning_top::Spinlock;

    /// The pool; unkeyed until the first request.
    static POOL: Spinlock<Pool> = Spinlock::new(Pool::new());

    /// The pool's entropy device, if the platform has one. Locked after
    /// `POOL`, never before it.
    pub(super) static DEVICE: Spinlock<Option<Device>> = Spinlock::new(None);

    pub(super) struct Device {
        pub(super) device: Box<dyn EntropyDevice>,
        pub(super) preferred: bool,
    }

    pub fn hardware_source() -> Result<HardwareSource, RandomError> {
        let device = DEVICE.lock().as_ref().map(|d| d.preferred);
        if device == Some(true) {
            return Ok(HardwareSource::VirtioRng);
        }
        // CPUID leaf 7 EBX bit 18: RDSEED; leaf 1 ECX bit 30: RDRAND.
        let leaf0 = core::arch::x86_64::__cpuid(0).eax;
        if leaf0 >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 18) != 0 {
            return Ok(HardwareSource::Rdseed);
        }
        if core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0 {
            return Ok(HardwareSource::Rdrand);
        }
        if device.is_some() {
            return Ok(HardwareSource::VirtioRng);
        }
        Err(RandomError::NoHardwareSource)
    }

    /// 32 bytes from the hardware. RDSEED may run dry under load: it is
    /// retried, then RDRAND (hardware-reseeded) takes over. The device's
    /// bytes are checked for a stuck value like the instructions' words.
    fn hardware(out: &mut [u8; 32], source: HardwareSource) -> Result<(), RandomError> {
        if source == HardwareSource::VirtioRng {
            let mut device = DEVICE.lock();
            let device = device.as_mut().ok_or(RandomError::NoHardwareSource)?;
            let mut raw = [0u8; 32];
            device.device.fill(&mut raw)?;
            let mut words = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
            return super::hardware_words(out, || words.next()).map_err(|_| RandomError::DeviceFailed);
        }
        super::hardware_words(out, || match source {
            HardwareSource::Rdseed => crate::arch::cpu::rdseed().or_else(crate::arch::cpu::rdrand),
            HardwareSource::Rdrand | HardwareSource::VirtioRng => crate::arch::cpu::rdrand(),
        })
    }

    pub fn fill(dest: &mut [u8]) -> Result<(), RandomError> {
        // CPUID is asked only when the pool needs entropy (it costs an exit).
        POOL.lock().fill(dest, |fresh| hardware(fresh, hardware_source()?))
    }
}

/// Host builds: the same pool, with the operating system's generator in
/// the place of RDRAND, so that host tests run the guest's code.
#[cfg(not(skiff_guest))]
mod imp {
    use super::{HardwareSource, Pool, RandomError};
    use std::sync::Mutex;

    static POOL: Mutex<Pool> = Mutex::new(Pool::new());

    pub fn hardware_source() -> Result<HardwareSource, RandomError> {
        Ok(HardwareSource::Rdrand)
    }

    fn os_word() -> Option<u64> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    pub fn fill(dest: &mut [u8]) -> Result<(), RandomError> {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.fill(dest, |fresh| super::hardware_words(fresh, os_word))
    }
}

/// The getrandom 0.3 custom backend (`--cfg getrandom_backend="custom"`,
/// which `skiff build` sets): every crate that asks getrandom for bytes gets
/// them from the pool, and no Linux system call is linked.
///
/// # Safety
/// getrandom calls this with `dest` valid for writes of `len` bytes.
#[cfg(skiff_guest)]
#[unsafe(no_mangle)]
unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: getrandom passes a pointer valid for `len` bytes of writes;
    // zeroing them first makes the slice initialised.
    let buf = unsafe {
        core::ptr::write_bytes(dest, 0, len);
        core::slice::from_raw_parts_mut(dest, len)
    };
    fill(buf).map_err(|e| match e {
        RandomError::NoHardwareSource => getrandom::Error::UNSUPPORTED,
        RandomError::HardwareFailed => getrandom::Error::new_custom(1),
        RandomError::DeviceFailed => getrandom::Error::new_custom(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_erases_its_key_and_reseeds() {
        let mut a = Generator::new([7; 32]);
        let mut b = Generator::new([7; 32]);
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        a.fill(&mut x, |_| unreachable!()).unwrap();
        b.fill(&mut y, |_| unreachable!()).unwrap();
        // Deterministic for one seed...
        assert_eq!(x, y);
        // ...and the next request does not repeat the first.
        a.fill(&mut y, |_| unreachable!()).unwrap();
        assert_ne!(x, y);
        b.fill(&mut x, |_| unreachable!()).unwrap();
        // After RESEED_BYTES the reseed source is consulted, and what it
        // returns changes the output.
        let mut big = alloc::vec![0u8; RESEED_BYTES as usize];
        a.fill(&mut big, |_| unreachable!()).unwrap();
        b.fill(&mut big, |_| unreachable!()).unwrap();
        let mut asked = false;
        a.fill(&mut x, |f| {
            asked = true;
            *f = [1; 32];
            Ok(())
        })
        .unwrap();
        assert!(asked);
        b.fill(&mut y, |f| {
            *f = [2; 32];
            Ok(())
        })
        .unwrap();
        assert_ne!(x, y, "different fresh entropy, different output");
    }

    #[test]
    fn a_failing_reseed_is_reported() {
        let mut g = Generator::new([0; 32]);
        let mut big = alloc::vec![0u8; RESEED_BYTES as usize];
        g.fill(&mut big, |_| unreachable!()).unwrap();
        assert_eq!(g.fill(&mut [0; 4], |_| Err(RandomError::HardwareFailed)), Err(RandomError::HardwareFailed));
    }

    #[test]
    fn a_stuck_or_failing_source_is_refused() {
        let mut out = [0u8; 32];
        let mut n = 0u64;
        let counter = || {
            n += 1;
            Some(n)
        };
        assert_eq!(hardware_words(&mut out, counter), Ok(()));
        assert_eq!(out[..16], [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out[24], 4);
        // All ones after a firmware fault: refused at the second word.
        assert_eq!(hardware_words(&mut out, || Some(u64::MAX)), Err(RandomError::HardwareFailed));
        assert_eq!(hardware_words(&mut out, || None), Err(RandomError::HardwareFailed));
        let mut calls = 0;
        let late_failure = || {
            calls += 1;
            (calls < 4).then_some(calls)
        };
        assert_eq!(hardware_words(&mut out, late_failure), Err(RandomError::HardwareFailed));
    }

    #[test]
    fn the_pool_is_keyed_once_and_retries_a_failed_seeding() {
        let seed_with = |byte: u8| {
            move |f: &mut [u8; 32]| -> Result<(), RandomError> {
                *f = [byte; 32];
                Ok(())
            }
        };
        let mut pool = Pool::new();
        // A failed seeding is reported and leaves the pool unkeyed...
        assert_eq!(pool.fill(&mut [0; 8], |_| Err(RandomError::HardwareFailed)), Err(RandomError::HardwareFailed));
        // ...so the next request seeds it, once.
        let mut seedings = 0;
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        pool.fill(&mut x, |f| {
            seedings += 1;
            seed_with(9)(f)
        })
        .unwrap();
        pool.fill(&mut y, |_| unreachable!("keyed already")).unwrap();
        assert_eq!(seedings, 1);
        assert_ne!(x, y);
        // The output is the generator's for that seed, not the seed.
        let mut same = [0u8; 32];
        Generator::new([9; 32]).fill(&mut same, |_| unreachable!()).unwrap();
        assert_eq!(x, same);
        assert_ne!(x, [9; 32]);
        let mut other = Pool::new();
        other.fill(&mut y, seed_with(10)).unwrap();
        assert_ne!(x, y, "another seed, other bytes");
    }

    #[test]
    fn the_host_pool_gives_uniform_distinct_bytes() {
        // Every size, including across a reseed.
        for len in [0, 1, 7, 32, 33, 1000] {
            let (mut x, mut y) = (alloc::vec![0u8; len], alloc::vec![0u8; len]);
            fill(&mut x).unwrap();
            fill(&mut y).unwrap();
            assert!(len < 8 || x != y, "{len} bytes repeated");
        }
        let mut big = alloc::vec![0u8; RESEED_BYTES as usize + 1];
        fill(&mut big).unwrap();
        // 64 KiB: each byte value about 256 times (a standard deviation
        // is 16; the bounds are six of them away).
        let mut sample = alloc::vec![0u8; 65536];
        fill(&mut sample).unwrap();
        let mut counts = [0u32; 256];
        for b in &sample {
            counts[usize::from(*b)] += 1;
        }
        for (value, count) in counts.iter().enumerate() {
            assert!((160..=352).contains(count), "byte {value:#04x} came {count} times in 64 KiB");
        }
        assert_eq!(next_u64().map(|a| a != next_u64().unwrap()), Ok(true));
        assert_eq!(hardware_source(), Ok(HardwareSource::Rdrand));
    }
}
