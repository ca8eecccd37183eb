//! The running pipeline: one consuming thread, one flush at a time, restores on assignment.
//!
//! The consuming thread owns the Kafka consumer and (behind a mutex it shares with the
//! rebalance callbacks, which run on the same thread) the [`Processor`]. Every
//! `flush_interval`, or when `max_dirty_rows` rows are dirty, it takes a snapshot and hands it
//! to an async flush task: wait until every dead-letter message and alert produced before the
//! snapshot is acknowledged by Kafka, write the batch to ClickHouse (retried with jittered
//! backoff until it succeeds), then commit the snapshot's positions. While ClickHouse is down
//! the thread keeps consuming until twice `max_dirty_rows` rows are dirty, then pauses its
//! partitions (it keeps polling, so the group does not evict it) and resumes once a flush
//! lands. On revocation the thread flushes and commits synchronously (bounded by
//! `shutdown_timeout`); on assignment partitions stay paused until their state is restored
//! from ClickHouse, then they seek to their replay start and resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::alerts::Alert;
use crate::config::Config;
use crate::event::Rejection;
use crate::sink::clickhouse::{ClickHouse, flush_backoff};
use crate::source::kafka::{self, GroupContext, RebalanceHandler};
use crate::state::{FlushBatch, InMessage, Outcome, Params, Processor, Restored, Shared};
use crate::telemetry as t;

type GroupConsumer = BaseConsumer<GroupContext>;

/// A message produced to Kafka (DLQ or alert) whose delivery a flush must await.
struct Pending {
    fut: DeliveryWait,
    topic: String,
}

/// A delivery report to await (a plain delivery future, or a task that also measured it).
type DeliveryWait = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    rdkafka::producer::future_producer::OwnedDeliveryResult,
                    futures::channel::oneshot::Canceled,
                >,
            > + Send,
    >,
>;

/// What a flush task reports back.
struct FlushDone {
    batch: Option<FlushBatch>,
    ok: bool,
    rows: usize,
    elapsed: Duration,
}

struct Inner {
    proc: Mutex<Processor>,
    ch: ClickHouse,
    producer: FutureProducer,
    config: Config,
    rt: tokio::runtime::Handle,
    consumer: Mutex<Option<std::sync::Weak<GroupConsumer>>>,
    deliveries: Mutex<Vec<Pending>>,
    in_flight: Mutex<Option<mpsc::Receiver<FlushDone>>>,
    restored_tx: mpsc::Sender<(u64, Restored)>,
    generation: Mutex<HashMap<i32, u64>>,
    hi_offsets: Mutex<HashMap<i32, i64>>,
    shutdown: CancellationToken,
}

impl Inner {
    fn topic(&self) -> &str {
        &self.config.settings.kafka.topic
    }

    /// Waits for a flush in flight (bounded); returns false on timeout.
    fn await_in_flight(&self, timeout: Duration) -> bool {
        let rx = self.in_flight.lock().expect("in_flight lock").take();
        let Some(rx) = rx else { return true };
        match rx.recv_timeout(timeout) {
            Ok(done) => {
                self.finish_flush(done);
                true
            }
            Err(_) => {
                tracing::warn!("flush in flight did not finish in time");
                false
            }
        }
    }

    fn finish_flush(&self, done: FlushDone) {
        let mut proc = self.proc.lock().expect("processor lock");
        match (done.ok, done.batch) {
            (true, Some(batch)) => {
                proc.flushed(&batch.checkpoints);
                metrics::histogram!(t::FLUSH_DURATION).record(done.elapsed.as_secs_f64());
                metrics::counter!(t::FLUSH_ROWS).increment(done.rows as u64);
                metrics::counter!(t::FLUSHES).increment(1);
                metrics::gauge!(t::LAST_FLUSH).set(Utc::now().timestamp() as f64);
            }
            (true, None) => {}
            (false, Some(batch)) => proc.unflushed(batch),
            (false, None) => {}
        }
    }

