//! Reading the date/time column of a CSV: ISO-8601 and epoch numbers, `dd/mm/yyyy` or `mm/dd/yyyy` (told
//! apart by looking at the file's own values), or an explicit strftime format.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use ticklake_model::time::{parse_timestamp, MICROS_PER_SEC};

/// How the date column is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    /// ISO-8601 (`1986-12-31`, `2024-01-02T14:30:00Z`) or an epoch number in s/ms/µs/ns.
    Iso,
    /// `dd/mm/yyyy` (also with `-` or `.`), optionally followed by ` HH:MM[:SS]`.
    DayFirst,
    /// `mm/dd/yyyy` (also with `-` or `.`), optionally followed by ` HH:MM[:SS]`.
    MonthFirst,
    /// A chrono strftime format such as `%d/%m/%Y %H:%M` (times without `%z` are UTC).
    Custom(String),
}

impl DateFormat {
    /// Parses one value into epoch microseconds (UTC).
    pub fn parse(&self, text: &str) -> Option<i64> {
        let t = text.trim();
        match self {
            DateFormat::Iso => parse_timestamp(t),
            DateFormat::DayFirst => {
                numeric_date(t).and_then(|(a, b, y, secs)| civil(y, b, a, secs))
            }
            DateFormat::MonthFirst => {
                numeric_date(t).and_then(|(a, b, y, secs)| civil(y, a, b, secs))
            }
            DateFormat::Custom(f) => parse_custom(f, t),
        }
    }

    /// A short description for messages, e.g. `dd/mm/yyyy`.
    pub fn describe(&self) -> String {
        match self {
            DateFormat::Iso => "ISO-8601 or epoch".into(),
            DateFormat::DayFirst => "dd/mm/yyyy".into(),
            DateFormat::MonthFirst => "mm/dd/yyyy".into(),
            DateFormat::Custom(f) => format!("format {f:?}"),
        }
    }

    /// Reads a user's `--date-format`: `iso`, `dmy`/`dd/mm/yyyy`, `mdy`/`mm/dd/yyyy`, or a strftime format.
    pub fn from_option(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "iso" | "auto-iso" | "epoch" => Ok(DateFormat::Iso),
            "dmy" | "dd/mm/yyyy" | "day-first" => Ok(DateFormat::DayFirst),
            "mdy" | "mm/dd/yyyy" | "month-first" => Ok(DateFormat::MonthFirst),
            _ if text.contains('%') => {
                if chrono::format::StrftimeItems::new(text)
                    .any(|i| matches!(i, chrono::format::Item::Error))
                {
                    Err(format!(
                        "--date-format {text:?} is not a valid strftime format"
                    ))
                } else {
                    Ok(DateFormat::Custom(text.to_owned()))
                }
            }
            _ => Err(format!(
                "--date-format {text:?}: use iso, dmy (dd/mm/yyyy), mdy (mm/dd/yyyy) or a strftime \
                 format such as %d.%m.%Y"
            )),
        }
    }
}

/// `a/b/yyyy[ HH:MM[:SS]]` with `/`, `-` or `.` between the date parts: (a, b, year, seconds of day).
fn numeric_date(t: &str) -> Option<(u32, u32, i32, u32)> {
    let (date, time) = match t.split_once([' ', 'T']) {
        Some((d, tm)) => (d, Some(tm.trim())),
        None => (t, None),
    };
    let sep = date.chars().find(|c| matches!(c, '/' | '-' | '.'))?;
    let mut parts = date.split(sep);
    let a = parts.next()?.parse().ok()?;
    let b = parts.next()?.parse().ok()?;
    let y = parts.next()?;
    if parts.next().is_some() || y.len() != 4 {
        return None;
    }
    let y = y.parse().ok()?;
    let secs = match time {
        None | Some("") => 0,
        Some(tm) => {
            let mut f = tm.split(':');
            let h: u32 = f.next()?.parse().ok()?;
            let m: u32 = f.next()?.parse().ok()?;
            let s: u32 = f.next().map_or(Some(0), |s| s.parse().ok())?;
            if f.next().is_some() || h > 23 || m > 59 || s > 59 {
                return None;
            }
            h * 3600 + m * 60 + s
        }
    };
    Some((a, b, y, secs))
}

fn civil(y: i32, m: u32, d: u32, secs: u32) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(y, m, d)?;
    let days = date
        .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    Some((days * 86_400 + i64::from(secs)) * MICROS_PER_SEC)
}

