//! Plans, tenants and charges (CONTRACT section 3), pure.
//!
//! A meter's *limit* for a tenant is the plan's `included` quantity plus, for each add-on
//! the tenant holds on that meter, units x the add-on's `included`. Charges for a usage period
//! are computed line by line, each line rounded half-up to the minor unit (2 decimals):
//! base fee (less the yearly discount, prorated by time across plan changes), overage
//! (`min(cap, (usage - limit)+ x overage_rate)`), per-unit `rate x usage`, graduated or volume
//! tiers (Stripe's `tiers_mode` semantics: <https://docs.stripe.com/products-prices/pricing-models#tiered-pricing>),
//! revenue share (not below zero) and add-on prices. The total is the sum of the lines.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::meter::{MeterId, round_half_up};
use crate::period::Period;

/// Included usage of a meter per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Included {
    /// The plan sets no included quantity (rate-only or tiered meters).
    None,
    Finite(Decimal),
    Unlimited,
}

/// How tiers price the units of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TiersMode {
    /// Each tier's units at that tier's price.
    Graduated,
    /// All units at the price of the tier the total falls in.
    Volume,
}

/// One price tier: units up to `up_to` (inclusive; `None` = infinity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
    pub flat_fee: Decimal,
}

/// A plan's terms for one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanMeter {
    pub included: Included,
    /// One-time allowance (seed 004's Free tier "15 min one-time"): added to the limit in the
    /// tenant's first usage period only.
    pub included_once: Option<Decimal>,
    pub overage_rate: Option<Decimal>,
    pub overage_cap: Option<Decimal>,
    /// Entitlement says no once usage reaches the limit.
    pub hard_limit: bool,
    /// Price per unit from the first unit.
    pub rate: Option<Decimal>,
    pub tiers: Option<(TiersMode, Vec<Tier>)>,
}

/// An add-on: `included` units of `meter` per unit held, for `price` per unit per period.
#[derive(Debug, Clone, PartialEq)]
pub struct Addon {
    pub meter: Option<MeterId>,
    pub included: Decimal,
    pub price: Decimal,
}

/// A usage alert threshold as a fraction of the limit; its kind is `"80%"` for 0.8.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub ratio: Decimal,
    pub kind: Arc<str>,
}

impl Threshold {
    pub fn new(ratio: Decimal) -> Self {
        let pct = (ratio * Decimal::ONE_HUNDRED).normalize();
        Self {
            ratio,
            kind: format!("{pct}%").into(),
        }
    }
}

/// Prepaid wallet terms of a plan (seed 001).
#[derive(Debug, Clone, PartialEq)]
pub struct WalletPolicy {
    pub prepaid: bool,
    pub monthly_grant: Decimal,
    pub low_balance: Option<Decimal>,
}

/// A compiled plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: String,
    pub display_name: String,
    pub currency: String,
    /// Per monthly usage period.
    pub base_fee: Decimal,
    /// Base-fee discount for tenants billed yearly (fraction).
    pub yearly_discount: Decimal,
    /// Grandfathered: not offered to new tenants, still billable.
    pub legacy: bool,
    pub revenue_share: Option<Decimal>,
    pub thresholds: Vec<Threshold>,
    pub meters: BTreeMap<MeterId, PlanMeter>,
    pub addons: BTreeMap<String, Addon>,
    pub wallet: Option<WalletPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingCycle {
    Monthly,
    Yearly,
}

/// From `at` on, `plan` applies.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChange {
    pub at: DateTime<Utc>,
    pub plan: Arc<Plan>,
}

/// A compiled tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: Arc<str>,
    /// The plan before any plan change.
    pub plan: Arc<Plan>,
    pub plan_changes: Vec<PlanChange>,
    pub tz: Tz,
    pub anchor_day: u32,
    pub billing_cycle: BillingCycle,
    pub addons: BTreeMap<String, u32>,
    pub stripe_customer_id: Option<String>,
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
    /// effect at the period's end, or at `now` if the period is still running.
    pub fn plan_for_period(&self, period: Period, now: DateTime<Utc>) -> &Arc<Plan> {
        let end = period.end_utc() - chrono::Duration::seconds(1);
        self.plan_at(end.min(now.max(period.start_utc())))
    }

    /// The usage period containing `t`.
    pub fn period_at(&self, t: DateTime<Utc>) -> Period {
        crate::period::period_containing(self.tz, self.anchor_day, t)
    }

    /// Add-on units the tenant holds of add-on `name`.
    pub fn addon_units(&self, name: &str) -> u32 {
        self.addons.get(name).copied().unwrap_or(0)
    }

    /// The meter's limit for this tenant under `plan`: `None` when unlimited or when the plan
    /// sets no included quantity. `first_period` grants the one-time allowance.
    pub fn limit(&self, plan: &Plan, meter: MeterId, first_period: bool) -> Option<Decimal> {
        let pm = plan.meters.get(&meter)?;
        let once = if first_period { pm.included_once } else { None };
        let base = match (pm.included, once) {
            (Included::Unlimited, _) => return None,
            (Included::Finite(d), o) => d + o.unwrap_or_default(),
            (Included::None, Some(o)) => o,
            (Included::None, None) => return None,
        };
        let extra: Decimal = plan
            .addons
            .iter()
            .filter(|(_, a)| a.meter == Some(meter))
            .map(|(name, a)| a.included * Decimal::from(self.addon_units(name)))
            .sum();
        Some(base + extra)
    }
}

