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

/// The registers of a CMOS real-time clock, as read: seconds, minutes,
/// hours, day of the month, month, year (two digits), century (register
/// 0x32, 0 when the clock has none) and status register B (bit 1: 24-hour
/// mode; bit 2: binary instead of BCD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcRegisters {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    pub century: u8,
    pub status_b: u8,
}

impl RtcRegisters {
    /// Seconds since the UNIX epoch, or `None` when a field is out of
    /// range (an absent clock reads all ones).
    pub fn unix_seconds(&self) -> Option<u64> {
        let binary = self.status_b & 0x04 != 0;
        let decode = |v: u8| -> Option<u8> {
            if binary {
                return Some(v);
            }
            let (hi, lo) = (v >> 4, v & 0x0f);
            (hi < 10 && lo < 10).then_some(hi * 10 + lo)
        };
        let pm = self.hours & 0x80 != 0;
        let mut hours = decode(self.hours & 0x7f)?;
        if self.status_b & 0x02 == 0 {
            // 12-hour mode: 12 AM is 0, 12 PM is 12.
            if !(1..=12).contains(&hours) {
                return None;
            }
            hours = hours % 12 + if pm { 12 } else { 0 };
        }
        let (seconds, minutes) = (decode(self.seconds)?, decode(self.minutes)?);
        let (day, month, year) = (decode(self.day)?, decode(self.month)?, decode(self.year)?);
        let century = match decode(self.century) {
            Some(c @ 19..=99) => u32::from(c),
            // No century register: this century.
            _ => 20,
        };
        if seconds > 59 || minutes > 59 || hours > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&month) {
            return None;
        }
        let year = century * 100 + u32::from(year);
        if year < 1970 {
            return None;
        }
        let days = days_from_civil(year, u32::from(month), u32::from(day));
        Some(days * 86_400 + u64::from(hours) * 3600 + u64::from(minutes) * 60 + u64::from(seconds))
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar,
/// for years from 1970.
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let y = u64::from(if month <= 2 { year - 1 } else { year });
    let (era, yoe) = (y / 400, y % 400);
    let m = u64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtc(bcd: [u8; 7], status_b: u8) -> RtcRegisters {
        let [seconds, minutes, hours, day, month, year, century] = bcd;
        RtcRegisters { seconds, minutes, hours, day, month, year, century, status_b }
    }

    #[test]
    fn cmos_clock_in_bcd_and_binary_gives_unix_seconds() {
        // 2026-11-30 08:36:48 UTC is 1_796_027_808.
        let bcd = rtc([0x48, 0x36, 0x08, 0x30, 0x11, 0x26, 0x20], 0x02);
        assert_eq!(bcd.unix_seconds(), Some(1_796_027_808));
        let binary = rtc([48, 36, 8, 30, 11, 26, 20], 0x06);
        assert_eq!(binary.unix_seconds(), Some(1_796_027_808));
        // Without a century register the year is taken in this century.
        assert_eq!(rtc([0x48, 0x36, 0x08, 0x30, 0x11, 0x26, 0x00], 0x02).unix_seconds(), Some(1_796_027_808));
        // A leap day and the epoch itself.
        assert_eq!(rtc([0, 0, 0, 0x29, 0x02, 0x24, 0x20], 0x02).unix_seconds(), Some(1_709_164_800));
        assert_eq!(rtc([0, 0, 0, 0x01, 0x01, 0x70, 0x19], 0x02).unix_seconds(), Some(0));
    }

    #[test]
    fn cmos_clock_in_twelve_hour_mode() {
        // 12 AM is midnight, 12 PM noon, 8 PM is 20:00.
        let midnight = rtc([0, 0, 0x12, 0x01, 0x01, 0x70, 0x19], 0).unix_seconds();
        assert_eq!(midnight, Some(0));
        assert_eq!(rtc([0, 0, 0x92, 0x01, 0x01, 0x70, 0x19], 0).unix_seconds(), Some(12 * 3600));
        assert_eq!(rtc([0, 0, 0x88, 0x01, 0x01, 0x70, 0x19], 0).unix_seconds(), Some(20 * 3600));
        assert_eq!(rtc([0, 0, 0x00, 0x01, 0x01, 0x70, 0x19], 0).unix_seconds(), None);
    }

    #[test]
    fn an_absent_or_garbled_cmos_clock_is_refused() {
        assert_eq!(rtc([0xff; 7], 0xff).unix_seconds(), None);
        assert_eq!(rtc([0xff; 7], 0x02).unix_seconds(), None);
        assert_eq!(rtc([0x60, 0, 0, 0x01, 0x01, 0x70, 0x19], 0x02).unix_seconds(), None);
        assert_eq!(rtc([0, 0, 0, 0x01, 0x13, 0x70, 0x19], 0x02).unix_seconds(), None);
        assert_eq!(rtc([0, 0, 0, 0x1a, 0x01, 0x70, 0x19], 0x02).unix_seconds(), None);
        // Before the epoch.
        assert_eq!(rtc([0, 0, 0, 0x01, 0x01, 0x69, 0x19], 0x02).unix_seconds(), None);
    }

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
