//! What a flush writes and a restore reads back: rollup records, partition checkpoints, raw
//! event records ([`FlushBatch`], in write order), and the stored rows, alert kinds and
//! checkpoint of one partition ([`Restored`]); and the processor's side of a flush: a cut
//! ([`Cut`]) on the consuming thread, whose rows are read on another thread while events
//! go on being applied, then on success recording the flushed positions and freeing what no
//! event can touch any more, or on failure returning the batch to dirty. Times are Unix
//! seconds unless a field says µs or ms.
//!
//! How a cut's rows keep their values: each row carries the flush epoch in which it last
//! changed; a cut closes the current epoch (its rows are those listed dirty in it) and
//! publishes it as the epoch being read. Until [`Cut::materialize`] is done, the first change
//! of such a row copies its value aside first (`Capture::frozen`, under the row's map shard
//! lock, which the reader holds too), so the reader takes the value at the cut either from
//! the row (not changed since) or from the copy. Dropping a partition's rows waits for the
//! reader and moves the partition's generation on, so a cut of a dropped partition writes
//! nothing of it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rust_decimal::Decimal;
use rustc_hash::{FxHashMap, FxHashSet};

use super::rows::{self, Shared};
use super::{AlertKey, Processor, RowKey};
use crate::alerts::Alert;
use crate::config::Catalog;
use crate::statement::Statement;
use crate::subscription::SubscriptionRecord;

/// One row of a flush batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRecord {
    pub tenant: Arc<str>,
    pub meter: Arc<str>,
    pub period_start: i64,
    pub period_end: i64,
    pub value: Decimal,
    pub raw: Decimal,
    pub events: u64,
    pub partition: i32,
    pub through_offset: i64,
}

/// A partition checkpoint, written after its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub partition: i32,
    pub position: i64,
    pub watermark_us: i64,
    pub max_ts_ms: i64,
}

/// A counted event, for the optional `call_events` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEventRecord {
    pub tenant: Arc<str>,
    pub event_id: String,
    pub source: String,
    pub ty: String,
    pub time_us: i64,
    pub data: String,
    pub partition: i32,
    pub offset: i64,
}

/// Everything one flush writes, in order: alerts, raw events, subscriptions, rollup state,
/// rollups, statements of closed periods, checkpoints; then offsets are committed.
#[derive(Debug, Default)]
pub struct FlushBatch {
    pub alerts: Vec<Alert>,
    pub raw_events: Vec<RawEventRecord>,
    /// Subscription events applied (CONTRACT section 10), in partition order.
    pub subscriptions: Vec<SubscriptionRecord>,
    pub rows: Vec<RollupRecord>,
    pub statements: Vec<Statement>,
    pub checkpoints: Vec<Checkpoint>,
}

impl FlushBatch {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.raw_events.is_empty()
            && self.subscriptions.is_empty()
            && self.rows.is_empty()
            && self.statements.is_empty()
            && self.checkpoints.is_empty()
    }
}

/// A row loaded from ClickHouse on restore.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub tenant: String,
    pub meter: String,
    pub period_start: i64,
    pub period_end: i64,
    pub raw: Decimal,
    pub events: u64,
    pub through_offset: i64,
    /// Whether `usage_rollups` lags the state table for this row (rewrite it).
    pub rollup_stale: bool,
}

/// Everything restored for one partition.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub partition: i32,
    pub rows: Vec<StoredRow>,
    /// (tenant, meter, period_start, kind)
    pub alerts: Vec<(String, String, i64, String)>,
    pub checkpoint: Option<Checkpoint>,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// Where consumption restarts (<= the checkpoint position).
    pub replay_from: i64,
    /// Earliest stored period per tenant.
    pub first_periods: Vec<(String, i64)>,
    /// Stored subscription records at or below the checkpoint position, in partition order.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// (tenant, period_start) whose statement is stored, of the restored rows and of the
    /// periods ending at or after the restore bound of the tenants with subscription
    /// records from this partition.
    pub stated: Vec<(String, i64)>,
}

