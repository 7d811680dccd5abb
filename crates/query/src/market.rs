//! Market queries built from checked inputs: bar intervals, times, table names, symbols, and the SQL
//! they become. Every value a caller gives reaches SQL as a quoted literal or identifier, never as
//! SQL text. The server's market routes and `ticklake plot` share them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

/// The longest table name a request may give.
const MAX_TABLE_CHARS: usize = 255;
/// The most units an interval may have (`100000m` is about 69 days).
const MAX_INTERVAL_COUNT: u32 = 100_000;

/// A bar's length: `1m`, `5m`, `1h`, `1d`, `1w`, `1mo`, `3mo`, `1y`, or the long forms (`5 minutes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInterval {
    count: u32,
    unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl FromStr for BarInterval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        let (count, unit) = t.split_at(digits);
        let count: u32 = if count.is_empty() {
            1
        } else {
            count
                .parse()
                .map_err(|_| format!("interval {text:?}: the count is too large"))?
        };
        let unit = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" | "seconds" => Unit::Second,
            "m" | "min" | "minute" | "minutes" => Unit::Minute,
            "h" | "hour" | "hours" => Unit::Hour,
            "d" | "day" | "days" => Unit::Day,
            "w" | "week" | "weeks" => Unit::Week,
            "mo" | "month" | "months" => Unit::Month,
            "y" | "year" | "years" => Unit::Year,
            _ => {
                return Err(format!(
                "interval {text:?} is not one of the forms 30s, 1m, 5m, 1h, 1d, 1w, 1mo, 3mo, 1y \
                     (or 5 minutes, 1 hour, ...)"
            ))
            }
        };
        if count == 0 || count > MAX_INTERVAL_COUNT {
            return Err(format!(
                "interval {text:?}: the count must be from 1 to {MAX_INTERVAL_COUNT}"
            ));
        }
        if unit == Unit::Month && ![1, 3, 12].contains(&count) || unit == Unit::Year && count != 1 {
            return Err(format!(
                "interval {text:?}: calendar bars are 1mo, 3mo or 1y"
            ));
        }
        Ok(BarInterval { count, unit })
    }
}

impl BarInterval {
    /// The interval as `ohlcv(...)` takes it: `'5 minutes'`, `'7 days'`, `'3 months'`.
    pub fn sql(&self) -> String {
        let (count, unit) = match self.unit {
            Unit::Second => (self.count, "seconds"),
            Unit::Minute => (self.count, "minutes"),
            Unit::Hour => (self.count, "hours"),
            Unit::Day => (self.count, "days"),
            Unit::Week => (self.count * 7, "days"),
            Unit::Month => (self.count, "months"),
            Unit::Year => (self.count * 12, "months"),
        };
        format!("{count} {unit}")
    }
}

impl fmt::Display for BarInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
            Unit::Day => "d",
            Unit::Week => "w",
            Unit::Month => "mo",
            Unit::Year => "y",
        };
        write!(f, "{}{unit}", self.count)
    }
}

/// A point in time a request gives: a date (`2024-01-02`, its midnight UTC), an RFC 3339 time
/// (`2024-01-02T14:30:00Z`, `…+01:00`), a time without zone (UTC), or Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeBound(DateTime<Utc>);

impl FromStr for TimeBound {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Ok(d) = DateTime::parse_from_rfc3339(t) {
            return Ok(TimeBound(d.with_timezone(&Utc)));
        }
        for format in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(n) = NaiveDateTime::parse_from_str(t, format) {
                return Ok(TimeBound(n.and_utc()));
            }
        }
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(TimeBound(d.and_time(chrono::NaiveTime::MIN).and_utc()));
        }
        if let Ok(secs) = t.parse::<i64>() {
            if let Some(d) = DateTime::from_timestamp(secs, 0) {
                return Ok(TimeBound(d));
            }
        }
        Err(format!(
            "time {text:?} is not a date (2024-01-02), an RFC 3339 time (2024-01-02T14:30:00Z) or Unix seconds"
        ))
    }
}

