//! The rollup rows in memory and [`Shared`], the view of the processor's state that the
//! HTTP API, the usage gauges, wallets and the Stripe reporter read (through methods; only
//! the processor writes). A row's `raw` is the exact sum in meter units times the meter's
//! divisor (see [`crate::meter`]); period starts and ends are Unix seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rust_decimal::Decimal;
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use super::alerting::{AlertKey, Kinds};
use super::tenants::TenantRegistry;
use crate::config::Catalog;
use crate::health::{Health, Readiness, Source};
use crate::meter::MeterId;
use crate::pricing::Tenant;

/// The sum of a tenant's rows over its partitions is beyond `Decimal(38, 9)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tenant's running total over its partitions would be beyond Decimal(38, 9)")]
pub struct TenantTotalOverflow;

impl From<TenantTotalOverflow> for crate::event::Rejection {
    fn from(e: TenantTotalOverflow) -> Self {
        crate::event::Rejection::new(crate::event::ErrorCode::InvalidData, e.to_string())
    }
}

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
    /// The flush epoch in which the row last changed (0: never since it was restored
    /// clean). The row is dirty while this is the processor's current epoch; a flush's
    /// [`super::Cut`] takes the rows of the epoch it closes.
    pub dirty_epoch: u64,
}

/// What lets a flush read its rows after the cut, on another thread, while the consuming
/// thread goes on applying events ([`super::Cut::materialize`]).
///
/// Lock order: `generations`, then a row's map shard, then `frozen`.
#[derive(Debug, Default)]
pub(super) struct Capture {
    /// The epoch of the cut whose rows are being read, 0 if none: a row of that epoch
    /// changed before it is read has its value at the cut copied to `frozen` first.
    pub(super) epoch: AtomicU64,
    /// Row -> (epoch, raw, events) at the cut of that epoch.
    pub(super) frozen: Mutex<FxHashMap<RowKey, (u64, Decimal, u64)>>,
    /// Partition -> how many times its state was dropped (revoked, lost, re-installed).
    /// Held while a cut's rows are read, so a partition's rows are not dropped meanwhile;
    /// a cut from an earlier generation of a partition writes nothing of it.
    pub(super) generations: Mutex<FxHashMap<i32, u64>>,
}

impl Capture {
    /// Keeps the value a row had at the cut being read, before it changes.
    #[inline]
    pub(super) fn freeze_if_captured(&self, key: &RowKey, row: &RowState) {
        let epoch = row.dirty_epoch;
        if epoch != 0 && self.epoch.load(Ordering::Acquire) == epoch {
            lock(&self.frozen)
                .entry(*key)
                .or_insert((epoch, row.raw, row.events));
        }
    }
}

