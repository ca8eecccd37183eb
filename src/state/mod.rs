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
//! `ReplacingMergeTree(through_offset)` keeps the newest.
//!
//! Decisions that a replay must repeat are functions of the partition's messages only: the
//! dedup test compares Kafka timestamps (the arrival time), the future-event test uses the
//! message timestamp as the clock, and the closed-period test uses the watermark rebuilt from
//! the checkpoint and the replayed events.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rust_decimal::Decimal;
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use crate::alerts::{self, Alert};
use crate::config::Catalog;
use crate::event::{self, Body, ErrorCode, Event, Rejection};
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::{Plan, Tenant};

/// Key of one rollup row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub tenant: u32,
    pub meter: MeterId,
    /// Unix seconds.
    pub period_start: i64,
    pub partition: i32,
}

/// One rollup row in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct RowState {
    /// Unix seconds.
    pub period_end: i64,
    /// Exact raw sum (see [`crate::meter`]).
    pub raw: Decimal,
    pub events: u64,
    /// Events at offsets below this are already included (the stored `through_offset`).
    pub applied_from: i64,
    pub dirty: bool,
}

/// Name -> id, and id -> name.
type Interned = (FxHashMap<Arc<str>, u32>, Vec<Arc<str>>);

/// Fired alert kinds and the raw sum at which the next one could fire (`None`: recompute).
type AlertEntry = (SmallVec<[Arc<str>; 4]>, Option<Decimal>);

/// Tenant names interned to small ids, shared with the HTTP API.
#[derive(Debug, Default)]
pub struct TenantRegistry {
    inner: RwLock<Interned>,
}

impl TenantRegistry {
    pub fn get(&self, name: &str) -> Option<u32> {
        self.inner
            .read()
            .expect("registry lock")
            .0
            .get(name)
            .copied()
    }
    pub fn name(&self, id: u32) -> Arc<str> {
        self.inner.read().expect("registry lock").1[id as usize].clone()
    }
    fn intern(&self, name: &str) -> (u32, Arc<str>) {
        let mut g = self.inner.write().expect("registry lock");
        if let Some(id) = g.0.get(name) {
            let id = *id;
            return (id, g.1[id as usize].clone());
        }
        let id = g.1.len() as u32;
        let a: Arc<str> = name.into();
        g.0.insert(a.clone(), id);
        g.1.push(a.clone());
        (id, a)
    }
    pub fn len(&self) -> usize {
        self.inner.read().expect("registry lock").1.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Alert state key: (tenant, meter, period_start).
pub type AlertKey = (u32, MeterId, i64);

/// State shared between the consuming thread and the HTTP API.
pub struct Shared {
    pub rows: DashMap<RowKey, RowState, FxBuildHasher>,
    pub tenants: TenantRegistry,
    /// Kinds fired per (tenant, meter, period_start).
    pub alerts: DashMap<AlertKey, SmallVec<[Arc<str>; 4]>, FxBuildHasher>,
    pub catalog: ArcSwap<Catalog>,
    /// Partitions owned by this instance and whether each is restored and consuming.
    pub partitions: RwLock<std::collections::BTreeMap<i32, bool>>,
    /// Tenant -> partitions on which it has rows in memory.
    pub tenant_partitions: DashMap<u32, SmallVec<[i32; 2]>, FxBuildHasher>,
    /// Tenant id -> earliest usage period start seen (one-time allowances).
    pub first_periods: DashMap<String, i64>,
    /// Messages the consuming loop took from the source topic since start (progress, for
    /// `callmeter bench` and tests).
    pub consumed: AtomicU64,
}

impl Shared {
    pub fn new(catalog: Arc<Catalog>) -> Arc<Shared> {
        Arc::new(Shared {
            rows: DashMap::with_hasher(FxBuildHasher),
            tenants: TenantRegistry::default(),
            alerts: DashMap::with_hasher(FxBuildHasher),
            catalog: ArcSwap::new(catalog),
            partitions: RwLock::new(Default::default()),
            tenant_partitions: DashMap::with_hasher(FxBuildHasher),
            first_periods: DashMap::new(),
            consumed: AtomicU64::new(0),
        })
    }

    /// Ready: at least one partition owned and all owned partitions restored.
    pub fn ready(&self) -> bool {
        let p = self.partitions.read().expect("partitions lock");
        !p.is_empty() && p.values().all(|r| *r)
    }

    /// The raw sum of a tenant's meter in a period over the partitions held here, with the
    /// event count; `None` if no row is in memory.
    pub fn tenant_raw(
        &self,
        tenant: u32,
        meter: MeterId,
        period_start: i64,
    ) -> Option<(Decimal, u64)> {
        let parts = self.tenant_partitions.get(&tenant)?.clone();
        let mut found = None;
        for p in parts {
            if let Some(r) = self.rows.get(&RowKey {
                tenant,
                meter,
                period_start,
                partition: p,
            }) {
                let (raw, n) = found.get_or_insert((Decimal::ZERO, 0u64));
                *raw += r.raw;
                *n += r.events;
            }
        }
        found
    }
}

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

/// An event identity: the 128-bit hash of (subject, source, id), as two words so that an
/// entry is 24 bytes, not 32 (a `u128` is 16-byte aligned).
type DedupKey = (u64, u64);

#[derive(Debug, Default)]
struct DedupSet {
    map: FxHashMap<DedupKey, i64>,
    order: VecDeque<(i64, DedupKey)>,
}

impl DedupSet {
    /// True if `key` was accepted at a timestamp >= `ts - window`; otherwise records it.
    fn check_insert(&mut self, key: DedupKey, ts: i64, window_ms: i64) -> bool {
        use std::collections::hash_map::Entry;
        match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                if *e.get() >= ts - window_ms {
                    return true;
                }
                e.insert(ts);
            }
            Entry::Vacant(e) => {
                e.insert(ts);
            }
        }
        self.order.push_back((ts, key));
        false
    }

