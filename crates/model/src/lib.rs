//! The ticklake market record and its two wire forms.
//!
//! * [`Record`] is one market observation: `symbol`, `ts` (UTC, microseconds), optional OHLCV prices and
//!   any further columns of the source ([`Record::extra`]), kept under snake_case names.
//! * [`json`] turns records into the JSON object that travels on the topic, and back. The decoder also
//!   accepts the seed producer's messages (`{"Index": "HSI", "Date": "1986-12-31", "Adj Close": ...}`).
//! * [`arrow`] builds Arrow [`RecordBatch`](arrow_array::RecordBatch)es from records or JSON messages and
//!   turns batches back into JSON messages.
//! * [`names`] normalises column names the way Glue/Athena want them (`Adj Close` -> `adj_close`).
//! * [`time`] parses and formats timestamps.

pub mod arrow;
pub mod json;
pub mod names;
mod record;
pub mod time;

pub use record::{Record, Value};

/// Why a message could not be decoded into a [`Record`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A required field is absent or null.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// A field holds a value of the wrong type or an unparsable value.
    #[error("field `{field}`: {reason}")]
    BadField {
        /// The field's name as it appears in the message.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}