/// A flush's cut: which rows it writes, at which positions, with the alerts, raw events,
/// subscription records and statements made up to it. Taken on the consuming thread by
/// [`Processor::cut`] in a time that does not grow with the dirty rows; their values at the
/// cut are read by [`Cut::materialize`], on another thread, while events go on being
/// applied (a row of the cut that changes first keeps its value at the cut aside).
pub struct Cut {
    shared: Arc<Shared>,
    catalog: Arc<Catalog>,
    /// The flush epoch this cut closes: its rows have `dirty_epoch` = this.
    epoch: u64,
    parts: Vec<CutPart>,
    /// Alerts, raw events, subscriptions and statements; rows and checkpoints are added by
    /// [`Cut::materialize`].
    batch: FlushBatch,
}

/// One partition of a cut.
struct CutPart {
    partition: i32,
    /// The partition's generation at the cut (see `Capture::generations`).
    generation: u64,
    /// The partition's position at the cut (the rows' `through_offset`).
    position: i64,
    keys: Vec<RowKey>,
    checkpoint: Option<Checkpoint>,
}

impl Cut {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
            && self
                .parts
                .iter()
                .all(|p| p.keys.is_empty() && p.checkpoint.is_none())
    }

    /// Dirty rows of the cut.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.keys.len()).sum()
    }

    /// The flush batch: every row of the cut with its value at the cut and
    /// `through_offset` = its partition's position at the cut (never below the row's
    /// restored `through_offset`), and a checkpoint per partition that progressed.
    /// A partition whose state was dropped since the cut (revoked, lost, re-installed)
    /// contributes nothing: its new owner restores it from what is stored. Holds the
    /// partitions' generations lock while it reads (a revocation waits for it); takes the
    /// map's shard locks one row at a time.
    pub fn materialize(mut self) -> FlushBatch {
        let mut batch = std::mem::take(&mut self.batch);
        let capture = &self.shared.capture;
        let generations = rows::lock(&capture.generations);
        for part in std::mem::take(&mut self.parts) {
            if generations.get(&part.partition).copied().unwrap_or(0) != part.generation {
                continue;
            }
            let mut complete = true;
            batch.rows.reserve(part.keys.len());
            for chunk in part.keys.chunks(256) {
                let names = self.shared.tenants.names(chunk.iter().map(|k| k.tenant));
                for (key, tenant) in chunk.iter().zip(names) {
                    let Some(row) = self.shared.rows.get(key) else {
                        continue;
                    };
                    let (raw, events) = if row.dirty_epoch == self.epoch {
                        (row.raw, row.events)
                    } else {
                        match rows::lock(&capture.frozen).get(key) {
                            Some(&(e, raw, events)) if e == self.epoch => (raw, events),
                            _ => {
                                // Changed since the cut without its value kept (cannot
                                // happen while the capture protocol holds): the row is dirty
                                // in a later epoch and written then; this partition's
                                // checkpoint waits for it.
                                debug_assert!(false, "row {key:?} changed after the cut");
                                tracing::error!(
                                    ?key,
                                    "a row changed after the flush's cut without its value kept: the partition's checkpoint waits for the next flush"
                                );
                                complete = false;
                                continue;
                            }
                        }
                    };
                    let def = self.catalog.meter(key.meter);
                    batch.rows.push(RollupRecord {
                        tenant,
                        meter: def.name.clone(),
                        period_start: key.period_start,
                        period_end: row.period_end,
                        value: def.value(raw),
                        raw,
                        events,
                        partition: part.partition,
                        // A restored row includes every event below its stored
                        // `through_offset`; while the partition replays below that offset
                        // nothing new is applied to it, so it is written at that offset,
                        // never lower (a lower version would lose against the stored one in
                        // `ReplacingMergeTree(through_offset)`).
                        through_offset: part.position.max(row.applied_from),
                    });
                }
            }
            if complete && let Some(c) = part.checkpoint {
                batch.checkpoints.push(c);
            }
        }
        drop(generations);
        batch
    }
}

