//! What a flush writes and a restore reads back: rollup records, partition checkpoints, raw
//! event records ([`FlushBatch`], in write order), and the stored rows, alert kinds and
//! checkpoint of one partition ([`Restored`]); and the processor's side of a flush: taking
//! a snapshot, then on success recording the flushed positions and freeing what no event
//! can touch any more, or on failure returning the snapshot to dirty. Times are Unix
//! seconds unless a field says µs or ms. Pure.

use std::sync::Arc;

use rust_decimal::Decimal;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{AlertKey, Processor, RowKey};
use crate::alerts::Alert;
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

impl Processor {
    /// Takes a flush batch: every dirty row (marked clean) with `through_offset` = its
    /// partition's position, the statements of the periods closed under the watermarks of
    /// the checkpoints (see [`super::closing`]), a checkpoint per partition, and pending
    /// alerts and raw events.
    pub fn snapshot(&mut self) -> FlushBatch {
        let mut parts: Vec<i32> = self.partitions.keys().copied().collect();
        parts.sort_unstable();
        for &p in &parts {
            self.close_periods(p);
        }
        let mut batch = FlushBatch {
            alerts: std::mem::take(&mut self.pending_alerts),
            raw_events: std::mem::take(&mut self.raw_events),
            subscriptions: std::mem::take(&mut self.pending_subs),
            statements: std::mem::take(&mut self.pending_statements),
            ..Default::default()
        };
        for p in parts {
            let ps = self.partitions.get_mut(&p).expect("listed");
            let rows_before = batch.rows.len();
            for key in ps.dirty.drain(..) {
                let Some(mut row) = self.shared.rows.get_mut(&key) else {
                    continue;
                };
                if !row.dirty {
                    continue;
                }
                row.dirty = false;
                let def = self.catalog.meter(key.meter);
                // A restored row includes every event below its stored `through_offset`;
                // while the partition replays below that offset nothing new is applied to
                // it, so it is written at that offset, never lower (a lower version would
                // lose against the stored one in `ReplacingMergeTree(through_offset)`).
                let through = ps.position.max(row.applied_from);
                batch.rows.push(RollupRecord {
                    tenant: self.tenants.name(key.tenant).clone(),
                    meter: def.name.clone(),
                    period_start: key.period_start,
                    period_end: row.period_end,
                    value: def.value(row.raw),
                    raw: row.raw,
                    events: row.events,
                    partition: p,
                    through_offset: through,
                });
            }
            // No checkpoint (and so no offset commit) while the partition replays below its
            // restored position: that would move the group's committed offset backwards.
            let progressed = ps.position > ps.flushed_position || batch.rows.len() > rows_before;
            if progressed && ps.position >= ps.replay_until {
                batch.checkpoints.push(Checkpoint {
                    partition: p,
                    position: ps.position,
                    watermark_us: ps.watermark_us,
                    max_ts_ms: ps.max_ts_ms,
                });
            }
        }
        self.dirty_rows = 0;
        batch
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
                && !row.dirty
            {
                row.dirty = true;
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
        let mut oldest: FxHashMap<i32, i64> =
            closed_before.keys().map(|p| (*p, i64::MAX)).collect();
        self.shared.rows.retain(|k, r| {
            let Some(limit) = closed_before.get(&k.partition) else {
                return true;
            };
            // Closed (period_end + grace < watermark), written, and its statement made.
            let gone =
                r.period_end < *limit && !r.dirty && stated.contains(&(k.tenant, k.period_start));
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
