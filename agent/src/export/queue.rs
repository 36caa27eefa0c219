//! A bounded, drop-oldest, multi-producer single-consumer queue of spans.
//!
//! Producers never block: [`SpanQueue::push`] takes a short mutex and, when the queue is
//! full, evicts the oldest span (counted as `drop.export_queue_full`). The one consumer
//! (an exporter task) takes batches with [`SpanQueue::next_batch`].
//!
//! The queue also carries the shutdown signal: [`SpanQueue::close`] records the flush
//! deadline, after which `next_batch` stops waiting and returns `None` once drained.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::span::Span;
use crate::stats::{self, Counter};

struct Inner {
    buf: VecDeque<Arc<Span>>,
    /// Set by `close`: the deadline by which pending spans must be flushed.
    closed: Option<Instant>,
    /// How many spans the waiting consumer wants before it should be woken.
    want: usize,
}

pub struct SpanQueue {
    /// Output name, for log lines.
    name: &'static str,
    capacity: usize,
    inner: Mutex<Inner>,
    /// Wakes the consumer when a batch is full or the queue closes.
    ready: Notify,
    /// Wakes anyone in [`SpanQueue::wait_closed`].
    closed: Notify,
    /// Spans evicted from this queue because it was full.
    dropped: AtomicU64,
    /// Spans the consumer has taken but not yet finished with (for shutdown accounting).
    in_flight: AtomicUsize,
}

impl SpanQueue {
    /// A queue holding at most `capacity` spans (at least 1).
    #[must_use]
    pub fn new(name: &'static str, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            name,
            capacity,
            inner: Mutex::new(Inner {
                buf: VecDeque::with_capacity(capacity.min(1024)),
                closed: None,
                want: usize::MAX,
            }),
            ready: Notify::new(),
            closed: Notify::new(),
            dropped: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends a span; never blocks. When the queue is full the oldest span is dropped and
    /// counted. Returns `false` when a span was dropped.
    pub fn push(&self, span: Arc<Span>) -> bool {
        let (evicted, wake) = {
            let mut inner = self.lock();
            let evicted = if inner.buf.len() >= self.capacity { inner.buf.pop_front() } else { None };
            inner.buf.push_back(span);
            (evicted, inner.buf.len() >= inner.want)
        };
        if wake {
            self.ready.notify_one();
        }
        match evicted {
            None => true,
            Some(old) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                stats::global().drop_event(
                    Counter::DropExportQueueFull,
                    format_args!(
                        "{} queue full ({} spans): dropped oldest span {:?}",
                        self.name, self.capacity, old.name
                    ),
                );
                false
            }
        }
    }

    /// Appends `spans` under one lock; never blocks. When the queue is full its oldest
    /// spans are dropped and counted. Returns how many were dropped.
    pub fn push_all(&self, spans: &[Arc<Span>]) -> usize {
        if spans.is_empty() {
            return 0;
        }
        let (evicted, oldest, wake) = {
            let mut inner = self.lock();
            let mut evicted = 0usize;
            let mut oldest = None;
            for span in spans {
                if inner.buf.len() >= self.capacity {
                    let old = inner.buf.pop_front();
                    if oldest.is_none() {
                        oldest = old;
                    }
                    evicted += 1;
                }
                inner.buf.push_back(span.clone());
            }
            (evicted, oldest, inner.buf.len() >= inner.want)
        };
        if wake {
            self.ready.notify_one();
        }
        if evicted > 0 {
            self.dropped.fetch_add(evicted as u64, Ordering::Relaxed);
            stats::global().add(Counter::DropExportQueueFull, evicted as u64);
            if let Some(old) = oldest {
                log::debug!(
                    "{}: {} queue full ({} spans): dropped the {evicted} oldest spans, the first {:?}",
                    Counter::DropExportQueueFull.name(),
                    self.name,
                    self.capacity,
                    old.name
                );
            }
        }
        evicted
    }

    /// Spans currently queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().buf.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spans this queue has dropped because it was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Marks the queue closed: the consumer drains what is left without waiting, and
    /// should give up on anything still unsent at `deadline`.
    pub fn close(&self, deadline: Instant) {
        {
            let mut inner = self.lock();
            inner.closed = Some(match inner.closed {
                Some(d) => d.min(deadline),
                None => deadline,
            });
        }
        self.ready.notify_one();
        self.closed.notify_waiters();
    }

