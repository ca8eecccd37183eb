//! Kafka client settings and look-ups: the consumer-group member with its rebalance hooks
//! ([`GroupContext`]), the producer for dead-letter messages and alerts, a bulk producer
//! for the tools (replay, loadgen, bench), and the offset look-ups a restore needs.
//!
//! Offsets are never auto-committed or auto-stored (`enable.auto.commit = false`,
//! `enable.auto.offset.store = false`, as in Vector's Kafka source and rust-rdkafka's
//! `at_least_once` example): the pipeline commits a position only after ClickHouse holds
//! everything below it. Rebalance callbacks run on the consuming thread inside `poll`; the
//! context forwards them to [`RebalanceHandler`], which may block there (bounded) to flush
//! before partitions are handed over.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// What the consuming thread does when partitions move.
pub trait RebalanceHandler: Send + Sync {
    /// Partitions are about to be revoked: flush and commit what they hold (bounded time).
    fn revoking(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]);
    /// Partitions were assigned (and are paused): start restoring them.
    fn assigned(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]);
    /// Consumer statistics (every `statistics.interval.ms`).
    fn stats(&self, _stats: &Statistics) {}
}

/// The group member.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// Consumer context: forwards rebalances and statistics to the installed handler.
pub struct GroupContext {
    pub topic: String,
    handler: OnceLock<Arc<dyn RebalanceHandler>>,
}

impl GroupContext {
    /// Installs the handler (once; later calls are ignored). Until then rebalances only
    /// pause assigned partitions.
    pub fn set_handler(&self, h: Arc<dyn RebalanceHandler>) {
        let _ = self.handler.set(h);
    }
    fn handler(&self) -> Option<&Arc<dyn RebalanceHandler>> {
        self.handler.get()
    }
}

fn partitions_of(topic: &str, tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(h) = self.handler() {
            h.stats(&statistics);
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions_of(&self.topic, tpl);
                tracing::info!(partitions = ?parts, "partitions revoked");
                if let Some(h) = self.handler() {
                    h.revoking(consumer, &parts);
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions_of(&self.topic, tpl);
            tracing::info!(partitions = ?parts, "partitions assigned");
            if !parts.is_empty() {
                let mut pause = TopicPartitionList::new();
                for p in &parts {
                    pause.add_partition(&self.topic, *p);
                }
                if let Err(e) = consumer.pause(&pause) {
                    tracing::error!(error = %e, "pausing assigned partitions failed");
                }
            }
            if let Some(h) = self.handler() {
                h.assigned(consumer, &parts);
            }
        }
    }
}

fn base_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers);
    for (k, v) in &s.properties {
        c.set(k, &v.0);
    }
    c
}

/// Fetch settings of every consumer the pipeline (and `callmeter bench`'s plain consumer)
/// creates; `kafka.properties` may override them.
///
/// `fetch.queue.backoff.ms`: librdkafka stops fetching a partition whose local queue is over
/// `queued.min.messages` (100,000) or `queued.max.messages.kbytes` (64 MiB), and looks again
/// only after this long (default 1,000 ms; librdkafka's CONFIGURATION.md: "may need to be
/// decreased if ... the application is experiencing long (~1s) delays between messages").
/// A consumer that processes slower than the broker serves (every real one) then drains its
/// queue and idles until the backoff ends: on Apache Kafka with 1M events the consuming
/// thread sat in empty 50 ms polls 60 % of the time and the pipeline ran at 150,000 events/s;
/// with 10 ms it ran at 390,000 (BENCHMARKS.md). A re-check every 10 ms costs nothing.
pub const FETCH_DEFAULTS: &[(&str, &str)] = &[("fetch.queue.backoff.ms", "10")];

