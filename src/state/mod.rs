//! Per-partition aggregation state: rollup rows, the dedup set, the event-time watermark, and
//! the alert state. Pure (no I/O): the Kafka source feeds messages in, the ClickHouse sink
//! takes flush batches out, restore hands stored state back in.
//!
//! # Exactly-once
//!
//! State is keyed per (tenant, meter, usage period, source partition). A flush writes every
//! dirty row of a partition with `through_offset` = the partition's position (the next offset
//! to read: the row includes exactly the events below it), then a partition checkpoint
//! (position, event-time watermark, largest arrival timestamp), and only then commits the
//! Kafka offset. On assignment the partition is restored from ClickHouse: rows of periods that
//! can still take events, alert state, and the checkpoint. Consumption restarts at the first
//! offset whose timestamp is within the dedup window (plus a margin) of the checkpoint's
//! arrival time; events before the checkpoint position only rebuild the dedup set and the
//! watermark (`Replayed`), and an event at or after it is applied to a row only if its offset
//! is at or past the row's stored `through_offset`. Whichever of the row write, checkpoint
//! write and offset commit a crash interrupts, no event is counted twice or lost; and since a
//! row at a given `through_offset` is a pure function of the partition's events, a zombie
//! that lost a partition can only write rows that are either correct or older, and
//! `ReplacingMergeTree(through_offset)` keeps the newest. A flush's rows are those of its
//! cut ([`Cut`]): taken on the consuming thread in constant time, read by the flush task
//! while events go on being applied, each with its value at the cut
//! ([`Cut::materialize`]).
//!
//! Decisions that a replay must repeat are functions of the partition's messages only: the
//! dedup test compares Kafka timestamps (the arrival time), the future-event test uses the
//! message timestamp as the clock, and the closed-period test uses the watermark rebuilt from
//! the checkpoint and the replayed events. Whatever a message's tenant decides (unknown
//! tenant, `no_subscription`, currency, its usage period, and for a subscription event the
//! checks of [`crate::subscription::resolve`]) is judged against the tenant as it was at
//! the message's offset: its configuration with the subscription records of the events
//! before the message in the partition's order, never one restored from a later event
//! (a restore applies every stored record up to the checkpoint, which the replay below it
//! reads again; see `Tenants::at_offset`). A replayed message that passes these tests
//! rebuilds the dedup set and the watermark; one that fails them leaves both as its first
//! reading did.
//!
//! # Rooms
//!
//! - this module: [`Processor`] (decode, dedup, apply, cut, restore, evict), the
//!   per-partition position state and the message and outcome types;
//! - [`rows`]: rollup rows and [`Shared`], what the readers see;
//! - [`dedup`]: the per-partition dedup set;
//! - [`tenants`]: tenant ids, the per-tenant period and plan cache, subscription records;
//! - `subscriptions`: subscription events (CONTRACT section 10) applied in partition order;
//! - [`alerting`]: fired alert kinds and the next trigger;
//! - [`batch`]: what a flush writes (the cut and the reading of its rows) and a restore
//!   reads back;
//! - [`closing`]: period close and the statements it makes.

mod alerting;
mod batch;
mod closing;
mod dedup;
mod rows;
mod subscriptions;
mod tenants;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;

use crate::alerts::{self, Alert};
use crate::config::Catalog;
use crate::event::{self, Body, ErrorCode, Event, Rejection};
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::Plan;
use crate::statement::Statement;

use alerting::AlertEntry;
use dedup::{DedupSet, dedup_key};
use tenants::{Earlier, Tenants};

pub use alerting::{AlertKey, Kinds};
pub use batch::{Checkpoint, Cut, FlushBatch, RawEventRecord, Restored, RollupRecord, StoredRow};
pub use rows::{RowKey, RowState, Shared};
pub use tenants::TenantRegistry;

