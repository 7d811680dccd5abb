//! Records <-> Arrow.
//!
//! The schema is the core columns (`symbol` Utf8, `ts` Timestamp(µs, UTC), `open`..`volume` Float64)
//! followed by the extra columns in the order they were first seen. An extra column is Float64 when every
//! value is a number, Boolean when every value is a boolean, and Utf8 otherwise (numbers then keep their
//! JSON text), so no value is ever dropped.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::names::CORE_COLUMNS;
use crate::{json, DecodeError, Record, Value};

/// The columns a lake file's rows are sorted by, in this order (those of them the file has): ascending,
/// nulls last. Writers record them in the Parquet footer (`sorting_columns`), so a reader knows the
/// order without reading the rows.
pub const SORT_COLUMNS: [&str; 2] = ["symbol", "ts"];

/// The positions in `schema` of the [`SORT_COLUMNS`] it has, in sort order.
pub fn sort_column_indices(schema: &Schema) -> Vec<usize> {
    SORT_COLUMNS
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect()
}

/// The Arrow type of `ts`: microseconds, UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The core fields, in schema order.
pub fn core_fields() -> Vec<Field> {
    vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("open", DataType::Float64, true),
        Field::new("high", DataType::Float64, true),
        Field::new("low", DataType::Float64, true),
        Field::new("close", DataType::Float64, true),
        Field::new("volume", DataType::Float64, true),
    ]
}

/// Collects records into an Arrow [`RecordBatch`].
///
/// It starts empty and grows as rows arrive, so thousands of small open builders (one per lake
/// partition) cost little memory.
pub struct BatchBuilder {
    symbol: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    prices: [Float64Builder; 5],
    /// Rows in the builders above (the rest are in `sealed`).
    open_rows: usize,
    /// Full chunks of the core columns: `symbol`, `ts`, then the prices.
    sealed: Vec<[ArrayRef; 7]>,
    extras: Vec<(Arc<str>, Vec<Value>)>,
    extra_index: HashMap<Arc<str>, usize>,
    rows: usize,
}

