//! Batch encoding: frames of `[ts i64][key len i32 (-1 = none)][key][value len u32][value]`, lz4.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::Message;

/// Appends one record's frame to a batch being built.
pub(super) fn encode_frame(out: &mut Vec<u8>, key: &[u8], payload: &[u8], ts: i64) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(key.len() as i32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a batch stored at `base`, keeping the records at `skip_below` and after.
pub(super) fn decode_batch(
    partition: i32,
    base: i64,
    blob: &[u8],
    skip_below: i64,
    out: &mut VecDeque<Message>,
) -> Result<(), String> {
    // The messages' keys and payloads are slices of the decompressed batch.
    let raw = Bytes::from(lz4_flex::decompress_size_prepended(blob).map_err(|e| e.to_string())?);
    // A frame is at least 16 bytes; ticklake's own messages are about 200.
    out.reserve(raw.len() / 192);
    let mut at = 0usize;
    let mut offset = base;
    // The range of the next `n` bytes. Fixed-size fields are read from it in place; keys and
    // payloads become slices of `raw` (a reference count, no copy).
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, String> {
        let end = at
            .checked_add(n)
            .filter(|end| *end <= raw.len())
            .ok_or_else(|| {
                format!("batch at offset {base} of partition {partition} is truncated")
            })?;
        let range = *at..end;
        *at = end;
        Ok(range)
    };
    while at < raw.len() {
        let ts = i64::from_le_bytes(raw[take(&mut at, 8)?].try_into().unwrap_or_default());
        let klen = i32::from_le_bytes(raw[take(&mut at, 4)?].try_into().unwrap_or_default());
        let key = if klen >= 0 {
            Some(raw.slice(take(&mut at, klen as usize)?))
        } else {
            None
        };
        let vlen = u32::from_le_bytes(raw[take(&mut at, 4)?].try_into().unwrap_or_default());
        let value = raw.slice(take(&mut at, vlen as usize)?);
        if offset >= skip_below {
            out.push_back(Message {
                partition,
                offset,
                key,
                payload: Some(value),
                timestamp_ms: Some(ts),
            });
        }
        offset += 1;
    }
    Ok(())
}