    fn evict_before(&mut self, cutoff: i64, max_entries: usize) -> usize {
        let mut early = 0;
        while let Some(&(ts, key)) = self.order.front() {
            let over = self.map.len() > max_entries;
            if ts >= cutoff && !over {
                break;
            }
            if ts >= cutoff {
                early += 1;
            }
            self.order.pop_front();
            if let std::collections::hash_map::Entry::Occupied(e) = self.map.entry(key)
                && *e.get() == ts
            {
                e.remove();
            }
        }
        early
    }

    fn len(&self) -> usize {
        self.map.len()
    }
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
    /// Largest Kafka timestamp seen (ms).
    pub max_ts_ms: i64,
    /// Position covered by the last successful flush.
    pub flushed_position: i64,
    dedup: DedupSet,
    dirty: Vec<RowKey>,
}

impl PartitionState {
    fn new(position: i64) -> Self {
        PartitionState {
            position,
            replay_until: position,
            watermark_us: i64::MIN,
            max_ts_ms: i64::MIN,
            flushed_position: position,
            dedup: DedupSet::default(),
            dirty: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct PeriodCache {
    period: Period,
    /// The tenant has no plan changes: the plan holds for the whole period (kept here so
    /// that the hot path need not read the tenant's configuration).
    one_plan: bool,
    plan: Arc<Plan>,
    /// Limit per metered plan meter, for this period.
    limits: SmallVec<[(MeterId, Option<Decimal>); 4]>,
}

#[derive(Debug)]
struct TenantRt {
    name: Arc<str>,
    tenant: Arc<Tenant>,
    cache: Option<PeriodCache>,
    /// Earliest period start seen for the tenant (one-time allowances).
    first_period: Option<i64>,
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

/// Everything one flush writes, in order: alerts, raw events, rollup state, rollups,
/// checkpoints; then offsets are committed.
#[derive(Debug, Default)]
pub struct FlushBatch {
    pub alerts: Vec<Alert>,
    pub raw_events: Vec<RawEventRecord>,
    pub rows: Vec<RollupRecord>,
    pub checkpoints: Vec<Checkpoint>,
}

impl FlushBatch {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.raw_events.is_empty()
            && self.rows.is_empty()
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
}

/// The single-threaded heart of the pipeline.
pub struct Processor {
    shared: Arc<Shared>,
    params: Params,
    catalog: Arc<Catalog>,
    tenants: Vec<TenantRt>,
    /// Tenant name -> id; names are kept inline (up to 24 bytes) so a look-up touches one
    /// cache line less.
    tenant_ids: FxHashMap<TenantKey, u32>,
    partitions: FxHashMap<i32, PartitionState>,
    alert_state: FxHashMap<AlertKey, AlertEntry>,
    pending_alerts: Vec<Alert>,
    new_alerts: Vec<Alert>,
    raw_events: Vec<RawEventRecord>,
    dirty_rows: usize,
    dedup_evicted_early: u64,
    key_buf: Vec<u8>,
}

type TenantKey = SmallVec<[u8; 24]>;

fn dedup_key(buf: &mut Vec<u8>, subject: &str, source: &str, id: &str) -> DedupKey {
    buf.clear();
    for s in [subject, source, id] {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    let h = xxhash_rust::xxh3::xxh3_128(buf);
    ((h >> 64) as u64, h as u64)
}

impl Processor {
    pub fn new(shared: Arc<Shared>, params: Params) -> Processor {
        let catalog = shared.catalog.load_full();
        Processor {
            shared,
            params,
            catalog,
            tenants: Vec::new(),
            tenant_ids: FxHashMap::default(),
            partitions: FxHashMap::default(),
            alert_state: FxHashMap::default(),
            pending_alerts: Vec::new(),
            new_alerts: Vec::new(),
            raw_events: Vec::new(),
            dirty_rows: 0,
            dedup_evicted_early: 0,
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
        for t in &mut self.tenants {
            if let Some(nt) = self.catalog.tenant(&t.name) {
                t.tenant = nt;
            }
            t.cache = None;
        }
        for (_, (_, next)) in self.alert_state.iter_mut() {
            *next = None;
        }
    }

    /// Rows changed since the last flush.
    pub fn dirty_rows(&self) -> usize {
        self.dirty_rows
    }

    pub fn dedup_entries(&self) -> usize {
        self.partitions.values().map(|p| p.dedup.len()).sum()
    }

    pub fn dedup_evicted_early(&self) -> u64 {
        self.dedup_evicted_early
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

    fn tenant_idx(&mut self, name: &str) -> Option<u32> {
        if let Some(i) = self.tenant_ids.get(name.as_bytes()) {
            return Some(*i);
        }
        let tenant = self.catalog.tenant(name)?;
        let (id, arc) = self.shared.tenants.intern(name);
        let idx = id as usize;
        if self.tenants.len() <= idx {
            // Ids are dense and interned only here, so this extends by one.
            while self.tenants.len() < idx {
                let n = self.shared.tenants.name(self.tenants.len() as u32);
                let t = self
                    .catalog
                    .tenant(&n)
                    .unwrap_or_else(|| Arc::new(Tenant::on_default_plan(&n, tenant.plan.clone())));
                self.tenants.push(TenantRt {
                    name: n,
                    tenant: t,
                    cache: None,
                    first_period: None,
                });
            }
            self.tenants.push(TenantRt {
                name: arc,
                tenant,
                cache: None,
                first_period: None,
            });
        }
        self.tenant_ids
            .insert(TenantKey::from_slice(name.as_bytes()), id);
        Some(id)
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
        let ts = m.timestamp_ms.filter(|t| *t > 0).unwrap_or(now_ms);

        let result = self.evaluate(m, ts.min(now_ms), ts, replay);
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
        clock_ms: i64,
        ts: i64,
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
        let tidx = self.tenant_idx(&ev.subject).ok_or_else(|| {
            Rejection::new(
                ErrorCode::UnknownTenant,
                format!(
                    "tenant `{}` is not configured and there is no pricing.default_plan",
                    ev.subject
                ),
            )
        })?;
        let time_us = ev.time.timestamp_micros();
        if ev.time.timestamp_millis() > clock_ms + self.params.skew_ms {
            return Err(Rejection::new(
                ErrorCode::FutureEvent,
                format!(
                    "time {} is more than pipeline.max_clock_skew ahead of the clock",
                    ev.time.to_rfc3339()
                ),
            ));
        }
        let (period, plan) = self.period_and_plan(tidx, ev.time);
        let currency = match &ev.body {
            Body::Call(c) => c.revenue.as_ref().map(|r| &r.currency),
            Body::Revenue(r) => Some(&r.amount.currency),
            Body::WalletTopUp(w) => Some(&w.amount.currency),
            Body::Custom => None,
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

        let key = dedup_key(&mut self.key_buf, &ev.subject, &ev.source, &ev.id);
        let ps = self.partitions.get_mut(&m.partition).expect("owned");
        if ps.dedup.check_insert(key, ts, self.params.dedup_window_ms) {
            return if replay {
                Ok(None)
            } else {
                Ok(Some(Outcome::Duplicate))
            };
        }
        ps.max_ts_ms = ps.max_ts_ms.max(ts);
        let wm_before = ps.watermark_us;
        ps.watermark_us = ps.watermark_us.max(time_us);
        if replay {
            return Ok(None);
        }
        if (period.end + self.params.grace_secs).saturating_mul(1_000_000) < wm_before {
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
        let mut applied = false;
        let mut skipped = false;
        // Whether the tenant has rows on other partitions too (noted at the first row).
        let mut spans: Option<bool> = None;
        for (mid, c) in contributions {
            let key = RowKey {
                tenant: tidx,
                meter: mid,
                period_start: period.start,
                partition: m.partition,
            };
            let mut row = self.shared.rows.entry(key).or_insert_with(|| RowState {
                period_end: period.end,
                raw: Decimal::ZERO,
                events: 0,
                applied_from: 0,
                dirty: false,
            });
            if m.offset < row.applied_from {
                skipped = true;
                continue;
            }
            row.raw += c;
            row.events += 1;
            let raw = row.raw;
            if !row.dirty {
                row.dirty = true;
                self.dirty_rows += 1;
                self.partitions
                    .get_mut(&m.partition)
                    .expect("owned")
                    .dirty
                    .push(key);
            }
            drop(row);
            applied = true;
            let spans = *spans.get_or_insert_with(|| self.note_tenant_partition(tidx, m.partition));
            // The tenant's usage: this row, plus its rows on other partitions (rare).
            let raw = if spans {
                self.shared
                    .tenant_raw(tidx, mid, period.start)
                    .map(|r| r.0)
                    .unwrap_or(raw)
            } else {
                raw
            };
            self.check_alerts(tidx, mid, period, &plan, raw, &ev);
        }
        self.note_first_period(tidx, period.start);
        if applied && self.params.raw_events {
            self.raw_events.push(RawEventRecord {
                tenant: self.tenants[tidx as usize].name.clone(),
                event_id: ev.id.to_string(),
                source: ev.source.to_string(),
                ty: ev.ty.to_string(),
                time_us,
                data: ev.data.to_string(),
                partition: m.partition,
                offset: m.offset,
            });
        }
        Ok(Some(if applied || !skipped {
            Outcome::Counted
        } else {
            Outcome::AlreadyCounted
        }))
    }

    /// Records the tenant's earliest usage period (one-time allowances apply there).
    fn note_first_period(&mut self, tidx: u32, start: i64) {
        let t = &mut self.tenants[tidx as usize];
        if t.first_period.is_none_or(|f| start < f) {
            t.first_period = Some(start);
            t.cache = None;
            self.shared.first_periods.insert(t.name.to_string(), start);
        }
    }

    /// Records that the tenant has rows on `partition`; returns whether it has rows on
    /// more than one partition.
    fn note_tenant_partition(&self, tenant: u32, partition: i32) -> bool {
        if let Some(v) = self.shared.tenant_partitions.get(&tenant)
            && v.contains(&partition)
        {
            return v.len() > 1;
        }
        let mut v = self.shared.tenant_partitions.entry(tenant).or_default();
        if !v.contains(&partition) {
            v.push(partition);
        }
        v.len() > 1
    }

    /// The usage period containing `t` and the plan in effect, cached per tenant.
    fn period_and_plan(&mut self, tidx: u32, t: DateTime<Utc>) -> (Period, Arc<Plan>) {
        let rt = &mut self.tenants[tidx as usize];
        let ts = t.timestamp();
        if let Some(c) = &rt.cache
            && c.one_plan
            && c.period.contains(ts)
        {
            return (c.period, c.plan.clone());
        }
        let period = rt.tenant.period_at(t);
        let plan = rt.tenant.plan_at(t).clone();
        let first = rt.first_period.is_none_or(|f| f >= period.start);
        let limits = plan
            .meters
            .keys()
            .map(|m| (*m, rt.tenant.limit(&plan, *m, first)))
            .collect();
        rt.cache = Some(PeriodCache {
            period,
            one_plan: rt.tenant.plan_changes.is_empty(),
            plan: plan.clone(),
            limits,
        });
        (period, plan)
    }

    fn limit_of(&self, tidx: u32, meter: MeterId, period: Period) -> Option<Decimal> {
        let rt = &self.tenants[tidx as usize];
        match &rt.cache {
            Some(c) if c.period == period => c
                .limits
                .iter()
                .find(|(m, _)| *m == meter)
                .and_then(|(_, l)| *l),
            _ => None,
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
        let Some(limit) = self.limit_of(tidx, meter, period) else {
            return;
        };
        if limit <= Decimal::ZERO {
            return;
        }
        let akey = (tidx, meter, period.start);
        let pm = plan.meters.get(&meter);
        let def = self.catalog.meter(meter);
        let entry = self.alert_state.entry(akey).or_default();
        let next = match entry.1 {
            Some(n) => n,
            None => {
                let n = alerts::next_trigger(plan, pm, Some(limit), &entry.0)
                    .map(|v| v * def.divisor - def.divisor / Decimal::from(1_000_000))
                    .unwrap_or(Decimal::MAX);
                entry.1 = Some(n);
                n
            }
        };
        if raw < next {
            return;
        }
        let usage = def.value(raw);
        let kinds = alerts::crossed(plan, pm, Some(limit), usage, &entry.0);
        entry.1 = None;
        if kinds.is_empty() {
            return;
        }
        let fired_at = Utc::now();
        let tenant = self.tenants[tidx as usize].name.clone();
        for k in &kinds {
            entry.0.push(k.clone());
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
        self.shared.alerts.insert(akey, entry.0.clone());
    }

    /// Takes a flush batch: every dirty row (marked clean) with `through_offset` = its
    /// partition's position, a checkpoint per partition, and pending alerts and raw events.
    pub fn snapshot(&mut self) -> FlushBatch {
        let mut batch = FlushBatch {
            alerts: std::mem::take(&mut self.pending_alerts),
            raw_events: std::mem::take(&mut self.raw_events),
            ..Default::default()
        };
        let mut parts: Vec<i32> = self.partitions.keys().copied().collect();
        parts.sort_unstable();
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
                    tenant: self.tenants[key.tenant as usize].name.clone(),
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
            let Some(tidx) = self.tenant_ids.get(r.tenant.as_bytes()).copied() else {
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
    }

    fn evict(&mut self) {
        let grace = self.params.grace_secs;
        let window = self.params.dedup_window_ms + self.params.replay_margin_ms();
        let per_partition_max = self.params.max_dedup_entries / self.partitions.len().max(1);
        let mut closed_before: FxHashMap<i32, i64> = FxHashMap::default();
        for (p, ps) in self.partitions.iter_mut() {
            if ps.max_ts_ms != i64::MIN {
                self.dedup_evicted_early += ps
                    .dedup
                    .evict_before(ps.max_ts_ms - window, per_partition_max)
                    as u64;
            }
            if ps.watermark_us != i64::MIN {
                closed_before.insert(*p, ps.watermark_us.div_euclid(1_000_000) - grace);
            }
        }
        if closed_before.is_empty() {
            return;
        }
        let before = self.shared.rows.len();
        self.shared.rows.retain(|k, r| {
            match closed_before.get(&k.partition) {
                // Closed: period_end + grace < watermark.
                Some(limit) if r.period_end < *limit && !r.dirty => false,
                _ => true,
            }
        });
        if self.shared.rows.len() == before {
            return;
        }
        // Alert state of (tenant, meter, period)s whose rows are all gone: their periods are
        // closed in every partition that had events for them, so no alert can fire again.
        let live: rustc_hash::FxHashSet<AlertKey> = self
            .shared
            .rows
            .iter()
            .map(|e| (e.key().tenant, e.key().meter, e.key().period_start))
            .collect();
        self.alert_state.retain(|k, _| live.contains(k));
        self.shared.alerts.retain(|k, _| live.contains(k));
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
        let ck_pos = r.checkpoint.as_ref().map(|c| c.position).unwrap_or(0);
        let replay_until = ck_pos.max(r.committed.unwrap_or(0)).max(r.replay_from);
        let mut ps = PartitionState::new(r.replay_from.min(replay_until));
        ps.replay_until = replay_until;
        ps.flushed_position = replay_until;
        if let Some(c) = &r.checkpoint {
            ps.watermark_us = c.watermark_us;
            ps.max_ts_ms = c.max_ts_ms;
        }
        self.partitions.insert(p, ps);
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
                    dirty: row.rollup_stale,
                },
            );
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
        for (t, meter, start, kind) in r.alerts {
            let Some(tidx) = self.tenant_idx(&t) else {
                continue;
            };
            let Some(mid) = self.catalog.meter_id(&meter) else {
                continue;
            };
            let e = self.alert_state.entry((tidx, mid, start)).or_default();
            if !e.0.iter().any(|k| **k == *kind) {
                e.0.push(kind.into());
            }
            e.1 = None;
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
        self.shared.rows.retain(|k, _| k.partition != p);
        self.shared.tenant_partitions.retain(|_, v| {
            v.retain(|x| *x != p);
            !v.is_empty()
        });
    }

    /// Forgets a revoked partition (after its final flush, or without one: the next owner
    /// restores from what was stored).
    pub fn revoke(&mut self, p: i32) {
        self.drop_partition_state(p);
        self.shared
            .partitions
            .write()
            .expect("partitions lock")
            .remove(&p);
        // Alert state of tenants that no longer have rows here.
        let shared = &self.shared;
        self.alert_state
            .retain(|(t, _, _), _| shared.tenant_partitions.contains_key(t));
        shared
            .alerts
            .retain(|(t, _, _), _| shared.tenant_partitions.contains_key(t));
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
