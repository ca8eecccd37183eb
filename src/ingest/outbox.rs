//! What the pipeline produces to Kafka and must see acknowledged before a flush commits:
//! dead-letter messages (the original key and bytes, reason headers) and usage alerts
//! (JSON, key: tenant id). [`Outbox`] enqueues them and keeps their delivery reports;
//! [`ensure_delivered`] awaits the reports at flush time, re-sending failed messages.
//! Wallet alerts ([`AlertSink`]) are produced here too, awaited one at a time.
//!
//! A record is enqueued with [`send_retrying`], which waits while the producer's local
//! queue is full; a message the producer rejects otherwise is logged and dropped (it cannot
//! be sent at all).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::channel::oneshot::Canceled;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::task::TaskTracker;

use crate::alerts::Alert;
use crate::config::KafkaSettings;
use crate::event::Rejection;
use crate::telemetry as t;

/// A delivery report to await (a plain delivery future, or a task that also measured it).
type DeliveryWait = Pin<Box<dyn Future<Output = Result<OwnedDeliveryResult, Canceled>> + Send>>;

/// A message produced to Kafka (DLQ or alert) whose delivery a flush must await.
pub(super) struct Pending {
    fut: DeliveryWait,
    topic: String,
}

/// The producer with the topics it writes and the deliveries not yet awaited.
pub(super) struct Outbox {
    producer: FutureProducer,
    source_topic: String,
    dlq_topic: String,
    alerts_topic: String,
    pending: Vec<Pending>,
    /// Estimated bytes of `pending` (see [`Outbox::undelivered_bytes`]).
    pending_bytes: u64,
}

impl Outbox {
    pub(super) fn new(producer: FutureProducer, s: &KafkaSettings) -> Outbox {
        Outbox {
            producer,
            source_topic: s.topic.clone(),
            dlq_topic: s.dlq_topic.clone(),
            alerts_topic: s.alerts_topic.clone(),
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Deliveries not yet handed to a flush.
    pub(super) fn take_pending(&mut self) -> Vec<Pending> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    /// Estimated bytes held by messages not yet handed to a flush (for `pipeline.max_memory`):
    /// each message's payload plus [`super::memory::MESSAGE_OVERHEAD_BYTES`].
    pub(super) fn undelivered_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Produces a rejected message to the dead-letter topic.
    pub(super) fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, r: &Rejection) {
        let fut = dead_letter(&self.producer, &self.dlq_topic, &self.source_topic, msg, r);
        if let Some(fut) = fut {
            let len = msg.payload().map_or(0, <[u8]>::len) as u64;
            self.pending_bytes += len + super::memory::MESSAGE_OVERHEAD_BYTES;
            self.pending.push(Pending {
                fut: Box::pin(fut),
                topic: self.dlq_topic.clone(),
            });
        }
    }

    /// Counts, logs and produces an alert that the message with Kafka timestamp `event_ms`
    /// fired. Alerts are rare: a task per alert (on `tasks`) measures its latency from that
    /// timestamp to the alert's acknowledgement.
    pub(super) fn alert(
        &mut self,
        a: &Alert,
        event_ms: Option<i64>,
        tasks: &TaskTracker,
        rt: &tokio::runtime::Handle,
    ) {
        metrics::counter!(t::ALERTS, "kind" => a.kind.clone()).increment(1);
        tracing::info!(tenant = %a.tenant_id, meter = %a.meter, kind = %a.kind, usage = %a.usage, limit = ?a.limit, "usage alert");
        let Some(fut) = produce_alert(&self.producer, &self.alerts_topic, a) else {
            return;
        };
        let task = tasks.spawn_on(
            async move {
                let r = fut.await;
                if let (Ok(Ok(_)), Some(ms)) = (&r, event_ms) {
                    let secs = (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0;
                    metrics::histogram!(t::ALERT_LATENCY).record(secs);
                }
                r
            },
            rt,
        );
        let wait: DeliveryWait = Box::pin(async move { task.await.unwrap_or(Err(Canceled)) });
        self.pending_bytes += 512 + super::memory::MESSAGE_OVERHEAD_BYTES;
        self.pending.push(Pending {
            fut: wait,
            topic: self.alerts_topic.clone(),
        });
    }
}

/// Waits until every message is acknowledged, re-sending failed ones; false when a report
/// is lost (the producer closed) or `deadline` passes with messages still unacknowledged.
pub(super) async fn ensure_delivered(
    producer: &FutureProducer,
    mut pending: Vec<Pending>,
    deadline: Option<Duration>,
) -> bool {
    let started = Instant::now();
    while !pending.is_empty() {
        let results = join_all(pending.drain(..).map(|p| async move {
            let topic = p.topic;
            (topic, p.fut.await)
        }))
        .await;
        for (topic, r) in results {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, msg))) => {
                    tracing::warn!(error = %e, topic = %topic, "produce failed; re-sending");
                    let mut rec = FutureRecord::to(&topic);
                    let payload = msg.payload().map(|p| p.to_vec());
                    let key = msg.key().map(|k| k.to_vec());
                    if let Some(p) = &payload {
                        rec = rec.payload(p);
                    }
                    if let Some(k) = &key {
                        rec = rec.key(k);
                    }
                    if let Some(h) = Message::headers(&msg) {
                        rec = rec.headers(h.clone());
                    }
                    if let Some(fut) = send_retrying(producer, rec) {
                        pending.push(Pending {
                            fut: Box::pin(fut),
                            topic,
                        });
                    }
                }
                Err(_) => {
                    tracing::warn!(topic = %topic, "delivery report lost (producer closed)");
                    return false;
                }
            }
        }
        if !pending.is_empty() {
            if deadline.is_some_and(|d| started.elapsed() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    true
}

/// Sends a record, waiting while the local queue is full.
fn send_retrying(
    producer: &FutureProducer,
    mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>>,
) -> Option<DeliveryFuture> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Some(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => {
                tracing::error!(error = %e, "cannot enqueue message");
                return None;
            }
        }
    }
}

/// Produces a rejected message to the dead-letter topic: original key and bytes, reason headers.
fn dead_letter(
    producer: &FutureProducer,
    dlq_topic: &str,
    source_topic: &str,
    msg: &BorrowedMessage<'_>,
    r: &Rejection,
) -> Option<DeliveryFuture> {
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
    let payload = msg.payload().map(|p| p.to_vec());
    let key = msg.key().map(|k| k.to_vec());
    let mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(dlq_topic).headers(headers);
    if let Some(p) = &payload {
        rec = rec.payload(p);
    }
    if let Some(k) = &key {
        rec = rec.key(k);
    }
    send_retrying(producer, rec)
}

/// An alert as the alerts topic carries it: (key, JSON body).
fn alert_record(a: &Alert) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::to_vec(a).expect("alerts serialize");
    (a.tenant_id.as_bytes().to_vec(), body)
}

fn produce_alert(producer: &FutureProducer, topic: &str, a: &Alert) -> Option<DeliveryFuture> {
    let (key, body) = alert_record(a);
    let rec: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic).payload(&body).key(&key);
    send_retrying(producer, rec)
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
