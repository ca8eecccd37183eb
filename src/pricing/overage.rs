//! The overage line of a meter: usage above the limit at the overage rate, up to the cap.

use rust_decimal::Decimal;

use super::plan::PlanMeter;
use super::{Arith, PricingError, saturated};

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

pub(super) fn overage_with(
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