impl Drop for Cut {
    /// The rows are read (or will never be): rows of this epoch change freely again.
    fn drop(&mut self) {
        let capture = &self.shared.capture;
        if capture
            .epoch
            .compare_exchange(self.epoch, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            rows::lock(&capture.frozen).clear();
        }
    }
}

impl Processor {
    /// Takes a flush batch: [`Self::cut`], then [`Cut::materialize`] at once.
    pub fn snapshot(&mut self) -> FlushBatch {
        self.cut().materialize()
    }

    /// Cuts a flush: the statements of the periods closed under the watermarks (see
    /// [`super::closing`]), the dirty rows (clean from now on: the epoch moves on) with
    /// their partition's position, a checkpoint per partition that progressed, and the
    /// pending alerts, raw events and subscription records. Read the rows' values with
    /// [`Cut::materialize`] before the next cut.
    pub fn cut(&mut self) -> Cut {
        let mut parts: Vec<i32> = self.partitions.keys().copied().collect();
        parts.sort_unstable();
        for &p in &parts {
            self.close_periods(p);
        }
        let batch = FlushBatch {
            alerts: std::mem::take(&mut self.pending_alerts),
            raw_events: std::mem::take(&mut self.raw_events),
            subscriptions: std::mem::take(&mut self.pending_subs),
            statements: std::mem::take(&mut self.pending_statements),
            ..Default::default()
        };
        let epoch = self.epoch;
        self.epoch += 1;
        let capture = &self.shared.capture;
        rows::lock(&capture.frozen).clear();
        capture.epoch.store(epoch, Ordering::Release);
        let generations = rows::lock(&capture.generations);
        let mut cut_parts = Vec::with_capacity(parts.len());
        for p in parts {
            let ps = self.partitions.get_mut(&p).expect("listed");
            let keys = std::mem::take(&mut ps.dirty);
            // No checkpoint (and so no offset commit) while the partition replays below its
            // restored position: that would move the group's committed offset backwards.
            let progressed = ps.position > ps.flushed_position || !keys.is_empty();
            let checkpoint = (progressed && ps.position >= ps.replay_until).then_some(Checkpoint {
                partition: p,
                position: ps.position,
                watermark_us: ps.watermark_us,
                max_ts_ms: ps.max_ts_ms,
            });
            cut_parts.push(CutPart {
                partition: p,
                generation: generations.get(&p).copied().unwrap_or(0),
                position: ps.position,
                keys,
                checkpoint,
            });
        }
        drop(generations);
        self.dirty_rows = 0;
        Cut {
            shared: self.shared.clone(),
            catalog: self.catalog.clone(),
            epoch,
            parts: cut_parts,
            batch,
        }
    }

    /// Records that a flush succeeded up to the checkpoints' positions, and frees memory:
    /// dedup entries out of the window and clean rows of periods that can take no more events.
    pub fn flushed(&mut self, checkpoints: &[Checkpoint]) {
        for c in checkpoints {
            if let Some(ps) = self.partitions.get_mut(&c.partition) {
                ps.flushed_position = ps.flushed_position.max(c.position);
            }
        }
        self.evict();
    }