impl fmt::Display for TimeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl TimeBound {
    /// The time as a SQL string literal in RFC 3339 form, which compares with timestamp columns.
    fn sql(&self) -> String {
        sql_string(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

/// `text` as a SQL string literal.
pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `name` as a quoted SQL identifier (so it is read exactly, case and all).
pub fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks a table name a request gives: not empty, not too long, no control characters.
pub fn check_table(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the table name is empty".into());
    }
    if name.chars().count() > MAX_TABLE_CHARS {
        return Err(format!(
            "the table name is longer than {MAX_TABLE_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the table name has control characters".into());
    }
    Ok(())
}

/// ` WHERE a AND b ...` of `filters`, or nothing without any.
fn where_all(filters: &[String]) -> String {
    if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    }
}

/// The SQL of the bars of `symbol` in `table`, newest first, from `from` (inclusive) to `to`
/// (exclusive); the caller limits the rows, so the newest bars are the ones kept.
pub fn bars_sql(
    table: &str,
    symbol: &str,
    interval: &BarInterval,
    from: Option<&TimeBound>,
    to: Option<&TimeBound>,
) -> String {
    let mut filters = Vec::new();
    if let Some(f) = from {
        filters.push(format!("bar >= {}", f.sql()));
    }
    if let Some(t) = to {
        filters.push(format!("bar < {}", t.sql()));
    }
    let filter = where_all(&filters);
    format!(
        "SELECT bar, to_unixtime(bar) AS time, open, high, low, close, volume, vwap, rows \
         FROM ohlcv({}, {}, {}){filter} ORDER BY bar DESC",
        sql_string(table),
        sql_string(&interval.sql()),
        sql_string(symbol)
    )
}

/// The SQL of each symbol's latest record in `table` (or only `symbol`'s): its time, price (close),
/// change and change in percent from the record before, and volume. With a `scope` only the
/// partitions it names are read, so the cost follows the newest days, not the lake's history.
///
/// The last two records per symbol are `row_number() … WHERE rn <= 2`, which the engine answers by
/// keeping each symbol's two newest records as the files stream by (`PartitionedTopKExec`), instead
/// of ordered aggregates (`last_value(… ORDER BY ts)`, `nth_value`) that sort every symbol's rows.
pub fn latest_sql(table: &str, symbol: Option<&str>, scope: Option<&LatestScope>) -> String {
    let mut filters = Vec::new();
    if let Some(s) = symbol {
        filters.push(format!("symbol = {}", sql_string(s)));
    }
    if let Some(scope) = scope {
        filters.push(scope.sql());
    }
    let filter = where_all(&filters);
    format!(
        "SELECT symbol, ts, price, price - previous AS change, \
         CASE WHEN previous <> 0 THEN (price - previous) / previous * 100 END AS change_pct, volume \
         FROM (SELECT symbol, max(ts) AS ts, max(CASE WHEN rn = 1 THEN close END) AS price, \
         max(CASE WHEN rn = 2 THEN close END) AS previous, \
         max(CASE WHEN rn = 1 THEN volume END) AS volume \
         FROM (SELECT symbol, ts, close, volume, \
         row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM {}{filter}) \
         WHERE rn <= 2 GROUP BY symbol) ORDER BY symbol",
        sql_ident(table)
    )
}

/// The `date` partitions [`latest_sql`] must read of a table partitioned by `date` and `symbol`: a
/// symbol's latest record is in its newest date, and the record before it there or in its date
/// before. So every date from the one most symbols' second-newest dates share (`from`), and, for the
/// symbols whose second-newest date is earlier (they stopped trading, or trade rarely), from theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestScope {
    /// Every symbol's partitions from this date on.
    pub from: String,
    /// Earlier dates, each with the symbols to read from it on.
    pub earlier: Vec<(String, Vec<String>)>,
}

impl LatestScope {
    /// The scope of the `(symbol, date)` values of a table's partitions (dates as `YYYY-MM-DD`, which
    /// sort as text); None without partitions.
    pub fn of<'a>(partitions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<LatestScope> {
        let mut newest: HashMap<&str, [Option<&str>; 2]> = HashMap::new();
        for (symbol, date) in partitions {
            let two = newest.entry(symbol).or_default();
            if two[0].is_none_or(|d| date > d) {
                two[1] = two[0];
                two[0] = Some(date);
            } else if two[0] != Some(date) && two[1].is_none_or(|d| date > d) {
                two[1] = Some(date);
            }
        }
        // Each symbol's first date to read, and the symbols by it.
        let mut by_date: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (symbol, [first, second]) in newest {
            if let Some(d) = second.or(first) {
                by_date.entry(d).or_default().push(symbol);
            }
        }
        // The date most symbols start at (the later of a tie); symbols starting later are read from it.
        let from = *by_date
            .iter()
            .max_by_key(|(d, symbols)| (symbols.len(), **d))?
            .0;
        let earlier = by_date
            .range(..from)
            .map(|(d, symbols)| {
                let mut symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
                symbols.sort();
                (d.to_string(), symbols)
            })
            .collect();
        Some(LatestScope {
            from: from.to_owned(),
            earlier,
        })
    }

    /// The scope as an SQL condition on `date` and `symbol`, values quoted.
    pub fn sql(&self) -> String {
        let mut any = vec![format!("date >= {}", sql_string(&self.from))];
        for (date, symbols) in &self.earlier {
            let list: Vec<String> = symbols.iter().map(|s| sql_string(s)).collect();
            any.push(format!(
                "(date >= {} AND symbol IN ({}))",
                sql_string(date),
                list.join(", ")
            ));
        }
        format!("({})", any.join(" OR "))
    }
}