/// One line of a period's charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeLine {
    /// `base_fee`, `overage`, `usage`, `tiered`, `revenue_share`, `addon`.
    pub kind: &'static str,
    /// The meter priced, if any.
    pub meter: Option<String>,
    /// The add-on priced (kind `addon`) or the plan of a prorated base fee.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Rounded half-up to 2 decimals.
    #[serde(with = "crate::pricing::money_str")]
    pub amount: Decimal,
}

/// A period's charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charges {
    pub lines: Vec<ChargeLine>,
    #[serde(with = "crate::pricing::money_str")]
    pub total: Decimal,
}

impl Charges {
    /// The sum of all lines but the base fee: what a prepaid wallet pays for.
    pub fn usage_total(&self) -> Decimal {
        self.lines
            .iter()
            .filter(|l| l.kind != "base_fee")
            .map(|l| l.amount)
            .sum()
    }
}

/// Serializes money as a string with exactly 2 decimals (`"79.00"`).
pub mod money_str {
    use rust_decimal::Decimal;
    use serde::Serializer;

    pub fn format(d: Decimal) -> String {
        let mut r = super::round_money(d);
        r.rescale(2);
        r.to_string()
    }

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }
}

/// Rounds half-up to the currency's minor unit (2 decimals).
pub fn round_money(d: Decimal) -> Decimal {
    round_half_up(d, 2)
}

/// Usage of one meter in a period, with its name (for charge lines).
#[derive(Debug, Clone, PartialEq)]
pub struct MeterUsage {
    pub meter: MeterId,
    pub name: String,
    pub usage: Decimal,
}

/// Overage charge of `usage` above `limit`, capped.
pub fn overage_charge(pm: &PlanMeter, usage: Decimal, limit: Decimal) -> Decimal {
    let Some(rate) = pm.overage_rate else {
        return Decimal::ZERO;
    };
    let over = (usage - limit).max(Decimal::ZERO);
    let charge = over * rate;
    match pm.overage_cap {
        Some(cap) => charge.min(cap),
        None => charge,
    }
}

/// Tiered charge of `units` (Stripe semantics; `up_to` bounds are inclusive).
pub fn tiered_charge(mode: TiersMode, tiers: &[Tier], units: Decimal) -> Decimal {
    let units = units.max(Decimal::ZERO);
    match mode {
        TiersMode::Graduated => {
            let mut total = Decimal::ZERO;
            let mut lower = Decimal::ZERO;
            for t in tiers {
                if units <= lower && lower > Decimal::ZERO {
                    break;
                }
                let upper = t.up_to.unwrap_or(Decimal::MAX);
                let in_tier = (units.min(upper) - lower).max(Decimal::ZERO);
                if in_tier > Decimal::ZERO {
                    total += in_tier * t.unit_price + t.flat_fee;
                }
                if units <= upper {
                    break;
                }
                lower = upper;
            }
            total
        }
        TiersMode::Volume => {
            let tier = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| units <= u))
                .unwrap_or_else(|| tiers.last().expect("tiers are not empty"));
            if units.is_zero() {
                Decimal::ZERO
            } else {
                units * tier.unit_price + tier.flat_fee
            }
        }
    }
}

/// Inputs of a period's charge computation.
pub struct ChargeInput<'a> {
    pub tenant: &'a Tenant,
    pub period: Period,
    /// Usage of every meter in the period (missing meters count as zero).
    pub usage: &'a [MeterUsage],
    /// Whether this is the tenant's first usage period (one-time allowances).
    pub first_period: bool,
    /// The clock: plan changes after `now` are not yet in effect.
    pub now: DateTime<Utc>,
}

