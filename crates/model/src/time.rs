//! Timestamps: ISO-8601/RFC 3339 parsing, epoch numbers with unit detection, and RFC 3339 formatting.
//!
//! All times are microseconds since the Unix epoch, UTC.

use chrono::{DateTime, Datelike, NaiveDate, Timelike};

/// Microseconds in a second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// The earliest event time a record may have: 0001-01-01T00:00:00Z (µs).
pub const MIN_TS: i64 = -62_135_596_800 * MICROS_PER_SEC;

/// The latest event time a record may have: 9999-12-31T23:59:59.999999Z (µs).
pub const MAX_TS: i64 = 253_402_300_799 * MICROS_PER_SEC + 999_999;

/// True when `micros` lies in the years 0001-9999, the range that SQL engines, Parquet readers and the
/// lake's `date=YYYY-MM-DD` folders agree on.
pub fn in_supported_range(micros: i64) -> bool {
    (MIN_TS..=MAX_TS).contains(&micros)
}

/// Parses an ISO-8601 date or date-time into epoch microseconds (UTC).
///
/// Accepts `2024-01-02`, `2024-01-02T14:30`, `2024-01-02 14:30:00`, `2024-01-02T14:30:00.123456Z` and
/// explicit offsets (`+01:00`, `-0500`, `+01`). A time without a zone is taken as UTC. Fractions beyond
/// microseconds are truncated. Returns `None` when the text is not such a date.
pub fn parse_iso(text: &str) -> Option<i64> {
    let s = text.trim().as_bytes();
    if s.len() < 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let year = digits(&s[0..4])? as i32;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    let days = i64::from(date.num_days_from_ce() - 719_163);
    let mut micros = days * 86_400 * MICROS_PER_SEC;
    let mut rest = &s[10..];
    if rest.is_empty() {
        return Some(micros);
    }
    if !matches!(rest[0], b'T' | b't' | b' ') || rest.len() < 6 || rest[3] != b':' {
        return None;
    }
    let hour = digits(&rest[1..3])?;
    let minute = digits(&rest[4..6])?;
    let mut second = 0;
    rest = &rest[6..];
    if rest.first() == Some(&b':') {
        second = digits(rest.get(1..3)?)?;
        rest = &rest[3..];
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut frac_micros = 0i64;
    if matches!(rest.first(), Some(b'.') | Some(b',')) {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in rest[1..=n].iter().enumerate() {
            if i < 6 {
                frac_micros = frac_micros * 10 + i64::from(c - b'0');
            }
        }
        for _ in n..6 {
            frac_micros *= 10;
        }
        rest = &rest[1 + n..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (h, m) = match zone {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    micros += (i64::from(hour * 3600 + minute * 60 + second) - offset_secs) * MICROS_PER_SEC;
    Some(micros + frac_micros)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Converts an epoch number of unknown unit into microseconds, by magnitude.
///
/// |v| < 1e11 is seconds (until the year 5138), < 1e14 milliseconds, < 1e17 microseconds, otherwise
/// nanoseconds. Returns `None` for non-finite values.
pub fn epoch_to_micros(v: f64) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let a = v.abs();
    let micros = if a < 1e11 {
        v * 1e6
    } else if a < 1e14 {
        v * 1e3
    } else if a < 1e17 {
        v
    } else {
        v / 1e3
    };
    // Round to the nearest microsecond so that 1.1 s is 1_100_000 µs, not 1_099_999.
    Some(micros.round() as i64)
}

/// Parses a timestamp written as ISO-8601 text or as an epoch number (see [`epoch_to_micros`]).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    parse_iso(text).or_else(|| {
        let t = text.trim();
        if t.bytes()
            .all(|c| c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            t.parse::<f64>().ok().and_then(epoch_to_micros)
        } else {
            None
        }
    })
}

thread_local! {
    /// The whole second [`write_rfc3339`] wrote last, and its text. A feed's records come in runs of
    /// one time (every symbol's bar of a minute), so most records reuse it instead of converting the
    /// time to a calendar date again (that was 7% of the producer's samples).
    static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> =
        const { std::cell::Cell::new((i64::MIN, [0; 19])) };
}

/// Appends `micros` as RFC 3339 in UTC: `2024-01-02T14:30:00Z`, with `.ffffff` only when the sub-second
/// part is not zero.
pub fn write_rfc3339(micros: i64, out: &mut Vec<u8>) {
    let second = micros.div_euclid(MICROS_PER_SEC);
    let (last, text) = LAST_SECOND.get();
    let buf = if last == second {
        text
    } else {
        let Some(dt) = DateTime::from_timestamp_micros(micros) else {
            out.extend_from_slice(micros.to_string().as_bytes());
            return;
        };
        let year = dt.year();
        if !(0..=9999).contains(&year) {
            out.extend_from_slice(dt.to_rfc3339().as_bytes());
            return;
        }
        let mut buf = *b"0000-00-00T00:00:00";
        put(&mut buf[0..4], year as u32);
        put(&mut buf[5..7], dt.month());
        put(&mut buf[8..10], dt.day());
        put(&mut buf[11..13], dt.hour());
        put(&mut buf[14..16], dt.minute());
        put(&mut buf[17..19], dt.second());
        LAST_SECOND.set((second, buf));
        buf
    };
    out.extend_from_slice(&buf);
    let sub = micros.rem_euclid(MICROS_PER_SEC) as u32;
    if sub != 0 {
        let mut frac = *b".000000";
        put(&mut frac[1..], sub);
        out.extend_from_slice(&frac);
    }
    out.push(b'Z');
}

fn put(dst: &mut [u8], mut v: u32) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `micros` as an RFC 3339 string (see [`write_rfc3339`]).
pub fn format_rfc3339(micros: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339(micros, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * MICROS_PER_SEC;

    #[test]
    fn supported_range() {
        assert_eq!(format_rfc3339(MIN_TS), "0001-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(MAX_TS), "9999-12-31T23:59:59.999999Z");
        assert!(in_supported_range(0));
        assert!(!in_supported_range(MIN_TS - 1));
        assert!(!in_supported_range(MAX_TS + 1));
    }

    #[test]
    fn iso_forms() {
        assert_eq!(parse_iso("1970-01-02"), Some(DAY));
        assert_eq!(parse_iso("1986-12-31"), Some(536_371_200 * MICROS_PER_SEC));
        assert_eq!(parse_iso("1970-01-01T00:00:01Z"), Some(MICROS_PER_SEC));
        assert_eq!(parse_iso("1970-01-01 00:01"), Some(60 * MICROS_PER_SEC));
        assert_eq!(parse_iso("1970-01-01T00:00:00.5"), Some(500_000));
        assert_eq!(parse_iso("1970-01-01T00:00:00.1234567Z"), Some(123_456));
        assert_eq!(parse_iso("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_iso("1969-12-31T19:00:00-0500"), Some(0));
        assert_eq!(parse_iso("1960-01-01"), Some(-3653 * DAY));
    }

    #[test]
    fn iso_rejects_garbage() {
        for bad in [
            "",
            "29/06/1979",
            "1979-13-01",
            "1979-02-30",
            "1979-01-01X",
            "1979-01-01T25:00",
            "1979-01-01T00:00:00+",
            "1979-01-01T00:00:00.",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn epochs_by_magnitude() {
        assert_eq!(epoch_to_micros(1.0), Some(MICROS_PER_SEC));
        assert_eq!(
            epoch_to_micros(1_700_000_000.0),
            Some(1_700_000_000 * MICROS_PER_SEC)
        );
        assert_eq!(
            epoch_to_micros(1_700_000_000_123.0),
            Some(1_700_000_000_123_000)
        );
        assert_eq!(
            epoch_to_micros(1_700_000_000_123_456.0),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(epoch_to_micros(1.7e18), Some(1_700_000_000_000_000));
        assert_eq!(epoch_to_micros(f64::NAN), None);
        assert_eq!(
            parse_timestamp("1700000000"),
            Some(1_700_000_000 * MICROS_PER_SEC)
        );
        assert_eq!(parse_timestamp("soon"), None);
    }

    #[test]
    fn rfc3339_round_trip() {
        for micros in [
            0,
            1,
            536_371_200 * MICROS_PER_SEC,
            -1,
            1_700_000_000_123_456,
        ] {
            let s = format_rfc3339(micros);
            assert_eq!(parse_iso(&s), Some(micros), "{s}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1), "1970-01-01T00:00:00.000001Z");
    }

    #[test]
    fn the_last_second_reused_gives_chronos_text() {
        // Runs of one second, its sub-seconds, the second before the epoch, a time past the years
        // written as digits, and back again: every text is chrono's, whichever came before it.
        let base = 1_700_000_000 * MICROS_PER_SEC;
        for micros in [
            base,
            base,
            base + 999_999,
            base + MICROS_PER_SEC,
            base,
            -1,
            -MICROS_PER_SEC,
            -MICROS_PER_SEC - 1,
            0,
            MAX_TS,
            MAX_TS + 1,
            MAX_TS,
        ] {
            let dt = DateTime::from_timestamp_micros(micros).unwrap();
            let chrono = if in_supported_range(micros) {
                dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            } else {
                dt.to_rfc3339()
            };
            assert_eq!(format_rfc3339(micros), chrono, "{micros}");
        }
    }
}
