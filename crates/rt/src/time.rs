//! Clocks: a monotonic [`Instant`] from the TSC, and the wall clock.
//!
//! The tender passes the TSC frequency and a (wall clock, TSC) pair in the
//! boot info. At boot the runtime stores them once in [`Calibration`];
//! reading time is then an `rdtsc` (about 12 ns from ring 3, no exit) and a
//! multiply.
//!
//! In host builds (unit tests) time is a per-thread manual clock, moved by
//! [`advance_manual_clock`].

use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point on the monotonic clock, in nanoseconds since boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    /// The boot instant.
    pub const BOOT: Instant = Instant { nanos: 0 };

    /// The current instant.
    pub fn now() -> Instant {
        Instant { nanos: now_nanos() }
    }

    /// Builds an instant from nanoseconds since boot.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant { nanos }
    }

    /// Nanoseconds since boot.
    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Time since boot.
    pub const fn since_boot(self) -> Duration {
        Duration::from_nanos(self.nanos)
    }

    /// Time elapsed since `self`.
    pub fn elapsed(self) -> Duration {
        Instant::now().saturating_duration_since(self)
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let add = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_add(add).map(|nanos| Instant { nanos })
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant { nanos: u64::MAX })
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// Converts TSC ticks to nanoseconds with a 32.32 fixed-point factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscScale {
    mult: u64,
}

impl TscScale {
    /// The scale for a TSC running at `hz`; `None` for a zero frequency or
    /// one below 1 kHz (nothing real ticks that slowly).
    pub const fn new(hz: u64) -> Option<TscScale> {
        if hz < 1000 {
            return None;
        }
        let mult = ((1_000_000_000u128 << 32) / hz as u128) as u64;
        Some(TscScale { mult })
    }

    /// Nanoseconds in `ticks`.
    pub const fn ticks_to_nanos(self, ticks: u64) -> u64 {
        ((ticks as u128 * self.mult as u128) >> 32) as u64
    }
}

/// What the runtime knows about time after boot.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// TSC value at boot (the instant [`Instant::BOOT`]).
    pub tsc_at_boot: u64,
    /// TSC frequency.
    pub scale: TscScale,
    /// Wall clock (ns since the UNIX epoch) at `tsc_at_wall`.
    pub wall_nanos: u64,
    /// TSC value matching `wall_nanos`.
    pub tsc_at_wall: u64,
}

impl Calibration {
    /// Nanoseconds since boot at TSC value `tsc`.
    pub const fn nanos_since_boot(&self, tsc: u64) -> u64 {
        self.scale.ticks_to_nanos(tsc.saturating_sub(self.tsc_at_boot))
    }

    /// Wall clock at TSC value `tsc`.
    pub const fn wall_nanos_at(&self, tsc: u64) -> u64 {
        if tsc >= self.tsc_at_wall {
            self.wall_nanos + self.scale.ticks_to_nanos(tsc - self.tsc_at_wall)
        } else {
            self.wall_nanos.saturating_sub(self.scale.ticks_to_nanos(self.tsc_at_wall - tsc))
        }
    }
}

#[cfg(skiff_guest)]
mod source {
    use super::Calibration;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The boot calibration, written once by [`install`] before any task
    /// runs and only read afterwards.
    struct Stored {
        tsc_at_boot: AtomicU64,
        mult: AtomicU64,
        wall_nanos: AtomicU64,
        tsc_at_wall: AtomicU64,
    }

    static CALIBRATION: Stored = Stored {
        tsc_at_boot: AtomicU64::new(0),
        mult: AtomicU64::new(0),
        wall_nanos: AtomicU64::new(0),
        tsc_at_wall: AtomicU64::new(0),
    };

    /// Stores the calibration; called once by the boot path.
    pub(crate) fn install(c: &Calibration) {
        CALIBRATION.tsc_at_boot.store(c.tsc_at_boot, Ordering::Relaxed);
        CALIBRATION.wall_nanos.store(c.wall_nanos, Ordering::Relaxed);
        CALIBRATION.tsc_at_wall.store(c.tsc_at_wall, Ordering::Relaxed);
        CALIBRATION.mult.store(c.scale.mult, Ordering::Release);
    }

