//! What the pipeline produces to Kafka and must see acknowledged before a flush commits:
//! dead-letter messages (the original key and bytes, reason headers), usage alerts and
//! period-close statements (JSON, key: tenant id). [`Outbox`] keeps each message (an owned copy) with its delivery
//! attempt until the broker acknowledges it; [`ensure_delivered`] awaits them at flush
//! time. Wallet alerts ([`AlertSink`]) are produced by the same kind of producer, awaited one
//! at a time (the wallet service retries an alert it could not produce).
//!
//! Nothing is dropped: a failed delivery (a missing topic, a broker down, a refused message)
//! is retried with jittered backoff, forever. While messages wait, the flush that depends on
//! them neither writes nor commits, so no offset is committed past an undelivered message's
//! source offset; after the first failure `/readyz` answers 503 naming the topic, the error
//! and the count, and `callmeter_outbox_undelivered` counts the messages waiting. A
//! dead-letter copy the broker refuses as too large (the producer compresses with lz4) is
//! re-sent with its payload halved until it fits, with the headers
//! `callmeter.error.truncated` (original size in bytes) and `callmeter.error.sha256` (hex
//! digest of the original bytes). `callmeter_dlq_messages_total` counts a copy once it is
//! acknowledged.
//!
//! A retry of a produce whose acknowledgement was lost may leave a second copy on the
//! broker: consumers dedupe dead-letter copies by their source headers
//! (`callmeter.source.topic`, `.partition`, `.offset`), alerts by `alert_id` and statements
//! by `statement_id`, all deterministic (a repeated statement is the same statement).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use futures::future::{FutureExt, Shared as SharedFuture};
use futures::stream::FuturesUnordered;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alert;
use crate::config::KafkaSettings;
use crate::event::Rejection;
use crate::health::Source;
use crate::state::Shared;
use crate::telemetry as t;

/// One delivery attempt: resolves once the broker acknowledged it or it failed.
type Attempt = Pin<Box<dyn Future<Output = Result<(), KafkaError>> + Send>>;

/// An owned copy of a message to produce.
#[derive(Clone)]
struct OutMessage {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
    /// A dead-letter copy (counted and cut when too large), else an alert or statement.
    dlq: bool,
    /// Size of the original payload once the copy was cut.
    cut_from: Option<usize>,
}

impl OutMessage {
    fn record(&self) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
        let mut rec = FutureRecord::to(&self.topic).headers(self.headers.clone());
        if let Some(p) = &self.payload {
            rec = rec.payload(p);
        }
        if let Some(k) = &self.key {
            rec = rec.key(k);
        }
        rec
    }

    /// Halves the payload of a copy the broker refused as too large; the first cut adds
    /// the original size and digest. False when nothing is left to cut.
    fn cut(&mut self) -> bool {
        let Some(p) = self.payload.as_mut() else {
            return false;
        };
        if p.is_empty() {
            return false;
        }
        if self.cut_from.is_none() {
            let len = p.len();
            let digest = hex::encode(Sha256::digest(&p[..]));
            self.cut_from = Some(len);
            self.headers = self
                .headers
                .clone()
                .insert(Header {
                    key: "callmeter.error.truncated",
                    value: Some(len.to_string().as_str()),
                })
                .insert(Header {
                    key: "callmeter.error.sha256",
                    value: Some(digest.as_str()),
                });
        }
        let keep = p.len() / 2;
        p.truncate(keep);
        true
    }
}

impl OutMessage {
    /// Bytes this message holds while undelivered, for `pipeline.max_memory`.
    fn estimated_bytes(&self) -> u64 {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len) as u64;
        len(&self.key) + len(&self.payload) + super::memory::MESSAGE_OVERHEAD_BYTES
    }
}

/// A message produced to Kafka (DLQ or alert) whose delivery a flush must await.
pub(super) struct Pending {
    msg: OutMessage,
    attempt: Attempt,
}

