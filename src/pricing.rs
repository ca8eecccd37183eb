//! Plans, tenants and charges (CONTRACT section 3), pure.
//!
//! A meter's *limit* for a tenant is the plan's `included` quantity plus, for each add-on
//! the tenant holds on that meter, units x the add-on's `included`. Charges for a usage period
//! are computed line by line, each line rounded half-up to the minor unit (2 decimals):
//! base fee (less the yearly discount, prorated by time across plan changes), overage
//! (`min(cap, (usage - limit)+ x overage_rate)`), per-unit `rate x usage`, graduated or volume
//! tiers (Stripe's `tiers_mode` semantics: <https://docs.stripe.com/products-prices/pricing-models#tiered-pricing>),
//! revenue share (not below zero) and add-on prices. The total is the sum of the lines.
//!
//! Decisions where CONTRACT section 3 is silent:
//!
//! - **Plan changes.** From a change's instant on, the new plan's limits and rates apply to the
//!   whole period's usage ([`Tenant::plan_for_period`]); the base fee is prorated by the
//!   seconds each plan was in effect (one `base_fee` line per plan, `item` = the plan id).
//!   A change scheduled after `now` is not applied yet.
//! - **One-time allowances** (`included_once`, seed 004's Free tier "15 min one-time") are
//!   added to the limit of the tenant's *first usage period* only (the period of its first
//!   event; give the tenant an `anchor_day` on its sign-up day so that this period is a full
//!   month). They are not renewed: afterwards the limit is the renewable `included` quantity,
//!   or 0 when the plan has none, so a `hard_limit` then blocks.
//! - **Tiers** follow Stripe (`up_to` inclusive; the first tier is always entered, so its
//!   `flat_fee` is charged even at zero usage, as in Stripe's flat-fee-and-overages model).
//! - **Add-ons** are charged per unit per period at the price of the plan governing the
//!   period, without proration, for the units held at the period's end (or at the
//!   subscription's cancellation). Subscription events (CONTRACT section 10) extend the
//!   plan-change timeline with add-on and billing-cycle changes and cancellations: see
//!   [`terms`] for how each is priced.
//! - Lines whose rounded amount is zero are left out; a period without charges has no lines
//!   and a total of `0.00`.
//!
//! Arithmetic is checked. The `try_` functions ([`try_charges`], [`try_overage_charge`],
//! [`try_tiered_charge`], [`Tenant::try_limit`]) return a [`PricingError`] naming the line
//! when an amount would leave [`Decimal`]'s range (only absurd usage or prices get there);
//! the plain ones never panic either: such an amount saturates at `Decimal::MAX` (or `MIN`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::features::FeatureValue;
use crate::meter::{MeterId, round_half_up};
use crate::period::Period;

mod terms;

use terms::governing_segment;
pub use terms::{Segment, Terms};

/// A charge that cannot be computed: an amount beyond [`Decimal`]'s range (about 7.9e28).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error(
        "{what} is beyond the largest amount that can be computed ({})",
        Decimal::MAX
    )]
    Overflow {
        /// The line or quantity, e.g. `overage of call_minutes`.
        what: String,
    },
}

/// Checked (report) or saturating (never fail) arithmetic, so both variants share one
/// implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Checked,
    Saturating,
}

impl Arith {
    fn overflow(what: &dyn Fn() -> String) -> PricingError {
        PricingError::Overflow { what: what() }
    }

    fn add(
        self,
        a: Decimal,
        b: Decimal,
        what: &dyn Fn() -> String,
    ) -> Result<Decimal, PricingError> {
        match self {
            Arith::Checked => a.checked_add(b).ok_or_else(|| Self::overflow(what)),
            Arith::Saturating => Ok(a.saturating_add(b)),
        }
    }

    fn sub(
        self,
        a: Decimal,
        b: Decimal,
        what: &dyn Fn() -> String,
    ) -> Result<Decimal, PricingError> {
        match self {
            Arith::Checked => a.checked_sub(b).ok_or_else(|| Self::overflow(what)),
            Arith::Saturating => Ok(a.saturating_sub(b)),
        }
    }