/// Rows per chunk of the core columns. A builder that fills one seals it (its buffers are moved into
/// arrays, not copied) and starts the next one at this capacity, so a large group never reallocates
/// (and copies) a large buffer as it grows, and [`BatchBuilder::finish`] copies each column once.
const CHUNK_ROWS: usize = 16 * 1024;

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            symbol: StringBuilder::with_capacity(0, 0),
            ts: TimestampMicrosecondBuilder::with_capacity(0),
            prices: std::array::from_fn(|_| Float64Builder::with_capacity(0)),
            open_rows: 0,
            sealed: Vec::new(),
            extras: Vec::new(),
            extra_index: HashMap::new(),
            rows: 0,
        }
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row has been pushed since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one record.
    pub fn push<S: AsRef<str>>(&mut self, r: &Record<S>) {
        self.symbol.append_value(r.symbol.as_ref());
        self.ts.append_value(r.ts);
        for (b, v) in self
            .prices
            .iter_mut()
            .zip([r.open, r.high, r.low, r.close, r.volume])
        {
            b.append_option(v);
        }
        for (name, value) in &r.extra {
            let i = match self.extra_index.get(name) {
                Some(&i) => i,
                None => {
                    let i = self.extras.len();
                    self.extras
                        .push((name.clone(), vec![Value::Null; self.rows]));
                    self.extra_index.insert(name.clone(), i);
                    i
                }
            };
            let col = &mut self.extras[i].1;
            // A name repeated within one record keeps its first value.
            if col.len() == self.rows {
                col.push(value.clone());
            }
        }
        self.rows += 1;
        for (_, col) in &mut self.extras {
            col.resize(self.rows, Value::Null);
        }
        self.open_rows += 1;
        if self.open_rows == CHUNK_ROWS {
            self.seal(CHUNK_ROWS);
        }
    }

    /// Moves the open rows of the core columns into a sealed chunk; the next chunk's builders start
    /// with room for `capacity` rows.
    fn seal(&mut self, capacity: usize) {
        let mut fresh_prices: [Float64Builder; 5] =
            std::array::from_fn(|_| Float64Builder::with_capacity(capacity));
        std::mem::swap(&mut self.prices, &mut fresh_prices);
        let [open, high, low, close, volume] =
            fresh_prices.map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let symbol = std::mem::replace(
            &mut self.symbol,
            StringBuilder::with_capacity(capacity, capacity * 8),
        );
        let ts = std::mem::replace(
            &mut self.ts,
            TimestampMicrosecondBuilder::with_capacity(capacity),
        );
        let (mut symbol, mut ts) = (symbol, ts);
        self.sealed.push([
            Arc::new(symbol.finish()),
            Arc::new(ts.finish().with_timezone("UTC")),
            open,
            high,
            low,
            close,
            volume,
        ]);
        self.open_rows = 0;
    }

    /// The core columns of every row pushed, each in one array.
    fn core_columns(&mut self) -> Result<Vec<ArrayRef>, ArrowError> {
        if self.open_rows > 0 || self.sealed.is_empty() {
            self.seal(0);
        }
        let chunks = std::mem::take(&mut self.sealed);
        if let [only] = chunks.as_slice() {
            return Ok(only.to_vec());
        }
        (0..7)
            .map(|c| {
                let parts: Vec<&dyn Array> = chunks.iter().map(|k| k[c].as_ref()).collect();
                arrow_select::concat::concat(&parts)
            })
            .collect()
    }

    /// Builds the batch and resets the builder, inferring each extra column's type from its values (see
    /// the module docs). Fails only when an extra column is named like a core one.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.finish_typed(|_| None)
    }

    /// Like [`finish`](Self::finish), with the type of each extra column given by `type_of` (Float64,
    /// Boolean or Utf8) where it knows one, as a table decides it: values are converted to that type
    /// (a value that does not convert is null). A column with no known type and only nulls is left out,
    /// so no file fixes a type that its values did not decide.
    pub fn finish_typed(
        &mut self,
        type_of: impl Fn(&str) -> Option<DataType>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut fields = core_fields();
        let mut columns = self.core_columns()?;
        for (name, values) in std::mem::take(&mut self.extras) {
            if CORE_COLUMNS.contains(&name.as_ref()) {
                return Err(ArrowError::SchemaError(format!(
                    "extra column `{name}` has the name of a core column"
                )));
            }
            let dt = match type_of(&name) {
                Some(dt) => dt,
                None if values.iter().all(|v| matches!(v, Value::Null)) => continue,
                None => inferred_type(&values),
            };
            let array = typed_array(values, &dt)?;
            fields.push(Field::new(name.as_ref(), dt, true));
            columns.push(array);
        }
        self.extra_index.clear();
        self.rows = 0;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
    }
}

fn typed_array(values: Vec<Value>, dt: &DataType) -> Result<ArrayRef, ArrowError> {
    Ok(match dt {
        DataType::Float64 => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Number(n) => Some(*n),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        DataType::Boolean => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        DataType::Utf8 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::Number(n) => Some(serde_json::to_string(&n).unwrap_or_default()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Text(t) => Some(t),
                })
                .collect::<StringArray>(),
        ),
        other => {
            return Err(ArrowError::SchemaError(format!(
                "extra columns are Float64, Boolean or Utf8, not {other}"
            )))
        }
    })
}

/// The type of an extra column from its values: Float64 when all are numbers, Boolean when all are
/// booleans, else Utf8 (numbers then keep their JSON text).
fn inferred_type(values: &[Value]) -> DataType {
    let all = |f: fn(&Value) -> bool| values.iter().all(|v| matches!(v, Value::Null) || f(v));
    if all(|v| matches!(v, Value::Number(_))) {
        DataType::Float64
    } else if all(|v| matches!(v, Value::Bool(_))) {
        DataType::Boolean
    } else {
        DataType::Utf8
    }
}

