//! Flushing: cut the processor's state (on the consuming thread, in a time that does not
//! grow with the dirty rows), read the cut's rows (on a blocking thread, while consumption
//! goes on: [`Cut::materialize`]), wait until every dead-letter message and alert produced
//! before the cut is acknowledged (re-sent until it is: nothing is written or committed past
//! an undelivered message; a flush that gives up hands the messages back to the outbox),
//! write the batch to ClickHouse (retried with jittered backoff until it succeeds, or until
//! shutdown or the deadline), then commit the checkpoints' positions to the group. At most
//! one flush is in flight: [`Core::start_flush`] hands a [`FlushJob`] (owned) to a task that
//! answers with a [`FlushDone`] on a channel, which the consuming thread collects;
//! [`Core::flush_now`] runs one on the consuming thread itself (revocation, shutdown),
//! bounded by a deadline.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::consumer::GroupConsumer;
use super::outbox::{self, Pending};
use super::{Core, Engine};
use crate::health::Source;
use crate::sink::clickhouse::{ClickHouse, SinkError, flush_backoff};
use crate::state::{Cut, FlushBatch, Shared};
use crate::telemetry as t;

/// One flush's inputs: the cut (its rows read by the flush task, not the consuming
/// thread) and the deliveries it depends on.
pub(super) struct FlushJob {
    cut: Cut,
    deliveries: Vec<Pending>,
}

impl FlushJob {
    fn is_empty(&self) -> bool {
        self.cut.is_empty() && self.deliveries.is_empty()
    }
}

/// What a flush task reports back.
pub(super) struct FlushDone {
    batch: Option<FlushBatch>,
    ok: bool,
    rows: usize,
    elapsed: Duration,
    /// Deliveries the flush gave up waiting for (back to the outbox).
    undelivered: Vec<Pending>,
}

/// Why one write attempt failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("deadline reached")]
    Deadline,
}

/// What every flush needs besides its job; cloned into each flush task.
#[derive(Clone)]
pub(super) struct Flusher {
    pub(super) ch: ClickHouse,
    pub(super) producer: rdkafka::producer::FutureProducer,
    /// Weak: the consumer's context holds the handler that holds this.
    pub(super) consumer: Weak<GroupConsumer>,
    pub(super) topic: Arc<str>,
    pub(super) shutdown: CancellationToken,
    /// Where the outbox's status and a permanent ClickHouse error are reported (`/readyz`).
    pub(super) shared: Arc<Shared>,
    /// Retry interval after a permanent error (`clickhouse.permanent_error_retry`).
    pub(super) permanent_retry: Duration,
}

impl Engine {
    /// The cut plus the deliveries it depends on. Statements the cut made are produced
    /// here, so the flush writes them only once their message is acknowledged (see
    /// [`crate::state`]'s period close). Its time does not grow with the dirty rows: they are
    /// read by the flush task ([`Cut::materialize`]).
    fn take_job(&mut self) -> FlushJob {
        let cut = self.proc.cut();
        for st in &self.proc.take_new_statements() {
            self.outbox.statement(st);
        }
        FlushJob {
            cut,
            deliveries: self.outbox.take_pending(),
        }
    }

    fn finish_flush(&mut self, mut done: FlushDone) {
        self.outbox
            .restore_pending(std::mem::take(&mut done.undelivered));
        match (done.ok, done.batch) {
            (true, Some(batch)) => {
                self.proc.flushed(&batch.checkpoints);
                metrics::histogram!(t::FLUSH_DURATION).record(done.elapsed.as_secs_f64());
                metrics::counter!(t::FLUSH_ROWS).increment(done.rows as u64);
                metrics::counter!(t::FLUSHES).increment(1);
                metrics::gauge!(t::LAST_FLUSH).set(Utc::now().timestamp() as f64);
            }
            (true, None) => {}
            (false, Some(batch)) => self.proc.unflushed(batch),
            (false, None) => {}
        }
    }

    /// Takes in the result of the flush in flight, if it has finished.
    pub(super) fn collect_flush(&mut self) {
        let done = match self.in_flight.as_ref().map(|rx| rx.try_recv()) {
            Some(Ok(d)) => {
                self.in_flight = None;
                Some(d)
            }
            Some(Err(mpsc::TryRecvError::Disconnected)) => {
                self.in_flight = None;
                None
            }
            _ => None,
        };
        if let Some(d) = done {
            self.finish_flush(d);
        }
    }
}

impl Core {
    /// Starts an asynchronous flush if none is in flight.
    pub(super) fn start_flush(&self, e: &mut Engine) {
        if e.in_flight.is_some() {
            return;
        }
        let job = e.take_job();
        if job.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        e.in_flight = Some(rx);
        let flusher = self.flusher.clone();
        self.tasks.spawn_on(
            async move {
                let done = flusher.run(job, None).await;
                let _ = tx.send(done);
            },
            &self.rt,
        );
    }

