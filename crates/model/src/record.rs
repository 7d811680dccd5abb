use std::sync::Arc;

/// One value of a column that is not part of the core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or empty.
    Null,
    /// Any number (stored as `f64`, exact for integers up to 2^53).
    Number(f64),
    /// Text.
    Text(String),
    /// A boolean.
    Bool(bool),
}

/// One market observation (a tick or a bar).
///
/// `symbol` and `ts` are required; the prices and volume are optional so that feeds which carry only some
/// of them (a trade feed with just a price, say) still fit. Columns beyond the core ones are kept in
/// [`extra`](Record::extra) under their normalised names, in source order.
///
/// The symbol is a `String` unless said otherwise: a decoder may hand out a `Record<Cow<str>>` whose
/// symbol borrows the message it was read from ([`crate::json::decode_borrowed`]), so that a record
/// copied straight into Arrow columns costs no allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<S = String> {
    /// Instrument identifier, e.g. `HSI` or `AAPL`. Never empty.
    pub symbol: S,
    /// Event time: microseconds since the Unix epoch, UTC.
    pub ts: i64,
    /// Opening price of the interval.
    pub open: Option<f64>,
    /// Highest price of the interval.
    pub high: Option<f64>,
    /// Lowest price of the interval.
    pub low: Option<f64>,
    /// Closing (or last) price.
    pub close: Option<f64>,
    /// Traded volume.
    pub volume: Option<f64>,
    /// Further columns of the source: (snake_case name, value).
    pub extra: Vec<(Arc<str>, Value)>,
}

impl Record {
    /// A record with the given symbol and time and nothing else.
    pub fn new(symbol: impl Into<String>, ts: i64) -> Self {
        Record::with_symbol(symbol.into(), ts)
    }
}

impl<S> Record<S> {
    /// A record with the given symbol (of any string type) and time and nothing else.
    pub fn with_symbol(symbol: S, ts: i64) -> Self {
        Record {
            symbol,
            ts,
            open: None,
            high: None,
            low: None,
            close: None,
            volume: None,
            extra: Vec::new(),
        }
    }

    /// The same record with its symbol as a `String`.
    pub fn into_owned(self) -> Record
    where
        S: Into<String>,
    {
        Record {
            symbol: self.symbol.into(),
            ts: self.ts,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            extra: self.extra,
        }
    }
}
