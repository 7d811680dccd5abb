//! One librdkafka queue that receives the fetched messages of all of a consumer's partitions, read in
//! batches.
//!
//! rust-rdkafka's `BaseConsumer::poll` hands out one message per call, through librdkafka's event API:
//! a queue lock, clock reads and an event wrapper for every message. In a sink reading Apache Kafka that
//! was 43% of the sink's own thread (BENCHMARKS.md). `rd_kafka_consume_batch_queue` takes many messages
//! per call, but on the consumer's own queue it would also serve rebalances, without the rebalance
//! listener that exactly-once depends on (librdkafka then only unassigns). So the messages go to a queue
//! of their own: each partition's fetch queue is forwarded here before the partition is assigned
//! ([`FetchQueue::forward`]), and librdkafka keeps that forward for the consumer's life (a forward set by
//! the application is never replaced at the next fetch start). Rebalances, errors and offset-commit
//! results stay on the consumer's queue, which `BaseConsumer::poll` serves as before.
//!
//! Seeks and revocations bump a partition's version; librdkafka drops this queue's messages of older
//! versions as it hands them out, as it does on the consumer's queue.
//!
//! Read messages are destroyed on a thread of their own (`kafka-release`). librdkafka allocates each
//! fetched message on its broker thread, so glibc frees it into that thread's heap, under that heap's
//! lock, which the broker thread takes for every message it fetches. Freed on the reading thread, they
//! stalled it thousands of times per second: 80% of its waits in a sink reading Apache Kafka
//! (BENCHMARKS.md).

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;

/// The queue, or null before [`FetchQueue::open`] and after [`FetchQueue::close`].
#[derive(Default)]
pub(super) struct FetchQueue {
    queue: AtomicPtr<rd::rd_kafka_queue_t>,
    /// Destroys the messages read (none before `open` and after `close`).
    releaser: Mutex<Option<Releaser>>,
}

/// Read messages, to be destroyed.
struct ReadMessages(Vec<*mut rd::rd_kafka_message_t>);

// SAFETY: a librdkafka message may be destroyed on any thread, and nothing else refers to these once
// they are read.
unsafe impl Send for ReadMessages {}

impl ReadMessages {
    fn destroy(self) {
        for m in self.0 {
            // SAFETY: each message was handed out by librdkafka, read, and is destroyed once, while the
            // client lives (the releaser is joined before the client is destroyed).
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

/// How many batches of read messages may wait for the releaser before reading waits for it.
const RELEASE_BACKLOG: usize = 8;

/// The thread that destroys read messages, in batches.
struct Releaser {
    sender: mpsc::SyncSender<ReadMessages>,
    thread: std::thread::JoinHandle<()>,
}

impl Releaser {
    fn start() -> std::io::Result<Releaser> {
        let (sender, batches) = mpsc::sync_channel::<ReadMessages>(RELEASE_BACKLOG);
        let thread = std::thread::Builder::new()
            .name("kafka-release".into())
            .spawn(move || batches.into_iter().for_each(ReadMessages::destroy))?;
        Ok(Releaser { sender, thread })
    }

    /// Destroys every message sent so far, then ends the thread.
    fn finish(self) {
        drop(self.sender);
        if self.thread.join().is_err() {
            tracing::error!("the thread releasing Kafka messages panicked");
        }
    }
}

/// One message (or a consumer error) taken from the queue; it borrows librdkafka's memory until the
/// callback returns.
pub(super) struct Fetched<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    /// A consumer error librdkafka reports in the message's place.
    pub error: Option<RDKafkaErrorCode>,
}

impl FetchQueue {
    /// Creates the queue on the client `rk`, and the thread that destroys the messages read.
    pub(super) fn open(&self, rk: *mut rd::rd_kafka_t) -> std::io::Result<()> {
        let releaser = Releaser::start()?;
        *self.releaser() = Some(releaser);
        // SAFETY: `rk` is a live client (the consumer this queue belongs to creates it first).
        let queue = unsafe { rd::rd_kafka_queue_new(rk) };
        let old = self.queue.swap(queue, Ordering::AcqRel);
        debug_assert!(old.is_null(), "a fetch queue is opened once");
        Ok(())
    }

    fn releaser(&self) -> std::sync::MutexGuard<'_, Option<Releaser>> {
        self.releaser.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands read messages to the releaser (or destroys them here when it is gone).
    fn release(&self, read: ReadMessages) {
        let read = match self.releaser().as_ref() {
            Some(r) => match r.sender.send(read) {
                Ok(()) => return,
                Err(mpsc::SendError(read)) => read,
            },
            None => read,
        };
        read.destroy();
    }

    /// Forwards the fetch queue of `topic`'s `partition` here. Must come before the partition is
    /// assigned, or messages fetched before it would be read after later ones. Returns false when the
    /// queue is closed or librdkafka has no such partition (its messages then stay on the consumer's
    /// queue, which `BaseConsumer::poll` reads).
    pub(super) fn forward(&self, rk: *mut rd::rd_kafka_t, topic: &CStr, partition: i32) -> bool {
        let queue = self.queue.load(Ordering::Acquire);
        if queue.is_null() {
            return false;
        }
        // SAFETY: `rk` is the live client and `topic` a NUL-terminated string; the partition's queue
        // handle is released right after the forward, which holds its own reference to this queue.
        unsafe {
            let fetch = rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), partition);
            if fetch.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(fetch, queue);
            rd::rd_kafka_queue_destroy(fetch);
        }
        true
    }