    /// Flushes synchronously on the calling (non-runtime) thread, bounded by `deadline`:
    /// first waits for a flush in flight, then flushes what is left. False on timeout or
    /// failure. The engine is not locked while waiting.
    pub(super) fn flush_now(&self, deadline: Duration) -> bool {
        let started = Instant::now();
        let in_flight = self.engine().in_flight.take();
        if let Some(rx) = in_flight {
            match rx.recv_timeout(deadline) {
                Ok(done) => self.engine().finish_flush(done),
                Err(_) => {
                    tracing::warn!("flush in flight did not finish in time");
                    return false;
                }
            }
        }
        let job = self.engine().take_job();
        if job.is_empty() {
            return true;
        }
        let flusher = self.flusher.clone();
        let left = deadline.saturating_sub(started.elapsed());
        let done = self
            .rt
            .block_on(async move { flusher.run(job, Some(left)).await });
        let ok = done.ok;
        self.engine().finish_flush(done);
        ok
    }
}

impl Flusher {
    /// Awaits deliveries, writes the batch (retrying), commits positions.
    async fn run(self, job: FlushJob, deadline: Option<Duration>) -> FlushDone {
        let FlushJob { cut, deliveries } = job;
        let started = Instant::now();
        // The rows' values at the cut, read at once (until then the consuming thread keeps
        // a copy of each row of the cut it changes), off the runtime's workers.
        let batch = match tokio::task::spawn_blocking(move || cut.materialize()).await {
            Ok(b) => b,
            Err(e) if e.is_panic() => {
                // A panic while reading the rows: as after a panic on the consuming thread,
                // the process ends and the restore rebuilds the state from what is stored.
                tracing::error!(error = %e, "reading the flush's rows panicked: exiting");
                std::process::exit(super::PANIC_EXIT);
            }
            Err(e) => {
                // The runtime is shutting down: nothing is written or committed.
                tracing::warn!(error = %e, "the flush's rows were not read (shutting down)");
                return FlushDone {
                    batch: None,
                    ok: false,
                    rows: 0,
                    elapsed: started.elapsed(),
                    undelivered: deliveries,
                };
            }
        };
        let positions: Vec<(i32, i64)> = batch
            .checkpoints
            .iter()
            .map(|c| (c.partition, c.position))
            .collect();
        let rows = batch.rows.len();
        let give_up = |me: &Self| {
            me.shutdown.is_cancelled() && deadline.is_none()
                || deadline.is_some_and(|d| started.elapsed() >= d)
        };
        let failed = |batch, undelivered| FlushDone {
            batch: Some(batch),
            ok: false,
            rows,
            elapsed: started.elapsed(),
            undelivered,
        };
        let undelivered = outbox::ensure_delivered(
            &self.producer,
            deliveries,
            deadline,
            &self.shutdown,
            &self.shared,
        )
        .await;
        if !undelivered.is_empty() {
            return failed(batch, undelivered);
        }
        let mut backoff = flush_backoff();
        loop {
            let attempt = self.ch.write_batch(&self.topic, &batch);
            let res: Result<(), WriteError> = match deadline {
                Some(d) => {
                    match tokio::time::timeout(d.saturating_sub(started.elapsed()), attempt).await {
                        Ok(r) => r.map_err(WriteError::from),
                        Err(_) => Err(WriteError::Deadline),
                    }
                }
                None => attempt.await.map_err(WriteError::from),
            };
            match res {
                Ok(()) => {
                    self.shared.health.clear(Source::ClickHouse);
                    break;
                }
                Err(e) => {
                    metrics::counter!(t::FLUSH_FAILURES).increment(1);
                    let permanent = matches!(&e, WriteError::Sink(s) if !s.is_transient());
                    let delay = if permanent {
                        tracing::error!(error = %e, rows, retry_in = ?self.permanent_retry,
                            "flush to ClickHouse failed with a permanent error (state kept, nothing committed); an operator must fix it");
                        self.shared
                            .health
                            .set(Source::ClickHouse, format!("clickhouse: flush failed: {e}"));
                        self.permanent_retry
                    } else {
                        tracing::warn!(error = %e, rows, "flush to ClickHouse failed; retrying");
                        backoff.next().unwrap_or(Duration::from_secs(30))
                    };
                    if give_up(&self) {
                        return failed(batch, Vec::new());
                    }
                    let delay = match deadline {
                        Some(d) => delay.min(d.saturating_sub(started.elapsed())),
                        None => delay,
                    };
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
            undelivered: Vec::new(),
        }
    }

    /// Commits the positions (synchronously, on a blocking thread); a failure is logged
    /// and counted, the next flush commits again.
    async fn commit(&self, positions: &[(i32, i64)]) {
        if positions.is_empty() {
            return;
        }
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
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
}
