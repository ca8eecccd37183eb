//! The consuming side: one thread polls Kafka, feeds each message to the [`Processor`], and
//! routes the outcome (counted, duplicate, replayed, dead-lettered; alerts produced).
//!
//! The thread owns one [`Engine`] (the processor, the deliveries not yet awaited, partition
//! generations and pending seeks, the flush in flight, the brokers' high offsets). Rebalance
//! callbacks run on the same thread inside `poll`, so the engine's one mutex is never
//! contended; it exists because the consumer's context must be `Sync`. The engine is never
//! locked across `poll` or while waiting on a flush. Flush and restore tasks get owned
//! inputs and answer on channels.
//!
//! Every `flush_interval`, or when `max_dirty_rows` rows are dirty, the thread starts a flush
//! ([`flush`]). While ClickHouse is down it keeps consuming until twice `max_dirty_rows`
//! rows are dirty, then pauses its partitions and resumes once a flush lands
//! ([`rebalance`]). On revocation it flushes and commits synchronously (bounded by
//! `shutdown_timeout`); on assignment partitions stay paused until their state is restored
//! from ClickHouse, then they seek to their replay start and resume. Dead-letter messages
//! and alerts go through the [`outbox`]; Kafka client settings are in [`consumer`].

pub mod consumer;
mod flush;
pub mod memory;
pub mod outbox;
mod rebalance;
pub mod start;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::sink::clickhouse::ClickHouse;
use crate::state::{InMessage, Outcome, Params, Processor, Shared};
use crate::telemetry as t;

/// The consuming thread's state (see the module docs).
struct Engine {
    proc: Processor,
    outbox: outbox::Outbox,
    /// Assigned partitions: generation and restore task.
    assigned: HashMap<i32, rebalance::Assignment>,
    /// Restored partitions waiting for their seek: (partition, replay start).
    pending_seek: Vec<(i32, i64)>,
    /// Consumption paused: too many rows wait for ClickHouse.
    paused: bool,
    in_flight: Option<mpsc::Receiver<flush::FlushDone>>,
    hi_offsets: HashMap<i32, i64>,
}

/// What the consuming thread shares with its rebalance callbacks.
struct Core {
    engine: Mutex<Engine>,
    flusher: flush::Flusher,
    restorer: rebalance::Restorer,
    topic: Arc<str>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    /// Set when the final flush of a shutdown failed (the revocation that follows does not
    /// try again).
    final_flush_failed: std::sync::atomic::AtomicBool,
    rt: tokio::runtime::Handle,
    tasks: TaskTracker,
}

impl Core {
    /// The engine; a poisoned lock (a panic while it was held) ends the process with status
    /// 70: the state may be half-updated, and a process that cannot consume must not stay up
    /// answering `/healthz`. The supervisor restarts it; the restore rebuilds exact state.
    fn engine(&self) -> MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(g) => g,
            Err(_) => {
                tracing::error!(
                    "the engine lock is poisoned (a panic on the consuming thread): exiting"
                );
                std::process::exit(PANIC_EXIT);
            }
        }
    }
}

/// Exit status after a panic on the consuming thread (EX_SOFTWARE).
pub const PANIC_EXIT: i32 = 70;

/// The consumer hit a fatal librdkafka error: it cannot be used again.
#[derive(Debug, thiserror::Error)]
#[error("fatal Kafka consumer error {code:?}: {reason}")]
pub struct FatalConsumerError {
    pub code: rdkafka::types::RDKafkaErrorCode,
    pub reason: String,
}

impl FatalConsumerError {
    /// Whether a new consumer, after a backoff, can succeed: under KIP-848 a restarted static
    /// member that joins before its previous incarnation's session expired is refused with
    /// UNRELEASED_INSTANCE_ID; once that session expires the id is free again.
    pub fn is_retryable(&self) -> bool {
        self.code == rdkafka::types::RDKafkaErrorCode::UnreleasedInstanceId
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
        }
    }
}