    fn mul(
        self,
        a: Decimal,
        b: Decimal,
        what: &dyn Fn() -> String,
    ) -> Result<Decimal, PricingError> {
        match self {
            Arith::Checked => a.checked_mul(b).ok_or_else(|| Self::overflow(what)),
            Arith::Saturating => Ok(a.saturating_mul(b)),
        }
    }

    /// `a / b` for `b >= 1` (proration), which cannot overflow; zero for `b = 0`.
    fn div(self, a: Decimal, b: Decimal) -> Decimal {
        a.checked_div(b).unwrap_or(Decimal::ZERO)
    }

    fn sum(
        self,
        items: impl IntoIterator<Item = Decimal>,
        what: &dyn Fn() -> String,
    ) -> Result<Decimal, PricingError> {
        items
            .into_iter()
            .try_fold(Decimal::ZERO, |acc, d| self.add(acc, d, what))
    }
}

/// The saturating variants cannot fail; this unwraps them without a panic path.
fn saturated(r: Result<Decimal, PricingError>) -> Decimal {
    r.unwrap_or(Decimal::MAX)
}

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
    /// Price per unit in this tier, in the plan's currency.
    pub unit_price: Decimal,
    /// Charged once when usage enters this tier (the first tier is always entered).
    pub flat_fee: Decimal,
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
fn limit_with(
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

/// One line of a period's charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChargeLine {
    /// `base_fee`, `overage`, `usage`, `tiered`, `revenue_share`, `addon`.
    #[schema(value_type = String, example = "base_fee")]
    pub kind: &'static str,
    /// The meter priced, if any (`revenue` for `revenue_share`; the add-on's meter, if any).
    #[schema(example = json!(null))]
    pub meter: Option<String>,
    /// The add-on priced (kind `addon`), or the plan of a prorated base fee; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// What the line prices, as a decimal string: `base_fee` the fraction of the period the
    /// plan was in effect (1 for a whole period, else half-up to 6 places); `overage` the
    /// units above the limit; `usage` and `tiered` the meter's usage; `revenue_share` the
    /// period's revenue; `addon` the units held.
    #[serde(serialize_with = "dec_str")]
    #[schema(value_type = String, example = "1")]
    pub quantity: Decimal,
    /// In the plan's currency, rounded half-up to 2 decimals; serialized as `"12.50"`.
    #[serde(with = "crate::pricing::money_str")]
    #[schema(value_type = String, example = "79.00")]
    pub amount: Decimal,
}

/// A period's charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Charges {
    pub lines: Vec<ChargeLine>,
    /// The sum of the lines, 2 decimals.
    #[serde(with = "crate::pricing::money_str")]
    #[schema(value_type = String, example = "79.00")]
    pub total: Decimal,
}

impl Charges {
    /// The sum of all lines but the base fee: what a prepaid wallet pays for.
    pub fn usage_total(&self) -> Decimal {
        saturated(
            Arith::Saturating.sum(
                self.lines
                    .iter()
                    .filter(|l| l.kind != "base_fee")
                    .map(|l| l.amount),
                &|| String::new(),
            ),
        )
    }
}

/// Serializes money as a string with exactly 2 decimals (`"79.00"`).
pub mod money_str {
    use rust_decimal::Decimal;
    use serde::Serializer;

