//! Time as the kernel sees it: milliseconds since the Unix epoch, passed in by the caller.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// An instant in UTC with millisecond precision. The kernel never reads a clock: every
/// operation that depends on time takes one of these from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// From a `SystemTime` (times before the epoch become the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// This instant plus `d`, saturating.
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form [`Display`](fmt::Display) writes.
    pub fn parse_rfc3339(text: &str) -> Result<Self, Error> {
        let bad = || Error::Time(text.to_owned());
        let b = text.as_bytes();
        if b.len() != 24
            || [4, 7].iter().any(|&i| b.get(i) != Some(&b'-'))
            || b.get(10) != Some(&b'T')
            || [13, 16].iter().any(|&i| b.get(i) != Some(&b':'))
            || b.get(19) != Some(&b'.')
            || b.get(23) != Some(&b'Z')
        {
            return Err(bad());
        }
        let num = |from: usize, to: usize| -> Result<u64, Error> {
            let s = text.get(from..to).ok_or_else(bad)?;
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, mi, s, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        if d < 1 || d > days_in_month(y, mo) {
            return Err(bad());
        }
        let days = days_from_civil(y, mo, d);
        Ok(Self(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms))
    }

    /// Minutes since midnight UTC.
    pub fn minute_of_day(self) -> u64 {
        (self.0 / 60_000) % (24 * 60)
    }

    /// Day of the week, 0 = Monday … 6 = Sunday.
    pub fn weekday(self) -> u64 {
        // 1970-01-01 was a Thursday.
        (self.0 / 86_400_000 + 3) % 7
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 UTC with milliseconds: `2026-11-23T20:03:49.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400_000;
        let ms_of_day = self.0 % 86_400_000;
        let (y, m, d) = civil_from_days(days);
        let (h, mi) = (ms_of_day / 3_600_000, (ms_of_day / 60_000) % 60);
        let (s, ms) = ((ms_of_day / 1000) % 60, ms_of_day % 1000);
        if y > 9999 {
            return write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z");
        }
        // Every decision writes two or three of these: digits by hand, not the formatter.
        let mut out = *b"0000-00-00T00:00:00.000Z";
        for (at, width, value) in [
            (0, 4, y),
            (5, 2, m),
            (8, 2, d),
            (11, 2, h),
            (14, 2, mi),
            (17, 2, s),
            (20, 3, ms),
        ] {
            let mut value = value;
            for digit in out.iter_mut().skip(at).take(width).rev() {
                // INVARIANT: `value % 10` is a digit, so the sum is an ASCII digit.
                *digit = b'0' + u8::try_from(value % 10).unwrap_or(0);
                value /= 10;
            }
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let mut days = 0;
    for year in 1970..y {
        days += if is_leap(year) { 366 } else { 365 };
    }
    for month in 1..m {
        days += days_in_month(y, month);
    }
    days + d - 1
}

/// The proleptic Gregorian date `days` after 1970-01-01, in constant time: count from
/// 0000-03-01 in 400-year eras (146,097 days each), so that the leap day ends a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March … 11 = February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let (m, year_shift) = if month_from_march < 10 {
        (month_from_march + 3, 0)
    } else {
        (month_from_march - 9, 1)
    };
    (era * 400 + year_of_era + year_shift, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ms in [0, 951_782_400_123, 1_795_464_229_000, 4_102_444_799_999] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
        }
        assert_eq!(
            Timestamp::from_unix_millis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(Timestamp::from_unix_millis(0).weekday(), 3);
    }

    /// Day after day from 1970 to 9999, each date is the one after the previous, and sampled
    /// dates parse back to their day.
    #[test]
    fn calendar_is_exact() {
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        let last = days_from_civil(9999, 12, 31);
        for day in 1..=last {
            let (y, m, d) = civil_from_days(day);
            let (py, pm, pd) = prev;
            let next = if pd < days_in_month(py, pm) {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!((y, m, d), next, "day {day}");
            prev = (y, m, d);
        }
        for day in (0..=last).step_by(997) {
            let t = Timestamp::from_unix_millis(day * 86_400_000 + 45_296_789);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()).unwrap(), t);
        }
        // Beyond year 9999 the year takes more digits; nothing loops for long.
        assert!(
            Timestamp::from_unix_millis(u64::MAX)
                .to_string()
                .ends_with('Z')
        );
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "2026-11-23T20:03:49Z",
            "2026-02-30T00:00:00.000Z",
            "2026-11-23 20:03:49.000Z",
            "x",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