    /// Snapshot plus the deliveries it depends on and the positions to commit.
    fn take_job(&self) -> (FlushBatch, Vec<Pending>, Vec<(i32, i64)>) {
        let mut proc = self.proc.lock().expect("processor lock");
        let batch = proc.snapshot();
        let positions: Vec<(i32, i64)> = batch
            .checkpoints
            .iter()
            .map(|c| (c.partition, c.position))
            .collect();
        let deliveries = std::mem::take(&mut *self.deliveries.lock().expect("deliveries lock"));
        (batch, deliveries, positions)
    }

    /// Starts an asynchronous flush if none is in flight.
    fn start_flush(self: &Arc<Self>) {
        if self.in_flight.lock().expect("in_flight lock").is_some() {
            return;
        }
        let (batch, deliveries, positions) = self.take_job();
        if batch.is_empty() && deliveries.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        *self.in_flight.lock().expect("in_flight lock") = Some(rx);
        let me = self.clone();
        self.rt.spawn(async move {
            let done = me.flush_job(batch, deliveries, positions, None).await;
            let _ = tx.send(done);
        });
    }

    /// Flushes synchronously on the calling (non-runtime) thread, bounded by `deadline`.
    fn flush_now(self: &Arc<Self>, deadline: Duration) -> bool {
        if !self.await_in_flight(deadline) {
            return false;
        }
        let (batch, deliveries, positions) = self.take_job();
        if batch.is_empty() && deliveries.is_empty() {
            return true;
        }
        let me = self.clone();
        let done = self.rt.block_on(async move {
            me.flush_job(batch, deliveries, positions, Some(deadline))
                .await
        });
        let ok = done.ok;
        self.finish_flush(done);
        ok
    }