    /// `d` rounded half-up to 2 decimals, always written with 2 decimals.
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

/// Usage of one meter in a period (named from the catalog by `MeterUsage::from_values`, in
/// [`crate::catalog`], which depends on this module and not the other way round).
#[derive(Debug, Clone, PartialEq)]
pub struct MeterUsage {
    pub meter: MeterId,
    /// The meter's name (kept for callers; charge lines take names from the plan).
    pub name: String,
    /// The meter value (CONTRACT section 2), in meter units.
    pub usage: Decimal,
}

/// Overage charge of `usage` above `limit`: `min(cap, (usage - limit)+ x overage_rate)`,
/// unrounded. Zero without an `overage_rate`.
///
/// Never panics: beyond [`Decimal`]'s range the charge is the cap if there is one (it is
/// then below the uncapped charge), else it saturates (see [`try_overage_charge`]).
pub fn overage_charge(pm: &PlanMeter, usage: Decimal, limit: Decimal) -> Decimal {
    saturated(overage_with(Arith::Saturating, pm, usage, limit))
}

/// [`overage_charge`], checked: an error only without a cap, when the uncapped charge is
/// beyond [`Decimal`]'s range.
pub fn try_overage_charge(
    pm: &PlanMeter,
    usage: Decimal,
    limit: Decimal,
) -> Result<Decimal, PricingError> {
    overage_with(Arith::Checked, pm, usage, limit)
}

fn overage_with(
    ar: Arith,
    pm: &PlanMeter,
    usage: Decimal,
    limit: Decimal,
) -> Result<Decimal, PricingError> {
    let Some(rate) = pm.overage_rate else {
        return Ok(Decimal::ZERO);
    };
    let what = || format!("the overage of {}", pm.name);
    let over = if usage > limit {
        ar.sub(usage, limit, &what)?
    } else {
        Decimal::ZERO
    };
    let charge = match (over.checked_mul(rate), pm.overage_cap) {
        // The true charge is beyond range, so above any cap.
        (None, Some(cap)) => return Ok(cap),
        (None, None) => ar.mul(over, rate, &what)?,
        (Some(c), _) => c,
    };
    Ok(match pm.overage_cap {
        Some(cap) => charge.min(cap),
        None => charge,
    })
}

/// Tiered charge of `units` (negative counts as zero), unrounded, with Stripe's semantics:
/// tier `i` holds the units in `(up_to[i-1], up_to[i]]`.
///
/// - graduated: each tier's units at its `unit_price`, plus the `flat_fee` of every tier
///   entered (the first tier always is);
/// - volume: all units at the `unit_price` of the tier the total falls in, plus that tier's
///   `flat_fee`.
///
/// `tiers` must be non-empty with increasing bounds and an unbounded last tier (checked by
/// the configuration).
///
/// Never panics: beyond [`Decimal`]'s range the charge saturates (see
/// [`try_tiered_charge`]).
pub fn tiered_charge(mode: TiersMode, tiers: &[Tier], units: Decimal) -> Decimal {
    saturated(tiered_with(Arith::Saturating, mode, tiers, units, ""))
}

/// [`tiered_charge`], checked; `meter` names the line in the error.
pub fn try_tiered_charge(
    mode: TiersMode,
    tiers: &[Tier],
    units: Decimal,
    meter: &str,
) -> Result<Decimal, PricingError> {
    tiered_with(Arith::Checked, mode, tiers, units, meter)
}

fn tiered_with(
    ar: Arith,
    mode: TiersMode,
    tiers: &[Tier],
    units: Decimal,
    meter: &str,
) -> Result<Decimal, PricingError> {
    let what = || format!("the tiered charge of {meter}");
    let units = units.max(Decimal::ZERO);
    Ok(match mode {
        TiersMode::Graduated => {
            let mut total = Decimal::ZERO;
            let mut lower = Decimal::ZERO;
            for (i, t) in tiers.iter().enumerate() {
                if i > 0 && units <= lower {
                    break;
                }
                // Both non-negative: no overflow.
                let in_tier = match t.up_to {
                    Some(upper) => units.min(upper) - lower,
                    None => units - lower,
                };
                let line = ar.mul(in_tier.max(Decimal::ZERO), t.unit_price, &what)?;
                let line = ar.add(line, t.flat_fee, &what)?;
                total = ar.add(total, line, &what)?;
                match t.up_to {
                    Some(upper) => lower = upper,
                    None => break,
                }
            }
            total
        }
        TiersMode::Volume => {
            let Some(tier) = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| units <= u))
                .or_else(|| tiers.last())
            else {
                return Ok(Decimal::ZERO);
            };
            let line = ar.mul(units, tier.unit_price, &what)?;
            ar.add(line, tier.flat_fee, &what)?
        }
    })
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

impl ChargeInput<'_> {
    fn usage_of(&self, ar: Arith, m: MeterId, name: &str) -> Result<Decimal, PricingError> {
        ar.sum(
            self.usage.iter().filter(|u| u.meter == m).map(|u| u.usage),
            &|| format!("the usage of {name}"),
        )
    }
}

/// Computes the charges of a usage period (see the module docs), in the currency of the
/// plan governing the period.
///
/// Never panics: an amount beyond [`Decimal`]'s range saturates; [`try_charges`] reports
/// it instead.
pub fn charges(input: &ChargeInput<'_>) -> Charges {
    match charges_with(Arith::Saturating, input) {
        Ok(c) => c,
        // Saturating arithmetic does not fail.
        Err(_) => Charges {
            lines: vec![],
            total: Decimal::MAX,
        },
    }
}

