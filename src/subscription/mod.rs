//! Subscriptions as events (CONTRACT section 10), pure: a `subscription.updated` or
//! `subscription.canceled` checked against the catalog and the tenant ([`resolve`]) becomes a
//! [`SubscriptionRecord`], the row stored in ClickHouse `subscriptions` (and, for what that
//! table has no column for, the internal `subscription_details`); a tenant's records laid
//! over its configured starting state give the tenant in effect ([`merge`]), whose
//! plan-change timeline ([`crate::pricing::PlanChange`]) pricing, limits, alerts and
//! entitlements read (see `crate::pricing::terms`).
//!
//! The processor ([`crate::state`]) applies records in partition order with the tenant's
//! usage, writes them in the flush that covers their offsets, and restores them on
//! assignment; readers get the merged tenant through [`crate::state::Shared::tenant`].
//!
//! Rules, and decisions where CONTRACT section 10 is silent:
//!
//! - `unknown_plan`: the plan, or an add-on in `addons`, is not in the configuration (an
//!   add-on must belong to the plan named).
//! - `invalid_data`: a tenant not yet known without `timezone` and `anchor_day`; a known
//!   tenant giving a different time zone or anchor day; a plan in another currency than the
//!   tenant's (charges of a period have one currency); moving onto a `legacy` plan (it is
//!   not offered to new tenants; a tenant already on it may change its add-ons).
//! - `unknown_tenant`: `subscription.canceled` for a tenant neither configured, nor on the
//!   default plan, nor created by an earlier event.
//! - A tenant created by an event has no subscription before its first `effective_at`
//!   (usage before it is `no_subscription`, and its first period's base fee is prorated
//!   from it), unless the catalog has a `default_plan`: it was on that plan until then.
//! - Changes are kept in `effective_at` order; two at the same second apply in partition
//!   order (the later wins). A configured `plan_changes` entry stays where it is in that
//!   order and keeps the add-ons before it.
//! - A record whose plan a reloaded configuration no longer has is skipped (logged).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::event::{CycleName, ErrorCode, Rejection, SubscriptionCanceled, SubscriptionUpdated};
use crate::pricing::{BillingCycle, PlanChange, Tenant};

/// Source of the events the HTTP API produces.
pub const API_SOURCE: &str = "callmeter-api";

/// One applied subscription event.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRecord {
    pub tenant: Arc<str>,
    /// The plan from `effective_at` on; for a cancellation, the plan left.
    pub plan: String,
    /// Add-on id -> units held from `effective_at` on (none for a cancellation).
    pub addons: BTreeMap<String, u32>,
    pub billing_cycle: BillingCycle,
    /// Unix seconds.
    pub effective_at: i64,
    pub canceled: bool,
    pub event_id: String,
    pub partition: i32,
    /// The offset after the event's (a flush position covering it).
    pub through_offset: i64,
    /// Given with the event (required when it created the tenant).
    pub timezone: Option<String>,
    pub anchor_day: Option<u32>,
    pub stripe_customer_id: Option<String>,
}

impl SubscriptionRecord {
    /// `effective_at` as a time.
    pub fn effective(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.effective_at, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The add-ons as the `addons` column stores them: a JSON object, keys sorted.
    pub fn addons_json(&self) -> String {
        serde_json::to_string(&self.addons).unwrap_or_else(|_| "{}".into())
    }
}

/// `monthly` or `yearly`.
pub fn cycle_str(c: BillingCycle) -> &'static str {
    match c {
        BillingCycle::Monthly => "monthly",
        BillingCycle::Yearly => "yearly",
    }
}

/// Parses a stored billing cycle (`monthly` for anything else).
pub fn parse_cycle(s: &str) -> BillingCycle {
    match s {
        "yearly" => BillingCycle::Yearly,
        _ => BillingCycle::Monthly,
    }
}

/// A subscription event's data.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Updated(&'a SubscriptionUpdated),
    Canceled(&'a SubscriptionCanceled),
}

/// Where an event sits: tenant, id, partition and offset.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub partition: i32,
    pub offset: i64,
}

fn rejection(code: ErrorCode, msg: String) -> Rejection {
    Rejection::new(code, msg)
}