/// A Kafka message handed to [`Processor::process`].
#[derive(Debug, Clone, Copy)]
pub struct InMessage<'a> {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    /// Kafka timestamp (ms), the arrival time.
    pub timestamp_ms: Option<i64>,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied to its rows.
    Counted,
    /// Same (subject, source, id) seen within the dedup window: not counted again.
    Duplicate,
    /// Already included in the stored rows (re-read after a restart).
    AlreadyCounted,
    /// Before the restored position: only rebuilds the dedup set and watermark.
    Replayed,
    /// Cannot be counted: goes to the dead-letter topic.
    Rejected(Rejection),
    /// The partition is not owned or not restored yet; the message is ignored.
    NotOwned,
}

/// What [`Processor::apply_rows`] changed.
#[derive(Default)]
struct Applied {
    /// (meter, the row's new raw sum) of each row the event was added to.
    rows: SmallVec<[(MeterId, Decimal); 6]>,
    /// A row already included the event (restored with a later `through_offset`).
    skipped: bool,
    /// A row was created.
    created: bool,
}

/// A partition's position and replay state.
#[derive(Debug)]
pub struct PartitionState {
    /// Next offset to read (the flush's `through_offset`).
    pub position: i64,
    /// Messages below this offset were already processed before the restore.
    pub replay_until: i64,
    /// Largest event time seen (µs since the epoch), `i64::MIN` if none.
    pub watermark_us: i64,
    /// Largest arrival time seen (ms): Kafka record timestamps, each capped at the consumer's
    /// clock when it was read, so a record stamped in the future cannot move it ahead.
    pub max_ts_ms: i64,
    /// Position covered by the last successful flush.
    pub flushed_position: i64,
    /// The earliest end + grace (Unix seconds) of a period with rows here, or watched in
    /// `sub_periods`, and no statement made yet: nothing closes before the watermark passes
    /// it.
    next_close: i64,
    /// The earliest period end (Unix seconds) of a row here, or lower: no row is evicted
    /// before the watermark passes it plus the grace, so a flush looks at the rows only then.
    oldest_row_end: i64,
    /// (tenant, period start) -> period end of the open usage periods that must get their
    /// statement when they close even without rows here: the periods of subscription events
    /// counted on this partition, and periods whose statement a restore found stored (so
    /// that it stays made until they close). See [`closing`].
    sub_periods: FxHashMap<(u32, i64), i64>,
    dedup: DedupSet,
    dirty: Vec<RowKey>,
}

impl PartitionState {
    /// A partition starting at `position`, holding dedup entries for `span_ms` (the dedup
    /// window plus the replay margin).
    fn new(position: i64, span_ms: i64) -> Self {
        PartitionState {
            position,
            replay_until: position,
            watermark_us: i64::MIN,
            max_ts_ms: i64::MIN,
            flushed_position: position,
            next_close: i64::MAX,
            oldest_row_end: i64::MAX,
            sub_periods: FxHashMap::default(),
            dedup: DedupSet::new(span_ms),
            dirty: Vec::new(),
        }
    }
}

/// Pipeline parameters the processor needs.
#[derive(Debug, Clone)]
pub struct Params {
    pub topic: Arc<str>,
    pub dedup_window_ms: i64,
    pub grace_secs: i64,
    pub skew_ms: i64,
    pub max_event_bytes: usize,
    pub max_dedup_entries: usize,
    pub raw_events: bool,
}

impl Params {
    pub fn from_settings(s: &crate::config::Settings) -> Params {
        let p = &s.pipeline;
        Params {
            topic: s.kafka.topic.as_str().into(),
            dedup_window_ms: p.dedup_window.as_millis() as i64,
            grace_secs: p.late_event_grace.as_secs() as i64,
            skew_ms: p.max_clock_skew.as_millis() as i64,
            max_event_bytes: p.max_event_bytes,
            max_dedup_entries: p.max_dedup_entries,
            raw_events: s.clickhouse.raw_events,
        }
    }

    /// Extra replay before the dedup window, covering producers whose timestamps are not in
    /// offset order.
    pub fn replay_margin_ms(&self) -> i64 {
        (self.dedup_window_ms / 10).max(60_000)
    }
}

