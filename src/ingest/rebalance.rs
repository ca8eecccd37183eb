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
use super::{Core, Engine};
use crate::sink::clickhouse::{ClickHouse, flush_backoff};
use crate::state::{Params, Restored};
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
        let ok = core.flush_now(core.shutdown_timeout);
        tracing::info!(partitions = ?partitions, flushed = ok, "flushed before revocation");
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
    /// partition was revoked or reassigned, or shutdown), reads its committed offset and
    /// replay start, and sends the result.
    async fn run(self, partition: i32, generation: u64, cancel: CancellationToken) {
        let started = Instant::now();
        let grace = self.params.grace_secs;
        let mut backoff = flush_backoff();
        let mut restored = loop {
            if cancel.is_cancelled() {
                return;
            }
            match self.ch.restore(&self.topic, partition, grace).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "restore from ClickHouse failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        };
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let topic = self.topic.to_string();
        let params = self.params.clone();
        let ck = restored.checkpoint.clone();
        let res = tokio::task::spawn_blocking(move || {
            let committed = consumer::committed_offset(
                &consumer,
                &topic,
                partition,
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| {
                tracing::warn!(partition, error = %e, "reading the committed offset failed");
                None
            });
            let replay_from = match &ck {
                Some(c) if c.max_ts_ms != i64::MIN => consumer::offset_for_time(
                    &consumer,
                    &topic,
                    partition,
                    // Arrival times are capped at the clock; so is an older checkpoint's.
                    c.max_ts_ms
                        .min(chrono::Utc::now().timestamp_millis())
                        .saturating_sub(params.dedup_window_ms)
                        .saturating_sub(params.replay_margin_ms()),
                    c.position,
                    Duration::from_secs(10),
                ),
                Some(c) => c.position,
                None => 0,
            };
            (committed, replay_from)
        })
        .await;
        let Ok((committed, replay_from)) = res else {
            return;
        };
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
        let _ = self.done.send((generation, restored));
    }
}