/// [`charges`], checked: a [`PricingError`] naming the line whose amount (or the total)
/// would leave [`Decimal`]'s range. Only absurd usage or prices get there; callers report
/// it (the API as an error answer, statements as a failed tenant) instead of a wrong bill.
pub fn try_charges(input: &ChargeInput<'_>) -> Result<Charges, PricingError> {
    charges_with(Arith::Checked, input)
}

fn charges_with(ar: Arith, input: &ChargeInput<'_>) -> Result<Charges, PricingError> {
    let t = input.tenant;
    let period = input.period;
    // The segments of the subscription timeline inside the period; the last one with a
    // subscription governs limits, rates and add-ons (see `terms`).
    let segments = t.segments(period, input.now);
    let gov = governing_segment(&segments, t, period, input.now);
    let plan = gov.plan;
    let addons = if gov.canceled { &NO_ADDONS } else { gov.addons };
    let mut lines = Vec::new();
    let mut push = |kind: &'static str,
                    meter: Option<&str>,
                    item: Option<&str>,
                    quantity: Decimal,
                    raw: Decimal| {
        let amount = round_money(raw);
        if !amount.is_zero() {
            lines.push(ChargeLine {
                kind,
                meter: meter.map(str::to_string),
                item: item.map(str::to_string),
                quantity: quantity.normalize(),
                amount,
            });
        }
    };

    // Base fee, prorated by time across plan changes inside the period (one line per plan,
    // its stretches summed); none while the tenant has no subscription.
    let prorated = segments.len() > 1;
    let mut fees: Vec<(&str, Decimal, Decimal)> = Vec::new();
    for seg in segments.iter().filter(|s| !s.canceled) {
        let plan_seg = seg.plan;
        let what = || format!("the base fee of plan {}", plan_seg.id);
        let mut fee = plan_seg.base_fee;
        if seg.billing_cycle == BillingCycle::Yearly {
            let keep = ar.sub(Decimal::ONE, plan_seg.yearly_discount, &what)?;
            fee = ar.mul(fee, keep, &what)?;
        }
        if prorated {
            let part = ar.mul(fee, Decimal::from(seg.secs), &what)?;
            fee = ar.div(part, Decimal::from(period.seconds().max(1)));
        }
        let share = if prorated {
            ar.div(
                Decimal::from(seg.secs),
                Decimal::from(period.seconds().max(1)),
            )
        } else {
            Decimal::ONE
        };
        match fees.iter_mut().find(|(id, _, _)| *id == plan_seg.id) {
            Some((_, sum, quantity)) => {
                *sum = ar.add(*sum, fee, &what)?;
                *quantity = ar.add(*quantity, share, &what)?;
            }
            None => fees.push((&plan_seg.id, fee, share)),
        }
    }
    // The quantity of a base fee line is the share of the period its plan was held.
    for (id, fee, quantity) in fees {
        push(
            "base_fee",
            None,
            prorated.then_some(id),
            round_half_up(quantity, 6),
            fee,
        );
    }

    for (mid, pm) in &plan.meters {
        let usage = input.usage_of(ar, *mid, &pm.name)?;
        if let Some(limit) = limit_with(ar, plan, addons, *mid, input.first_period)? {
            let over = if usage > limit {
                ar.sub(usage, limit, &|| format!("the overage of {}", pm.name))?
            } else {
                Decimal::ZERO
            };
            push(
                "overage",
                Some(&pm.name),
                None,
                over,
                overage_with(ar, pm, usage, limit)?,
            );
        }
        let units = usage.max(Decimal::ZERO);
        if let Some(rate) = pm.rate {
            let amount = ar.mul(rate, units, &|| format!("the usage charge of {}", pm.name))?;
            push("usage", Some(&pm.name), None, units, amount);
        }
        if let Some((mode, tiers)) = &pm.tiers {
            push(
                "tiered",
                Some(&pm.name),
                None,
                units,
                tiered_with(ar, *mode, tiers, usage, &pm.name)?,
            );
        }
    }
    if let Some(share) = plan.revenue_share {
        let what = || "the revenue share".to_string();
        let revenue = input.usage_of(ar, crate::meter::REVENUE, "revenue")?;
        let amount = ar.mul(revenue, share, &what)?.max(Decimal::ZERO);
        push("revenue_share", Some("revenue"), None, revenue, amount);
    }
    for (name, addon) in &plan.addons {
        let units = addons.get(name).copied().unwrap_or(0);
        let amount = ar.mul(addon.price, Decimal::from(units), &|| {
            format!("the price of add-on {name}")
        })?;
        push(
            "addon",
            addon.meter_name.as_deref(),
            Some(name),
            Decimal::from(units),
            amount,
        );
    }
    let total = ar.sum(lines.iter().map(|l| l.amount), &|| {
        "the total of the charges".to_string()
    })?;
    Ok(Charges { lines, total })
}