/// The single-threaded heart of the pipeline.
pub struct Processor {
    shared: Arc<Shared>,
    params: Params,
    catalog: Arc<Catalog>,
    tenants: Tenants,
    partitions: FxHashMap<i32, PartitionState>,
    alert_state: FxHashMap<AlertKey, AlertEntry>,
    /// Moved by every change of `alert_state` other than an alert check's own: outdates the
    /// alert floors cached per tenant.
    alert_epoch: u64,
    pending_alerts: Vec<Alert>,
    new_alerts: Vec<Alert>,
    /// (tenant, period start) whose statement is made (pending or stored).
    stated: FxHashSet<(u32, i64)>,
    /// (tenant, period start) of watched periods (`PartitionState::sub_periods`) that closed
    /// since the last flush: their `stated` entry is dropped after it, unless rows still
    /// hold the period.
    closed_sub_periods: Vec<(u32, i64)>,
    /// Statements for the next flush to write.
    pending_statements: Vec<Statement>,
    /// Statements to produce now.
    new_statements: Vec<Statement>,
    raw_events: Vec<RawEventRecord>,
    /// Subscription records applied since the last cut.
    pending_subs: Vec<crate::subscription::SubscriptionRecord>,
    dirty_rows: usize,
    /// The flush epoch: rows changed now are dirty in it; [`Self::cut`] closes it (starts at
    /// 1; a row's `dirty_epoch` of 0 means clean since restored).
    epoch: u64,
    /// Dedup entries above `max_dedup_entries` kept at the last eviction (inside the window).
    dedup_over_cap: usize,
    key_buf: Vec<u8>,
}

impl Processor {
    pub fn new(shared: Arc<Shared>, params: Params) -> Processor {
        let catalog = shared.catalog();
        Processor {
            shared,
            params,
            catalog,
            tenants: Tenants::default(),
            partitions: FxHashMap::default(),
            alert_state: FxHashMap::default(),
            alert_epoch: 0,
            pending_alerts: Vec::new(),
            new_alerts: Vec::new(),
            stated: FxHashSet::default(),
            closed_sub_periods: Vec::new(),
            pending_statements: Vec::new(),
            new_statements: Vec::new(),
            raw_events: Vec::new(),
            pending_subs: Vec::new(),
            dirty_rows: 0,
            epoch: 1,
            dedup_over_cap: 0,
            key_buf: Vec::with_capacity(256),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Picks up a reloaded catalog (plans and tenants) if one was published.
    pub fn refresh_catalog(&mut self) {
        let cur = self.shared.catalog.load();
        if Arc::ptr_eq(&cur, &self.catalog) {
            return;
        }
        self.catalog = cur.clone();
        for (name, t) in self.tenants.reload(&self.catalog) {
            self.shared.set_subscribed(&name, Some(t));
        }
        for (_, (_, next)) in self.alert_state.iter_mut() {
            *next = None;
        }
        self.alert_epoch = self.alert_epoch.wrapping_add(1);
    }

    /// Rows changed since the last flush.
    pub fn dirty_rows(&self) -> usize {
        self.dirty_rows
    }

    pub fn dedup_entries(&self) -> usize {
        self.partitions.values().map(|p| p.dedup.len()).sum()
    }

    /// Identities above `pipeline.max_dedup_entries` that the last eviction kept because they
    /// are still inside the dedup window.
    pub fn dedup_over_cap(&self) -> usize {
        self.dedup_over_cap
    }

    /// Raw events waiting for a flush (`clickhouse.raw_events`).
    pub fn raw_events_pending(&self) -> usize {
        self.raw_events.len()
    }

    /// Alerts fired since the last call, to be sent to the alerts topic now.
    pub fn take_new_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.new_alerts)
    }

    pub fn partition(&self, p: i32) -> Option<&PartitionState> {
        self.partitions.get(&p)
    }

    pub fn owned_partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.partitions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    #[inline]
    fn tenant_idx(&mut self, name: &str) -> Option<u32> {
        self.tenants.idx(name, &self.catalog, &self.shared.tenants)
    }

