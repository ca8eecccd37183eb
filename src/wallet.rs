//! Prepaid wallets (seed 001): a tenant's balance, its `wallet_low` and `wallet_empty`
//! alerts, and what the entitlement endpoint needs to refuse usage once a prepaid wallet is
//! empty.
//!
//! # The balance is derived, not stored
//!
//! For every usage period of the tenant, from its first (the period of its first event, or
//! the current one) to the current one:
//!
//! ```text
//! balance = sum over periods of  wallet_credit + monthly_grant - usage charges
//! ```
//!
//! where `wallet_credit` is the period's built-in meter (the sum of `wallet.topped_up`
//! amounts, counted exactly once like any meter), `monthly_grant` is the grant of the plan
//! governing the period, and the usage charges are every charge line of the period except
//! the base fee (overage, per-unit rates, tiers, revenue share, add-ons: seed 000 deducts
//! add-ons from the wallet too) as they stand now, so they are deducted as they accrue.
//! Periods governed by a plan without a wallet add their top-ups but neither grant nor
//! deduct (their usage is invoiced). Since every term comes from exactly-once rollups, the
//! balance is exact after any crash or replay, and no ledger has to be kept consistent with
//! them.
//!
//! # The service
//!
//! [`Wallets`] mirrors the `usage_rollups` rows of wallet tenants (loaded with `FINAL` at
//! start and after every configuration reload, then incrementally by `updated_at`, keeping
//! the row with the highest `through_offset` like `ReplacingMergeTree`), overlays the rows
//! this instance holds in memory (newer than what was flushed), and recomputes balances
//! every `pricing.wallet_refresh_interval` and on demand for API requests. Until the first
//! refresh a balance is unknown and the entitlement does not refuse.
//!
//! Alerts (evaluated once this instance's partitions are restored): in the current usage
//! period, `wallet_low` fires once when the balance is below the plan's `wallet.low_balance`
//! (or the tenant's `wallet_low_balance`), then `wallet_empty` once when it is zero or below. Like the other alerts they carry the deterministic
//! [`alert_id`](crate::alerts::alert_id) of (tenant, `wallet_credit`, period start, kind), are
//! produced to the alerts topic (key: tenant id) and then stored in `usage_alerts`; an alert
//! already in `usage_alerts` is not sent again (a crash between the two steps, or two
//! instances racing, repeats it with the same id). `usage` is the balance, `limit` the
//! threshold, `event_id` is empty (no single event crosses it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::alerts::{self, Alert, WALLET_EMPTY, WALLET_LOW};
use crate::catalog::Catalog;
use crate::ingest::outbox::AlertSink;
use crate::meter::{MeterId, WALLET_CREDIT};
use crate::period::Period;
use crate::pricing::{self, ChargeInput, MeterUsage, Tenant};
use crate::sink::clickhouse::{ClickHouse, SinkError, from_dec9, queries};
use crate::state::{RowKey, Shared};
use crate::telemetry as t;

/// The meter name wallet alerts carry.
pub const WALLET_METER: &str = "wallet_credit";

/// Usage of one period, as the ledger reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodUsage {
    pub period: Period,
    /// Meter -> value, in meter units (`wallet_credit` in the plan's currency).
    pub usage: BTreeMap<MeterId, Decimal>,
}

/// One period of a wallet's ledger, in the plan's currency.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub period: Period,
    /// The plan governing the period.
    pub plan: String,
    /// Top-ups (`wallet.topped_up` amounts).
    pub credit: Decimal,
    /// The plan's monthly grant, if the plan has a wallet.
    pub grant: Decimal,
    /// Usage charges deducted (all lines but the base fee), if the plan has a wallet.
    pub charges: Decimal,
}

impl LedgerEntry {
    /// What the period adds to the balance. Never panics: beyond `Decimal`'s range it
    /// saturates (only absurd credits or charges get there).
    pub fn net(&self) -> Decimal {
        self.credit
            .saturating_add(self.grant)
            .saturating_sub(self.charges)
    }
}

/// A tenant's wallet as of the last computation.
#[derive(Debug, Clone, PartialEq)]
pub struct WalletState {
    /// In `currency`, exact (charge lines are already rounded to cents).
    pub balance: Decimal,
    pub currency: String,
    /// The current usage period.
    pub period: Period,
    /// The plan governing the current period.
    pub plan: String,
    /// Whether that plan's wallet is prepaid (entitlement refuses at zero).
    pub prepaid: bool,
    /// The `wallet_low` threshold, if any.
    pub low_balance: Option<Decimal>,
    pub computed_at: DateTime<Utc>,
}

