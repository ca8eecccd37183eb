//! A usage period's charges, line by line (base fee, overage, usage, tiered, revenue share,
//! add-ons; see the module docs of [`crate::pricing`]), and money rounding and formatting.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::overage::overage_with;
use super::plan::{BillingCycle, Tenant, limit_with};
use super::terms::governing_segment;
use super::tiers::tiered_with;
use super::{Arith, PricingError, saturated};
use crate::meter::{MeterId, round_half_up};
use crate::period::Period;

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

fn dec_str<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}