/// No add-ons (a canceled subscription holds none).
static NO_ADDONS: BTreeMap<String, u32> = BTreeMap::new();

/// The plans in effect during `period` with the seconds each was in effect (changes after
/// `now` are not yet in effect), canceled stretches included under the plan left.
/// Consecutive stretches of one plan are merged. See [`Tenant::segments`] for the whole
/// state of each stretch.
pub fn plan_segments(t: &Tenant, period: Period, now: DateTime<Utc>) -> Vec<(Arc<Plan>, i64)> {
    let mut out: Vec<(Arc<Plan>, i64)> = Vec::new();
    for s in t.segments(period, now) {
        if let Some(last) = out.last_mut()
            && last.0.id == s.plan.id
        {
            last.1 += s.secs;
            continue;
        }
        out.push((s.plan.clone(), s.secs));
    }
    out
}

/// The entitlement answer of CONTRACT section 6:
/// `{"allowed": bool, "reason": string|null, "remaining": "<decimal>"|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entitlement {
    pub allowed: bool,
    /// `hard_limit_reached` or `wallet_empty` when not allowed, else null.
    #[schema(example = json!(null))]
    pub reason: Option<String>,
    /// The limit left in meter units (never negative), null without a finite limit.
    #[serde(serialize_with = "opt_dec_str")]
    #[schema(value_type = Option<String>, example = "223.5")]
    pub remaining: Option<Decimal>,
}

/// Reason of a refusal at a hard limit.
pub const HARD_LIMIT_REACHED: &str = "hard_limit_reached";
/// Reason of a refusal when a prepaid wallet is empty.
pub const WALLET_EMPTY: &str = "wallet_empty";

fn dec_str<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

fn opt_dec_str<S: serde::Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.normalize().to_string()),
        None => s.serialize_none(),
    }
}

