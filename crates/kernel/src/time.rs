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
        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
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

fn civil_from_days(mut days: u64) -> (u64, u64, u64) {
    let mut y = 1970;
    loop {
        let len = if is_leap(y) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        y += 1;
    }
    let mut m = 1;
    while days >= days_in_month(y, m) {
        days -= days_in_month(y, m);
        m += 1;
    }
    (y, m, days + 1)
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