/// The rows of `batches` as one batch over the union of their columns, in the order first seen. A column
/// some batches lack is null in their rows, and a column whose type differs from the first seen is cast
/// to it (the error names the column when it cannot be); such columns, and those nullable anywhere, are
/// nullable.
pub fn concat_union(batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    let mut fields: Vec<Field> = Vec::new();
    for b in batches {
        for f in b.schema().fields() {
            if !fields.iter().any(|have| have.name() == f.name()) {
                fields.push(f.as_ref().clone());
            }
        }
    }
    for f in &mut fields {
        let uneven = batches.iter().any(|b| {
            let schema = b.schema();
            match schema.field_with_name(f.name()) {
                Ok(g) => g.is_nullable() || g.data_type() != f.data_type(),
                Err(_) => true,
            }
        });
        if uneven {
            *f = f.clone().with_nullable(true);
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let projected = batches
        .iter()
        .map(|b| project(b, &schema))
        .collect::<Result<Vec<_>, _>>()?;
    arrow_select::concat::concat_batches(&schema, &projected)
}

/// The batch in the shape of `target`: its columns by name, in `target`'s order and types (cast where
/// they differ; the error names the column when one cannot be); columns the batch lacks are null.
pub fn project(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow_cast::cast(c, f.data_type())
                .map_err(|e| ArrowError::CastError(format!("column {:?}: {e}", f.name()))),
            None => Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(target.clone(), columns)
}

/// Builds one batch from records.
pub fn records_to_batch<'a>(
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<RecordBatch, ArrowError> {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(r);
    }
    b.finish()
}

/// The result of decoding many messages: a batch of the good ones and the reasons for the others.
#[derive(Debug)]
pub struct Decoded {
    /// One row per message that decoded, in input order.
    pub batch: RecordBatch,
    /// (index of the message in the input, why it was refused).
    pub errors: Vec<(usize, DecodeError)>,
}

/// Decodes JSON messages into one Arrow batch; messages that fail are reported, not dropped silently.
pub fn decode_messages<'a>(
    messages: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Decoded, ArrowError> {
    let mut b = BatchBuilder::new();
    let mut errors = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        match json::decode(m) {
            Ok(r) => b.push(&r),
            Err(e) => errors.push((i, e)),
        }
    }
    Ok(Decoded {
        batch: b.finish()?,
        errors,
    })
}

/// Reads the rows of a batch back as records.
///
/// `symbol` (string) and `ts` (any timestamp unit, or integer epoch microseconds) are required; `open`..
/// `volume` may be any numeric type; every other column of a numeric, boolean or string type is kept as an
/// extra column.
pub fn batch_to_records(batch: &RecordBatch) -> Result<Vec<Record>, ArrowError> {
    let schema = batch.schema();
    let col = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i));
    let missing = |n: &str| ArrowError::SchemaError(format!("batch has no `{n}` column"));
    let symbols = col("symbol").ok_or_else(|| missing("symbol"))?;
    let symbols = symbols
        .as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::SchemaError("`symbol` must be Utf8".into()))?;
    let ts = ts_micros(col("ts").ok_or_else(|| missing("ts"))?)?;
    let prices: Vec<Option<Vec<Option<f64>>>> = ["open", "high", "low", "close", "volume"]
        .iter()
        .map(|n| col(n).map(|a| numbers(n, a)).transpose())
        .collect::<Result<_, _>>()?;
    let mut extras = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if !CORE_COLUMNS.contains(&f.name().as_str()) {
            extras.push((
                Arc::<str>::from(f.name().as_str()),
                values(f, batch.column(i))?,
            ));
        }
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if symbols.is_null(row) || ts[row].is_none() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "row {row}: `symbol` and `ts` must not be null"
            )));
        }
        let mut r = Record::new(symbols.value(row), ts[row].unwrap_or_default());
        let p = |i: usize| prices[i].as_ref().and_then(|v| v[row]);
        (r.open, r.high, r.low, r.close, r.volume) = (p(0), p(1), p(2), p(3), p(4));
        r.extra = extras
            .iter()
            .map(|(n, v)| (n.clone(), v[row].clone()))
            .collect();
        out.push(r);
    }
    Ok(out)
}

