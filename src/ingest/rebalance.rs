//! Partition assignment. On revocation the consuming thread flushes and commits
//! synchronously (bounded by `shutdown_timeout`) and forgets the partitions. On assignment
//! partitions stay paused (see [`super::consumer`]); each gets a generation and a restore
//! task that loads its state from ClickHouse, reads the committed offset, finds the replay
//! start and answers on a channel. The consuming thread installs an answer only if the
//! partition still has that generation, then seeks the partition to its replay start
//! (retried until the consumer accepts it) and resumes it. While too many rows wait for
//! ClickHouse, owned partitions are paused (the thread keeps polling, so the group does not
//! evict it) and resumed once a flush lands.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::consumer::{self, GroupConsumer, RebalanceHandler};
use super::{Core, Engine, start};
use crate::health::Source;
use crate::sink::clickhouse::{ClickHouse, flush_backoff};
use crate::state::{Params, Restored, Shared};
use crate::telemetry as t;

/// An assigned partition: its generation and the cancellation of its restore task.
pub(super) struct Assignment {
    generation: u64,
    restore: CancellationToken,
}

/// A restore's answer: the generation it was started for, and the state.
pub(super) type RestoreDone = (u64, Restored);

/// What every restore task needs; cloned into each.
#[derive(Clone)]
pub(super) struct Restorer {
    pub(super) ch: ClickHouse,
    /// Weak: the consumer's context holds the handler that holds this.
    pub(super) consumer: Weak<GroupConsumer>,
    pub(super) topic: Arc<str>,
    pub(super) params: Params,
    /// `pipeline.accept_retention_gaps`.
    pub(super) accept_gaps: bool,
    /// Where a partition that cannot start is marked unready.
    pub(super) shared: Arc<Shared>,
    pub(super) done: mpsc::Sender<RestoreDone>,
}

impl Engine {
    fn generation_of(&self, p: i32) -> Option<u64> {
        self.assigned.get(&p).map(|a| a.generation)
    }

    /// Installs the restores that finished for partitions still at their generation, and
    /// queues their seeks.
    pub(super) fn install_restored(&mut self, rx: &mpsc::Receiver<RestoreDone>) {
        while let Ok((generation, r)) = rx.try_recv() {
            let p = r.partition;
            if self.generation_of(p) != Some(generation) {
                continue;
            }
            let from = r.replay_from;
            self.proc.install(r);
            self.pending_seek.push((p, from));
        }
    }