/// Checks a subscription event against the catalog and the tenant in effect (`None`: not
/// known yet) and returns the record to apply.
///
/// Errors: `unknown_plan`, `invalid_data`, `unknown_tenant` (see the module docs).
pub fn resolve(
    cat: &Catalog,
    current: Option<&Tenant>,
    change: Change<'_>,
    at: Origin<'_>,
) -> Result<SubscriptionRecord, Rejection> {
    let record = |plan: String, addons, cycle, eff: DateTime<Utc>, canceled| SubscriptionRecord {
        tenant: at.tenant.into(),
        plan,
        addons,
        billing_cycle: cycle,
        effective_at: eff.timestamp(),
        canceled,
        event_id: at.event_id.to_string(),
        partition: at.partition,
        through_offset: at.offset.saturating_add(1),
        timezone: None,
        anchor_day: None,
        stripe_customer_id: None,
    };
    match change {
        Change::Canceled(c) => {
            let Some(t) = current else {
                return Err(rejection(
                    ErrorCode::UnknownTenant,
                    format!("tenant `{}` has no subscription to cancel", at.tenant),
                ));
            };
            let eff = c.effective_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
            let terms = t.terms_at(eff);
            Ok(record(
                terms.plan.id.clone(),
                BTreeMap::new(),
                terms.billing_cycle,
                eff,
                true,
            ))
        }
        Change::Updated(u) => {
            let plan = cat.plans.get(&u.plan).ok_or_else(|| {
                rejection(
                    ErrorCode::UnknownPlan,
                    format!("no plan named `{}` is configured", u.plan),
                )
            })?;
            if let Some(a) = u.addons.keys().find(|a| !plan.addons.contains_key(*a)) {
                return Err(rejection(
                    ErrorCode::UnknownPlan,
                    format!("plan `{}` has no add-on `{a}`", u.plan),
                ));
            }
            let eff = u.effective_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
            let invalid = |m: String| rejection(ErrorCode::InvalidData, m);
            let cycle = match (u.billing_cycle, current) {
                (Some(CycleName::Monthly), _) => BillingCycle::Monthly,
                (Some(CycleName::Yearly), _) => BillingCycle::Yearly,
                (None, Some(t)) => t.terms_at(eff).billing_cycle,
                (None, None) => BillingCycle::Monthly,
            };
            match current {
                None => {
                    if u.timezone.is_none() || u.anchor_day.is_none() {
                        return Err(invalid(format!(
                            "tenant `{}` is not known yet: its first subscription.updated needs `timezone` and `anchor_day`",
                            at.tenant
                        )));
                    }
                    if plan.legacy {
                        return Err(invalid(format!(
                            "plan `{}` is legacy (grandfathered): it is not offered to new tenants",
                            plan.id
                        )));
                    }
                }
                Some(t) => {
                    if let Some(tz) = &u.timezone
                        && tz != t.tz.name()
                    {
                        return Err(invalid(format!(
                            "tenant `{}` has time zone {}: it cannot change to {tz}",
                            at.tenant,
                            t.tz.name()
                        )));
                    }
                    if let Some(d) = u.anchor_day
                        && d != t.anchor_day
                    {
                        return Err(invalid(format!(
                            "tenant `{}` has anchor day {}: it cannot change to {d}",
                            at.tenant, t.anchor_day
                        )));
                    }
                    if plan.currency != t.plan.currency {
                        return Err(invalid(format!(
                            "plan `{}` is in {}, tenant `{}` is billed in {}: a subscription cannot change the currency",
                            plan.id, plan.currency, at.tenant, t.plan.currency
                        )));
                    }
                    let before = t.terms_at(eff);
                    if plan.legacy && (before.plan.id != plan.id || before.canceled) {
                        return Err(invalid(format!(
                            "plan `{}` is legacy (grandfathered): tenants can leave it but not move onto it",
                            plan.id
                        )));
                    }
                }
            }
            let mut r = record(plan.id.clone(), u.addons.clone(), cycle, eff, false);
            r.timezone = u.timezone.clone();
            r.anchor_day = u.anchor_day;
            r.stripe_customer_id = u.stripe_customer_id.clone();
            Ok(r)
        }
    }
}

/// The tenant in effect: `base` (configured, or on the default plan; `None` for a tenant
/// only events know) with `records` (in partition order) applied. `None` when there is no
/// base and no record creates the tenant.
pub fn merge(
    cat: &Catalog,
    name: &str,
    base: Option<&Arc<Tenant>>,
    records: &[SubscriptionRecord],
) -> Option<Arc<Tenant>> {
    if records.is_empty() {
        return base.cloned();
    }
    let mut t: Tenant = match base {
        Some(b) => (**b).clone(),
        None => {
            let first = records
                .iter()
                .find(|r| !r.canceled && r.timezone.is_some() && cat.plans.contains_key(&r.plan))?;
            let plan = cat.plans[&first.plan].clone();
            // Before its first change the tenant was on the default plan, if there is one,
            // else it had no subscription.
            let (plan, plan_changes) = match &cat.default_plan {
                Some(dp) => (dp.clone(), vec![]),
                None => (
                    plan.clone(),
                    vec![PlanChange {
                        at: DateTime::<Utc>::MIN_UTC,
                        plan,
                        addons: Some(BTreeMap::new()),
                        billing_cycle: None,
                        canceled: true,
                    }],
                ),
            };
            Tenant {
                id: name.into(),
                plan,
                plan_changes,
                tz: first
                    .timezone
                    .as_deref()
                    .and_then(|z| z.parse().ok())
                    .unwrap_or(chrono_tz::Tz::UTC),
                anchor_day: first.anchor_day.unwrap_or(1),
                billing_cycle: BillingCycle::Monthly,
                addons: BTreeMap::new(),
                stripe_customer_id: None,
                wallet_low_balance: None,
                configured: true,
            }
        }
    };
    for r in records {
        let at = r.effective();
        let plan = if r.canceled {
            t.terms_at(at).plan.clone()
        } else {
            match cat.plans.get(&r.plan) {
                Some(p) => p.clone(),
                None => {
                    tracing::warn!(tenant = name, plan = %r.plan, event_id = %r.event_id,
                        "stored subscription names a plan no longer configured: skipped");
                    continue;
                }
            }
        };
        let change = PlanChange {
            at,
            plan,
            addons: Some(r.addons.clone()),
            billing_cycle: Some(r.billing_cycle),
            canceled: r.canceled,
        };
        let pos = t.plan_changes.partition_point(|c| c.at <= at);
        t.plan_changes.insert(pos, change);
        if let Some(s) = &r.stripe_customer_id {
            t.stripe_customer_id = Some(s.clone());
        }
    }
    Some(Arc::new(t))
}

#[cfg(test)]
mod tests;
