//! Runs of rows with equal keys in a batch, for the operators that aggregate or rank a group at a
//! time (`RunAggregate`, `WindowTopN`).

use std::ops::Range;

use arrow::array::{Array, ArrayRef, AsArray, GenericStringArray, OffsetSizeTrait};
use arrow::compute::kernels::partition::partition;
use arrow::datatypes::DataType;
use datafusion::error::Result;

/// The ranges of consecutive rows whose `keys` are equal, in order. A batch whose keys are one value
/// repeated is one range, found without comparing row with row (see [`constant`]); otherwise
/// Arrow's `partition` compares each row with the next.
pub(crate) fn key_runs(keys: &[ArrayRef]) -> Result<Vec<Range<usize>>> {
    let n = keys.first().map_or(0, |k| k.len());
    if !keys.is_empty() && keys.iter().all(|k| constant(k.as_ref())) {
        return Ok(std::iter::once(0..n).filter(|r| !r.is_empty()).collect());
    }
    Ok(partition(keys)?.ranges())
}

/// Whether every row of `keys` holds the same value, found without comparing row with row for
/// strings: a batch of a lake table comes from one file, where a partition column such as `symbol`
/// is one value repeated. Strings of equal length whose bytes repeat with that period are the same
/// string, which one comparison of the bytes with themselves shifted by a string shows. Other types
/// (and strings that differ) answer `false`, and the caller looks for the runs row by row.
fn constant(keys: &dyn Array) -> bool {
    if keys.null_count() > 0 {
        return keys.null_count() == keys.len();
    }
    match keys.data_type() {
        DataType::Utf8 => periodic(keys.as_string::<i32>()),
        DataType::LargeUtf8 => periodic(keys.as_string::<i64>()),
        _ => false,
    }
}

fn periodic<O: OffsetSizeTrait>(strings: &GenericStringArray<O>) -> bool {
    let offsets = strings.value_offsets();
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return true;
    };
    let width = offsets.get(1).map_or(O::zero(), |o| *o - *first);
    if !offsets.windows(2).all(|w| w[1] - w[0] == width) {
        return false;
    }
    let bytes = &strings.value_data()[first.as_usize()..last.as_usize()];
    let width = width.as_usize();
    width == 0 || bytes[width..] == bytes[..bytes.len() - width]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, LargeStringArray, StringArray};

    use super::*;

    #[test]
    fn constant_keys_are_found_without_comparing_rows() {
        let strings = |v: &[Option<&str>]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        for (keys, one) in [
            (strings(&[Some("AAPL"); 5]), true),
            (strings(&[Some(""); 3]), true),
            (strings(&[None, None]), true),
            (strings(&[]), true),
            (strings(&[Some("AB"), Some("AB"), Some("BA")]), false),
            (strings(&[Some("ABA"), Some("BAB")]), false),
            (strings(&[Some("A"), Some("AA")]), false),
            (strings(&[Some("A"), None]), false),
            (Arc::new(Int64Array::from(vec![1, 1])), false),
        ] {
            assert_eq!(constant(keys.as_ref()), one, "{keys:?}");
        }
        // A slice reads only its own strings.
        let sliced = strings(&[Some("X"), Some("AB"), Some("AB"), Some("Y")]).slice(1, 2);
        assert!(constant(sliced.as_ref()));
        let large = LargeStringArray::from(vec!["MSFT"; 4]);
        assert!(constant(&large));
    }

    #[test]
    fn runs_of_keys() {
        let symbols = Arc::new(StringArray::from(vec!["A", "A", "B", "B", "B", "A"])) as ArrayRef;
        assert_eq!(key_runs(&[symbols]).unwrap(), [0..2, 2..5, 5..6]);
        let one = Arc::new(StringArray::from(vec!["A"; 4])) as ArrayRef;
        let days = Arc::new(Int64Array::from(vec![1, 1, 2, 2])) as ArrayRef;
        let whole = Range { start: 0, end: 4 };
        assert_eq!(key_runs(std::slice::from_ref(&one)).unwrap(), [whole]);
        assert_eq!(key_runs(&[one, days]).unwrap(), [0..2, 2..4]);
    }
}