fn parse_custom(f: &str, t: &str) -> Option<i64> {
    if f.contains("%z") || f.contains("%:z") || f.contains("%#z") {
        return DateTime::parse_from_str(t, f)
            .ok()
            .map(|d| d.timestamp_micros());
    }
    NaiveDateTime::parse_from_str(t, f)
        .map(|d| d.and_utc().timestamp_micros())
        .or_else(|_| {
            NaiveDate::parse_from_str(t, f).map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map_or(0, |x| x.and_utc().timestamp_micros())
            })
        })
        .ok()
}

/// What the values of a date column say about their format.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Values seen, non-empty.
    pub seen: u64,
    /// First value readable as ISO-8601 / epoch.
    pub iso: Option<String>,
    /// First numeric `a/b/yyyy` value whose first part is over 12 (so the day comes first).
    pub day_first: Option<String>,
    /// First numeric `a/b/yyyy` value whose second part is over 12 (so the month comes first).
    pub month_first: Option<String>,
    /// First `a/b/yyyy` value, of any kind.
    pub numeric: Option<String>,
}

impl Evidence {
    /// Takes one value into account.
    pub fn add(&mut self, value: &str) {
        let v = value.trim();
        if v.is_empty() {
            return;
        }
        self.seen += 1;
        if let Some((a, b, _, _)) = numeric_date(v) {
            self.numeric.get_or_insert_with(|| v.to_owned());
            if a > 12 && self.day_first.is_none() {
                self.day_first = Some(v.to_owned());
            }
            if b > 12 && self.month_first.is_none() {
                self.month_first = Some(v.to_owned());
            }
        } else if self.iso.is_none() && parse_timestamp(v).is_some() {
            self.iso = Some(v.to_owned());
        }
    }

    /// True once the evidence can no longer change the verdict of [`decide`](Self::decide).
    pub fn settled(&self) -> bool {
        self.day_first.is_some()
            || self.month_first.is_some()
            || (self.iso.is_some() && self.numeric.is_none())
    }

    /// The format the evidence supports, or why none can be chosen.
    pub fn decide(&self) -> Result<DateFormat, String> {
        let hint = "pass --date-format dmy (dd/mm/yyyy), mdy (mm/dd/yyyy) or a strftime format";
        match (&self.numeric, &self.day_first, &self.month_first) {
            (None, _, _) => Ok(DateFormat::Iso),
            (Some(_), Some(d), Some(m)) => Err(format!(
                "dates are inconsistent: {d:?} must be dd/mm/yyyy but {m:?} must be mm/dd/yyyy; {hint}"
            )),
            (Some(_), Some(_), None) => Ok(DateFormat::DayFirst),
            (Some(_), None, Some(_)) => Ok(DateFormat::MonthFirst),
            (Some(n), None, None) => Err(format!(
                "dates are ambiguous: no value has a day over 12, so {n:?} could be dd/mm/yyyy or \
                 mm/dd/yyyy; {hint}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * MICROS_PER_SEC;

    #[test]
    fn day_and_month_first() {
        assert_eq!(DateFormat::DayFirst.parse("02/01/1970"), Some(DAY));
        assert_eq!(DateFormat::MonthFirst.parse("01/02/1970"), Some(DAY));
        assert_eq!(
            DateFormat::DayFirst.parse("02.01.1970 00:01"),
            Some(DAY + 60 * MICROS_PER_SEC)
        );
        assert_eq!(DateFormat::DayFirst.parse("31/02/1970"), None);
        assert_eq!(DateFormat::DayFirst.parse("1970-01-02"), None);
        assert_eq!(DateFormat::Iso.parse("1970-01-02"), Some(DAY));
    }

    #[test]
    fn custom_formats() {
        let f = DateFormat::from_option("%Y%m%d").unwrap();
        assert_eq!(f.parse("19700102"), Some(DAY));
        let f = DateFormat::from_option("%d %b %Y %H:%M").unwrap();
        assert_eq!(f.parse("02 Jan 1970 00:00"), Some(DAY));
        assert!(DateFormat::from_option("%Q").is_err());
        assert!(DateFormat::from_option("whenever").is_err());
        assert_eq!(
            DateFormat::from_option("dmy").unwrap(),
            DateFormat::DayFirst
        );
    }

    #[test]
    fn evidence_decides_or_explains() {
        let mut e = Evidence::default();
        e.add("01/02/1979");
        assert!(e.decide().unwrap_err().contains("ambiguous"));
        e.add("29/06/1979");
        assert_eq!(e.decide().unwrap(), DateFormat::DayFirst);
        e.add("06/29/1979");
        assert!(e.decide().unwrap_err().contains("inconsistent"));

        let mut iso = Evidence::default();
        iso.add("1986-12-31");
        assert!(iso.settled());
        assert_eq!(iso.decide().unwrap(), DateFormat::Iso);
    }
}