/// Encodes every row of a batch as a JSON message.
pub fn batch_to_messages(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ArrowError> {
    Ok(batch_to_records(batch)?
        .iter()
        .map(json::encode_to_vec)
        .collect())
}

fn ts_micros(a: &ArrayRef) -> Result<Vec<Option<i64>>, ArrowError> {
    let scale = |v: Vec<Option<i64>>, mul: i64, div: i64| {
        v.into_iter()
            .map(|x| x.map(|x| x.saturating_mul(mul) / div))
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => scale(
            a.as_primitive::<TimestampSecondType>().iter().collect(),
            1_000_000,
            1,
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => scale(
            a.as_primitive::<TimestampMillisecondType>()
                .iter()
                .collect(),
            1000,
            1,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => a
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => scale(
            a.as_primitive::<TimestampNanosecondType>().iter().collect(),
            1,
            1000,
        ),
        DataType::Int64 => a.as_primitive::<Int64Type>().iter().collect(),
        other => {
            return Err(ArrowError::SchemaError(format!(
                "`ts` must be a timestamp, not {other}"
            )))
        }
    })
}

fn numbers(name: &str, a: &ArrayRef) -> Result<Vec<Option<f64>>, ArrowError> {
    macro_rules! prim {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| v as f64))
                .collect()
        };
    }
    Ok(match a.data_type() {
        DataType::Float64 => a.as_primitive::<Float64Type>().iter().collect(),
        DataType::Float32 => prim!(Float32Type),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Null => vec![None; a.len()],
        other => {
            return Err(ArrowError::SchemaError(format!(
                "`{name}` must be numeric, not {other}"
            )))
        }
    })
}