/// Whether `tenant` (configured or on the default plan) has a wallet on any of its plans.
pub fn has_wallet(cat: &Catalog, tenant: &str) -> bool {
    match cat.tenants.get(tenant) {
        Some(t) => {
            t.plan.wallet.is_some() || t.plan_changes.iter().any(|c| c.plan.wallet.is_some())
        }
        None => cat
            .default_plan
            .as_ref()
            .is_some_and(|p| p.wallet.is_some()),
    }
}

/// The wallet ledger of `tenant` up to the period containing `now`, one entry per period
/// from its first (the earliest of `stored`, else the current one). `stored` holds the
/// periods with usage (any order); periods without usage still get their grant and their
/// fixed charges (add-ons).
pub fn ledger(
    cat: &Catalog,
    tenant: &Tenant,
    stored: &[PeriodUsage],
    now: DateTime<Utc>,
) -> Vec<LedgerEntry> {
    let current = tenant.period_at(now);
    let first_start = stored
        .iter()
        .map(|p| p.period.start)
        .min()
        .unwrap_or(current.start)
        .min(current.start);
    let mut periods: BTreeMap<i64, (Period, bool)> = BTreeMap::new();
    let first_utc = DateTime::from_timestamp(first_start, 0).unwrap_or(now);
    let mut p = tenant.period_at(first_utc);
    // Enumerated periods (grants accrue); bounded by the current one.
    for _ in 0..10_000 {
        if p.start > current.start {
            break;
        }
        periods.insert(p.start, (p, true));
        p = tenant.period_at(p.end_utc());
    }
    // Stored periods that do not line up with the tenant's periods (its anchor or time zone
    // changed): their usage counts, they grant nothing.
    for s in stored {
        periods.entry(s.period.start).or_insert((s.period, false));
    }
    let empty = BTreeMap::new();
    let by_start: HashMap<i64, &BTreeMap<MeterId, Decimal>> =
        stored.iter().map(|s| (s.period.start, &s.usage)).collect();
    periods
        .into_values()
        .filter(|(p, _)| p.start <= current.start)
        .map(|(period, enumerated)| {
            let usage = by_start.get(&period.start).copied().unwrap_or(&empty);
            let plan = tenant.plan_for_period(period, now);
            let credit = usage.get(&WALLET_CREDIT).copied().unwrap_or_default();
            let (grant, charges) = match &plan.wallet {
                None => (Decimal::ZERO, Decimal::ZERO),
                Some(w) => {
                    let mu = MeterUsage::from_values(cat, usage.iter());
                    let c = pricing::charges(&ChargeInput {
                        tenant,
                        period,
                        usage: &mu,
                        first_period: period.start == first_start,
                        now,
                    });
                    (
                        if enumerated {
                            w.monthly_grant
                        } else {
                            Decimal::ZERO
                        },
                        c.usage_total(),
                    )
                }
            };
            LedgerEntry {
                period,
                plan: plan.id.clone(),
                credit,
                grant,
                charges,
            }
        })
        .collect()
}

/// The wallet state of `tenant` from its stored usage (see [`ledger`]).
pub fn compute(
    cat: &Catalog,
    tenant: &Tenant,
    stored: &[PeriodUsage],
    now: DateTime<Utc>,
) -> WalletState {
    let entries = ledger(cat, tenant, stored, now);
    let period = tenant.period_at(now);
    let plan = tenant.plan_for_period(period, now);
    WalletState {
        balance: entries
            .iter()
            .map(LedgerEntry::net)
            .fold(Decimal::ZERO, Decimal::saturating_add),
        currency: plan.currency.clone(),
        period,
        plan: plan.id.clone(),
        prepaid: plan.wallet.as_ref().is_some_and(|w| w.prepaid),
        low_balance: tenant.wallet_low_balance(plan),
        computed_at: now,
    }
}

