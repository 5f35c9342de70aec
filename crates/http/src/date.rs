//! HTTP dates (IMF-fixdate, RFC 9110 section 5.6.7):
//! `Sun, 06 Nov 1994 08:49:37 GMT`.

use core::fmt::Write;

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// The length of a formatted date.
pub const DATE_LEN: usize = 29;

/// Year, month (1..=12) and day of a day count since 1970-01-01 (Howard
/// Hinnant's civil-from-days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A fixed-size buffer holding a formatted date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpDate {
    bytes: [u8; DATE_LEN],
}

impl HttpDate {
    /// The date `secs` seconds after the UNIX epoch.
    pub fn from_unix(secs: u64) -> HttpDate {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let mut s = Buf { bytes: [0; DATE_LEN], len: 0 };
        let _ = write!(
            s,
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[(days % 7) as usize],
            day,
            MONTHS[(month - 1) as usize],
            year.clamp(0, 9999),
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        );
        HttpDate { bytes: s.bytes }
    }

    /// The formatted date.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes).unwrap_or("")
    }
}

struct Buf {
    bytes: [u8; DATE_LEN],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > DATE_LEN {
            return Err(core::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Parses an IMF-fixdate into seconds since the UNIX epoch. (The obsolete
/// RFC 850 and asctime forms are not accepted; a date that does not parse
/// makes a conditional header be ignored, as HTTP says.)
pub fn parse(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() != DATE_LEN || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: core::ops::Range<usize>| -> Option<u32> {
        let part = core::str::from_utf8(&b[r]).ok()?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| m.as_bytes() == &b[8..11])? as u32 + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days as u64 * 86_400 + u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_and_parse() {
        assert_eq!(HttpDate::from_unix(784_111_777).as_str(), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(HttpDate::from_unix(0).as_str(), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(HttpDate::from_unix(1_709_208_000).as_str(), "Thu, 29 Feb 2024 12:00:00 GMT");
        for secs in [0, 784_111_777, 951_782_400, 1_709_208_000, 4_102_444_799] {
            assert_eq!(parse(HttpDate::from_unix(secs).as_str()), Some(secs));
        }
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse("Sun, 06 Xyz 1994 08:49:37 GMT"), None);
        assert_eq!(parse(""), None);
    }
}