/// The producer with the topics it writes and the deliveries not yet awaited.
pub(super) struct Outbox {
    producer: FutureProducer,
    source_topic: String,
    dlq_topic: String,
    alerts_topic: String,
    statements_topic: String,
    pending: Vec<Pending>,
    /// Estimated bytes of `pending` (see [`Outbox::undelivered_bytes`]).
    pending_bytes: u64,
    /// Alerts produced since the last [`Outbox::track_alert_latency`]: each one's delivery
    /// and the Kafka timestamp (ms) of the event that fired it.
    latency_watch: Vec<(SharedFuture<Attempt>, i64)>,
}

impl Outbox {
    pub(super) fn new(producer: FutureProducer, s: &KafkaSettings) -> Outbox {
        metrics::gauge!(t::OUTBOX_UNDELIVERED).set(0.0);
        metrics::counter!(t::DLQ_PRODUCED).increment(0);
        Outbox {
            producer,
            source_topic: s.topic.clone(),
            dlq_topic: s.dlq_topic.clone(),
            alerts_topic: s.alerts_topic.clone(),
            statements_topic: s.statements_topic.clone(),
            pending: Vec::new(),
            pending_bytes: 0,
            latency_watch: Vec::new(),
        }
    }

    /// Deliveries not yet handed to a flush.
    pub(super) fn take_pending(&mut self) -> Vec<Pending> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    /// Puts back deliveries a flush gave up waiting for (ahead of newer ones).
    pub(super) fn restore_pending(&mut self, mut undelivered: Vec<Pending>) {
        undelivered.append(&mut self.pending);
        self.pending = undelivered;
        self.pending_bytes = self.pending.iter().map(|p| p.msg.estimated_bytes()).sum();
    }

    fn enqueue(&mut self, msg: OutMessage, attempt: Attempt) {
        metrics::gauge!(t::OUTBOX_UNDELIVERED).increment(1.0);
        self.pending_bytes += msg.estimated_bytes();
        self.pending.push(Pending { msg, attempt });
    }

    /// Estimated bytes held by messages not yet handed to a flush (for `pipeline.max_memory`):
    /// each message's key and payload plus [`super::memory::MESSAGE_OVERHEAD_BYTES`].
    pub(super) fn undelivered_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Produces a rejected message to the dead-letter topic.
    pub(super) fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, r: &Rejection) {
        let m = dead_letter_message(&self.dlq_topic, &self.source_topic, msg, r);
        let attempt = submit(&self.producer, &m);
        self.enqueue(m, attempt);
    }

    /// Counts, logs and produces an alert that the message with Kafka timestamp `event_ms`
    /// fired; [`Outbox::track_alert_latency`] times its acknowledgement.
    pub(super) fn alert(&mut self, a: &Alert, event_ms: Option<i64>) {
        metrics::counter!(t::ALERTS, "kind" => a.kind.clone()).increment(1);
        // DEBUG, not INFO: at tens of thousands of alerts a second the log line cost more than
        // producing the alert (the counter above and the alerts topic record every one).
        tracing::debug!(tenant = %a.tenant_id, meter = %a.meter, kind = %a.kind, usage = %a.usage, limit = ?a.limit, "usage alert");
        let (key, body) = alert_record(a);
        let m = OutMessage {
            topic: self.alerts_topic.clone(),
            key: Some(key),
            payload: Some(body),
            headers: OwnedHeaders::new(),
            dlq: false,
            cut_from: None,
        };
        let attempt = submit(&self.producer, &m).shared();
        if let Some(ms) = event_ms {
            self.latency_watch.push((attempt.clone(), ms));
        }
        self.enqueue(m, Box::pin(attempt));
    }

    /// Hands the alerts produced since the last call to one task (on `tasks`) that records
    /// each one's latency, from its event's Kafka timestamp to the broker's acknowledgement,
    /// in `callmeter_alert_produce_latency_seconds`. The consuming loop calls it at each
    /// housekeeping round (at most 64 messages or 1 ms apart): one task per round, not per
    /// alert, since each task spawned from the consuming thread wakes a runtime worker (an
    /// off-CPU profile at 30,000 alerts per 1M events: most of the thread's context switches).
    pub(super) fn track_alert_latency(&mut self, tasks: &TaskTracker, rt: &tokio::runtime::Handle) {
        if self.latency_watch.is_empty() {
            return;
        }
        let mut acks: FuturesUnordered<_> = self
            .latency_watch
            .drain(..)
            .map(|(attempt, ms)| async move { (attempt.await, ms) })
            .collect();
        tasks.spawn_on(
            async move {
                while let Some((r, ms)) = acks.next().await {
                    if r.is_ok() {
                        let secs = (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0;
                        metrics::histogram!(t::ALERT_LATENCY).record(secs);
                    }
                }
            },
            rt,
        );
    }
}