/// Computes the charges of a usage period (see the module docs).
pub fn charges(input: &ChargeInput<'_>) -> Charges {
    let t = input.tenant;
    let period = input.period;
    let plan = t.plan_for_period(period, input.now);
    let mut lines = Vec::new();

    // Base fee, prorated by time across plan changes inside the period.
    let segments = plan_segments(t, period, input.now);
    let prorated = segments.len() > 1;
    for (plan_seg, secs) in &segments {
        let mut fee = plan_seg.base_fee;
        if t.billing_cycle == BillingCycle::Yearly {
            fee *= Decimal::ONE - plan_seg.yearly_discount;
        }
        if prorated {
            fee = fee * Decimal::from(*secs) / Decimal::from(period.seconds());
        }
        let amount = round_money(fee);
        if !amount.is_zero() {
            lines.push(ChargeLine {
                kind: "base_fee",
                meter: None,
                item: prorated.then(|| plan_seg.id.clone()),
                amount,
            });
        }
    }

    let usage_of = |m: MeterId| {
        input
            .usage
            .iter()
            .find(|u| u.meter == m)
            .map(|u| u.usage)
            .unwrap_or_default()
    };
    let name_of = |m: MeterId| {
        input
            .usage
            .iter()
            .find(|u| u.meter == m)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| format!("meter#{}", m.0))
    };
    for (mid, pm) in &plan.meters {
        let usage = usage_of(*mid);
        if let Some(limit) = t.limit(plan, *mid, input.first_period) {
            let amount = round_money(overage_charge(pm, usage, limit));
            if !amount.is_zero() {
                lines.push(ChargeLine {
                    kind: "overage",
                    meter: Some(name_of(*mid)),
                    item: None,
                    amount,
                });
            }
        }
        if let Some(rate) = pm.rate {
            let amount = round_money(rate * usage.max(Decimal::ZERO));
            if !amount.is_zero() {
                lines.push(ChargeLine {
                    kind: "usage",
                    meter: Some(name_of(*mid)),
                    item: None,
                    amount,
                });
            }
        }
        if let Some((mode, tiers)) = &pm.tiers {
            let amount = round_money(tiered_charge(*mode, tiers, usage));
            if !amount.is_zero() {
                lines.push(ChargeLine {
                    kind: "tiered",
                    meter: Some(name_of(*mid)),
                    item: None,
                    amount,
                });
            }
        }
    }
    if let Some(share) = plan.revenue_share {
        let revenue = usage_of(crate::meter::REVENUE);
        let amount = round_money((revenue * share).max(Decimal::ZERO));
        if !amount.is_zero() {
            lines.push(ChargeLine {
                kind: "revenue_share",
                meter: Some("revenue".into()),
                item: None,
                amount,
            });
        }
    }
    for (name, addon) in &plan.addons {
        let units = t.addon_units(name);
        let amount = round_money(addon.price * Decimal::from(units));
        if !amount.is_zero() {
            lines.push(ChargeLine {
                kind: "addon",
                meter: addon.meter.map(name_of),
                item: Some(name.clone()),
                amount,
            });
        }
    }
    let total = lines.iter().map(|l| l.amount).sum();
    Charges { lines, total }
}

/// The plans in effect during `period` with the seconds each was in effect (only up to `now`
/// for changes: a future change is not yet known to apply).
fn plan_segments(t: &Tenant, period: Period, now: DateTime<Utc>) -> Vec<(Arc<Plan>, i64)> {
    let mut cuts: Vec<(i64, Arc<Plan>)> =
        vec![(period.start, t.plan_at(period.start_utc()).clone())];
    for c in &t.plan_changes {
        let at = c.at.timestamp();
        if at > period.start && at < period.end && c.at <= now.max(period.start_utc()) {
            cuts.push((at, c.plan.clone()));
        }
    }
    let mut out: Vec<(Arc<Plan>, i64)> = Vec::new();
    for (i, (at, plan)) in cuts.iter().enumerate() {
        let until = cuts.get(i + 1).map(|c| c.0).unwrap_or(period.end);
        if let Some(last) = out.last_mut()
            && Arc::ptr_eq(&last.0, plan)
        {
            last.1 += until - at;
            continue;
        }
        out.push((plan.clone(), until - at));
    }
    out
}

/// The entitlement answer of CONTRACT section 6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entitlement {
    pub allowed: bool,
    pub reason: Option<String>,
    #[serde(serialize_with = "opt_dec_str")]
    pub remaining: Option<Decimal>,
}

fn opt_dec_str<S: serde::Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.normalize().to_string()),
        None => s.serialize_none(),
    }
}

/// Whether the tenant may use more of `meter`: no once a hard limit is reached, or when a
/// prepaid wallet is empty. `remaining` is the limit left (never negative), `None` when the
/// meter has no finite limit.
pub fn entitlement(
    plan: &Plan,
    limit: Option<Decimal>,
    meter: MeterId,
    usage: Decimal,
    wallet_balance: Option<Decimal>,
) -> Entitlement {
    let remaining = limit.map(|l| (l - usage).max(Decimal::ZERO));
    let pm = plan.meters.get(&meter);
    if let (Some(pm), Some(l)) = (pm, limit)
        && pm.hard_limit
        && usage >= l
    {
        return Entitlement {
            allowed: false,
            reason: Some("hard_limit_reached".into()),
            remaining,
        };
    }
    if plan.wallet.as_ref().is_some_and(|w| w.prepaid)
        && wallet_balance.is_some_and(|b| b <= Decimal::ZERO)
    {
        return Entitlement {
            allowed: false,
            reason: Some("wallet_empty".into()),
            remaining,
        };
    }
    Entitlement {
        allowed: true,
        reason: None,
        remaining,
    }
}
