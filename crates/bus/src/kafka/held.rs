//! Copies of messages kept by the producer, in one buffer: the open transaction's (sent again when it
//! must be aborted) and those waiting for a commit to end.

/// Copies of messages in send order, in one buffer.
#[derive(Default)]
pub(super) struct HeldMessages {
    bytes: Vec<u8>,
    /// Key length, payload length and timestamp of each message, in order.
    spans: Vec<(usize, usize, i64)>,
}

impl HeldMessages {
    pub(super) fn push(&mut self, key: &[u8], payload: &[u8], timestamp_ms: i64) {
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(payload);
        self.spans.push((key.len(), payload.len(), timestamp_ms));
    }

    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], i64)> {
        let mut at = 0;
        self.spans.iter().map(move |&(k, p, ts)| {
            let key = &self.bytes[at..at + k];
            let payload = &self.bytes[at + k..at + k + p];
            at += k + p;
            (key, payload, ts)
        })
    }
}