/// Runs the pipeline until `shutdown` is cancelled; then drains, flushes, commits. Flush,
/// restore and alert tasks run on `rt`, tracked by `tasks`.
///
/// Errors: Kafka clients cannot be created or the topic cannot be subscribed.
pub fn run(
    config: Config,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    rt: tokio::runtime::Handle,
    tasks: TaskTracker,
) -> anyhow::Result<()> {
    for code in crate::event::ErrorCode::ALL {
        metrics::counter!(t::EVENTS_REJECTED, "reason" => code.as_str()).increment(0);
    }
    metrics::counter!(t::COMMIT_FAILURES).increment(0);
    metrics::counter!(t::FLUSH_FAILURES).increment(0);
    let ks = &config.settings.kafka;
    let consumer = Arc::new(consumer::consumer(ks)?);
    let producer = consumer::producer(ks)?;
    let params = Params::from_settings(&config.settings);
    let (restored_tx, restored_rx) = mpsc::channel();
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let topic: Arc<str> = ks.topic.as_str().into();
    let core = Arc::new(Core {
        flusher: flush::Flusher {
            ch: ch.clone(),
            producer: producer.clone(),
            consumer: Arc::downgrade(&consumer),
            topic: topic.clone(),
            shutdown: shutdown.clone(),
            shared: shared.clone(),
            permanent_retry: config.settings.clickhouse.permanent_error_retry,
        },
        restorer: rebalance::Restorer {
            ch,
            consumer: Arc::downgrade(&consumer),
            topic: topic.clone(),
            params: params.clone(),
            accept_gaps: config.settings.pipeline.accept_retention_gaps,
            shared: shared.clone(),
            done: restored_tx,
        },
        engine: Mutex::new(Engine {
            proc: Processor::new(shared.clone(), params),
            outbox: outbox::Outbox::new(producer, ks),
            assigned: HashMap::new(),
            pending_seek: Vec::new(),
            paused: false,
            in_flight: None,
            hi_offsets: HashMap::new(),
        }),
        topic: topic.clone(),
        shutdown: shutdown.clone(),
        shutdown_timeout: config.settings.pipeline.shutdown_timeout,
        final_flush_failed: Default::default(),
        rt,
        tasks,
    });
    consumer
        .context()
        .set_handler(Arc::new(rebalance::Handler { core: core.clone() }));
    consumer.subscribe(&[&ks.topic])?;
    tracing::info!(topic = %ks.topic, group = %ks.group_id, "consuming");

    let ps = &config.settings.pipeline;
    let mut last_flush = Instant::now();
    let mut last_publish = Instant::now();
    let mut counters = Counters::default();
    let mut budget = memory::Budget::new(ps.max_memory.0);
    metrics::gauge!(t::MEMORY_BUDGET).set(budget.limit() as f64);
    metrics::gauge!(t::MEMORY_OVER).set(0.0);
    let mut mem_over = false;
    let mut mem_unholdable = false;
    metrics::gauge!(t::MEMORY_UNHOLDABLE).set(0.0);

    let mut fatal = None;
    // Housekeeping (flush triggers, the memory budget, pausing, restored partitions, gauges)
    // runs when the last poll found nothing, every HOUSEKEEPING_EVERY messages, or after
    // HOUSEKEEPING_INTERVAL: not once per message, which cost more than the event itself.
    //
    // The clock is read once per message (`now`: the arrival-time cap, and the housekeeping
    // interval), not once per use: in this VM a clock read cost about 6 % of the thread.
    let mut idle = true;
    let mut since_housekeeping = 0u32;
    let mut now = Utc::now();
    let mut last_housekeeping = now;
    let mut consumed = 0u64;
    while !shutdown.is_cancelled() {
        since_housekeeping += 1;
        if idle
            || since_housekeeping >= HOUSEKEEPING_EVERY
            || (now - last_housekeeping).num_milliseconds() >= HOUSEKEEPING_INTERVAL_MS
            // A wall clock set back: housekeeping at once rather than never.
            || now < last_housekeeping
        {
            since_housekeeping = 0;
            last_housekeeping = now;
            shared.count_consumed(std::mem::take(&mut consumed));
            let mut e = core.engine();
            e.outbox.track_alert_latency(&core.tasks, &core.rt);
            e.collect_flush();
            e.install_restored(&restored_rx);
            e.seek_pending(&consumer, &topic);
            // Flush triggers and back-pressure.
            let dirty = e.proc.dirty_rows();
            if last_flush.elapsed() >= ps.flush_interval || dirty >= ps.max_dirty_rows {
                core.start_flush(&mut e);
                last_flush = Instant::now();
            }
            let usage = e.memory_usage(&shared);
            let used = usage.bytes();
            let over_memory = budget.update(&usage);
            if over_memory != mem_over {
                mem_over = over_memory;
                metrics::gauge!(t::MEMORY_OVER).set(if mem_over { 1.0 } else { 0.0 });
                if mem_over {
                    tracing::warn!(
                        used,
                        budget = budget.limit(),
                        "memory estimate over pipeline.max_memory: consumption paused"
                    );
                } else {
                    tracing::info!(
                        used,
                        budget = budget.limit(),
                        "memory estimate below 90 % of pipeline.max_memory"
                    );
                }
            }
            if budget.unholdable() != mem_unholdable {
                mem_unholdable = budget.unholdable();
                metrics::gauge!(t::MEMORY_UNHOLDABLE).set(if mem_unholdable { 1.0 } else { 0.0 });
                if mem_unholdable {
                    tracing::warn!(
                        used,
                        unfreeable = usage.unfreeable_bytes(),
                        budget = budget.limit(),
                        "rollup rows and dedup entries inside the window alone fill 90 % of pipeline.max_memory: a pause could not free them, so consumption goes on above the budget; raise pipeline.max_memory or shorten pipeline.dedup_window"
                    );
                }
            }
            let over = dirty >= ps.max_dirty_rows.saturating_mul(2) || over_memory;
            e.pause_or_resume(&consumer, &topic, over, dirty);
            if last_publish.elapsed() >= Duration::from_millis(500) {
                e.proc.refresh_catalog();
                counters.publish();
                publish_gauges(&e, &shared);
                last_publish = Instant::now();
            }
        }

        let polled = consumer.poll(Duration::from_millis(50));
        now = Utc::now();
        let Some(res) = polled else {
            idle = true;
            continue;
        };
        idle = false;
        let msg = match res {
            Ok(m) => m,
            Err(e) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    tracing::error!(error = %e, ?code, %reason, "fatal Kafka consumer error");
                    fatal = Some(FatalConsumerError { code, reason });
                    break;
                }
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        if msg.topic() != &*topic {
            continue;
        }
        counters.consumed += 1;
        consumed += 1;
        let ts = msg.timestamp().to_millis();
        let m = InMessage {
            partition: msg.partition(),
            offset: msg.offset(),
            payload: msg.payload(),
            timestamp_ms: ts,
        };
        let mut e = core.engine();
        let e = &mut *e;
        match e.proc.process(&m, now) {
            Outcome::Counted => counters.counted += 1,
            Outcome::Duplicate => counters.duplicate += 1,
            Outcome::Replayed => counters.replayed += 1,
            Outcome::AlreadyCounted => counters.already += 1,
            Outcome::NotOwned => {}
            Outcome::Rejected(r) => {
                *counters.rejected.entry(r.code.as_str()).or_default() += 1;
                e.outbox.dead_letter(&msg, &r);
            }
        }
        for a in &e.proc.take_new_alerts() {
            e.outbox.alert(a, ts);
        }
    }

    tracing::info!("shutting down: final flush");
    shared.count_consumed(consumed);
    counters.publish();
    let budget = final_flush_budget(ps.shutdown_timeout);
    let ok = core.flush_now(budget);
    if !ok {
        core.final_flush_failed
            .store(true, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(flushed = ok, "final flush done");
    if let Some(f) = fatal {
        // The consumer is unusable: forget every partition (the next consumer restores them
        // from what was stored) and hand the error to the caller.
        {
            let mut e = core.engine();
            for p in e.proc.owned_partitions() {
                e.proc.revoke(p);
            }
        }
        drop(consumer);
        return Err(f.into());
    }
    consumer.unsubscribe();
    drop(consumer);
    if !ok {
        anyhow::bail!(
            "final flush failed within {budget:?}: rows not stored in ClickHouse and their offsets not committed (they are replayed from Kafka at the next start)"
        );
    }
    Ok(())
}

/// Messages between two housekeeping rounds of the consuming loop (at most).
const HOUSEKEEPING_EVERY: u32 = 64;
/// Time between two housekeeping rounds while messages keep arriving (at most), in ms.
const HOUSEKEEPING_INTERVAL_MS: i64 = 1;

/// The share of `pipeline.shutdown_timeout` the final flush may take: the rest (a quarter,
/// at most 5 s) is left for leaving the group, the last Stripe cycle and joining tasks, so
/// that the whole shutdown stays within the timeout.
pub fn final_flush_budget(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub((shutdown_timeout / 4).min(Duration::from_secs(5)))
}

impl Engine {
    /// What `pipeline.max_memory` counts (see [`memory`]).
    fn memory_usage(&self, shared: &Shared) -> memory::Usage {
        memory::Usage {
            rows: shared.row_count() as u64,
            dedup_entries: self.proc.dedup_entries() as u64,
            raw_events: self.proc.raw_events_pending() as u64,
            undelivered_bytes: self.outbox.undelivered_bytes(),
        }
    }
}

fn publish_gauges(e: &Engine, shared: &Shared) {
    let proc = &e.proc;
    metrics::gauge!(t::MEMORY_USED).set(e.memory_usage(shared).bytes() as f64);
    metrics::gauge!(t::DIRTY_ROWS).set(proc.dirty_rows() as f64);
    metrics::gauge!(t::DEDUP_ENTRIES).set(proc.dedup_entries() as f64);
    metrics::gauge!(t::DEDUP_OVER_CAP).set(proc.dedup_over_cap() as f64);
    metrics::gauge!(t::STATE_ROWS).set(shared.row_count() as f64);
    metrics::gauge!(t::PARTITIONS_OWNED).set(shared.owned_partitions().len() as f64);
    let ready = shared.readiness().is_ready();
    metrics::gauge!(t::READY).set(if ready { 1.0 } else { 0.0 });
    for (p, pos) in proc.positions() {
        let label = p.to_string();
        metrics::gauge!(t::PARTITION_POSITION, "partition" => label.clone()).set(pos as f64);
        if let Some(h) = e.hi_offsets.get(&p) {
            metrics::gauge!(t::CONSUMER_LAG, "partition" => label).set((h - pos).max(0) as f64);
        }
    }
}