    /// The flush deadline, once the queue is closed.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().closed
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            // Register before checking the flag so a concurrent `close` is not missed.
            notified.as_mut().enable();
            if self.lock().closed.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Takes up to `max` spans. Returns as soon as `max` spans are available or the queue
    /// is closed; otherwise waits at most `timeout` and returns what is there (possibly
    /// nothing). Returns `None` only when the queue is closed and empty.
    ///
    /// Cancel-safe: spans are only removed in the synchronous part after the last await.
    pub async fn next_batch(&self, max: usize, timeout: Duration) -> Option<Vec<Arc<Span>>> {
        let max = max.max(1);
        let until = Instant::now() + timeout;
        loop {
            {
                let mut inner = self.lock();
                let ready = inner.buf.len() >= max || inner.closed.is_some() || Instant::now() >= until;
                if ready {
                    inner.want = usize::MAX;
                    if inner.buf.is_empty() && inner.closed.is_some() {
                        return None;
                    }
                    let n = inner.buf.len().min(max);
                    return Some(inner.buf.drain(..n).collect());
                }
                inner.want = max;
            }
            // `notify_one` stores a permit when nobody waits, so a push between the unlock
            // above and this await is not lost; a stale permit only causes a re-check.
            tokio::select! {
                () = self.ready.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Takes everything left (used when giving up at shutdown).
    pub fn drain_all(&self) -> Vec<Arc<Span>> {
        self.lock().buf.drain(..).collect()
    }

    /// Records how many taken spans the consumer is still working on.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// `n` more taken spans are being worked on (several requests in flight).
    pub fn add_in_flight(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` taken spans are finished with.
    pub fn sub_in_flight(&self, n: usize) {
        let _ = self.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::span::{Resource, SpanKind, Status};

    pub(crate) fn span(n: u64) -> Arc<Span> {
        let mut trace_id = [0u8; 16];
        trace_id[8..].copy_from_slice(&n.to_be_bytes());
        trace_id[0] = 1;
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&(n + 1).to_be_bytes());
        Arc::new(Span {
            trace_id,
            span_id,
            parent_span_id: [0; 8],
            trace_state: String::new(),
            flags: 1,
            name: format!("span-{n}").into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_000 + n * 1000,
            end_unix_ns: 1_700_000_000_000_000_000 + n * 1000 + 500,
            status: Status::Unset,
            attributes: vec![],
            resource: Arc::new(Resource { pid: 1, service_name: "svc".into(), attributes: vec![] }),
        })
    }

    fn names(batch: &[Arc<Span>]) -> Vec<String> {
        batch.iter().map(|s| s.name.to_string()).collect()
    }

    #[test]
    fn bound_holds_and_oldest_is_dropped() {
        let q = SpanQueue::new("test", 3);
        let before = stats::global().get(Counter::DropExportQueueFull);
        for i in 0..3 {
            assert!(q.push(span(i)));
        }
        assert!(!q.push(span(3)));
        assert!(!q.push(span(4)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        // Other tests may drop concurrently: the global counter grew by at least ours.
        assert!(stats::global().get(Counter::DropExportQueueFull) >= before + 2);
        assert_eq!(names(&q.drain_all()), ["span-2", "span-3", "span-4"]);
        assert!(q.is_empty());
    }

    #[test]
    fn push_all_keeps_the_newest_and_counts_the_rest() {
        let q = SpanQueue::new("test", 4);
        q.push(span(0));
        let batch: Vec<_> = (1..7).map(span).collect();
        assert_eq!(q.push_all(&batch), 3);
        assert_eq!(q.dropped(), 3);
        assert_eq!(names(&q.drain_all()), ["span-3", "span-4", "span-5", "span-6"]);
        assert_eq!(q.push_all(&[]), 0);
    }

    #[test]
    fn zero_capacity_is_clamped() {
        let q = SpanQueue::new("test", 0);
        assert!(q.push(span(0)));
        assert!(!q.push(span(1)));
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn full_batch_returns_immediately() {
        let q = SpanQueue::new("test", 100);
        for i in 0..5 {
            q.push(span(i));
        }
        let t0 = Instant::now();
        let b = q.next_batch(3, Duration::from_secs(1)).await.unwrap();
        assert_eq!(names(&b), ["span-0", "span-1", "span-2"]);
        assert_eq!(Instant::now(), t0, "no waiting when the batch is already full");
        // Two left: a partial batch after the timeout.
        let b = q.next_batch(3, Duration::from_secs(1)).await.unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_batch_after_timeout() {
        let q = SpanQueue::new("test", 100);
        let t0 = Instant::now();
        let b = q.next_batch(3, Duration::from_millis(250)).await.unwrap();
        assert!(b.is_empty());
        assert_eq!(Instant::now() - t0, Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_when_batch_fills() {
        let q = Arc::new(SpanQueue::new("test", 100));
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..4 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    q.push(span(i));
                }
            })
        };
        let t0 = Instant::now();
        let b = q.next_batch(3, Duration::from_secs(10)).await.unwrap();
        assert_eq!(names(&b), ["span-0", "span-1", "span-2"]);
        assert_eq!(Instant::now() - t0, Duration::from_millis(300));
        producer.await.unwrap();
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn close_drains_then_ends() {
        let q = Arc::new(SpanQueue::new("test", 100));
        q.push(span(0));
        q.push(span(1));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.wait_closed().await })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        q.close(deadline);
        waiter.await.unwrap();
        assert_eq!(q.deadline(), Some(deadline));
        let t0 = Instant::now();
        assert_eq!(q.next_batch(10, Duration::from_secs(1)).await.unwrap().len(), 2);
        assert!(q.next_batch(10, Duration::from_secs(1)).await.is_none());
        assert_eq!(Instant::now(), t0, "a closed queue never waits");
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_a_waiting_consumer() {
        let q = Arc::new(SpanQueue::new("test", 100));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { q.next_batch(10, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.push(span(0));
        q.close(Instant::now() + Duration::from_secs(1));
        let b = consumer.await.unwrap().unwrap();
        assert_eq!(b.len(), 1);
    }
}