    /// Hands up to `max` messages to `each`, in the order they arrived (each partition's in offset
    /// order), waiting up to `timeout` for the first. Returns how many were handed over.
    pub(super) fn read(
        &self,
        max: usize,
        timeout: Duration,
        mut each: impl FnMut(Fetched<'_>),
    ) -> usize {
        let queue = self.queue.load(Ordering::Acquire);
        if queue.is_null() || max == 0 {
            return 0;
        }
        let mut slots: Vec<*mut rd::rd_kafka_message_t> = vec![ptr::null_mut(); max];
        // The first message waits up to `timeout`; the rest are only those already there (librdkafka
        // would otherwise wait out the whole timeout to fill the batch).
        // Whole milliseconds, rounded up: a wait under one would not wait at all.
        let wait_ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut taken = 0;
        for (at, want, wait) in [(0, 1, wait_ms), (1, max - 1, 0)] {
            if want == 0 {
                break;
            }
            // SAFETY: `queue` is open and `slots[at..]` has room for `want` pointers.
            let n = unsafe {
                rd::rd_kafka_consume_batch_queue(queue, wait, slots.as_mut_ptr().add(at), want)
            };
            let n = usize::try_from(n).unwrap_or(0);
            for &message in &slots[at..at + n] {
                // SAFETY: librdkafka filled these slots with messages it owns until they are
                // destroyed (released after the reads); the slices borrow them only for the callback.
                each(unsafe { view(&*message) });
            }
            taken += n;
            if n < want {
                break;
            }
        }
        // The two reads filled `slots[..taken]`: one hand-over to the releaser, none when empty.
        if taken > 0 {
            slots.truncate(taken);
            self.release(ReadMessages(slots));
        }
        taken
    }

    /// Destroys the messages read, then releases the queue. Fetched messages still in it are dropped
    /// with the client.
    pub(super) fn close(&self) {
        if let Some(releaser) = self.releaser().take() {
            releaser.finish();
        }
        let queue = self.queue.swap(ptr::null_mut(), Ordering::AcqRel);
        if !queue.is_null() {
            // SAFETY: the handle came from `rd_kafka_queue_new` and is released once.
            unsafe { rd::rd_kafka_queue_destroy(queue) };
        }
    }
}

/// A message's fields, borrowed.
///
/// # Safety
/// `m` must be a message librdkafka handed out and has not destroyed.
unsafe fn view(m: &rd::rd_kafka_message_t) -> Fetched<'_> {
    let bytes = |p: *mut std::ffi::c_void, len: usize| {
        // SAFETY: librdkafka's pointer and length describe one buffer of the message.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    };
    let error = (m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
        .then(|| RDKafkaErrorCode::from(m.err));
    // SAFETY: `m` is a live message.
    let timestamp = unsafe { rd::rd_kafka_message_timestamp(m, ptr::null_mut()) };
    Fetched {
        partition: m.partition,
        offset: m.offset,
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len),
        timestamp_ms: (timestamp >= 0).then_some(timestamp),
        error,
    }
}