/// The wallet alert kinds due for `state` that are not in `fired`, in firing order.
/// Only plans with a wallet alert.
pub fn due_alerts(state: &WalletState, has_wallet: bool, fired: &[String]) -> Vec<&'static str> {
    if !has_wallet {
        return vec![];
    }
    let mut out = Vec::new();
    let done = |k: &str| fired.iter().any(|f| f == k);
    if state.low_balance.is_some_and(|l| state.balance < l) && !done(WALLET_LOW) {
        out.push(WALLET_LOW);
    }
    if state.balance <= Decimal::ZERO && !done(WALLET_EMPTY) {
        out.push(WALLET_EMPTY);
    }
    out
}

/// A mirrored rollup row: (period start, meter, partition) -> this.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MirrorRow {
    period_end: i64,
    value: Decimal,
    through_offset: i64,
}

type RowsOf = BTreeMap<(i64, MeterId, i32), MirrorRow>;

#[derive(Default)]
struct Mirror {
    /// The catalog the mirror was loaded for (a reload may change who has a wallet).
    catalog: Option<Arc<Catalog>>,
    rows: HashMap<String, RowsOf>,
    /// Largest `updated_at` seen (Unix seconds).
    max_updated: u32,
}

impl Mirror {
    fn merge(&mut self, tenant: String, key: (i64, MeterId, i32), row: MirrorRow) {
        let slot = self.rows.entry(tenant).or_default();
        match slot.get(&key) {
            Some(old) if old.through_offset > row.through_offset => {}
            _ => {
                slot.insert(key, row);
            }
        }
    }
}

/// The wallet service (see the module docs).
pub struct Wallets {
    shared: Arc<Shared>,
    ch: ClickHouse,
    sink: Option<AlertSink>,
    mirror: RwLock<Mirror>,
    states: DashMap<String, WalletState>,
    /// (tenant, period start) -> wallet alert kinds fired.
    fired: DashMap<(String, i64), Vec<String>>,
    gauges_max: usize,
}

/// Re-read rows updated up to this long before the newest seen (writers' clock skew).
const UPDATED_AT_MARGIN_SECS: u32 = 300;

type RowTuple = (String, String, u32, u32, u32, i128, i64, u32);

impl Wallets {
    /// A service reading `shared` (memory) and `ch`; alerts go to `sink` (if any) and to
    /// `usage_alerts`. At most `gauges_max` tenants get a balance gauge.
    pub fn new(
        shared: Arc<Shared>,
        ch: ClickHouse,
        sink: Option<AlertSink>,
        gauges_max: usize,
    ) -> Wallets {
        Wallets {
            shared,
            ch,
            sink,
            mirror: RwLock::new(Mirror::default()),
            states: DashMap::new(),
            fired: DashMap::new(),
            gauges_max,
        }
    }

    /// The tenant's balance as of the last refresh, if it has a wallet.
    pub fn balance(&self, tenant: &str) -> Option<Decimal> {
        self.states.get(tenant).map(|s| s.balance)
    }

    /// The tenant's wallet as of the last refresh.
    pub fn state(&self, tenant: &str) -> Option<WalletState> {
        self.states.get(tenant).map(|s| s.clone())
    }

    /// Wallet alert kinds fired for the tenant in the period starting at `period_start`.
    pub fn fired(&self, tenant: &str, period_start: i64) -> Vec<String> {
        self.fired
            .get(&(tenant.to_string(), period_start))
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Recomputes one tenant's balance now (mirror plus the rows held in memory), for
    /// entitlement checks; falls back to the last refresh when the mirror is not loaded.
    /// `None` when the tenant has no wallet.
    pub fn balance_now(&self, tenant: &Tenant) -> Option<Decimal> {
        let cat = self.shared.catalog();
        if !has_wallet(&cat, &tenant.id) {
            return None;
        }
        let now = Utc::now();
        let periods = {
            let m = self.mirror.read().expect("mirror lock");
            if m.catalog.is_none() {
                return self.balance(&tenant.id);
            }
            let mut rows = m.rows.get(&*tenant.id).cloned().unwrap_or_default();
            drop(m);
            self.overlay_tenant(&cat, tenant, &mut rows, now);
            group(&rows)
        };
        let state = compute(&cat, tenant, &periods, now);
        let b = state.balance;
        self.states.insert(tenant.id.to_string(), state);
        Some(b)
    }

    /// Memory rows of one tenant for its mirrored periods and the current one.
    fn overlay_tenant(
        &self,
        cat: &Catalog,
        tenant: &Tenant,
        rows: &mut RowsOf,
        now: DateTime<Utc>,
    ) {
        let Some(tidx) = self.shared.tenants().get(&tenant.id) else {
            return;
        };
        let Some(parts) = self.shared.tenant_partitions(tidx) else {
            return;
        };
        let mut starts: Vec<i64> = rows.keys().map(|k| k.0).collect();
        starts.push(tenant.period_at(now).start);
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            for (i, def) in cat.meters.iter().enumerate() {
                let meter = MeterId(i as u16);
                for &partition in &parts {
                    if let Some(r) = self.shared.row(&RowKey {
                        tenant: tidx,
                        meter,
                        period_start: start,
                        partition,
                    }) {
                        rows.insert(
                            (start, meter, partition),
                            MirrorRow {
                                period_end: r.period_end,
                                value: def.value(r.raw),
                                through_offset: i64::MAX,
                            },
                        );
                    }
                }
            }
        }
    }