    /// Awaits deliveries, writes the batch (retrying), commits positions.
    async fn flush_job(
        self: Arc<Self>,
        batch: FlushBatch,
        deliveries: Vec<Pending>,
        positions: Vec<(i32, i64)>,
        deadline: Option<Duration>,
    ) -> FlushDone {
        let started = Instant::now();
        let rows = batch.rows.len();
        let give_up = |me: &Self| {
            me.shutdown.is_cancelled() && deadline.is_none()
                || deadline.is_some_and(|d| started.elapsed() >= d)
        };
        if !self.ensure_delivered(deliveries, deadline).await {
            return FlushDone {
                batch: Some(batch),
                ok: false,
                rows,
                elapsed: started.elapsed(),
            };
        }
        let mut backoff = flush_backoff();
        loop {
            let attempt = self.ch.write_batch(self.topic(), &batch);
            let res = match deadline {
                Some(d) => {
                    match tokio::time::timeout(d.saturating_sub(started.elapsed()), attempt).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("deadline reached".to_string()),
                    }
                }
                None => attempt.await.map_err(|e| e.to_string()),
            };
            match res {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(t::FLUSH_FAILURES).increment(1);
                    tracing::warn!(error = %e, rows, "flush to ClickHouse failed; retrying");
                    if give_up(&self) {
                        return FlushDone {
                            batch: Some(batch),
                            ok: false,
                            rows,
                            elapsed: started.elapsed(),
                        };
                    }
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled(), if deadline.is_none() => {}
                    }
                }
            }
        }
        self.commit(&positions).await;
        FlushDone {
            batch: Some(batch),
            ok: true,
            rows,
            elapsed: started.elapsed(),
        }
    }

    async fn commit(&self, positions: &[(i32, i64)]) {
        if positions.is_empty() {
            return;
        }
        let Some(consumer) = self
            .consumer
            .lock()
            .expect("consumer lock")
            .as_ref()
            .and_then(|w| w.upgrade())
        else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            let _ = tpl.add_partition_offset(self.topic(), *p, Offset::Offset(*o));
        }
        let res =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await;
        match res {
            Ok(Ok(())) => metrics::counter!(t::COMMITS).increment(1),
            Ok(Err(e)) => {
                metrics::counter!(t::COMMIT_FAILURES).increment(1);
                tracing::warn!(error = %e, "offset commit failed (positions are kept in ClickHouse; retried next flush)");
            }
            Err(e) => tracing::warn!(error = %e, "commit task failed"),
        }
    }

    /// Waits until every message is acknowledged, re-sending failed ones.
    async fn ensure_delivered(
        &self,
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
                        if let Some(h) = rdkafka::message::Message::headers(&msg) {
                            rec = rec.headers(h.clone());
                        }
                        if let Some(fut) = send_retrying(&self.producer, rec) {
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

    fn consumer(&self) -> Option<Arc<GroupConsumer>> {
        self.consumer
            .lock()
            .expect("consumer lock")
            .as_ref()
            .and_then(|w| w.upgrade())
    }

    fn spawn_restore(self: &Arc<Self>, partition: i32, generation: u64) {
        let me = self.clone();
        self.rt.spawn(async move {
            let started = Instant::now();
            let grace = me.config.settings.pipeline.late_event_grace.as_secs() as i64;
            let mut backoff = flush_backoff();
            let mut restored = loop {
                if me.shutdown.is_cancelled() || me.generation_of(partition) != Some(generation) {
                    return;
                }
                match me.ch.restore(me.topic(), partition, grace).await {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "restore from ClickHouse failed; retrying");
                        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))).await;
                    }
                }
            };
            let Some(consumer) = me.consumer() else { return };
            let topic = me.topic().to_string();
            let params = me.proc.lock().expect("processor lock").params().clone();
            let ck = restored.checkpoint.clone();
            let res = tokio::task::spawn_blocking(move || {
                let committed =
                    kafka::committed_offset(&consumer, &topic, partition, Duration::from_secs(10))
                        .unwrap_or_else(|e| {
                            tracing::warn!(partition, error = %e, "reading the committed offset failed");
                            None
                        });
                let replay_from = match &ck {
                    Some(c) if c.max_ts_ms != i64::MIN => kafka::offset_for_time(
                        &consumer,
                        &topic,
                        partition,
                        c.max_ts_ms - params.dedup_window_ms - params.replay_margin_ms(),
                        c.position,
                        Duration::from_secs(10),
                    ),
                    Some(c) => c.position,
                    None => 0,
                };
                (committed, replay_from)
            })
            .await;
            let Ok((committed, replay_from)) = res else { return };
            restored.committed = committed;
            restored.replay_from = replay_from;
            metrics::histogram!(t::RESTORE_DURATION).record(started.elapsed().as_secs_f64());
            metrics::counter!(t::RESTORES).increment(1);
            tracing::info!(
                partition,
                rows = restored.rows.len(),
                alerts = restored.alerts.len(),
                checkpoint = ?restored.checkpoint.as_ref().map(|c| c.position),
                committed = ?restored.committed,
                replay_from,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition restored"
            );
            let _ = me.restored_tx.send((generation, restored));
        });
    }

    fn generation_of(&self, p: i32) -> Option<u64> {
        self.generation
            .lock()
            .expect("generation lock")
            .get(&p)
            .copied()
    }
}