    /// Processes one message. Alerts it fires are collected for [`Self::take_new_alerts`].
    pub fn process(&mut self, m: &InMessage<'_>, now: DateTime<Utc>) -> Outcome {
        let Some(ps) = self.partitions.get_mut(&m.partition) else {
            return Outcome::NotOwned;
        };
        if m.offset < ps.position {
            // Re-delivered below our position (e.g. stale fetch after a seek): already seen.
            return Outcome::AlreadyCounted;
        }
        ps.position = m.offset + 1;
        let replay = m.offset < ps.replay_until;
        let now_ms = now.timestamp_millis();
        // Arrival time: the record timestamp, but never later than the consumer's clock
        // (CONTRACT section 1): a record stamped in the future arrives now.
        let arrival = m
            .timestamp_ms
            .filter(|t| *t > 0)
            .unwrap_or(now_ms)
            .min(now_ms);

        let result = self.evaluate(m, arrival, replay);
        match result {
            Ok(Some(applied)) => applied,
            Ok(None) => Outcome::Replayed,
            Err(r) if replay => {
                let _ = r;
                Outcome::Replayed
            }
            Err(r) => Outcome::Rejected(r),
        }
    }

    /// Validation, dedup and application. `Ok(None)` for a replayed event.
    fn evaluate(
        &mut self,
        m: &InMessage<'_>,
        arrival_ms: i64,
        replay: bool,
    ) -> Result<Option<Outcome>, Rejection> {
        let payload = m.payload.unwrap_or_default();
        if payload.len() > self.params.max_event_bytes {
            return Err(Rejection::new(
                ErrorCode::InvalidEvent,
                format!(
                    "event of {} bytes exceeds pipeline.max_event_bytes ({})",
                    payload.len(),
                    self.params.max_event_bytes
                ),
            ));
        }
        let catalog = self.catalog.clone();
        let ev = event::decode(payload, |t| catalog.by_event_type.contains_key(t))?;
        if matches!(
            ev.body,
            Body::SubscriptionUpdated(_) | Body::SubscriptionCanceled(_)
        ) {
            return self.evaluate_subscription(m, &ev, arrival_ms, replay);
        }
        // The identity's slot is loaded from memory while the event is validated.
        let key = dedup_key(&mut self.key_buf, &ev.subject, &ev.source, &ev.id);
        if let Some(ps) = self.partitions.get(&m.partition) {
            ps.dedup.prefetch(key);
        }
        let unknown = || {
            Rejection::new(
                ErrorCode::UnknownTenant,
                format!(
                    "tenant `{}` is not configured and there is no pricing.default_plan",
                    ev.subject
                ),
            )
        };
        let tidx = self.tenant_idx(&ev.subject).ok_or_else(unknown)?;
        // A replayed message is judged against the tenant as it was at its offset, not
        // against records restored from later events (see `Tenants::at_offset`).
        let earlier = if replay {
            self.tenants
                .at_offset(tidx, m.partition, m.offset, &catalog)
        } else {
            None
        };
        let time_us = ev.time.timestamp_micros();
        if ev.time.timestamp_millis() > arrival_ms.saturating_add(self.params.skew_ms) {
            return Err(Rejection::new(
                ErrorCode::FutureEvent,
                format!(
                    "time {} is more than pipeline.max_clock_skew ahead of the clock",
                    ev.time.to_rfc3339()
                ),
            ));
        }
        let (period, plan, canceled) = match earlier {
            None => {
                let (period, plan) = self.tenants.period_and_plan(tidx, ev.time);
                (period, plan, self.tenants.canceled_before(tidx, ev.time))
            }
            Some(Earlier {
                tenant: Some(t), ..
            }) => (
                t.period_at(ev.time),
                t.terms_at(ev.time).plan.clone(),
                t.canceled_before(ev.time),
            ),
            Some(Earlier { tenant: None, .. }) => return Err(unknown()),
        };
        if let Some(since) = canceled {
            return Err(Rejection::new(
                ErrorCode::NoSubscription,
                format!(
                    "tenant `{}` has no subscription at {}: canceled (or not yet subscribed) since {}",
                    ev.subject,
                    ev.time.to_rfc3339(),
                    if since == DateTime::<Utc>::MIN_UTC {
                        "always".to_string()
                    } else {
                        since.to_rfc3339()
                    }
                ),
            ));
        }
        let currency = match &ev.body {
            Body::Call(c) => c.revenue.as_ref().map(|r| &r.currency),
            Body::Revenue(r) => Some(&r.amount.currency),
            Body::WalletTopUp(w) => Some(&w.amount.currency),
            Body::Custom | Body::SubscriptionUpdated(_) | Body::SubscriptionCanceled(_) => None,
        };
        if let Some(c) = currency
            && **c != *plan.currency
        {
            return Err(Rejection::new(
                ErrorCode::CurrencyMismatch,
                format!(
                    "currency {c} differs from plan `{}` currency {}",
                    plan.id, plan.currency
                ),
            ));
        }
        let mut contributions: SmallVec<[(MeterId, Decimal); 6]> = SmallVec::new();
        if let Some(meters) = catalog.by_event_type.get(&*ev.ty) {
            for &mid in meters {
                if let Some(c) = catalog.meter(mid).contribution(&ev)? {
                    contributions.push((mid, c));
                }
            }
        }

        let window = self.params.dedup_window_ms;
        let ps = self.partitions.get_mut(&m.partition).expect("owned");
        if ps.dedup.seen(key, arrival_ms, window) {
            return if replay {
                Ok(None)
            } else {
                Ok(Some(Outcome::Duplicate))
            };
        }
        let wm_before = ps.watermark_us;
        let late = (period.end + self.params.grace_secs).saturating_mul(1_000_000) < wm_before;
        if replay || late {
            // Seen (a replayed event rebuilds the dedup set and the watermark; a late one is
            // not counted, but a copy of it is a duplicate).
            ps.dedup.insert(key, arrival_ms);
            ps.max_ts_ms = ps.max_ts_ms.max(arrival_ms);
            ps.watermark_us = ps.watermark_us.max(time_us);
            if replay {
                return Ok(None);
            }
            return Err(Rejection::new(
                ErrorCode::PeriodClosed,
                format!(
                    "usage period {}..{} closed: its end plus pipeline.late_event_grace is behind the partition watermark {}",
                    alerts::rfc3339(period.start),
                    alerts::rfc3339(period.end),
                    DateTime::<Utc>::from_timestamp_micros(wm_before)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ),
            ));
        }
        // Whether the tenant has rows on other partitions: then its total over all of them
        // must fit too (alerts, reads). Noting the partition before the event is applied is
        // harmless if it is then rejected: a partition without the row adds nothing.
        let spans = !contributions.is_empty() && self.note_tenant_partition(tidx, m.partition);
        let applied = self.apply_rows(tidx, period, m, &contributions, spans)?;
        let ps = self.partitions.get_mut(&m.partition).expect("owned");
        ps.dedup.insert(key, arrival_ms);
        ps.max_ts_ms = ps.max_ts_ms.max(arrival_ms);
        ps.watermark_us = ps.watermark_us.max(time_us);
        for &(mid, raw) in &applied.rows {
            // The tenant's usage: this row, plus its rows on other partitions (rare).
            let raw = if spans {
                match self.shared.try_tenant_raw(tidx, mid, period.start) {
                    Ok(Some((r, _))) => r,
                    // Checked when applied; unreachable, but never a panic.
                    _ => raw,
                }
            } else {
                raw
            };
            self.check_alerts(tidx, mid, period, &plan, raw, &ev);
        }
        if applied.created {
            self.note_close(m.partition, period.end);
        }
        self.note_first_period(tidx, period.start);
        if !applied.rows.is_empty() && self.params.raw_events {
            self.raw_events.push(RawEventRecord {
                tenant: self.tenants.name(tidx).clone(),
                event_id: ev.id.to_string(),
                source: ev.source.to_string(),
                ty: ev.ty.to_string(),
                time_us,
                data: ev.data.to_string(),
                partition: m.partition,
                offset: m.offset,
            });
        }
        Ok(Some(if !applied.rows.is_empty() || !applied.skipped {
            Outcome::Counted
        } else {
            Outcome::AlreadyCounted
        }))
    }