    /// Returns a snapshot's rows to dirty after a failed flush (so a later one rewrites them)
    /// and its alerts and raw events to pending.
    pub fn unflushed(&mut self, batch: FlushBatch) {
        for r in &batch.rows {
            let Some(tidx) = self.tenants.id_of(&r.tenant) else {
                continue;
            };
            let Some(mid) = self.catalog.meter_id(&r.meter) else {
                continue;
            };
            let key = RowKey {
                tenant: tidx,
                meter: mid,
                period_start: r.period_start,
                partition: r.partition,
            };
            if let Some(mut row) = self.shared.rows.get_mut(&key)
                && row.dirty_epoch != self.epoch
            {
                row.dirty_epoch = self.epoch;
                self.dirty_rows += 1;
                if let Some(ps) = self.partitions.get_mut(&r.partition) {
                    ps.dirty.push(key);
                }
            }
        }
        let mut alerts = batch.alerts;
        alerts.append(&mut self.pending_alerts);
        self.pending_alerts = alerts;
        let mut raw = batch.raw_events;
        raw.append(&mut self.raw_events);
        self.raw_events = raw;
        let mut subs = batch.subscriptions;
        subs.append(&mut self.pending_subs);
        self.pending_subs = subs;
        let mut statements = batch.statements;
        statements.append(&mut self.pending_statements);
        self.pending_statements = statements;
    }

    fn evict(&mut self) {
        self.forget_closed_sub_periods();
        let grace = self.params.grace_secs;
        let window = self.params.dedup_window_ms;
        let margin = window.saturating_add(self.params.replay_margin_ms());
        let per_partition_max = self.params.max_dedup_entries / self.partitions.len().max(1);
        let mut closed_before: FxHashMap<i32, i64> = FxHashMap::default();
        let mut over_cap = 0usize;
        for (p, ps) in self.partitions.iter_mut() {
            if ps.max_ts_ms != i64::MIN {
                over_cap += ps.dedup.evict_before(
                    ps.max_ts_ms.saturating_sub(margin),
                    ps.max_ts_ms.saturating_sub(window),
                    per_partition_max,
                );
            }
            if ps.watermark_us != i64::MIN {
                let limit = ps.watermark_us.div_euclid(1_000_000) - grace;
                // Only a row of a closed period goes: until the oldest is closed, the rows
                // (up to millions) need not be looked at.
                if ps.oldest_row_end < limit {
                    closed_before.insert(*p, limit);
                }
            }
        }
        if over_cap > 0 && self.dedup_over_cap == 0 {
            tracing::warn!(
                over_cap,
                max_dedup_entries = self.params.max_dedup_entries,
                "dedup set above pipeline.max_dedup_entries: identities inside the dedup window are kept (never dropped); pipeline.max_memory bounds memory"
            );
        }
        self.dedup_over_cap = over_cap;
        if closed_before.is_empty() {
            return;
        }
        let before = self.shared.rows.len();
        let stated = &self.stated;
        let epoch = self.epoch;
        let mut oldest: FxHashMap<i32, i64> =
            closed_before.keys().map(|p| (*p, i64::MAX)).collect();
        self.shared.rows.retain(|k, r| {
            let Some(limit) = closed_before.get(&k.partition) else {
                return true;
            };
            // Closed (period_end + grace < watermark), written, and its statement made.
            let gone = r.period_end < *limit
                && r.dirty_epoch != epoch
                && stated.contains(&(k.tenant, k.period_start));
            if !gone && let Some(o) = oldest.get_mut(&k.partition) {
                *o = (*o).min(r.period_end);
            }
            !gone
        });
        for (p, o) in oldest {
            if let Some(ps) = self.partitions.get_mut(&p) {
                ps.oldest_row_end = o;
            }
        }
        if self.shared.rows.len() == before {
            return;
        }
        // Alert state of (tenant, meter, period)s whose rows are all gone: their periods are
        // closed in every partition that had events for them, so no alert can fire again.
        let live: FxHashSet<AlertKey> = self
            .shared
            .rows
            .iter()
            .map(|e| (e.key().tenant, e.key().meter, e.key().period_start))
            .collect();
        self.alert_state.retain(|k, _| live.contains(k));
        self.alert_epoch = self.alert_epoch.wrapping_add(1);
        self.shared.alerts.retain(|k, _| live.contains(k));
        let live_periods: FxHashSet<(u32, i64)> = live.iter().map(|(t, _, p)| (*t, *p)).collect();
        self.forget_statements(&live_periods);
    }
}