    async fn fetch(
        &self,
        cat: &Catalog,
        full: bool,
        since: u32,
    ) -> Result<Vec<RowTuple>, SinkError> {
        let wallet_tenants: Vec<String> = cat
            .tenants
            .keys()
            .filter(|t| has_wallet(cat, t))
            .cloned()
            .collect();
        let default_has_wallet = cat
            .default_plan
            .as_ref()
            .is_some_and(|p| p.wallet.is_some());
        if !default_has_wallet && wallet_tenants.is_empty() {
            return Ok(vec![]);
        }
        let sql = queries::wallet_rollups(self.ch.database(), full, !default_has_wallet);
        let mut q = self.ch.client().query(&sql);
        if !full {
            q = q.bind(since);
        }
        if !default_has_wallet {
            q = q.bind(wallet_tenants);
        }
        Ok(q.fetch_all().await?)
    }

    /// Loads or updates the mirror of stored rows.
    async fn load(&self, cat: &Arc<Catalog>) -> Result<(), SinkError> {
        let (full, since) = {
            let m = self.mirror.read().expect("mirror lock");
            let same = m.catalog.as_ref().is_some_and(|c| Arc::ptr_eq(c, cat));
            (!same, m.max_updated.saturating_sub(UPDATED_AT_MARGIN_SECS))
        };
        let rows = self.fetch(cat, full, since).await?;
        if full {
            self.load_fired().await?;
        }
        let mut m = self.mirror.write().expect("mirror lock");
        if full {
            *m = Mirror::default();
        }
        for (tenant, meter, ps, pe, part, value, through, updated) in rows {
            m.max_updated = m.max_updated.max(updated);
            if !has_wallet(cat, &tenant) {
                continue;
            }
            let Some(mid) = cat.meter_id(&meter) else {
                continue;
            };
            m.merge(
                tenant,
                (ps as i64, mid, part as i32),
                MirrorRow {
                    period_end: pe as i64,
                    value: from_dec9(value)?,
                    through_offset: through,
                },
            );
        }
        m.catalog = Some(cat.clone());
        Ok(())
    }

    async fn load_fired(&self) -> Result<(), SinkError> {
        let rows: Vec<(String, u32, String)> = self
            .ch
            .client()
            .query(&queries::meter_alert_kinds(self.ch.database()))
            .bind(WALLET_METER)
            .bind(WALLET_LOW)
            .bind(WALLET_EMPTY)
            .fetch_all()
            .await?;
        for (tenant, start, kind) in rows {
            let mut e = self.fired.entry((tenant, start as i64)).or_default();
            if !e.contains(&kind) {
                e.push(kind);
            }
        }
        Ok(())
    }

