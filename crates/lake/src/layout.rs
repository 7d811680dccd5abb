//! Where records go in the lake: Hive-style partition folders and deterministic file names.
//!
//! `<table>/date=YYYY-MM-DD/symbol=<escaped>/<topic>+<kafka partition>+<first offset, 20 digits>.<ext>`

use std::fmt::Write as _;
use std::str::FromStr;

pub use ticklake_model::names::{hive_escape, hive_unescape};
use ticklake_model::time::format_rfc3339;

/// One partition column of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKey {
    /// `date=YYYY-MM-DD`, the UTC day of the event time.
    Date,
    /// `hour=HH`, the UTC hour of the event time.
    Hour,
    /// `symbol=<value>`, Hive-escaped.
    Symbol,
}

impl PartitionKey {
    /// The column name used in the folder (`date`, `hour`, `symbol`).
    pub fn name(self) -> &'static str {
        match self {
            PartitionKey::Date => "date",
            PartitionKey::Hour => "hour",
            PartitionKey::Symbol => "symbol",
        }
    }
}

/// The partition columns, outermost first (`date,symbol` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning(Vec<PartitionKey>);

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning(vec![PartitionKey::Date, PartitionKey::Symbol])
    }
}

impl FromStr for Partitioning {
    type Err = String;

    /// `date,symbol`, `date`, `date,hour`, `symbol`, `date,hour,symbol` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        if s.trim() == "none" {
            return Ok(Partitioning(keys));
        }
        for part in s.split(',').map(str::trim) {
            let key = match part {
                "date" => PartitionKey::Date,
                "hour" => PartitionKey::Hour,
                "symbol" => PartitionKey::Symbol,
                other => {
                    return Err(format!(
                        "--partition-by: unknown key {other:?}; use date, hour, symbol (e.g. date,symbol) or none"
                    ))
                }
            };
            if keys.contains(&key) {
                return Err(format!("--partition-by: {part:?} is given twice"));
            }
            keys.push(key);
        }
        if keys.contains(&PartitionKey::Hour) && !keys.contains(&PartitionKey::Date) {
            return Err("--partition-by: hour needs date before it (date,hour)".into());
        }
        Ok(Partitioning(keys))
    }
}

impl std::fmt::Display for Partitioning {
    /// As `--partition-by` spells it: `date,symbol`, ..., or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl Partitioning {
    /// The partition columns, outermost first.
    pub fn keys(&self) -> &[PartitionKey] {
        &self.0
    }

    /// Records with the same symbol and time bucket share a folder: the bucket is the record's hour (UTC)
    /// when the layout has an `hour` column, its day when it has a `date` column, else 0.
    pub fn time_bucket(&self, ts_micros: i64) -> i64 {
        const HOUR: i64 = 3_600_000_000;
        if self.0.contains(&PartitionKey::Hour) {
            ts_micros.div_euclid(HOUR)
        } else if self.0.contains(&PartitionKey::Date) {
            ts_micros.div_euclid(24 * HOUR)
        } else {
            0
        }
    }

    /// The folder of a record, e.g. `date=2024-01-02/symbol=AAPL` (empty with no partition columns).
    pub fn path_for(&self, symbol: &str, ts_micros: i64) -> String {
        let mut out = String::new();
        let stamp = || format_rfc3339(ts_micros);
        for key in &self.0 {
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(key.name());
            out.push('=');
            match key {
                PartitionKey::Date => out.push_str(&stamp()[..10]),
                PartitionKey::Hour => out.push_str(&stamp()[11..13]),
                PartitionKey::Symbol => out.push_str(&hive_escape(symbol)),
            }
        }
        out
    }
}

/// A flush writing at least this many files ...
pub const SMALL_FILES: u64 = 1_000;
/// ... of fewer records than this on average writes too many small files for its layout (the sink
/// warns about such flushes).
pub const SMALL_FILE_RECORDS: u64 = 100;
/// A new table's first flush making [`SMALL_FILES`] or more `date,symbol` files of fewer records than
/// this on average gets a coarser layout ([`Partitioning::choose`]).
pub const CHOSEN_FILE_RECORDS: u64 = 1_000;

/// How the records of a flush spread over `date,symbol` folders: what [`Partitioning::choose`] looks at.
#[derive(Debug, Default, Clone)]
pub struct FeedShape {
    records: u64,
    folders: u64,
    dates: std::collections::HashSet<String>,
    symbols: std::collections::HashSet<String>,
}

impl FeedShape {
    /// Counts `records` records in the `date,symbol` folder `folder` (as [`Partitioning::path_for`]
    /// of the default layout writes it, e.g. `date=2024-01-02/symbol=AAPL`).
    pub fn add(&mut self, folder: &str, records: u64) {
        let (date, symbol) = folder.split_once('/').unwrap_or((folder, ""));
        self.records += records;
        self.folders += 1;
        if !self.dates.contains(date) {
            self.dates.insert(date.to_owned());
        }
        if !self.symbols.contains(symbol) {
            self.symbols.insert(symbol.to_owned());
        }
    }