fn values(f: &Field, a: &ArrayRef) -> Result<Vec<Value>, ArrowError> {
    Ok(match a.data_type() {
        DataType::Utf8 => a
            .as_string::<i32>()
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::Text(s.to_owned())))
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::Text(s.to_owned())))
            .collect(),
        DataType::Boolean => a
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        _ => numbers(f.name(), a)?
            .into_iter()
            .map(|v| v.map_or(Value::Null, Value::Number))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_union_aligns_columns() {
        use arrow_array::{Int64Array, TimestampMicrosecondArray};
        let batch = |fields: Vec<Field>, columns: Vec<ArrayRef>| {
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        let a = batch(
            vec![
                Field::new("symbol", DataType::Utf8, false),
                Field::new("n", DataType::Float64, false),
            ],
            vec![
                Arc::new(StringArray::from(vec!["A"])),
                Arc::new(Float64Array::from(vec![1.5])),
            ],
        );
        let b = batch(
            vec![
                Field::new("symbol", DataType::Utf8, false),
                Field::new("n", DataType::Int64, false),
            ],
            vec![
                Arc::new(StringArray::from(vec!["B"])),
                Arc::new(Int64Array::from(vec![2])),
            ],
        );
        let c = batch(
            vec![
                Field::new("symbol", DataType::Utf8, false),
                Field::new("note", DataType::Utf8, true),
            ],
            vec![
                Arc::new(StringArray::from(vec!["C"])),
                Arc::new(StringArray::from(vec!["x"])),
            ],
        );
        let all = concat_union(&[a.clone(), b, c]).unwrap();
        assert_eq!(all.num_rows(), 3);
        let schema = all.schema();
        // Present and the same everywhere: kept as it was.
        assert!(!schema.field_with_name("symbol").unwrap().is_nullable());
        // Cast to the first type seen (so nullable), and missing where absent.
        assert_eq!(
            schema.field_with_name("n").unwrap().data_type(),
            &DataType::Float64
        );
        let n = all
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!((n.value(0), n.value(1), n.is_null(2)), (1.5, 2.0, true));
        assert_eq!(all.column_by_name("note").unwrap().null_count(), 2);
        // A type that cannot be cast is named.
        let t = batch(
            vec![Field::new("n", ts_type(), false)],
            vec![Arc::new(
                TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC"),
            )],
        );
        let bad = batch(
            vec![Field::new("n", DataType::Boolean, false)],
            vec![Arc::new(BooleanArray::from(vec![true]))],
        );
        let err = concat_union(&[t, bad]).unwrap_err().to_string();
        assert!(err.contains("column \"n\""), "{err}");
    }

    fn rec(sym: &str, ts: i64, extra: Vec<(&str, Value)>) -> Record {
        let mut r = Record::new(sym, ts);
        r.close = Some(ts as f64 / 2.0);
        r.extra = extra.into_iter().map(|(n, v)| (Arc::from(n), v)).collect();
        r
    }

    #[test]
    fn a_builder_past_many_chunks_keeps_every_row_in_order() {
        let n = 2 * CHUNK_ROWS + 123;
        let mut b = BatchBuilder::new();
        for i in 0..n {
            // An extra column appears in the second chunk.
            let extra = if i >= CHUNK_ROWS + 7 {
                vec![("note", Value::Number(i as f64))]
            } else {
                vec![]
            };
            let mut r = rec(if i % 2 == 0 { "A" } else { "BB" }, i as i64, extra);
            r.open = (i % 3 != 0).then_some(i as f64);
            b.push(&r);
        }
        assert_eq!(b.len(), n);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), n);
        let back = batch_to_records(&batch).unwrap();
        for (i, r) in back.iter().enumerate() {
            assert_eq!(r.ts, i as i64);
            assert_eq!(r.symbol, if i % 2 == 0 { "A" } else { "BB" });
            assert_eq!(r.open, (i % 3 != 0).then_some(i as f64));
            assert_eq!(r.close, Some(i as f64 / 2.0));
            let note = r.extra.iter().find(|(k, _)| k.as_ref() == "note");
            if i >= CHUNK_ROWS + 7 {
                assert_eq!(note.map(|(_, v)| v), Some(&Value::Number(i as f64)));
            } else {
                assert!(
                    note.is_none_or(|(_, v)| *v == Value::Null),
                    "row {i}: {note:?}"
                );
            }
        }
        // The builder starts over empty.
        assert!(b.is_empty());
        assert_eq!(b.finish().unwrap().num_rows(), 0);
    }

    #[test]
    fn batch_round_trip_keeps_every_value() {
        let records = vec![
            rec("A", 1, vec![("adj_close", Value::Number(1.5))]),
            rec("B", 2, vec![("venue", Value::Text("X".into()))]),
            rec(
                "C",
                3,
                vec![
                    ("adj_close", Value::Number(2.5)),
                    ("halted", Value::Bool(true)),
                ],
            ),
        ];
        let batch = records_to_batch(&records).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "symbol",
                "ts",
                "open",
                "high",
                "low",
                "close",
                "volume",
                "adj_close",
                "venue",
                "halted"
            ]
        );
        assert_eq!(schema.field(1).data_type(), &ts_type());
        assert_eq!(schema.field(7).data_type(), &DataType::Float64);
        assert_eq!(schema.field(8).data_type(), &DataType::Utf8);
        assert_eq!(schema.field(9).data_type(), &DataType::Boolean);

        let back = batch_to_records(&batch).unwrap();
        // Rows gain explicit nulls for the columns other rows had; otherwise identical.
        for (orig, got) in records.iter().zip(&back) {
            let non_null: Vec<_> = got
                .extra
                .iter()
                .filter(|(_, v)| *v != Value::Null)
                .cloned()
                .collect();
            assert_eq!(
                (orig.symbol.as_str(), orig.ts, orig.close),
                (got.symbol.as_str(), got.ts, got.close)
            );
            assert_eq!(orig.extra, non_null);
        }
    }

    #[test]
    fn mixed_extra_column_becomes_text_not_lost() {
        let records = vec![
            rec("A", 1, vec![("code", Value::Number(7.0))]),
            rec("B", 2, vec![("code", Value::Text("x7".into()))]),
        ];
        let batch = records_to_batch(&records).unwrap();
        let codes = batch.column(7).as_string::<i32>();
        assert_eq!(codes.value(0), "7.0");
        assert_eq!(codes.value(1), "x7");
    }

    #[test]
    fn messages_to_batch_and_back() {
        let good = json::encode_to_vec(&rec("A", 1_000_000, vec![]));
        let msgs: Vec<&[u8]> = vec![&good, b"{}", &good];
        let d = decode_messages(msgs).unwrap();
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].0, 1);
        let out = batch_to_messages(&d.batch).unwrap();
        assert_eq!(out, vec![good.clone(), good]);
    }

    #[test]
    fn core_named_extra_is_an_error() {
        let r = rec("A", 1, vec![("close", Value::Number(1.0))]);
        assert!(records_to_batch([&r]).is_err());
    }
}