    /// One refresh: update the mirror, overlay memory, recompute every wallet, fire alerts.
    ///
    /// Errors: ClickHouse cannot be read (balances keep their last values).
    pub async fn refresh(&self) -> Result<(), SinkError> {
        let cat = self.shared.catalog();
        let any_wallet = cat.plans.values().any(|p| p.wallet.is_some());
        if !any_wallet {
            self.states.clear();
            return Ok(());
        }
        self.load(&cat).await?;
        let now = Utc::now();
        // Memory rows (newer than flushed ones) of wallet tenants.
        let mut overlay: HashMap<String, RowsOf> = HashMap::new();
        for (k, r) in self.shared.rows() {
            let name = self.shared.tenants().name(k.tenant);
            if !has_wallet(&cat, &name) {
                continue;
            }
            let def = cat.meter(k.meter);
            overlay.entry(name.to_string()).or_default().insert(
                (k.period_start, k.meter, k.partition),
                MirrorRow {
                    period_end: r.period_end,
                    value: def.value(r.raw),
                    through_offset: i64::MAX,
                },
            );
        }
        let mut tenants: Vec<String> = cat
            .tenants
            .keys()
            .filter(|t| has_wallet(&cat, t))
            .cloned()
            .collect();
        let mut computed = Vec::new();
        {
            let m = self.mirror.read().expect("mirror lock");
            tenants.extend(
                m.rows
                    .keys()
                    .chain(overlay.keys())
                    .filter(|t| !cat.tenants.contains_key(*t))
                    .cloned(),
            );
            tenants.sort();
            tenants.dedup();
            for id in &tenants {
                // The tenant in effect (subscription events included).
                let Some(tenant) = self.shared.tenant(id) else {
                    continue;
                };
                let mut rows = m.rows.get(id).cloned().unwrap_or_default();
                if let Some(o) = overlay.remove(id) {
                    rows.extend(o);
                }
                let state = compute(&cat, &tenant, &group(&rows), now);
                computed.push((tenant, state));
            }
        }
        for (n, (tenant, state)) in computed.into_iter().enumerate() {
            let id = tenant.id.to_string();
            if n < self.gauges_max {
                metrics::gauge!(t::WALLET_BALANCE, "tenant" => id.clone())
                    .set(state.balance.try_into().unwrap_or(0.0));
            }
            // Alerts only from a consistent view: this instance's partitions restored.
            let has = tenant.plan_for_period(state.period, now).wallet.is_some()
                && self.shared.partitions_ready();
            let due = due_alerts(&state, has, &self.fired(&id, state.period.start));
            self.states.insert(id.clone(), state.clone());
            for kind in due {
                if let Err(e) = self.fire(&tenant, &state, kind, now).await {
                    tracing::warn!(tenant = %id, kind, error = %e, "wallet alert not sent; retrying at the next refresh");
                    break;
                }
            }
        }
        self.states.retain(|k, _| tenants.binary_search(k).is_ok());
        Ok(())
    }

    async fn fire(
        &self,
        tenant: &Tenant,
        state: &WalletState,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SinkError> {
        let limit = if kind == WALLET_LOW {
            state.low_balance
        } else {
            Some(Decimal::ZERO)
        };
        let alert = Alert::new(
            &tenant.id,
            WALLET_METER,
            kind,
            state.period,
            state.balance,
            limit,
            &state.plan,
            "",
            now,
        );
        let stored: u64 = self
            .ch
            .client()
            .query(&queries::alert_count(self.ch.database()))
            .bind(&alert.alert_id)
            .fetch_one()
            .await?;
        if stored == 0 {
            if let Some(s) = &self.sink
                && let Err(e) = s.send(&alert).await
            {
                return Err(SinkError::Data(format!("producing the alert: {e}")));
            }
            self.ch.insert_alerts(std::slice::from_ref(&alert)).await?;
            metrics::counter!(t::ALERTS, "kind" => kind.to_string()).increment(1);
            tracing::info!(tenant = %tenant.id, kind, balance = %state.balance, "wallet alert");
        }
        let mut e = self
            .fired
            .entry((tenant.id.to_string(), state.period.start))
            .or_default();
        if !e.iter().any(|k| k == kind) {
            e.push(kind.to_string());
        }
        Ok(())
    }

    /// Refreshes every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("wallet balances refreshed again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "wallet refresh failed; keeping the last balances");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Groups a tenant's rows into periods, summing values over partitions.
fn group(rows: &RowsOf) -> Vec<PeriodUsage> {
    let mut out: BTreeMap<i64, PeriodUsage> = BTreeMap::new();
    for ((start, meter, _), r) in rows {
        let p = out.entry(*start).or_insert_with(|| PeriodUsage {
            period: Period {
                start: *start,
                end: r.period_end,
            },
            usage: BTreeMap::new(),
        });
        let v = p.usage.entry(*meter).or_insert(Decimal::ZERO);
        *v = v.saturating_add(r.value);
    }
    out.into_values().collect()
}

/// Deterministic ids of wallet alerts, for tests and consumers.
pub fn wallet_alert_id(tenant: &str, period_start: i64, kind: &str) -> String {
    alerts::alert_id(tenant, WALLET_METER, period_start, kind)
}

#[cfg(test)]
mod tests;