    /// Records counted.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// The layout [`Partitioning::choose`] picked, and why, for the sink's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChoice {
    /// The partition columns picked.
    pub partitioning: Partitioning,
    /// Why, in words a user can check against their feed.
    pub reason: String,
}

impl Partitioning {
    /// The layout for a new table, from the records of its first flush (in `date,symbol` folders):
    /// `date,symbol` (the default, what a live feed of a few hundred symbols wants) unless it would
    /// write [`SMALL_FILES`] or more files of under [`CHOSEN_FILE_RECORDS`] records on average; then
    /// `date` or `symbol`, whichever has fewer folders: `symbol` for daily or coarser history (one row
    /// per symbol and day), `date` for a feed of thousands of symbols (its files stay sorted by symbol,
    /// so a symbol's rows are still found by their statistics).
    pub fn choose(shape: &FeedShape) -> LayoutChoice {
        let per_folder = shape.records as f64 / shape.folders.max(1) as f64;
        if shape.folders < SMALL_FILES || shape.records >= shape.folders * CHOSEN_FILE_RECORDS {
            return LayoutChoice {
                partitioning: Partitioning::default(),
                reason: format!(
                    "{} records in {} date,symbol folders ({per_folder:.0} per folder)",
                    shape.records, shape.folders
                ),
            };
        }
        let (dates, symbols) = (shape.dates.len(), shape.symbols.len());
        let (key, folders) = if dates <= symbols {
            (PartitionKey::Date, dates)
        } else {
            (PartitionKey::Symbol, symbols)
        };
        LayoutChoice {
            partitioning: Partitioning(vec![key]),
            reason: format!(
                "date,symbol would make {} files of {per_folder:.1} records on average ({} records, \
                 {dates} dates, {symbols} symbols); `{}` makes {folders}",
                shape.folders,
                shape.records,
                key.name()
            ),
        }
    }

    /// The folder in this layout of a record whose folder in `from` is `path`, when this layout's
    /// columns are some of `from`'s, in the same order (`date,symbol` to `date` or `symbol`);
    /// `None` otherwise.
    pub fn coarsen(&self, from: &Partitioning, path: &str) -> Option<String> {
        let mut from_keys = from.0.iter();
        if !self.0.iter().all(|k| from_keys.any(|f| f == k)) {
            return None;
        }
        let kept: Vec<&str> = path
            .split('/')
            .filter(|seg| {
                let name = seg.split_once('=').map_or(*seg, |(n, _)| n);
                self.0.iter().any(|k| k.name() == name)
            })
            .collect();
        Some(kept.join("/"))
    }
}