/// A lock whose holder cannot leave its data half-updated (plain inserts and reads).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// State shared between the consuming thread and the HTTP API.
pub struct Shared {
    pub(super) rows: DashMap<RowKey, RowState, FxBuildHasher>,
    pub(super) tenants: TenantRegistry,
    /// Kinds fired per (tenant, meter, period_start).
    pub(super) alerts: DashMap<AlertKey, Kinds, FxBuildHasher>,
    pub(super) catalog: ArcSwap<Catalog>,
    /// Partitions owned by this instance and whether each is restored and consuming.
    pub(super) partitions: RwLock<BTreeMap<i32, bool>>,
    /// Tenant -> partitions on which it has rows in memory.
    pub(super) tenant_partitions: DashMap<u32, SmallVec<[i32; 2]>, FxBuildHasher>,
    /// Tenant id -> earliest usage period start seen (one-time allowances).
    pub(super) first_periods: DashMap<String, i64>,
    /// Messages the consuming loop took from the source topic since start (progress, for
    /// `callmeter bench` and tests).
    pub(super) consumed: AtomicU64,
    /// Tenant id -> the tenant in effect, for tenants with subscription events applied here
    /// (CONTRACT section 10).
    pub(super) subscribed: DashMap<String, Arc<Tenant>>,
    /// Problems that make the instance unready, by source (a permanent ClickHouse error,
    /// undelivered dead-letter messages or alerts, a partition that cannot start); read
    /// through [`Self::readiness`].
    pub health: Health,
    /// Rows of a flush being read after its cut.
    pub(super) capture: Capture,
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
            subscribed: DashMap::new(),
            health: Default::default(),
            capture: Capture::default(),
        })
    }

    /// The tenant in effect: with the subscription events of its partition applied when
    /// this instance holds it, else as configured (or on the default plan). `None`: neither.
    /// Every reader that prices, limits or gates a tenant takes it from here.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.subscribed.get(id) {
            return Some(t.clone());
        }
        self.catalog.load().tenant(id)
    }

    /// The tenant in effect if subscription events changed or created it here.
    pub fn subscribed_tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.subscribed.get(id).map(|t| t.clone())
    }

    /// Publishes a tenant's state after subscription events (`None`: none applies any more).
    pub(super) fn set_subscribed(&self, id: &str, t: Option<Arc<Tenant>>) {
        match t {
            Some(t) => {
                self.subscribed.insert(id.to_string(), t);
            }
            None => {
                self.subscribed.remove(id);
            }
        }
    }

    /// The catalog in effect (the processor picks a new one up within half a second).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Publishes a reloaded catalog.
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        self.catalog.store(catalog);
    }

    /// Tenant names and their ids.
    pub fn tenants(&self) -> &TenantRegistry {
        &self.tenants
    }

    /// A copy of one row, if in memory.
    pub fn row(&self, key: &RowKey) -> Option<RowState> {
        self.rows.get(key).map(|r| r.clone())
    }

    /// Rows in memory.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Every row in memory, copied one at a time (a shard of the map stays locked while the
    /// iterator is on it).
    pub fn rows(&self) -> impl Iterator<Item = (RowKey, RowState)> + '_ {
        self.rows.iter().map(|r| (*r.key(), r.value().clone()))
    }

    /// The partitions on which a tenant has rows in memory.
    pub fn tenant_partitions(&self, tenant: u32) -> Option<SmallVec<[i32; 2]>> {
        self.tenant_partitions.get(&tenant).map(|v| v.clone())
    }

    /// Alert kinds fired for (tenant, meter, period_start), if its state is in memory.
    pub fn fired_alerts(&self, key: &AlertKey) -> Option<Kinds> {
        self.alerts.get(key).map(|v| v.clone())
    }

    /// The tenant's earliest usage period start seen (Unix seconds).
    pub fn first_period(&self, tenant: &str) -> Option<i64> {
        self.first_periods.get(tenant).map(|v| *v)
    }

    /// Partitions owned by this instance, ascending (restored or not).
    pub fn owned_partitions(&self) -> Vec<i32> {
        let p = self.partitions.read().expect("partitions lock");
        p.keys().copied().collect()
    }

    /// Counts `n` messages taken from the source topic (the consuming loop adds them up and
    /// publishes them at each housekeeping round: at most 64 messages or 1 ms late).
    pub fn count_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages taken from the source topic since start.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// The readiness verdict (`/readyz`, `callmeter_ready`): partitions restored and the
    /// problems in [`Self::health`], of partitions only those this instance owns.
    pub fn readiness(&self) -> Readiness {
        let owned = self.partitions.read().expect("partitions lock");
        Readiness {
            partitions_restored: !owned.is_empty() && owned.values().all(|r| *r),
            problems: self.health.problems(|s| match s {
                Source::Partition(p) => owned.contains_key(&p),
                Source::ClickHouse | Source::Outbox => true,
            }),
        }
    }

    /// Partitions ready: at least one owned, all restored, and none that cannot start
    /// ([`Source::Partition`]); other problems do not count (see [`Self::readiness`]).
    pub fn partitions_ready(&self) -> bool {
        let r = self.readiness();
        r.partitions_restored
            && !r
                .problems
                .iter()
                .any(|(s, _)| matches!(s, Source::Partition(_)))
    }

    /// The raw sum of a tenant's meter in a period over the partitions held here, with the
    /// event count; `None` if no row is in memory.
    pub fn tenant_raw(
        &self,
        tenant: u32,
        meter: MeterId,
        period_start: i64,
    ) -> Option<(Decimal, u64)> {
        self.try_tenant_raw(tenant, meter, period_start)
            .unwrap_or(Some((Decimal::MAX, u64::MAX)))
    }

    /// [`Self::tenant_raw`], checked: an error when the sum over the tenant's partitions is
    /// beyond `Decimal(38, 9)` ([`Self::tenant_raw`] saturates instead).
    pub fn try_tenant_raw(
        &self,
        tenant: u32,
        meter: MeterId,
        period_start: i64,
    ) -> Result<Option<(Decimal, u64)>, TenantTotalOverflow> {
        let Some(parts) = self.tenant_partitions.get(&tenant).map(|v| v.clone()) else {
            return Ok(None);
        };
        let mut found = None;
        for p in parts {
            if let Some(r) = self.rows.get(&RowKey {
                tenant,
                meter,
                period_start,
                partition: p,
            }) {
                let (raw, n) = found.get_or_insert((Decimal::ZERO, 0u64));
                *raw = crate::meter::exact_add(*raw, r.raw).ok_or(TenantTotalOverflow)?;
                *n = n.saturating_add(r.events);
            }
        }
        Ok(found)
    }

    /// Records that the tenant has rows on `partition`; returns whether it has rows on
    /// more than one partition.
    #[inline]
    pub(super) fn note_tenant_partition(&self, tenant: u32, partition: i32) -> bool {
        if let Some(v) = self.tenant_partitions.get(&tenant)
            && v.contains(&partition)
        {
            return v.len() > 1;
        }
        let mut v = self.tenant_partitions.entry(tenant).or_default();
        if !v.contains(&partition) {
            v.push(partition);
        }
        v.len() > 1
    }
}
