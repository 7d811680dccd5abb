//! The message on the topic: one JSON object per record.
//!
//! ```json
//! {"symbol":"HSI","ts":"1986-12-31T00:00:00Z","open":2568.3,"high":2568.3,"low":2568.3,"close":2568.3,
//!  "volume":0.0,"adj_close":2568.3,"close_usd":333.879}
//! ```
//!
//! Absent optional values are left out. The decoder is lenient in what it accepts, so that other producers
//! can feed the sink: field names are normalised (`Adj Close` -> `adj_close`), the usual aliases name the
//! core fields (`Index`/`ticker` -> `symbol`, `Date`/`timestamp` -> `ts`), `ts` may be ISO-8601 text or an
//! epoch number in s/ms/µs/ns, and numbers may arrive as numeric strings. The seed's own producer
//! (`{"Index": "HSI", "Date": "1986-12-31", ..., "Volume": 0.0, "CloseUSD": 333.87}`) decodes as-is.
//!
//! It is strict about what the lake needs, so that a decoded record can always be written: a symbol that
//! fits a folder name ([`check_symbol`]), an event time in the years 0001-9999, finite numbers, at most
//! [`MAX_EXTRA_COLUMNS`] extra columns with names of at most [`MAX_COLUMN_NAME_BYTES`] bytes, and no column
//! given twice (`{"close":1,"Close":2}`, or a key repeated, is ambiguous and refused). A blank extra
//! value (`"adj_close":""`) is null.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::names::{
    check_symbol, core_alias, is_normalized, normalize_column_name, MAX_COLUMN_NAME_BYTES,
};
use crate::time::{epoch_to_micros, in_supported_range, parse_timestamp, write_rfc3339};
use crate::{DecodeError, Record, Value};

/// Appends the JSON message for `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"symbol\":");
    write_str(out, &record.symbol);
    out.extend_from_slice(b",\"ts\":\"");
    write_rfc3339(record.ts, out);
    out.push(b'"');
    for (name, v) in [
        ("open", record.open),
        ("high", record.high),
        ("low", record.low),
        ("close", record.close),
        ("volume", record.volume),
    ] {
        if let Some(v) = v {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_f64(out, v);
        }
    }
    for (name, v) in &record.extra {
        if matches!(v, Value::Null) {
            continue;
        }
        out.push(b',');
        write_str(out, name);
        out.push(b':');
        match v {
            Value::Null => {}
            Value::Number(n) => write_f64(out, *n),
            Value::Text(t) => write_str(out, t),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
    out.push(b'}');
}

/// The JSON message for `record` as a new buffer.
pub fn encode_to_vec(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    encode(record, &mut out);
    out
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    // serde_json writes the shortest round-tripping form, and `null` for NaN and infinities.
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// The most extra columns one message may carry.
pub const MAX_EXTRA_COLUMNS: usize = 256;

/// Decodes one JSON message into a [`Record`].
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    decode_borrowed(bytes).map(Record::into_owned)
}

/// Decodes one JSON message into a [`Record`] whose symbol borrows `bytes` where it can (a symbol
/// without escapes): the same checks as [`decode`], without allocating the symbol.
pub fn decode_borrowed(bytes: &[u8]) -> Result<Record<Cow<'_, str>>, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = de
        .deserialize_any(RecordVisitor)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    de.end().map_err(|e| DecodeError::NotJson(e.to_string()))?;
    result
}

