//! The compiled plans and tenants: a plan's terms per meter, add-ons, thresholds and wallet,
//! a tenant's plan timeline, and a meter's limit for a tenant.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use super::tiers::{Tier, TiersMode};
use super::{Arith, PricingError};
use crate::features::FeatureValue;
use crate::meter::MeterId;
use crate::period::Period;

/// Included usage of a meter per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Included {
    /// The plan sets no included quantity (rate-only or tiered meters).
    None,
    /// This many units per usage period.
    Finite(Decimal),
    /// No cap: no limit, no overage, no threshold alerts.
    Unlimited,
}

/// A plan's terms for one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanMeter {
    /// The meter's name (for charge lines).
    pub name: Arc<str>,
    pub included: Included,
    /// One-time allowance (seed 004's Free tier "15 min one-time"): added to the limit in the
    /// tenant's first usage period only (see the module docs).
    pub included_once: Option<Decimal>,
    /// Price per unit above the limit.
    pub overage_rate: Option<Decimal>,
    /// The overage charge of a period never exceeds this.
    pub overage_cap: Option<Decimal>,
    /// Entitlement says no once usage reaches the limit.
    pub hard_limit: bool,
    /// Price per unit from the first unit.
    pub rate: Option<Decimal>,
    pub tiers: Option<(TiersMode, Vec<Tier>)>,
}

/// An add-on: `included` units of `meter` per unit held, for `price` per unit per period.
/// Without a meter it is a priced feature (seed 000: an extra phone number, call recording).
#[derive(Debug, Clone, PartialEq)]
pub struct Addon {
    pub meter: Option<MeterId>,
    /// The meter's name, when there is a meter.
    pub meter_name: Option<Arc<str>>,
    pub included: Decimal,
    pub price: Decimal,
    /// Features each unit grants or raises ([`crate::features`]).
    pub features: BTreeMap<String, FeatureValue>,
}

/// A usage alert threshold as a fraction of the limit; its kind is `"80%"` for 0.8.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub ratio: Decimal,
    pub kind: Arc<str>,
}

impl Threshold {
    pub fn new(ratio: Decimal) -> Self {
        let kind = match ratio.checked_mul(Decimal::ONE_HUNDRED) {
            Some(pct) => format!("{}%", pct.normalize()),
            None => format!("{}x", ratio.normalize()),
        };
        Self {
            ratio,
            kind: kind.into(),
        }
    }
}

/// Prepaid wallet terms of a plan (seed 001); see [`crate::wallet`].
#[derive(Debug, Clone, PartialEq)]
pub struct WalletPolicy {
    /// Entitlement says no once the balance is zero or below. `false`: the balance is kept
    /// and alerted on, but usage is never refused (e.g. seed 001's enterprise tenants).
    pub prepaid: bool,
    /// Credit added at the start of every usage period, in the plan's currency.
    pub monthly_grant: Decimal,
    /// `wallet_low` fires when the balance falls below this.
    pub low_balance: Option<Decimal>,
}

/// A compiled plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: String,
    pub display_name: String,
    /// ISO 4217 code; every amount of the plan is in it.
    pub currency: String,
    /// Per monthly usage period.
    pub base_fee: Decimal,
    /// Base-fee discount for tenants billed yearly (fraction).
    pub yearly_discount: Decimal,
    /// Grandfathered (seed 000): billable for the tenants configured on it, but never offered
    /// to new ones, so it cannot be `pricing.default_plan` nor the target of a plan change.
    pub legacy: bool,
    /// Fraction of the period's `revenue` meter.
    pub revenue_share: Option<Decimal>,
    pub thresholds: Vec<Threshold>,
    pub meters: BTreeMap<MeterId, PlanMeter>,
    pub addons: BTreeMap<String, Addon>,
    pub wallet: Option<WalletPolicy>,
    /// Features the plan grants ([`crate::features`]).
    pub features: BTreeMap<String, FeatureValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingCycle {
    Monthly,
    Yearly,
}

/// From `at` on, `plan` applies: a configured plan change (`[[tenants.<id>.plan_changes]]`)
/// or a subscription event (CONTRACT section 10, [`crate::subscription`]), which may also
/// change the add-ons and the billing cycle, or cancel.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChange {
    pub at: DateTime<Utc>,
    /// The plan from `at` on; for a cancellation, the plan the tenant leaves.
    pub plan: Arc<Plan>,
    /// Add-ons held from `at` on; `None` keeps those held before (configured plan changes
    /// carry add-ons over).
    pub addons: Option<BTreeMap<String, u32>>,
    /// The billing cycle from `at` on; `None` keeps the one before.
    pub billing_cycle: Option<BillingCycle>,
    /// From `at` on the tenant has no subscription: no base fee, usage is `no_subscription`.
    pub canceled: bool,
}

impl PlanChange {
    /// A plain plan change: from `at` on, `plan`, with add-ons and billing cycle kept.
    pub fn to(at: DateTime<Utc>, plan: Arc<Plan>) -> PlanChange {
        PlanChange {
            at,
            plan,
            addons: None,
            billing_cycle: None,
            canceled: false,
        }
    }
}