/// Whether the tenant may use more of `meter`: no once a hard limit is reached
/// (`usage >= limit`), or when the plan's wallet is prepaid and `wallet_balance` is zero or
/// below. An unknown balance (`None`, e.g. not computed yet) does not refuse. `remaining` is
/// the limit left (never negative), `None` when the meter has no finite limit.
pub fn entitlement(
    plan: &Plan,
    limit: Option<Decimal>,
    meter: MeterId,
    usage: Decimal,
    wallet_balance: Option<Decimal>,
) -> Entitlement {
    let remaining = limit.map(|l| l.saturating_sub(usage).max(Decimal::ZERO));
    let pm = plan.meters.get(&meter);
    if let (Some(pm), Some(l)) = (pm, limit)
        && pm.hard_limit
        && usage >= l
    {
        return Entitlement {
            allowed: false,
            reason: Some(HARD_LIMIT_REACHED.into()),
            remaining,
        };
    }
    if plan.wallet.as_ref().is_some_and(|w| w.prepaid)
        && wallet_balance.is_some_and(|b| b <= Decimal::ZERO)
    {
        return Entitlement {
            allowed: false,
            reason: Some(WALLET_EMPTY.into()),
            remaining,
        };
    }
    Entitlement {
        allowed: true,
        reason: None,
        remaining,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod overflow_tests {
    use super::*;
    use crate::config::Config;
    use crate::meter::CALL_MINUTES;

    const CONFIG: &str = r#"
[plans.p]
currency = "USD"
base_fee = "79228162514264337593543950335"
revenue_share = "0.5"
[plans.p.meters.call_minutes]
included = "10"
overage_rate = "1000"
[plans.p.meters.calls]
rate = "1000"
[plans.capped]
currency = "USD"
[plans.capped.meters.call_minutes]
included = "10"
overage_rate = "1000"
overage_cap = "25"
[plans.t]
currency = "USD"
[plans.t.meters.call_minutes]
tiers_mode = "volume"
tiers = [ { up_to = "10", unit_price = "0" }, { up_to = "inf", unit_price = "1000" } ]
[tenants.a]
plan = "p"
[tenants.c]
plan = "capped"
[tenants.v]
plan = "t"
"#;

    fn input_charges(tenant: &str, usage: &[(MeterId, Decimal)]) -> Result<Charges, PricingError> {
        let cat = Config::from_toml_str(CONFIG).unwrap().catalog;
        let t = cat.tenant(tenant).unwrap();
        let usage: Vec<MeterUsage> = usage
            .iter()
            .map(|(m, u)| MeterUsage {
                meter: *m,
                name: String::new(),
                usage: *u,
            })
            .collect();
        let now = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let input = ChargeInput {
            tenant: &t,
            period: t.period_at(now - chrono::Duration::days(40)),
            usage: &usage,
            first_period: false,
            now,
        };
        // The plain variant never panics, whatever the checked one says.
        let plain = charges(&input);
        let checked = try_charges(&input);
        if let Ok(c) = &checked {
            assert_eq!(&plain, c);
        }
        checked
    }

    #[test]
    fn absurd_amounts_are_errors_not_panics() {
        let huge = Decimal::from_str_exact("50000000000000000000000000000").unwrap();
        // The base fee alone is at the limit: any usage line takes the total beyond it.
        let e = input_charges("a", &[(crate::meter::CALLS, Decimal::ONE)]).unwrap_err();
        assert!(e.to_string().contains("total"), "{e}");
        let e = input_charges("a", &[(CALL_MINUTES, huge)]).unwrap_err();
        assert!(e.to_string().contains("overage of call_minutes"), "{e}");
        let e = input_charges("a", &[(crate::meter::CALLS, huge)]).unwrap_err();
        assert!(e.to_string().contains("usage charge of calls"), "{e}");
        let e = input_charges("a", &[(crate::meter::REVENUE, huge)]).unwrap_err();
        assert!(e.to_string().contains("total"), "{e}");
        let e = input_charges("v", &[(CALL_MINUTES, huge)]).unwrap_err();
        assert!(
            e.to_string().contains("tiered charge of call_minutes"),
            "{e}"
        );
        // Two usage records of one meter that cannot be summed.
        let e = input_charges("v", &[(CALL_MINUTES, huge), (CALL_MINUTES, huge)]).unwrap_err();
        assert!(e.to_string().contains("usage of call_minutes"), "{e}");
        // A cap bounds the overage however large the usage.
        let c = input_charges("c", &[(CALL_MINUTES, huge)]).unwrap();
        assert_eq!(c.total, Decimal::from(25));
    }

    #[test]
    fn plain_variants_saturate() {
        let cat = Config::from_toml_str(CONFIG).unwrap().catalog;
        let plan = &cat.plans["p"];
        let pm = &plan.meters[&CALL_MINUTES];
        assert_eq!(
            overage_charge(pm, Decimal::MAX, Decimal::ZERO),
            Decimal::MAX
        );
        assert!(try_overage_charge(pm, Decimal::MAX, Decimal::ZERO).is_err());
        assert_eq!(
            try_overage_charge(pm, Decimal::MIN, Decimal::MAX),
            Ok(Decimal::ZERO)
        );
        let (mode, tiers) = cat.plans["t"].meters[&CALL_MINUTES].tiers.clone().unwrap();
        assert_eq!(tiered_charge(mode, &tiers, Decimal::MAX), Decimal::MAX);
        assert!(try_tiered_charge(mode, &tiers, Decimal::MAX, "m").is_err());
        assert_eq!(
            Threshold::new(Decimal::MAX).kind.as_ref(),
            format!("{}x", Decimal::MAX)
        );
        let e = entitlement(plan, Some(Decimal::MAX), CALL_MINUTES, Decimal::MIN, None);
        assert_eq!(e.remaining, Some(Decimal::MAX));
    }
}