/// A JSON scalar, borrowed from the message where possible.
enum Scalar<'de> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'de, str>),
    Nested(&'static str),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Num(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Nested(k) => k,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object key, borrowed where the message has no escapes in it.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

const SYMBOL: usize = 0;
const SLOTS: [&str; 7] = ["symbol", "ts", "open", "high", "low", "close", "volume"];

fn slot_of(core: &str) -> usize {
    SLOTS.iter().position(|s| *s == core).unwrap_or(SYMBOL)
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Result<Record<Cow<'de, str>>, DecodeError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Per core field: the value under its canonical name, and the first value under an alias.
        let mut canonical: [Option<(Cow<'de, str>, Scalar<'de>)>; 7] = Default::default();
        let mut alias: [Option<(Cow<'de, str>, Scalar<'de>)>; 7] = Default::default();
        let mut extra: Vec<(Cow<'de, str>, Scalar<'de>)> = Vec::new();
        // The first problem found; the rest of the object is still read, so the JSON stays well-formed.
        let mut problem: Option<DecodeError> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: Scalar<'de> = map.next_value()?;
            if problem.is_some() {
                continue;
            }
            if let Some(i) = SLOTS.iter().position(|s| *s == key) {
                if canonical[i].is_some() {
                    problem = Some(bad(&key, "appears twice"));
                }
                canonical[i] = Some((key, value));
                continue;
            }
            if extra.len() >= MAX_EXTRA_COLUMNS {
                problem = Some(DecodeError::BadField {
                    field: key.into_owned(),
                    reason: format!(
                        "too many columns: a record may carry at most {MAX_EXTRA_COLUMNS} besides \
                         symbol, ts, open, high, low, close and volume"
                    ),
                });
                continue;
            }
            let normalized = if is_normalized(&key) {
                key.clone()
            } else {
                Cow::Owned(normalize_column_name(&key))
            };
            match core_alias(&normalized).map(slot_of) {
                Some(i) if alias[i].is_none() => alias[i] = Some((key, value)),
                _ => extra.push((normalized, value)),
            }
        }
        Ok(match problem {
            Some(e) => Err(e),
            None => build(canonical, alias, extra),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(DecodeError::NotAnObject("an array")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("a string")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("a number")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("a number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("a number")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("a boolean")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("null")))
    }
}

type Slot<'de> = Option<(Cow<'de, str>, Scalar<'de>)>;

fn build<'de>(
    mut canonical: [Slot<'de>; 7],
    alias: [Slot<'de>; 7],
    extra: Vec<(Cow<'de, str>, Scalar<'de>)>,
) -> Result<Record<Cow<'de, str>>, DecodeError> {
    let mut extras = Vec::with_capacity(extra.len());
    // An alias is the field only when the canonical name is absent; otherwise it is an ordinary column.
    for (i, a) in alias.into_iter().enumerate() {
        if let Some((key, value)) = a {
            if canonical[i].is_none() {
                canonical[i] = Some((key, value));
            } else {
                extras.push((Cow::Owned(normalize_column_name(&key)), value));
            }
        }
    }
    // Every name the record gives a column, to refuse the same column given twice. The core fields'
    // names differ from each other, so a record of only those (the common case) has nothing to check
    // and costs no allocation here.
    if !extra.is_empty() || !extras.is_empty() {
        let mut names: Vec<&str> = SLOTS
            .iter()
            .zip(&canonical)
            .filter(|(_, v)| v.is_some())
            .map(|(s, _)| *s)
            .collect();
        for (name, _) in extra.iter().chain(&extras) {
            if names.contains(&name.as_ref()) {
                return Err(bad(
                    name,
                    "is given twice (names that differ only in case or punctuation are the same \
                     column); which value is meant is ambiguous",
                ));
            }
            if name.len() > MAX_COLUMN_NAME_BYTES {
                return Err(bad(
                    &name[..name.floor_char_boundary(40)],
                    format!(
                        "the column name is {} bytes long, more than the {MAX_COLUMN_NAME_BYTES} \
                         allowed",
                        name.len()
                    ),
                ));
            }
            names.push(name);
        }
    }
    let [symbol, ts, open, high, low, close, volume] = canonical;
    let symbol = match symbol {
        Some((_, Scalar::Str(s))) => s,
        // A whole number names an instrument in some feeds (exchange codes): its digits, if exact.
        Some((_, Scalar::Num(n))) if n.fract() == 0.0 && n.abs() <= MAX_EXACT => {
            Cow::Owned(format!("{n:.0}"))
        }
        Some((key, v @ (Scalar::Bool(_) | Scalar::Num(_) | Scalar::Nested(_)))) => {
            return Err(bad(
                &key,
                format!(
                    "expected a string, got {}",
                    match v {
                        Scalar::Num(_) => "a number that is not a whole number up to 2^53",
                        v => v.kind(),
                    }
                ),
            ))
        }
        None | Some((_, Scalar::Null)) => return Err(DecodeError::Missing("symbol")),
    };
    if let Err(reason) = check_symbol(&symbol) {
        return Err(DecodeError::BadField {
            field: "symbol".into(),
            reason,
        });
    }
    let ts = match ts {
        Some((key, Scalar::Str(s))) => parse_timestamp(&s).ok_or_else(|| {
            bad(
                &key,
                format!(
                    "cannot read {s:?} as a timestamp (expected RFC 3339 like \
                     2024-01-02T14:30:00Z, a date like 2024-01-02, or epoch s/ms/µs/ns)"
                ),
            )
        })?,
        Some((key, Scalar::Num(n))) => {
            epoch_to_micros(n).ok_or_else(|| bad(&key, "is not a finite number"))?
        }
        Some((key, v @ (Scalar::Bool(_) | Scalar::Nested(_)))) => {
            return Err(bad(&key, format!("expected a timestamp, got {}", v.kind())))
        }
        None | Some((_, Scalar::Null)) => return Err(DecodeError::Missing("ts")),
    };
    if !in_supported_range(ts) {
        return Err(DecodeError::BadField {
            field: "ts".into(),
            reason: "is outside the years 0001-9999".into(),
        });
    }
    let mut record = Record::with_symbol(symbol, ts);
    record.open = number(open)?;
    record.high = number(high)?;
    record.low = number(low)?;
    record.close = number(close)?;
    record.volume = number(volume)?;
    for (name, v) in extra.into_iter().chain(extras) {
        let value = match v {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Num(n) => Value::Number(n),
            // A blank value is a missing one (CSV exports write them for nulls), not text.
            Scalar::Str(s) if s.trim().is_empty() => Value::Null,
            Scalar::Str(s) => Value::Text(s.into_owned()),
            Scalar::Nested(k) => {
                return Err(bad(
                    &name,
                    format!("{k} is not supported as a column value"),
                ))
            }
        };
        record.extra.push((intern(&name), value));
    }
    Ok(record)
}

thread_local! {
    /// Column names seen by this thread: every message repeats the same few, so share one allocation.
    static NAMES: std::cell::RefCell<std::collections::HashMap<Box<str>, Arc<str>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The shared `Arc<str>` for a column name (bounded: past 4096 distinct names, no more are cached).
fn intern(name: &str) -> Arc<str> {
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(a) = names.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        if names.len() < 4096 {
            names.insert(Box::from(name), a.clone());
        }
        a
    })
}

/// The largest whole number an `f64` holds exactly (2^53).
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

fn number(slot: Slot<'_>) -> Result<Option<f64>, DecodeError> {
    match slot {
        None | Some((_, Scalar::Null)) => Ok(None),
        Some((_, Scalar::Num(n))) => Ok(Some(n)),
        Some((key, Scalar::Str(s))) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            match t.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(Some(n)),
                _ => Err(bad(&key, format!("expected a number, got {s:?}"))),
            }
        }
        Some((key, v)) => Err(bad(&key, format!("expected a number, got {}", v.kind()))),
    }
}