/// A compiled tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: Arc<str>,
    /// The plan before any plan change.
    pub plan: Arc<Plan>,
    /// In increasing time order.
    pub plan_changes: Vec<PlanChange>,
    pub tz: Tz,
    pub anchor_day: u32,
    pub billing_cycle: BillingCycle,
    /// Add-on name -> units held.
    pub addons: BTreeMap<String, u32>,
    pub stripe_customer_id: Option<String>,
    /// Overrides the plan's `wallet.low_balance`.
    pub wallet_low_balance: Option<Decimal>,
    /// False for tenants that are only on the default plan.
    pub configured: bool,
}

impl Tenant {
    pub fn on_default_plan(id: &str, plan: Arc<Plan>) -> Tenant {
        Tenant {
            id: id.into(),
            plan,
            plan_changes: vec![],
            tz: Tz::UTC,
            anchor_day: 1,
            billing_cycle: BillingCycle::Monthly,
            addons: BTreeMap::new(),
            stripe_customer_id: None,
            wallet_low_balance: None,
            configured: false,
        }
    }

    /// The plan in effect at `t`.
    pub fn plan_at(&self, t: DateTime<Utc>) -> &Arc<Plan> {
        self.plan_changes
            .iter()
            .rev()
            .find(|c| c.at <= t)
            .map(|c| &c.plan)
            .unwrap_or(&self.plan)
    }

    /// The plan whose limits and rates govern a whole period, as known at `now`: the plan in
    /// effect at the period's last second, or at `now` if the period is still running (the
    /// plan left, for a subscription canceled then); see [`Tenant::governing_terms`].
    pub fn plan_for_period(&self, period: Period, now: DateTime<Utc>) -> &Arc<Plan> {
        self.governing_terms(period, now).plan
    }

    /// The usage period containing `t`.
    pub fn period_at(&self, t: DateTime<Utc>) -> Period {
        crate::period::period_containing(self.tz, self.anchor_day, t)
    }

    /// Add-on units the tenant holds of add-on `name` (its latest known add-ons).
    pub fn addon_units(&self, name: &str) -> u32 {
        self.latest_addons().get(name).copied().unwrap_or(0)
    }

    /// The tenant's `wallet_low` threshold under `plan`: its own override, else the plan's.
    pub fn wallet_low_balance(&self, plan: &Plan) -> Option<Decimal> {
        self.wallet_low_balance
            .or_else(|| plan.wallet.as_ref().and_then(|w| w.low_balance))
    }

    /// The meter's limit for this tenant under `plan`, in meter units: `included` (plus the
    /// one-time allowance when `first_period`) plus the add-ons' included units. `None` when
    /// the meter is unlimited, or when the plan sets neither `included` nor `included_once`
    /// for it (rate-only or tiered meters). A meter with only a one-time allowance has a
    /// limit of 0 (plus add-ons) after the first period: the allowance is not renewed.
    ///
    /// Never panics: a limit beyond [`Decimal`]'s range saturates at `Decimal::MAX` (see
    /// [`Self::try_limit`]).
    ///
    /// The add-ons are the tenant's latest known ones (after every change of its timeline);
    /// for a given period use [`Tenant::governing_terms`]`(..).limit(..)`, which takes the
    /// add-ons held then.
    pub fn limit(&self, plan: &Plan, meter: MeterId, first_period: bool) -> Option<Decimal> {
        limit_with(
            Arith::Saturating,
            plan,
            self.latest_addons(),
            meter,
            first_period,
        )
        .unwrap_or(Some(Decimal::MAX))
    }

    /// [`Self::limit`], checked: an error when add-on units x included units (or their sum)
    /// leave [`Decimal`]'s range.
    pub fn try_limit(
        &self,
        plan: &Plan,
        meter: MeterId,
        first_period: bool,
    ) -> Result<Option<Decimal>, PricingError> {
        limit_with(
            Arith::Checked,
            plan,
            self.latest_addons(),
            meter,
            first_period,
        )
    }
}

/// The limit of `meter` under `plan` with `addons` held (see [`Tenant::limit`]).
pub(super) fn limit_with(
    ar: Arith,
    plan: &Plan,
    addons: &BTreeMap<String, u32>,
    meter: MeterId,
    first_period: bool,
) -> Result<Option<Decimal>, PricingError> {
    let Some(pm) = plan.meters.get(&meter) else {
        return Ok(None);
    };
    let what = || format!("the limit of {}", pm.name);
    let mut base = match (pm.included, pm.included_once) {
        (Included::Unlimited, _) => return Ok(None),
        (Included::Finite(d), _) => d,
        (Included::None, Some(_)) => Decimal::ZERO,
        (Included::None, None) => return Ok(None),
    };
    if first_period {
        base = ar.add(base, pm.included_once.unwrap_or_default(), &what)?;
    }
    for (name, a) in plan.addons.iter().filter(|(_, a)| a.meter == Some(meter)) {
        let units = addons.get(name).copied().unwrap_or(0);
        let units = ar.mul(a.included, Decimal::from(units), &what)?;
        base = ar.add(base, units, &what)?;
    }
    Ok(Some(base))
}