/// The group member. `client.id` defaults to the instance id.
pub fn consumer(
    s: &KafkaSettings,
) -> Result<BaseConsumer<GroupContext>, rdkafka::error::KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("max.poll.interval.ms", "300000");
    for (k, v) in FETCH_DEFAULTS {
        c.set(*k, *v);
    }
    // Under the KIP-848 consumer protocol (`group.protocol = "consumer"` in
    // [kafka.properties]) the broker owns session timeout, heartbeat interval and assignor;
    // librdkafka refuses the client-side settings there.
    let classic = s
        .properties
        .get("group.protocol")
        .is_none_or(|v| v.0 != "consumer");
    if classic {
        c.set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
    }
    if let Some(id) = &s.group_instance_id {
        c.set("group.instance.id", id).set("client.id", id);
    }
    for (k, v) in &s.properties {
        c.set(k, &v.0);
    }
    c.create_with_context(GroupContext {
        topic: s.topic.clone(),
        handler: OnceLock::new(),
    })
}

/// Producer for dead-letter messages and alerts, compressed with lz4. `message.max.bytes`
/// is raised so an oversized event can still be dead-lettered unchanged (the broker
/// decides; the outbox cuts a copy it refuses). A delivery fails after 15 s (a missing
/// topic, say) so the outbox reports it and retries it with backoff; metadata is refreshed
/// every 10 s so a topic created late is seen soon.
pub fn producer(s: &KafkaSettings) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = base_config(s);
    c.set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "67108864")
        .set("message.timeout.ms", "15000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    for (k, v) in &s.properties {
        c.set(k, &v.0);
    }
    c.create()
}

/// A plain producer with throughput settings (replay, loadgen).
pub fn bulk_producer(s: &KafkaSettings) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = base_config(s);
    c.set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "120000");
    for (k, v) in &s.properties {
        c.set(k, &v.0);
    }
    c.create()
}

/// The first offset whose timestamp is at or after `ts_ms` (clamped to `upper`), or
/// `upper` when the broker cannot tell. Brokers that answer an earlier offset only make the
/// replay longer, never wrong.
pub fn offset_for_time(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partition: i32,
    ts_ms: i64,
    upper: i64,
    timeout: Duration,
) -> i64 {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(ts_ms.max(0)))
        .is_err()
    {
        return upper;
    }
    match consumer.offsets_for_times(tpl, timeout) {
        Ok(res) => match res.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => o.min(upper),
            // End: no message at or after the time.
            Some(Offset::End) => upper,
            _ => upper,
        },
        Err(e) => {
            tracing::warn!(partition, error = %e, "offsets_for_times failed; replaying from 0");
            0
        }
    }
}

/// The group's committed offset of one partition, if any.
pub fn committed_offset(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let res = consumer.committed_offsets(tpl, timeout)?;
    Ok(
        match res.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o),
            _ => None,
        },
    )
}

/// Publishes `(key, payload)` messages to `topic`, at most `rate` per second if given,
/// waiting while the producer's queue is full and for every delivery (in windows of 10,000).
/// Returns the number published and the time it took.
///
/// Errors: a message that cannot be enqueued or delivered (after librdkafka's retries).
pub async fn publish_all(
    producer: &FutureProducer,
    topic: &str,
    messages: impl IntoIterator<Item = (String, String)>,
    rate: Option<u32>,
) -> Result<(u64, Duration), rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError;
    use rdkafka::producer::FutureRecord;
    use rdkafka::types::RDKafkaErrorCode;
    let limiter = rate
        .and_then(std::num::NonZeroU32::new)
        .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
    let started = std::time::Instant::now();
    let mut inflight = Vec::with_capacity(10_000);
    let mut n = 0u64;
    let settle = |f: rdkafka::producer::DeliveryFuture| async move {
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        }
    };
    for (key, payload) in messages {
        if let Some(l) = &limiter {
            l.until_ready().await;
        }
        let mut rec = FutureRecord::to(topic).key(&key).payload(&payload);
        let fut = loop {
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e),
            }
        };
        inflight.push(fut);
        n += 1;
        if inflight.len() >= 10_000 {
            for f in inflight.drain(..) {
                settle(f).await?;
            }
        }
    }
    for f in inflight.drain(..) {
        settle(f).await?;
    }
    Ok((n, started.elapsed()))
}