    /// Seeks installed partitions to their replay start and resumes them (unless
    /// consumption is paused); a seek the consumer refuses yet is retried next time.
    pub(super) fn seek_pending(&mut self, consumer: &GroupConsumer, topic: &str) {
        if self.pending_seek.is_empty() {
            return;
        }
        let (assigned, paused) = (&self.assigned, self.paused);
        self.pending_seek.retain(|(p, from)| {
            if !assigned.contains_key(p) {
                return false;
            }
            let off = if *from <= 0 {
                Offset::Beginning
            } else {
                Offset::Offset(*from)
            };
            match consumer.seek(topic, *p, off, Duration::from_secs(5)) {
                Ok(()) => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(topic, *p);
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

    /// Pauses the owned partitions (but those still waiting for their seek) when `over`,
    /// resumes them when no longer.
    pub(super) fn pause_or_resume(
        &mut self,
        consumer: &GroupConsumer,
        topic: &str,
        over: bool,
        dirty: usize,
    ) {
        if over == self.paused {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in self.proc.owned_partitions() {
            if !self.pending_seek.iter().any(|(q, _)| *q == p) {
                tpl.add_partition(topic, p);
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
        self.paused = over;
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
}

/// The rebalance callbacks (run on the consuming thread, inside `poll`).
pub(super) struct Handler {
    pub(super) core: Arc<Core>,
}

impl RebalanceHandler for Handler {
    fn revoking(&self, _consumer: &GroupConsumer, partitions: &[i32]) {
        let core = &self.core;
        if core
            .final_flush_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Leaving the group after a failed final flush: another attempt would outlast the
            // shutdown bound. Nothing of these partitions was committed past stored data; their
            // next owner replays it.
            tracing::warn!(partitions = ?partitions, "revoked after the final flush failed: not flushed again");
        } else {
            let ok = core.flush_now(core.shutdown_timeout);
            tracing::info!(partitions = ?partitions, flushed = ok, "flushed before revocation");
        }
        let mut e = core.engine();
        for p in partitions {
            if let Some(a) = e.assigned.remove(p) {
                a.restore.cancel();
            }
            e.proc.revoke(*p);
        }
    }

    fn assigned(&self, _consumer: &GroupConsumer, partitions: &[i32]) {
        let core = &self.core;
        let mut e = core.engine();
        for p in partitions {
            let generation = e.assigned.values().map(|a| a.generation).max().unwrap_or(0) + 1;
            let restore = core.shutdown.child_token();
            let old = e.assigned.insert(
                *p,
                Assignment {
                    generation,
                    restore: restore.clone(),
                },
            );
            if let Some(old) = old {
                old.restore.cancel();
            }
            e.proc.assign(*p);
            let task = core.restorer.clone().run(*p, generation, restore);
            core.tasks.spawn_on(task, &core.rt);
        }
    }

    fn stats(&self, stats: &Statistics) {
        let core = &self.core;
        if let Some(tp) = stats.topics.get(&*core.topic) {
            let mut e = core.engine();
            for (p, ps) in &tp.partitions {
                if *p >= 0 && ps.hi_offset >= 0 {
                    e.hi_offsets.insert(*p, ps.hi_offset);
                }
            }
        }
    }
}

impl Restorer {
    /// Restores one partition (retrying until ClickHouse answers, unless `cancel`led: the
    /// partition was revoked or reassigned, or shutdown), decides its start from the
    /// checkpoint and the topic's offsets ([`start::decide`]) and sends the result. A
    /// partition that cannot start stays paused and unready with the error, checked again
    /// every 30 s (an operator may have deleted its checkpoint meanwhile).
    async fn run(self, partition: i32, generation: u64, cancel: CancellationToken) {
        let started = Instant::now();
        let grace = self.params.grace_secs;
        let mut backoff = flush_backoff();
        let blocked =
            metrics::gauge!(t::PARTITION_START_BLOCKED, "partition" => partition.to_string());
        let done = loop {
            if cancel.is_cancelled() {
                break None;
            }
            let pause = match self.ch.restore(&self.topic, partition, grace).await {
                Ok(r) => match self.start(partition, r).await {
                    Some(Ok(done)) => break Some(done),
                    Some(Err(e)) => {
                        tracing::error!(partition, error = %e, "partition cannot start: kept unready");
                        self.shared
                            .health
                            .set(Source::Partition(partition), e.to_string());
                        blocked.set(1.0);
                        Duration::from_secs(30)
                    }
                    None => Duration::from_secs(5),
                },
                Err(e) => {
                    tracing::warn!(partition, error = %e, "restore from ClickHouse failed; retrying");
                    backoff.next().unwrap_or(Duration::from_secs(30))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => {}
            }
        };
        self.shared.health.clear(Source::Partition(partition));
        blocked.set(0.0);
        let Some((mut restored, replay_from)) = done else {
            return;
        };
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
        let _ = self.done.send((generation, restored));
    }

    /// The start of a restored partition: reads the topic's offsets and the group's
    /// committed offset (logged only), decides, and finds the replay start below a
    /// checkpoint (the dedup window). `None` when Kafka cannot be asked (retried).
    async fn start(
        &self,
        partition: i32,
        mut restored: Restored,
    ) -> Option<Result<(Restored, i64), start::StartError>> {
        let consumer = self.consumer.upgrade()?;
        let topic = self.topic.to_string();
        let params = self.params.clone();
        let accept = self.accept_gaps;
        let ck = restored.checkpoint.clone();
        let res = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let (low, high) = match consumer.fetch_watermarks(&topic, partition, timeout) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "reading the topic's offsets failed; retrying");
                    return None;
                }
            };
            let committed = consumer::committed_offset(&consumer, &topic, partition, timeout)
                .unwrap_or_else(|e| {
                    tracing::warn!(partition, error = %e, "reading the committed offset failed");
                    None
                });
            let decided = match start::decide(partition, ck.as_ref(), low, high, accept) {
                Err(e) => return Some((committed, Err(e))),
                Ok(d) => d,
            };
            let from = match (decided, &ck) {
                (start::Start::Checkpoint(pos), Some(c)) if c.max_ts_ms != i64::MIN => {
                    consumer::offset_for_time(
                        &consumer,
                        &topic,
                        partition,
                        // Arrival times are capped at the clock; so is an older checkpoint's.
                        c.max_ts_ms
                            .min(chrono::Utc::now().timestamp_millis())
                            .saturating_sub(params.dedup_window_ms)
                            .saturating_sub(params.replay_margin_ms()),
                        pos,
                        timeout,
                    )
                    .max(low)
                }
                (start::Start::Checkpoint(pos), _) => pos,
                (start::Start::AfterGap(low), Some(c)) => {
                    tracing::warn!(
                        partition,
                        checkpoint = c.position,
                        low,
                        high,
                        lost = low - c.position,
                        "retention gap accepted: counting what Kafka retains"
                    );
                    low
                }
                (start::Start::AfterGap(low), None) | (start::Start::Earliest(low), _) => low,
            };
            if committed.is_some_and(|c| ck.as_ref().is_none_or(|k| c > k.position)) {
                tracing::warn!(
                    partition,
                    committed = ?committed,
                    checkpoint = ?ck.as_ref().map(|c| c.position),
                    from,
                    "the group's committed offset lies beyond the checkpoint (ClickHouse lost data?): reading again from the checkpoint"
                );
            }
            Some((committed, Ok(from)))
        })
        .await
        .ok()??;
        let (committed, decided) = res;
        restored.committed = committed;
        Some(decided.map(|from| (restored, from)))
    }
}
