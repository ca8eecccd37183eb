//! Tiered pricing with Stripe's `tiers_mode` semantics (graduated or volume):
//! <https://docs.stripe.com/products-prices/pricing-models#tiered-pricing>.

use rust_decimal::Decimal;
use serde::Serialize;

use super::{Arith, PricingError, saturated};

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

pub(super) fn tiered_with(
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
