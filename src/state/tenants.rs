//! Tenants as the processor sees them: names interned to small dense ids
//! ([`TenantRegistry`], shared with the readers), and per tenant the configuration in
//! effect plus a cache of its current usage period, plan and limits (so that the hot path
//! reads neither the catalog nor the tenant's plan changes). Pure.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::config::Catalog;
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::{Plan, Tenant};

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
}

#[derive(Debug)]
struct TenantRt {
    name: Arc<str>,
    tenant: Arc<Tenant>,
    cache: Option<PeriodCache>,
    /// Earliest period start seen for the tenant (one-time allowances).
    first_period: Option<i64>,
}

type TenantKey = SmallVec<[u8; 24]>;

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
                });
            }
            self.list.push(TenantRt {
                name: arc,
                tenant,
                cache: None,
                first_period: None,
            });
        }
        self.ids.insert(TenantKey::from_slice(name.as_bytes()), id);
        Some(id)
    }

    #[inline]
    pub(super) fn name(&self, tidx: u32) -> &Arc<str> {
        &self.list[tidx as usize].name
    }

    /// The tenant's configuration (its plan timeline), as priced.
    pub(super) fn tenant(&self, tidx: u32) -> &Arc<Tenant> {
        &self.list[tidx as usize].tenant
    }

    /// The earliest usage period start seen for the tenant.
    pub(super) fn first_period(&self, tidx: u32) -> Option<i64> {
        self.list[tidx as usize].first_period
    }

    /// Picks up a reloaded catalog: each tenant's configuration, caches dropped.
    pub(super) fn reload(&mut self, catalog: &Catalog) {
        for t in &mut self.list {
            if let Some(nt) = catalog.tenant(&t.name) {
                t.tenant = nt;
            }
            t.cache = None;
        }
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