    /// Adds the event's contributions to its rows, in one pass: an event is counted on all
    /// its meters or on none, so a total that would leave `Decimal(38, 9)` (on this row, or
    /// over the tenant's partitions when it `spans` several) undoes the rows already changed
    /// and rejects the event whole (`invalid_data`), and the other totals stay exact. Rows
    /// whose stored `through_offset` is past the message already include it (`skipped`).
    ///
    /// Readers of [`Shared`] may see a row changed and then undone; flushes cannot, since
    /// they are taken on this thread.
    fn apply_rows(
        &mut self,
        tidx: u32,
        period: Period,
        m: &InMessage<'_>,
        contributions: &[(MeterId, Decimal)],
        spans: bool,
    ) -> Result<Applied, Rejection> {
        let mut done = Applied::default();
        // (row, its raw sum and dirty epoch before, whether it was created here)
        let mut undo: SmallVec<[(RowKey, Decimal, u64, bool); 6]> = SmallVec::new();
        let epoch = self.epoch;
        let mut result = Ok(());
        for &(mid, c) in contributions {
            let key = RowKey {
                tenant: tidx,
                meter: mid,
                period_start: period.start,
                partition: m.partition,
            };
            let def = self.catalog.meter(mid);
            if spans {
                match self.shared.try_tenant_raw(tidx, mid, period.start) {
                    Ok(Some((all, _))) => {
                        if let Err(e) = def.try_add(all, c) {
                            result = Err(Rejection::from(e));
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        result = Err(e.into());
                        break;
                    }
                }
            }
            let mut created = false;
            let mut row = self.shared.rows.entry(key).or_insert_with(|| {
                created = true;
                RowState {
                    period_end: period.end,
                    raw: Decimal::ZERO,
                    events: 0,
                    applied_from: 0,
                    dirty_epoch: 0,
                }
            });
            if m.offset < row.applied_from {
                done.skipped = true;
                continue;
            }
            let total = match def.try_add(row.raw, c) {
                Ok(t) => t,
                Err(e) => {
                    drop(row);
                    if created {
                        self.shared.rows.remove(&key);
                    }
                    result = Err(Rejection::from(e));
                    break;
                }
            };
            if row.dirty_epoch != epoch {
                // Dirty in the epoch of a flush still reading its rows: keep the value it
                // reads.
                self.shared.capture.freeze_if_captured(&key, &row);
            }
            undo.push((key, row.raw, row.dirty_epoch, created));
            row.raw = total;
            row.events = row.events.saturating_add(1);
            row.dirty_epoch = epoch;
            done.created |= created;
            done.rows.push((mid, total));
        }
        if let Err(r) = result {
            for (key, raw, dirty_epoch, created) in undo.into_iter().rev() {
                if created {
                    self.shared.rows.remove(&key);
                } else if let Some(mut row) = self.shared.rows.get_mut(&key) {
                    row.raw = raw;
                    row.events = row.events.saturating_sub(1);
                    row.dirty_epoch = dirty_epoch;
                }
            }
            return Err(r);
        }
        for (key, _, dirty_before, _) in undo {
            if dirty_before != epoch {
                self.dirty_rows += 1;
                self.partitions
                    .get_mut(&m.partition)
                    .expect("owned")
                    .dirty
                    .push(key);
            }
        }
        Ok(done)
    }

    /// Records that the tenant has rows on `partition`; returns whether it has rows on more
    /// than one. Answered from the tenant's own copy when it knows the partition.
    #[inline]
    fn note_tenant_partition(&mut self, tidx: u32, partition: i32) -> bool {
        if let Some(spans) = self.tenants.spans_known(tidx, partition) {
            return spans;
        }
        let spans = self.shared.note_tenant_partition(tidx, partition);
        if let Some(v) = self.shared.tenant_partitions(tidx) {
            self.tenants.set_partitions(tidx, v);
        }
        spans
    }

    /// Records the tenant's earliest usage period (one-time allowances apply there).
    #[inline]
    fn note_first_period(&mut self, tidx: u32, start: i64) {
        if self.tenants.note_first_period(tidx, start) {
            let name = self.tenants.name(tidx).to_string();
            self.shared.first_periods.insert(name, start);
        }
    }

    fn check_alerts(
        &mut self,
        tidx: u32,
        meter: MeterId,
        period: Period,
        plan: &Arc<Plan>,
        raw: Decimal,
        ev: &Event<'_>,
    ) {
        let Some(limit) = self.tenants.limit_of(tidx, meter, period) else {
            return;
        };
        if limit <= Decimal::ZERO {
            return;
        }
        let epoch = self.alert_epoch;
        if self
            .tenants
            .alert_floor(tidx, meter, period, epoch)
            .is_some_and(|floor| raw < floor)
        {
            return;
        }
        let akey = (tidx, meter, period.start);
        let def = self.catalog.meter(meter);
        // An entry is kept once a kind has fired: most (tenant, meter, period)s never reach
        // a threshold, and theirs would cost more than their row. Until then the next
        // trigger lives in the tenant's cached alert floor, and is computed again from
        // nothing fired when that cache is outdated.
        let mut unfired = AlertEntry::default();
        let held = self.alert_state.get_mut(&akey);
        let is_held = held.is_some();
        let entry = held.unwrap_or(&mut unfired);
        let crossed = alerting::crossed(entry, plan, meter, def, limit, raw);
        if let Some(floor) = entry.1 {
            self.tenants
                .set_alert_floor(tidx, meter, period, floor, epoch);
        }
        let Some((usage, kinds)) = crossed else {
            return;
        };
        let fired = entry.0.clone();
        if !is_held {
            self.alert_state.insert(akey, unfired);
        }
        let fired_at = Utc::now();
        let tenant = self.tenants.name(tidx).clone();
        for k in &kinds {
            let a = Alert::new(
                &tenant,
                &def.name,
                k,
                period,
                usage,
                Some(limit),
                &plan.id,
                &ev.id,
                fired_at,
            );
            self.new_alerts.push(a.clone());
            self.pending_alerts.push(a);
        }
        self.shared.alerts.insert(akey, fired);
    }

    /// Takes ownership of a partition being restored: nothing is consumed until
    /// [`Self::install`].
    pub fn assign(&mut self, partition: i32) {
        self.shared
            .partitions
            .write()
            .expect("partitions lock")
            .insert(partition, false);
    }

    /// Installs a restored partition; consumption then starts at `replay_from`.
    pub fn install(&mut self, r: Restored) {
        let p = r.partition;
        self.drop_partition_state(p);
        // Records of an earlier ownership go too: the partition's records are then those
        // restored and those applied as its events are read, in offset order (which judging
        // a replayed message at its offset relies on).
        self.revoke_subscriptions(p);
        let ck_pos = r.checkpoint.as_ref().map(|c| c.position).unwrap_or(0);
        // The checkpoint alone says what is counted: the group's committed offset may lie
        // beyond it when ClickHouse lost data (CONTRACT section 5).
        let replay_until = ck_pos.max(r.replay_from);
        let span_ms = self
            .params
            .dedup_window_ms
            .saturating_add(self.params.replay_margin_ms());
        let mut ps = PartitionState::new(r.replay_from.min(replay_until), span_ms);
        ps.replay_until = replay_until;
        ps.flushed_position = replay_until;
        if let Some(c) = &r.checkpoint {
            ps.watermark_us = c.watermark_us;
            // A checkpoint written before arrival times were capped at the clock may carry
            // a future timestamp: cap it, or eviction would empty the dedup set.
            ps.max_ts_ms = c.max_ts_ms.min(Utc::now().timestamp_millis());
        }
        self.partitions.insert(p, ps);
        let sub_times: Vec<(Arc<str>, i64)> = r
            .subscriptions
            .iter()
            .map(|s| (s.tenant.clone(), s.effective_at))
            .collect();
        self.install_subscriptions(r.subscriptions);
        for (t, start) in &r.first_periods {
            if let Some(tidx) = self.tenant_idx(t) {
                self.note_first_period(tidx, *start);
            }
        }
        for row in r.rows {
            let Some(tidx) = self.tenant_idx(&row.tenant) else {
                continue;
            };
            let Some(mid) = self.catalog.meter_id(&row.meter) else {
                tracing::warn!(meter = %row.meter, "stored rollup for a meter no longer configured: ignored");
                continue;
            };
            let key = RowKey {
                tenant: tidx,
                meter: mid,
                period_start: row.period_start,
                partition: p,
            };
            self.shared.rows.insert(
                key,
                RowState {
                    period_end: row.period_end,
                    raw: row.raw,
                    events: row.events,
                    applied_from: row.through_offset,
                    dirty_epoch: if row.rollup_stale { self.epoch } else { 0 },
                },
            );
            self.note_close(p, row.period_end);
            if row.rollup_stale {
                self.dirty_rows += 1;
                self.partitions
                    .get_mut(&p)
                    .expect("inserted")
                    .dirty
                    .push(key);
            }
            self.note_tenant_partition(tidx, p);
        }
        for (t, start) in &r.stated {
            if let Some(tidx) = self.tenant_idx(t) {
                self.stated.insert((tidx, *start));
            }
        }
        self.watch_restored_periods(p, &sub_times, &r.stated);
        for (t, meter, start, kind) in r.alerts {
            let Some(tidx) = self.tenant_idx(&t) else {
                continue;
            };
            let Some(mid) = self.catalog.meter_id(&meter) else {
                continue;
            };
            let e = self.alert_state.entry((tidx, mid, start)).or_default();
            alerting::restore_kind(e, &kind);
            self.alert_epoch = self.alert_epoch.wrapping_add(1);
            self.shared.alerts.insert((tidx, mid, start), e.0.clone());
        }
        self.shared
            .partitions
            .write()
            .expect("partitions lock")
            .insert(p, true);
    }

    fn drop_partition_state(&mut self, p: i32) {
        if let Some(ps) = self.partitions.remove(&p) {
            self.dirty_rows = self.dirty_rows.saturating_sub(ps.dirty.len());
        }
        // Waits for a flush reading its rows (see `Cut::materialize`), which then writes
        // nothing of this partition.
        let mut generations = rows::lock(&self.shared.capture.generations);
        *generations.entry(p).or_default() += 1;
        self.shared.rows.retain(|k, _| k.partition != p);
        drop(generations);
        self.shared.tenant_partitions.retain(|_, v| {
            v.retain(|x| *x != p);
            !v.is_empty()
        });
        self.tenants.forget_partition(p);
    }

    /// Forgets a revoked partition (after its final flush, or without one: the next owner
    /// restores from what was stored).
    pub fn revoke(&mut self, p: i32) {
        self.drop_partition_state(p);
        self.revoke_subscriptions(p);
        self.shared
            .partitions
            .write()
            .expect("partitions lock")
            .remove(&p);
        // Alert state of tenants that no longer have rows here.
        let shared = &self.shared;
        self.alert_state
            .retain(|(t, _, _), _| shared.tenant_partitions.contains_key(t));
        self.alert_epoch = self.alert_epoch.wrapping_add(1);
        shared
            .alerts
            .retain(|(t, _, _), _| shared.tenant_partitions.contains_key(t));
        let watched = closing::watcher(&self.partitions);
        self.stated.retain(|k| {
            shared.tenant_partitions.contains_key(&k.0) || watched.as_ref().is_some_and(|w| w(k))
        });
    }

    /// Positions to commit after a flush: `(partition, position)`.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.position))
            .collect();
        v.sort_unstable();
        v
    }

    /// The meter value of a raw sum.
    pub fn value_of(&self, meter: MeterId, raw: Decimal) -> Decimal {
        self.catalog.meter(meter).value(raw)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod subscription_tests;