    pub(crate) fn calibration() -> Calibration {
        // Before `install`, `mult` is zero and time stands still at zero.
        let mult = CALIBRATION.mult.load(Ordering::Acquire);
        Calibration {
            tsc_at_boot: CALIBRATION.tsc_at_boot.load(Ordering::Relaxed),
            scale: super::TscScale { mult },
            wall_nanos: CALIBRATION.wall_nanos.load(Ordering::Relaxed),
            tsc_at_wall: CALIBRATION.tsc_at_wall.load(Ordering::Relaxed),
        }
    }

    pub(super) fn now_nanos() -> u64 {
        calibration().nanos_since_boot(crate::arch::cpu::rdtsc())
    }

    pub(super) fn wall_nanos() -> u64 {
        calibration().wall_nanos_at(crate::arch::cpu::rdtsc())
    }
}

#[cfg(skiff_guest)]
pub(crate) use source::install;

#[cfg(not(skiff_guest))]
mod source {
    use std::cell::Cell;

    std::thread_local! {
        static NOW: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn now_nanos() -> u64 {
        NOW.with(Cell::get)
    }

    /// The host's wall clock when the thread first asked, advanced with
    /// the manual clock: certificates and dates see the real date.
    pub(super) fn wall_nanos() -> u64 {
        std::thread_local! {
            static BASE: u64 = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        }
        BASE.with(|b| *b) + now_nanos()
    }

    pub(super) fn advance(d: core::time::Duration) {
        NOW.with(|n| n.set(n.get().saturating_add(d.as_nanos() as u64)));
    }
}

/// Host builds only: moves this thread's manual clock forward.
#[cfg(not(skiff_guest))]
pub fn advance_manual_clock(d: Duration) {
    source::advance(d)
}

fn now_nanos() -> u64 {
    source::now_nanos()
}

/// The wall clock: nanoseconds since the UNIX epoch (UTC), from the boot
/// calibration and the TSC.
pub fn wall_clock_nanos() -> u64 {
    source::wall_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_scale_converts_exactly_for_round_frequencies() {
        let s = TscScale::new(1_000_000_000).unwrap();
        assert_eq!(s.ticks_to_nanos(12_345), 12_345);
        let s = TscScale::new(2_500_000_000).unwrap();
        assert_eq!(s.ticks_to_nanos(2_500_000_000), 999_999_999);
        assert_eq!(s.ticks_to_nanos(5), 1);
        assert!(TscScale::new(0).is_none());
    }

    #[test]
    fn tsc_scale_does_not_overflow_over_years() {
        let s = TscScale::new(3_000_000_000).unwrap();
        let ten_years_ticks = 3_000_000_000u64 * 3600 * 24 * 365 * 10;
        let nanos = s.ticks_to_nanos(ten_years_ticks);
        let expect = 1_000_000_000u64 * 3600 * 24 * 365 * 10;
        assert!(nanos.abs_diff(expect) < expect / 1_000_000);
    }

    #[test]
    fn calibration_maps_tsc_to_boot_and_wall_time() {
        let c = Calibration {
            tsc_at_boot: 1_000,
            scale: TscScale::new(1_000_000_000).unwrap(),
            wall_nanos: 1_700_000_000_000_000_000,
            tsc_at_wall: 500,
        };
        assert_eq!(c.nanos_since_boot(1_500), 500);
        assert_eq!(c.nanos_since_boot(10), 0);
        assert_eq!(c.wall_nanos_at(600), 1_700_000_000_000_000_100);
        assert_eq!(c.wall_nanos_at(400), 1_699_999_999_999_999_900);
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let a = Instant::from_nanos(10);
        let b = a + Duration::from_nanos(5);
        assert_eq!(b - a, Duration::from_nanos(5));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!((a + Duration::MAX).as_nanos(), u64::MAX);
    }
}