/// Sends a record, waiting while the local queue is full.
fn send_retrying(
    producer: &FutureProducer,
    mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>>,
) -> Option<DeliveryFuture> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Some(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
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

struct Handler {
    inner: Arc<Inner>,
}

impl RebalanceHandler for Handler {
    fn revoking(&self, consumer: &GroupConsumer, partitions: &[i32]) {
        let inner = &self.inner;
        let deadline = inner.config.settings.pipeline.shutdown_timeout;
        let ok = inner.flush_now(deadline);
        let _ = consumer;
        tracing::info!(partitions = ?partitions, flushed = ok, "flushed before revocation");
        let mut gens = inner.generation.lock().expect("generation lock");
        let mut proc = inner.proc.lock().expect("processor lock");
        for p in partitions {
            gens.remove(p);
            proc.revoke(*p);
        }
    }

    fn assigned(&self, _consumer: &GroupConsumer, partitions: &[i32]) {
        let inner = &self.inner;
        for p in partitions {
            let generation = {
                let mut gens = inner.generation.lock().expect("generation lock");
                let g = gens.values().copied().max().unwrap_or(0) + 1;
                gens.insert(*p, g);
                g
            };
            inner.proc.lock().expect("processor lock").assign(*p);
            inner.spawn_restore(*p, generation);
        }
    }

    fn stats(&self, stats: &Statistics) {
        let topic = self.inner.topic().to_string();
        if let Some(tp) = stats.topics.get(&topic) {
            let mut hi = self.inner.hi_offsets.lock().expect("hi lock");
            for (p, ps) in &tp.partitions {
                if *p >= 0 && ps.hi_offset >= 0 {
                    hi.insert(*p, ps.hi_offset);
                }
            }
        }
    }
}

/// Local counters, published to the metrics registry a few times a second.
#[derive(Default)]
struct Counters {
    consumed: u64,
    counted: u64,
    duplicate: u64,
    replayed: u64,
    already: u64,
    rejected: BTreeMap<&'static str, u64>,
}

impl Counters {
    fn publish(&mut self) {
        metrics::counter!(t::EVENTS_CONSUMED).increment(std::mem::take(&mut self.consumed));
        metrics::counter!(t::EVENTS_COUNTED).increment(std::mem::take(&mut self.counted));
        metrics::counter!(t::EVENTS_DUPLICATE).increment(std::mem::take(&mut self.duplicate));
        metrics::counter!(t::EVENTS_REPLAYED).increment(std::mem::take(&mut self.replayed));
        metrics::counter!(t::EVENTS_ALREADY_COUNTED).increment(std::mem::take(&mut self.already));
        for (code, n) in std::mem::take(&mut self.rejected) {
            metrics::counter!(t::EVENTS_REJECTED, "reason" => code).increment(n);
            metrics::counter!(t::DLQ_PRODUCED).increment(n);
        }
    }
}

/// Runs the pipeline until `shutdown` is cancelled; then drains, flushes, commits.
///
/// Errors: Kafka clients cannot be created or the topic cannot be subscribed.
pub fn run(
    config: Config,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    for code in crate::event::ErrorCode::ALL {
        metrics::counter!(t::EVENTS_REJECTED, "reason" => code.as_str()).increment(0);
    }
    metrics::counter!(t::COMMIT_FAILURES).increment(0);
    metrics::counter!(t::FLUSH_FAILURES).increment(0);
    metrics::counter!(t::DEDUP_EVICTED_EARLY).increment(0);
    let ks = &config.settings.kafka;
    let consumer = Arc::new(kafka::consumer(ks)?);
    let producer = kafka::producer(ks)?;
    let params = Params::from_settings(&config.settings);
    let (restored_tx, restored_rx) = mpsc::channel::<(u64, Restored)>();
    let inner = Arc::new(Inner {
        proc: Mutex::new(Processor::new(shared.clone(), params)),
        ch: ClickHouse::new(&config.settings.clickhouse),
        producer,
        config: config.clone(),
        rt,
        consumer: Mutex::new(Some(Arc::downgrade(&consumer))),
        deliveries: Mutex::new(Vec::new()),
        in_flight: Mutex::new(None),
        restored_tx,
        generation: Mutex::new(HashMap::new()),
        hi_offsets: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
    });
    consumer.context().set_handler(Arc::new(Handler {
        inner: inner.clone(),
    }));
    consumer.subscribe(&[&ks.topic])?;
    tracing::info!(topic = %ks.topic, group = %ks.group_id, "consuming");

    let ps = &config.settings.pipeline;
    let topic = ks.topic.clone();
    let dlq_topic = ks.dlq_topic.clone();
    let alerts_topic = ks.alerts_topic.clone();
    let mut last_flush = Instant::now();
    let mut last_publish = Instant::now();
    let mut counters = Counters::default();
    let mut paused = false;
    let mut pending_seek: Vec<(i32, i64)> = Vec::new();

    while !shutdown.is_cancelled() {
        // Flush results.
        let done = {
            let mut g = inner.in_flight.lock().expect("in_flight lock");
            match g.as_ref().map(|rx| rx.try_recv()) {
                Some(Ok(d)) => {
                    *g = None;
                    Some(d)
                }
                Some(Err(mpsc::TryRecvError::Disconnected)) => {
                    *g = None;
                    None
                }
                _ => None,
            }
        };
        if let Some(d) = done {
            inner.finish_flush(d);
        }
        // Restores.
        while let Ok((generation, r)) = restored_rx.try_recv() {
            let p = r.partition;
            if inner.generation_of(p) != Some(generation) {
                continue;
            }
            let from = r.replay_from;
            inner.proc.lock().expect("processor lock").install(r);
            pending_seek.push((p, from));
        }
        if !pending_seek.is_empty() {
            pending_seek.retain(|(p, from)| {
                if inner.generation_of(*p).is_none() {
                    return false;
                }
                let off = if *from <= 0 { Offset::Beginning } else { Offset::Offset(*from) };
                match consumer.seek(&topic, *p, off, Duration::from_secs(5)) {
                    Ok(()) => {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topic, *p);
                        if !paused && let Err(e) = consumer.resume(&tpl) {
                            tracing::warn!(partition = p, error = %e, "resume failed");
                        }
                        tracing::info!(partition = p, offset = from, "partition consuming");
                        false
                    }
                    Err(e) => {
                        tracing::debug!(partition = p, error = %e, "seek not possible yet; retrying");
                        true
                    }
                }
            });
        }
        // Flush triggers and back-pressure.
        let dirty = inner.proc.lock().expect("processor lock").dirty_rows();
        if last_flush.elapsed() >= ps.flush_interval || dirty >= ps.max_dirty_rows {
            inner.start_flush();
            last_flush = Instant::now();
        }
        let over = dirty >= ps.max_dirty_rows.saturating_mul(2);
        if over != paused {
            let owned = inner
                .proc
                .lock()
                .expect("processor lock")
                .owned_partitions();
            let mut tpl = TopicPartitionList::new();
            for p in owned {
                if !pending_seek.iter().any(|(q, _)| *q == p) {
                    tpl.add_partition(&topic, p);
                }
            }
            let r = if over {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "pause/resume failed");
            }
            paused = over;
            metrics::gauge!(t::PAUSED).set(if over { 1.0 } else { 0.0 });
            if over {
                tracing::warn!(
                    dirty,
                    "too many rows wait for ClickHouse: consumption paused"
                );
            } else {
                tracing::info!("consumption resumed");
            }
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            inner.proc.lock().expect("processor lock").refresh_catalog();
            counters.publish();
            publish_gauges(&inner, &shared);
            last_publish = Instant::now();
        }

        let Some(res) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let msg = match res {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        if msg.topic() != topic {
            continue;
        }
        counters.consumed += 1;
        shared
            .consumed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ts = msg.timestamp().to_millis();
        let m = InMessage {
            partition: msg.partition(),
            offset: msg.offset(),
            payload: msg.payload(),
            timestamp_ms: ts,
        };
        let (outcome, alerts) = {
            let mut proc = inner.proc.lock().expect("processor lock");
            let o = proc.process(&m, Utc::now());
            (o, proc.take_new_alerts())
        };
        match outcome {
            Outcome::Counted => counters.counted += 1,
            Outcome::Duplicate => counters.duplicate += 1,
            Outcome::Replayed => counters.replayed += 1,
            Outcome::AlreadyCounted => counters.already += 1,
            Outcome::NotOwned => {}
            Outcome::Rejected(r) => {
                *counters.rejected.entry(r.code.as_str()).or_default() += 1;
                let fut = dead_letter(&inner.producer, &dlq_topic, &topic, &msg, &r);
                if let Some(fut) = fut {
                    inner
                        .deliveries
                        .lock()
                        .expect("deliveries lock")
                        .push(Pending {
                            fut: Box::pin(fut),
                            topic: dlq_topic.clone(),
                        });
                }
            }
        }
        if !alerts.is_empty() {
            for a in &alerts {
                metrics::counter!(t::ALERTS, "kind" => a.kind.clone()).increment(1);
                tracing::info!(tenant = %a.tenant_id, meter = %a.meter, kind = %a.kind, usage = %a.usage, limit = ?a.limit, "usage alert");
                if let Some(fut) = produce_alert(&inner.producer, &alerts_topic, a) {
                    // Alerts are rare: a task per alert measures its latency from the crossing
                    // event's Kafka timestamp to the alert's acknowledgement.
                    let event_ms = ts;
                    let task = inner.rt.spawn(async move {
                        let r = fut.await;
                        if let (Ok(Ok(_)), Some(ms)) = (&r, event_ms) {
                            let secs = (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0;
                            metrics::histogram!(t::ALERT_LATENCY).record(secs);
                        }
                        r
                    });
                    let wait: DeliveryWait = Box::pin(async move {
                        task.await
                            .unwrap_or(Err(futures::channel::oneshot::Canceled))
                    });
                    inner
                        .deliveries
                        .lock()
                        .expect("deliveries lock")
                        .push(Pending {
                            fut: wait,
                            topic: alerts_topic.clone(),
                        });
                }
            }
        }
    }

    tracing::info!("shutting down: final flush");
    counters.publish();
    let ok = inner.flush_now(ps.shutdown_timeout);
    tracing::info!(flushed = ok, "final flush done");
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

fn publish_gauges(inner: &Arc<Inner>, shared: &Arc<Shared>) {
    let proc = inner.proc.lock().expect("processor lock");
    metrics::gauge!(t::DIRTY_ROWS).set(proc.dirty_rows() as f64);
    metrics::gauge!(t::DEDUP_ENTRIES).set(proc.dedup_entries() as f64);
    metrics::counter!(t::DEDUP_EVICTED_EARLY).absolute(proc.dedup_evicted_early());
    metrics::gauge!(t::STATE_ROWS).set(shared.rows.len() as f64);
    let owned = shared.partitions.read().expect("partitions lock").len();
    metrics::gauge!(t::PARTITIONS_OWNED).set(owned as f64);
    metrics::gauge!(t::READY).set(if shared.ready() { 1.0 } else { 0.0 });
    let hi = inner.hi_offsets.lock().expect("hi lock");
    for (p, pos) in proc.positions() {
        let label = p.to_string();
        metrics::gauge!(t::PARTITION_POSITION, "partition" => label.clone()).set(pos as f64);
        if let Some(h) = hi.get(&p) {
            metrics::gauge!(t::CONSUMER_LAG, "partition" => label).set((h - pos).max(0) as f64);
        }
    }
}

/// Produces a rejected message to the dead-letter topic: original key and bytes, reason headers.
fn dead_letter(
    producer: &FutureProducer,
    dlq_topic: &str,
    source_topic: &str,
    msg: &rdkafka::message::BorrowedMessage<'_>,
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

fn produce_alert(producer: &FutureProducer, topic: &str, a: &Alert) -> Option<DeliveryFuture> {
    let body = serde_json::to_vec(a).expect("alerts serialize");
    let key = a.tenant_id.as_bytes().to_vec();
    let rec: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic).payload(&body).key(&key);
    send_retrying(producer, rec)
}