fn bad(field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::BadField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MICROS_PER_SEC;

    fn sample() -> Record {
        let mut r = Record::new("HSI", 536_371_200 * MICROS_PER_SEC);
        r.open = Some(2568.300049);
        r.high = Some(2568.300049);
        r.low = Some(2568.300049);
        r.close = Some(2568.300049);
        r.volume = Some(0.0);
        r.extra
            .push((Arc::from("adj_close"), Value::Number(2568.300049)));
        r.extra
            .push((Arc::from("close_usd"), Value::Number(333.87900637)));
        r
    }

    #[test]
    fn encodes_readable_json() {
        let json = String::from_utf8(encode_to_vec(&sample())).unwrap();
        assert_eq!(
            json,
            r#"{"symbol":"HSI","ts":"1986-12-31T00:00:00Z","open":2568.300049,"high":2568.300049,"low":2568.300049,"close":2568.300049,"volume":0.0,"adj_close":2568.300049,"close_usd":333.87900637}"#
        );
    }

    #[test]
    fn round_trips() {
        let mut r = sample();
        r.symbol = "we\"ird/\u{1}sym".into();
        r.extra
            .push((Arc::from("venue"), Value::Text("XHKG".into())));
        r.extra.push((Arc::from("halted"), Value::Bool(false)));
        r.ts += 123_456;
        assert_eq!(decode(&encode_to_vec(&r)).unwrap(), r);
    }

    #[test]
    fn a_borrowed_decode_is_the_same_record_without_copying_a_plain_symbol() {
        let plain = encode_to_vec(&sample());
        let r = decode_borrowed(&plain).unwrap();
        assert!(matches!(r.symbol, Cow::Borrowed("HSI")));
        assert_eq!(r.into_owned(), sample());
        // An escaped symbol, or a number naming one, is made into a string of its own.
        let escaped = br#"{"symbol":"H\u0053I","ts":0}"#;
        let r = decode_borrowed(escaped).unwrap();
        assert!(matches!(&r.symbol, Cow::Owned(s) if s == "HSI"));
        let numeric = decode_borrowed(br#"{"symbol":700,"ts":0}"#).unwrap();
        assert_eq!(numeric.symbol, "700");
        assert_eq!(
            decode_borrowed(br#"{"symbol":"","ts":0}"#).unwrap_err(),
            decode(br#"{"symbol":"","ts":0}"#).unwrap_err()
        );
    }

    #[test]
    fn seed_producer_messages_decode() {
        let seed = br#"{"Index": "HSI", "Date": "1986-12-31", "Open": 2568.300049, "High": 2568.300049, "Low": 2568.300049, "Close": 2568.300049, "Adj Close": 2568.300049, "Volume": 0.0, "CloseUSD": 333.87900637}"#;
        let r = decode(seed).unwrap();
        assert_eq!(r, sample());
    }

    #[test]
    fn alias_beside_canonical_is_kept_as_column() {
        let r = decode(br#"{"symbol":"A","ts":0,"date":"2024-01-02","price":"1.5"}"#).unwrap();
        assert_eq!(r.ts, 0);
        assert_eq!(r.close, Some(1.5));
        assert_eq!(
            r.extra,
            vec![(Arc::from("date"), Value::Text("2024-01-02".into()))]
        );
    }

    #[test]
    fn poison_messages_say_why() {
        let cases: [(&[u8], &str); 9] = [
            (b"not json", "not valid JSON"),
            (b"[1,2]", "expected a JSON object, got an array"),
            (b"\"x\"", "expected a JSON object, got a string"),
            (br#"{"ts":0}"#, "missing required field `symbol`"),
            (br#"{"symbol":"A"}"#, "missing required field `ts`"),
            (
                br#"{"symbol":"A","ts":"yesterday"}"#,
                "field `ts`: cannot read \"yesterday\"",
            ),
            (
                br#"{"symbol":"A","ts":0,"open":"abc"}"#,
                "field `open`: expected a number, got \"abc\"",
            ),
            (
                br#"{"symbol":["A"],"ts":0}"#,
                "field `symbol`: expected a string, got an array",
            ),
            (
                br#"{"symbol":"A","ts":0} trailing"#,
                "not valid JSON: trailing characters",
            ),
        ];
        for (input, want) in cases {
            let err = decode(input).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }
}