/// The file name for a group of records: `<topic>+<partition>+<first offset as 20 digits>.<ext>`.
///
/// The same records always get the same name, which is what makes a replay overwrite rather than
/// duplicate. A topic starting with `_` or `.` gets that character escaped (`%5F`, `%2E`), because
/// query engines skip files whose names start with them.
pub fn file_name(topic: &str, partition: i32, first_offset: i64, ext: &str) -> String {
    let mut name = String::with_capacity(topic.len() + 32);
    match topic.chars().next() {
        Some(c @ ('_' | '.')) => {
            let _ = write!(name, "%{:02X}{}", c as u32, &topic[1..]);
        }
        _ => name.push_str(topic),
    }
    let _ = write!(name, "+{partition}+{first_offset:020}.{ext}");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_704_205_800_000_000; // 2024-01-02T14:30:00Z

    #[test]
    fn records_of_a_time_bucket_share_a_folder() {
        const HOUR: i64 = 3_600_000_000;
        for keys in ["date,symbol", "date,hour,symbol", "symbol", "date"] {
            let p: Partitioning = keys.parse().unwrap();
            // Before the epoch too: buckets are floors, not truncations.
            for ts in [
                TS,
                TS + 59 * 60_000_000,
                TS + HOUR,
                TS + 24 * HOUR,
                -1,
                -HOUR,
                0,
            ] {
                for other in [ts + 1, ts - 1, ts + HOUR / 2, ts + 12 * HOUR] {
                    if p.time_bucket(ts) == p.time_bucket(other) {
                        assert_eq!(
                            p.path_for("X", ts),
                            p.path_for("X", other),
                            "{keys}: {ts} {other}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn paths() {
        let p = Partitioning::default();
        assert_eq!(p.path_for("AAPL", TS), "date=2024-01-02/symbol=AAPL");
        let p: Partitioning = "date,hour".parse().unwrap();
        assert_eq!(p.path_for("AAPL", TS), "date=2024-01-02/hour=14");
        let p: Partitioning = "symbol".parse().unwrap();
        assert_eq!(p.path_for("AAPL", TS), "symbol=AAPL");
        let p: Partitioning = "none".parse().unwrap();
        assert_eq!(p.path_for("AAPL", TS), "");
        assert!("date,date".parse::<Partitioning>().is_err());
        assert!("hour".parse::<Partitioning>().is_err());
        assert!("month"
            .parse::<Partitioning>()
            .unwrap_err()
            .contains("unknown key"));
    }

    fn shape(dates: usize, symbols: usize, per_folder: u64) -> FeedShape {
        let mut shape = FeedShape::default();
        for d in 0..dates {
            for s in 0..symbols {
                shape.add(&format!("date=2024-{:04}/symbol=S{s}", d), per_folder);
            }
        }
        shape
    }

    #[test]
    fn the_layout_follows_the_feed() {
        let pick = |s: &FeedShape| Partitioning::choose(s).partitioning.to_string();
        // A live feed: one date, a few hundred symbols, many records each.
        assert_eq!(pick(&shape(1, 100, 10_000)), "date,symbol");
        // A small first flush is no evidence: the default stays.
        assert_eq!(pick(&shape(3, 10, 1)), "date,symbol");
        // Daily bars of a few symbols over many years: one record per folder.
        assert_eq!(pick(&shape(5_000, 14, 1)), "symbol");
        // Thousands of symbols, a few records each.
        assert_eq!(pick(&shape(1, 10_000, 20)), "date");
        // Daily bars of 10,000 symbols over 100 days: fewer dates than symbols.
        assert_eq!(pick(&shape(100, 10_000, 1)), "date");
        // Exactly at the bound: 1,000 records per folder is fine; fewer is not.
        assert_eq!(pick(&shape(1, 2_000, 1_000)), "date,symbol");
        assert_eq!(pick(&shape(1, 2_000, 999)), "date");
        // A daily history replayed in a loop: each date,symbol folder gets a few hundred records.
        assert_eq!(pick(&shape(5_693, 1, 125)), "symbol");
        let c = Partitioning::choose(&shape(5_000, 14, 1));
        assert!(
            c.reason.contains("70000 files of 1.0 records"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn coarser_layouts_keep_their_columns() {
        let fine = Partitioning::default();
        let path = "date=2024-01-02/symbol=A%2FB";
        let date: Partitioning = "date".parse().unwrap();
        let symbol: Partitioning = "symbol".parse().unwrap();
        let none: Partitioning = "none".parse().unwrap();
        assert_eq!(date.coarsen(&fine, path).unwrap(), "date=2024-01-02");
        assert_eq!(symbol.coarsen(&fine, path).unwrap(), "symbol=A%2FB");
        assert_eq!(none.coarsen(&fine, path).unwrap(), "");
        assert_eq!(fine.coarsen(&fine, path).unwrap(), path);
        let hourly: Partitioning = "date,hour,symbol".parse().unwrap();
        assert_eq!(hourly.coarsen(&fine, path), None);
        assert_eq!(fine.coarsen(&date, "date=2024-01-02"), None);
        // The same symbol coarsened from any date lands in one folder.
        assert_eq!(
            symbol.coarsen(&fine, &fine.path_for("X", TS)),
            symbol.coarsen(&fine, &fine.path_for("X", TS + 86_400_000_000 * 400))
        );
    }

    #[test]
    fn hostile_symbols_stay_inside_and_round_trip() {
        for sym in [
            "../../x",
            "A/B",
            "BRK:B",
            "=%",
            "..",
            ".",
            "a\u{0}b\nc",
            "ü€",
            "x%2Fy",
            "__HIVE",
        ] {
            let e = hive_escape(sym);
            assert!(!e.contains('/') && !e.contains('='), "{sym:?} -> {e:?}");
            assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
            assert_eq!(hive_unescape(&e), sym, "{e:?}");
            let folder = Partitioning::default().path_for(sym, TS);
            assert_eq!(
                folder.matches('/').count(),
                1,
                "exactly two levels: {folder}"
            );
            assert!(folder.split('/').all(|seg| seg != ".." && seg != "."));
        }
        assert_eq!(hive_escape("BRK:B"), "BRK%3AB");
        assert_eq!(hive_escape("../../x"), "..%2F..%2Fx");
        assert_eq!(hive_escape(""), "__HIVE_DEFAULT_PARTITION__");
    }

    #[test]
    fn file_names_are_deterministic_and_visible() {
        assert_eq!(
            file_name("stock-topic", 3, 42, "parquet"),
            "stock-topic+3+00000000000000000042.parquet"
        );
        assert_eq!(
            file_name("_x", 0, 0, "json"),
            "%5Fx+0+00000000000000000000.json"
        );
        assert!(!file_name(".x", 0, 0, "csv").starts_with('.'));
    }
}