impl Outbox {
    /// Counts, logs and produces a closed period's statement (key: tenant id).
    pub(super) fn statement(&mut self, st: &crate::statement::Statement) {
        metrics::counter!(t::STATEMENTS).increment(1);
        tracing::info!(tenant = %st.tenant_id, period_start = st.period.start, total = %st.total, currency = %st.currency, statement_id = %st.statement_id, "usage statement");
        let (key, body) = st.record();
        let m = OutMessage {
            topic: self.statements_topic.clone(),
            key: Some(key),
            payload: Some(body),
            headers: OwnedHeaders::new(),
            dlq: false,
            cut_from: None,
        };
        let attempt = submit(&self.producer, &m);
        self.enqueue(m, attempt);
    }
}

/// Whether the broker (or the producer) refused a message as too large.
fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// Waits until every message is acknowledged, re-sending failed ones with backoff (a copy
/// refused as too large at once, cut). Returns the messages still undelivered when
/// `deadline` passes, or when `shutdown` is cancelled and there is no deadline (the final
/// flush takes them over); empty once all are delivered. While messages wait after a failure,
/// `shared.health` carries the reason `/readyz` reports ([`Source::Outbox`]).
pub(super) async fn ensure_delivered(
    producer: &FutureProducer,
    mut pending: Vec<Pending>,
    deadline: Option<Duration>,
    shutdown: &CancellationToken,
    shared: &Shared,
) -> Vec<Pending> {
    let started = Instant::now();
    let mut backoff = retry_backoff();
    while !pending.is_empty() {
        // Attempts are all in flight at once; awaiting them in turn costs nothing.
        let mut results = Vec::with_capacity(pending.len());
        let mut waiting = Vec::new();
        for mut p in pending.drain(..) {
            if !waiting.is_empty() {
                waiting.push(p);
                continue;
            }
            let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let r = tokio::select! {
                r = &mut p.attempt => Some(r),
                _ = tokio::time::sleep(left.unwrap_or_default()), if left.is_some() => None,
                _ = shutdown.cancelled(), if left.is_none() => None,
            };
            match r {
                Some(r) => results.push((p.msg, r)),
                None => waiting.push(p),
            }
        }
        let mut failed: Vec<(OutMessage, KafkaError)> = Vec::new();
        for (msg, r) in results {
            match r {
                Ok(()) => {
                    metrics::gauge!(t::OUTBOX_UNDELIVERED).decrement(1.0);
                    if msg.dlq {
                        metrics::counter!(t::DLQ_PRODUCED).increment(1);
                    }
                }
                Err(e) => failed.push((msg, e)),
            }
        }
        if failed.is_empty() && waiting.is_empty() {
            break;
        }
        pending = waiting;
        let count = failed.len() + pending.len();
        let mut later = Vec::new();
        for (mut msg, e) in failed {
            if msg.dlq && too_large(&e) && msg.cut() {
                tracing::warn!(topic = %msg.topic, error = %e, original_bytes = ?msg.cut_from, now_bytes = ?msg.payload.as_ref().map(Vec::len), "dead-letter copy too large; re-sending it cut");
                pending.push(Pending {
                    attempt: submit(producer, &msg),
                    msg,
                });
            } else {
                if later.is_empty() {
                    let why = format!(
                        "{count} message(s) undelivered to Kafka topic {}: {e}",
                        msg.topic
                    );
                    tracing::warn!(reason = %why, "produce failed; retrying");
                    shared.health.set(Source::Outbox, why);
                }
                later.push(msg);
            }
        }
        if !later.is_empty() {
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            let delay = match deadline {
                Some(d) => delay.min(d.saturating_sub(started.elapsed())),
                None => delay,
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled(), if deadline.is_none() => {}
            }
            for msg in later {
                pending.push(Pending {
                    attempt: submit(producer, &msg),
                    msg,
                });
            }
        }
        if deadline.is_some_and(|d| started.elapsed() >= d)
            || deadline.is_none() && shutdown.is_cancelled()
        {
            return pending;
        }
    }
    shared.health.clear(Source::Outbox);
    pending
}