/// The SQL of the symbols of `table`, in order.
pub fn symbols_sql(table: &str) -> String {
    format!(
        "SELECT DISTINCT symbol FROM {} ORDER BY symbol",
        sql_ident(table)
    )
}

/// The SQL of the columns of every table in `database`.
pub fn columns_sql(database: &str) -> String {
    format!(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_schema = {} ORDER BY table_name, ordinal_position",
        sql_string(database)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_in_short_and_long_forms() {
        let sql = |t: &str| t.parse::<BarInterval>().map(|i| i.sql());
        assert_eq!(sql("1m").unwrap(), "1 minutes");
        assert_eq!(sql("15m").unwrap(), "15 minutes");
        assert_eq!(sql("4h").unwrap(), "4 hours");
        assert_eq!(sql("1d").unwrap(), "1 days");
        assert_eq!(sql("2w").unwrap(), "14 days");
        assert_eq!(sql("3mo").unwrap(), "3 months");
        assert_eq!(sql("1y").unwrap(), "12 months");
        assert_eq!(sql("5 minutes").unwrap(), "5 minutes");
        assert_eq!(sql("hour").unwrap(), "1 hours");
        assert_eq!("90s".parse::<BarInterval>().unwrap().to_string(), "90s");
        for bad in [
            "",
            "0m",
            "1fortnight",
            "5mo",
            "2y",
            "-1m",
            "99999999999m",
            "1m'; drop",
        ] {
            assert!(bad.parse::<BarInterval>().is_err(), "{bad:?}");
        }
        let e = "1x".parse::<BarInterval>().unwrap_err();
        assert!(
            e.starts_with("interval \"1x\" is not one of the forms"),
            "{e}"
        );
    }

    #[test]
    fn times_in_every_form_are_utc() {
        let sql = |t: &str| t.parse::<TimeBound>().map(|b| b.sql());
        assert_eq!(sql("2024-01-02").unwrap(), "'2024-01-02T00:00:00Z'");
        assert_eq!(
            sql("2024-01-02T14:30:00Z").unwrap(),
            "'2024-01-02T14:30:00Z'"
        );
        assert_eq!(
            sql("2024-01-02T15:30:00+01:00").unwrap(),
            "'2024-01-02T14:30:00Z'"
        );
        assert_eq!(
            sql("2024-01-02 14:30:00.5").unwrap(),
            "'2024-01-02T14:30:00.500Z'"
        );
        assert_eq!(sql("1704205800").unwrap(), "'2024-01-02T14:30:00Z'");
        for bad in ["yesterday", "2024-13-01", "", "2024-01-02'"] {
            assert!(bad.parse::<TimeBound>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_values_stay_literals() {
        assert_eq!(sql_string("O'Neil"), "'O''Neil'");
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
        let sql = latest_sql(
            "t\"; DROP TABLE x; --",
            Some("x'; DROP TABLE y; --"),
            LatestScope::of([("'", "'")]).as_ref(),
        );
        assert!(sql.contains("FROM \"t\"\"; DROP TABLE x; --\""), "{sql}");
        assert!(sql.contains("symbol = 'x''; DROP TABLE y; --'"), "{sql}");
        assert!(sql.contains("date >= ''''"), "{sql}");
        assert!(check_table("").is_err());
        assert!(check_table(&"t".repeat(300)).is_err());
        assert!(check_table("a\nb").is_err());
        assert!(check_table("stock_topic").is_ok());
    }

    #[test]
    fn latest_reads_every_symbols_two_newest_dates() {
        let scope = |p: &[(&'static str, &'static str)]| LatestScope::of(p.iter().copied());
        assert_eq!(scope(&[]), None);
        let only = scope(&[("A", "2024-01-02")]).unwrap();
        assert_eq!(only.sql(), "(date >= '2024-01-02')");
        // A's record before its latest may be in its date before; B has traded only on the newest;
        // D on the newest and the one before. C stopped trading a year ago, and E's name is odd.
        let days = [
            ("A", "2024-01-01"),
            ("A", "2024-01-03"),
            ("A", "2024-01-02"),
            ("B", "2024-01-03"),
            ("D", "2024-01-02"),
            ("D", "2024-01-03"),
            ("C", "2023-01-05"),
            ("C", "2023-01-04"),
            ("C", "2022-12-30"),
            ("E'", "2023-01-04"),
        ];
        let scope = scope(&days).unwrap();
        assert_eq!(
            scope,
            LatestScope {
                from: "2024-01-02".into(),
                earlier: vec![("2023-01-04".into(), vec!["C".into(), "E'".into()])],
            }
        );
        assert_eq!(
            scope.sql(),
            "(date >= '2024-01-02' OR (date >= '2023-01-04' AND symbol IN ('C', 'E''')))"
        );
    }
}
