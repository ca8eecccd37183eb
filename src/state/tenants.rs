//! Tenants as the processor sees them: names interned to small dense ids
//! ([`TenantRegistry`], shared with the readers), and per tenant the configuration in
//! effect plus a cache of its current usage period, plan and limits (so that the hot path
//! reads neither the catalog nor the tenant's plan changes), and the subscription records
//! applied to it (CONTRACT section 10; the tenant in effect is its configured state with
//! them laid over, [`crate::subscription::merge`]), and the tenant as it was at an earlier
//! offset of a partition, which a replayed message is judged against
//! ([`Tenants::at_offset`]). Pure.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::config::Catalog;
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::{Plan, Tenant};
use crate::subscription::{self, SubscriptionRecord};

/// Name -> id, and id -> name.
type Interned = (FxHashMap<Arc<str>, u32>, Vec<Arc<str>>);

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
    /// The names of several ids, under one read lock.
    pub fn names(&self, ids: impl Iterator<Item = u32>) -> Vec<Arc<str>> {
        let g = self.inner.read().expect("registry lock");
        ids.map(|id| g.1[id as usize].clone()).collect()
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

#[derive(Debug)]
struct PeriodCache {
    period: Period,
    /// The tenant has no plan changes: the plan holds for the whole period (kept here so
    /// that the hot path need not read the tenant's configuration).
    one_plan: bool,
    plan: Arc<Plan>,
    /// Limit per metered plan meter, for this period.
    limits: SmallVec<[(MeterId, Option<Decimal>); 4]>,
    /// Per meter: the raw sum below which no usage alert can fire, as of an alert epoch
    /// (see [`Tenants::alert_floor`]).
    floors: SmallVec<[(MeterId, Decimal, u64); 4]>,
}

#[derive(Debug)]
struct TenantRt {
    name: Arc<str>,
    tenant: Arc<Tenant>,
    cache: Option<PeriodCache>,
    /// Earliest period start seen for the tenant (one-time allowances).
    first_period: Option<i64>,
    /// Subscription records applied, in partition order.
    subs: Vec<SubscriptionRecord>,
    /// The last answer of [`Tenants::at_offset`] that was not the tenant in effect: the
    /// partition, how many of its records it left out, and the tenant without them. Dropped
    /// whenever `subs` or the catalog changes.
    earlier: Option<(i32, usize, Earlier)>,
    /// A copy of the tenant's `Shared::tenant_partitions` entry (empty: not known here), so
    /// that the hot path reads it from the line it already holds.
    partitions: SmallVec<[i32; 2]>,
}

type TenantKey = SmallVec<[u8; 24]>;

/// A tenant as it was before a given message of a partition ([`Tenants::at_offset`]).
#[derive(Debug, Clone)]
pub(super) struct Earlier {
    /// The tenant then; `None`: unknown then (not configured, no default plan, and not yet
    /// created by a subscription event).
    pub(super) tenant: Option<Arc<Tenant>>,
    /// Known as a subscriber then, as [`Tenants::is_known`] says of the tenant in effect.
    pub(super) known: bool,
}

/// The processor's tenants, indexed by their registry id.
#[derive(Debug, Default)]
pub(super) struct Tenants {
    list: Vec<TenantRt>,
    /// Tenant name -> id; names are kept inline (up to 24 bytes) so a look-up touches one
    /// cache line less.
    ids: FxHashMap<TenantKey, u32>,
}

impl Tenants {
    /// The id of a tenant seen before.
    #[inline]
    pub(super) fn id_of(&self, name: &str) -> Option<u32> {
        self.ids.get(name.as_bytes()).copied()
    }

    /// The id of `name`, interning it in `registry` at first sight; `None` if the catalog
    /// neither configures it nor has a default plan.
    #[inline]
    pub(super) fn idx(
        &mut self,
        name: &str,
        catalog: &Catalog,
        registry: &TenantRegistry,
    ) -> Option<u32> {
        if let Some(i) = self.ids.get(name.as_bytes()) {
            return Some(*i);
        }
        let tenant = catalog.tenant(name)?;
        let (id, arc) = registry.intern(name);
        let idx = id as usize;
        if self.list.len() <= idx {
            // Ids are dense and interned only here, so this extends by one.
            while self.list.len() < idx {
                let n = registry.name(self.list.len() as u32);
                let t = catalog
                    .tenant(&n)
                    .unwrap_or_else(|| Arc::new(Tenant::on_default_plan(&n, tenant.plan.clone())));
                self.list.push(TenantRt {
                    name: n,
                    tenant: t,
                    cache: None,
                    first_period: None,
                    subs: Vec::new(),
                    earlier: None,
                    partitions: SmallVec::new(),
                });
            }
            self.list.push(TenantRt {
                name: arc,
                tenant,
                cache: None,
                first_period: None,
                subs: Vec::new(),
                earlier: None,
                partitions: SmallVec::new(),
            });
        }
        self.ids.insert(TenantKey::from_slice(name.as_bytes()), id);
        Some(id)
    }

    /// The id of `name`, creating it with `tenant` if it is not known (a tenant created by
    /// its first subscription event).
    pub(super) fn idx_or_create(
        &mut self,
        name: &str,
        tenant: Arc<Tenant>,
        catalog: &Catalog,
        registry: &TenantRegistry,
    ) -> u32 {
        if let Some(i) = self.idx(name, catalog, registry) {
            return i;
        }
        let (id, arc) = registry.intern(name);
        while self.list.len() < id as usize {
            let n = registry.name(self.list.len() as u32);
            let t = catalog
                .tenant(&n)
                .unwrap_or_else(|| Arc::new(Tenant::on_default_plan(&n, tenant.plan.clone())));
            self.list.push(TenantRt {
                name: n,
                tenant: t,
                cache: None,
                first_period: None,
                subs: Vec::new(),
                earlier: None,
                partitions: SmallVec::new(),
            });
        }
        if self.list.len() == id as usize {
            self.list.push(TenantRt {
                name: arc,
                tenant,
                cache: None,
                first_period: None,
                subs: Vec::new(),
                earlier: None,
                partitions: SmallVec::new(),
            });
        }
        self.ids.insert(TenantKey::from_slice(name.as_bytes()), id);
        id
    }

    /// The tenant in effect.
    #[inline]
    pub(super) fn tenant(&self, tidx: u32) -> &Arc<Tenant> {
        &self.list[tidx as usize].tenant
    }

    /// Whether the tenant is known as a subscriber: configured, or created by a subscription
    /// event (not merely on the default plan).
    pub(super) fn is_known(&self, tidx: u32) -> bool {
        let t = &self.list[tidx as usize];
        t.tenant.configured || !t.subs.is_empty()
    }

    /// Applies subscription records to the tenant (already known or created by them);
    /// returns the tenant in effect, to publish.
    pub(super) fn apply_records(
        &mut self,
        tidx: u32,
        records: impl IntoIterator<Item = SubscriptionRecord>,
        catalog: &Catalog,
    ) -> Arc<Tenant> {
        let rt = &mut self.list[tidx as usize];
        rt.subs.extend(records);
        Self::remerge(rt, catalog);
        rt.tenant.clone()
    }

    fn remerge(rt: &mut TenantRt, catalog: &Catalog) {
        let base = catalog.tenants.get(&*rt.name);
        if let Some(t) = subscription::merge(catalog, &rt.name, base, &rt.subs) {
            rt.tenant = t;
        } else if let Some(t) = catalog.tenant(&rt.name) {
            rt.tenant = t;
        }
        rt.cache = None;
        rt.earlier = None;
    }

    /// The tenant a message at `offset` of `partition` is judged against, when that is not
    /// the tenant in effect: the rule is that a message is judged against the subscription
    /// records of events before it in its partition's order (`through_offset <= offset`;
    /// records of other partitions always count), as when it was first read.
    ///
    /// The tenant in effect holds more only while a restored partition replays below its
    /// checkpoint: the restore applies every stored record up to the checkpoint position
    /// (so that readers see the tenant as counted), and the replay then reads again the
    /// events of the later ones. For such a message this returns the tenant without the
    /// records from that message on; `None` when no applied record comes from the message
    /// or a later one of the partition (always so past the checkpoint, where records are
    /// applied as their events are read). Records of one partition are applied in offset
    /// order, so the records left out are told apart by their number (the cache's key).
    pub(super) fn at_offset(
        &mut self,
        tidx: u32,
        partition: i32,
        offset: i64,
        catalog: &Catalog,
    ) -> Option<Earlier> {
        let rt = &mut self.list[tidx as usize];
        let later = |r: &SubscriptionRecord| r.partition == partition && r.through_offset > offset;
        let left_out = rt.subs.iter().filter(|r| later(r)).count();
        if left_out == 0 {
            return None;
        }
        if let Some((p, n, e)) = &rt.earlier
            && *p == partition
            && *n == left_out
        {
            return Some(e.clone());
        }
        let before: Vec<SubscriptionRecord> =
            rt.subs.iter().filter(|r| !later(r)).cloned().collect();
        // As `remerge` builds the tenant in effect, from the records before the message.
        let tenant =
            subscription::merge(catalog, &rt.name, catalog.tenants.get(&*rt.name), &before)
                .or_else(|| catalog.tenant(&rt.name));
        let known = !before.is_empty() || tenant.as_ref().is_some_and(|t| t.configured);
        let e = Earlier { tenant, known };
        rt.earlier = Some((partition, left_out, e.clone()));
        Some(e)
    }

    /// Drops the records that came from `partition` (revoked); returns the tenants whose
    /// state changed, with their tenant in effect (`None`: no record left).
    pub(super) fn drop_partition_records(
        &mut self,
        partition: i32,
        catalog: &Catalog,
    ) -> Vec<(Arc<str>, Option<Arc<Tenant>>)> {
        let mut out = Vec::new();
        for rt in &mut self.list {
            let before = rt.subs.len();
            rt.subs.retain(|r| r.partition != partition);
            if rt.subs.len() != before {
                Self::remerge(rt, catalog);
                let t = (!rt.subs.is_empty()).then(|| rt.tenant.clone());
                out.push((rt.name.clone(), t));
            }
        }
        out
    }

    /// Whether the tenant has rows on more than one partition, if `partition` is known to
    /// be one of them here (else ask `Shared` and [`Self::set_partitions`]).
    #[inline]
    pub(super) fn spans_known(&self, tidx: u32, partition: i32) -> Option<bool> {
        let v = &self.list[tidx as usize].partitions;
        v.contains(&partition).then_some(v.len() > 1)
    }

    /// Copies the tenant's partitions from `Shared::tenant_partitions`.
    pub(super) fn set_partitions(&mut self, tidx: u32, partitions: SmallVec<[i32; 2]>) {
        self.list[tidx as usize].partitions = partitions;
    }

    /// Forgets `partition` in every tenant's copy (it was revoked).
    pub(super) fn forget_partition(&mut self, partition: i32) {
        for rt in &mut self.list {
            rt.partitions.retain(|p| *p != partition);
        }
    }

    /// The time since which the tenant has no subscription at `t`, if it has none.
    #[inline]
    pub(super) fn canceled_before(&self, tidx: u32, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let rt = &self.list[tidx as usize];
        // The period cache knows (without reading the tenant's configuration, a cache miss
        // per event) whether the tenant has plan changes, of which a cancellation is one.
        if rt.cache.as_ref().is_some_and(|c| c.one_plan) || rt.tenant.plan_changes.is_empty() {
            return None;
        }
        rt.tenant.canceled_before(t)
    }

    #[inline]
    pub(super) fn name(&self, tidx: u32) -> &Arc<str> {
        &self.list[tidx as usize].name
    }

    /// The earliest usage period start seen for the tenant.
    pub(super) fn first_period(&self, tidx: u32) -> Option<i64> {
        self.list[tidx as usize].first_period
    }

    /// Picks up a reloaded catalog: each tenant's configuration (with its subscription
    /// records laid over again), caches dropped. Returns the tenants with records, to
    /// publish.
    pub(super) fn reload(&mut self, catalog: &Catalog) -> Vec<(Arc<str>, Arc<Tenant>)> {
        let mut out = Vec::new();
        for t in &mut self.list {
            if t.subs.is_empty() {
                if let Some(nt) = catalog.tenant(&t.name) {
                    t.tenant = nt;
                }
                t.cache = None;
                t.earlier = None;
            } else {
                Self::remerge(t, catalog);
                out.push((t.name.clone(), t.tenant.clone()));
            }
        }
        out
    }

    /// Records the tenant's earliest usage period (one-time allowances apply there);
    /// returns whether it moved earlier.
    #[inline]
    pub(super) fn note_first_period(&mut self, tidx: u32, start: i64) -> bool {
        let t = &mut self.list[tidx as usize];
        if t.first_period.is_none_or(|f| start < f) {
            t.first_period = Some(start);
            t.cache = None;
            return true;
        }
        false
    }

    /// The usage period containing `t` and the plan in effect, cached per tenant.
    #[inline]
    pub(super) fn period_and_plan(&mut self, tidx: u32, t: DateTime<Utc>) -> (Period, Arc<Plan>) {
        let rt = &mut self.list[tidx as usize];
        let ts = t.timestamp();
        if let Some(c) = &rt.cache
            && c.one_plan
            && c.period.contains(ts)
        {
            return (c.period, c.plan.clone());
        }
        let period = rt.tenant.period_at(t);
        let terms = rt.tenant.terms_at(t);
        let plan = terms.plan.clone();
        let first = rt.first_period.is_none_or(|f| f >= period.start);
        let limits = plan
            .meters
            .keys()
            .map(|m| (*m, terms.limit(*m, first)))
            .collect();
        rt.cache = Some(PeriodCache {
            period,
            one_plan: rt.tenant.plan_changes.is_empty(),
            plan: plan.clone(),
            limits,
            floors: SmallVec::new(),
        });
        (period, plan)
    }

    /// The raw sum of `meter` below which no usage alert can fire in `period`, if recorded
    /// at alert epoch `epoch` for the cached period: the hot path then needs no look-up in
    /// the alert state (which any change of that state outdates by moving the epoch).
    #[inline]
    pub(super) fn alert_floor(
        &self,
        tidx: u32,
        meter: MeterId,
        period: Period,
        epoch: u64,
    ) -> Option<Decimal> {
        let c = self.list[tidx as usize].cache.as_ref()?;
        if c.period != period {
            return None;
        }
        c.floors
            .iter()
            .find(|f| f.0 == meter && f.2 == epoch)
            .map(|f| f.1)
    }

    /// Records [`Self::alert_floor`] for the cached period (nothing if `period` is not it).
    pub(super) fn set_alert_floor(
        &mut self,
        tidx: u32,
        meter: MeterId,
        period: Period,
        floor: Decimal,
        epoch: u64,
    ) {
        let Some(c) = self.list[tidx as usize].cache.as_mut() else {
            return;
        };
        if c.period != period {
            return;
        }
        match c.floors.iter_mut().find(|f| f.0 == meter) {
            Some(f) => *f = (meter, floor, epoch),
            None => c.floors.push((meter, floor, epoch)),
        }
    }

    /// The tenant's limit of `meter` in `period`, if that is the cached period.
    #[inline]
    pub(super) fn limit_of(&self, tidx: u32, meter: MeterId, period: Period) -> Option<Decimal> {
        let rt = &self.list[tidx as usize];
        match &rt.cache {
            Some(c) if c.period == period => c
                .limits
                .iter()
                .find(|(m, _)| *m == meter)
                .and_then(|(_, l)| *l),
            _ => None,
        }
    }
}