/// Delays between retries of failed deliveries: 200 ms doubling to 5 s, jittered, forever
/// (each attempt itself may take up to the producer's `message.timeout.ms`).
fn retry_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Enqueues a message (waiting while the producer's local queue is full) and returns its
/// delivery attempt; a message the producer refuses at once fails the attempt.
fn submit(producer: &FutureProducer, m: &OutMessage) -> Attempt {
    let mut rec = m.record();
    loop {
        match producer.send_result(rec) {
            Ok(f) => {
                return Box::pin(async move {
                    match f.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e),
                        Err(_) => Err(KafkaError::Canceled),
                    }
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Box::pin(async move { Err(e) }),
        }
    }
}

/// A rejected message as the dead-letter topic carries it: original key and bytes, reason
/// headers.
fn dead_letter_message(
    dlq_topic: &str,
    source_topic: &str,
    msg: &BorrowedMessage<'_>,
    r: &Rejection,
) -> OutMessage {
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "callmeter.error",
            value: Some(r.code.as_str()),
        })
        .insert(Header {
            key: "callmeter.error.message",
            value: Some(r.message.as_str()),
        })
        .insert(Header {
            key: "callmeter.source.topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: "callmeter.source.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "callmeter.source.offset",
            value: Some(offset.as_str()),
        });
    OutMessage {
        topic: dlq_topic.to_string(),
        key: msg.key().map(|k| k.to_vec()),
        payload: msg.payload().map(|p| p.to_vec()),
        headers,
        dlq: true,
        cut_from: None,
    }
}

/// An alert as the alerts topic carries it: (key, JSON body).
fn alert_record(a: &Alert) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::to_vec(a).expect("alerts serialize");
    (a.tenant_id.as_bytes().to_vec(), body)
}

/// Where wallet alerts go besides ClickHouse: the alerts topic, one alert at a time.
pub struct AlertSink {
    pub producer: FutureProducer,
    pub topic: String,
}

impl AlertSink {
    /// A sink with its own producer, writing to `kafka.alerts_topic`.
    ///
    /// Errors: the producer cannot be created.
    pub fn new(s: &KafkaSettings) -> Result<AlertSink, KafkaError> {
        Ok(AlertSink {
            producer: super::consumer::producer(s)?,
            topic: s.alerts_topic.clone(),
        })
    }

    /// Produces `a` and waits for its acknowledgement (waiting up to 30 s while the
    /// producer's queue is full).
    ///
    /// Errors: the alert cannot be enqueued or delivered.
    pub async fn send(&self, a: &Alert) -> Result<(), KafkaError> {
        let (key, body) = alert_record(a);
        let rec: FutureRecord<'_, Vec<u8>, Vec<u8>> =
            FutureRecord::to(&self.topic).key(&key).payload(&body);
        match self.producer.send(rec, Duration::from_secs(30)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e),
        }
    }
}
