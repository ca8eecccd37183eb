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
//!
//! Layout: the error and the shared checked/saturating arithmetic here; plans, tenants and
//! limits in `plan`, the subscription timeline in [`terms`], the lines in `charges` (with
//! money rounding), `overage` and `tiers`, and the entitlement answer in `entitlement`.

use rust_decimal::Decimal;

mod charges;
mod entitlement;
mod overage;
mod plan;
mod terms;
mod tiers;

pub use charges::{
    ChargeInput, ChargeLine, Charges, MeterUsage, charges, money_str, round_money, try_charges,
};
pub use entitlement::{Entitlement, HARD_LIMIT_REACHED, WALLET_EMPTY, entitlement};
pub use overage::{overage_charge, try_overage_charge};
pub use plan::{
    Addon, BillingCycle, Included, Plan, PlanChange, PlanMeter, Tenant, Threshold, WalletPolicy,
};
pub use terms::{Segment, Terms, plan_segments};
pub use tiers::{Tier, TiersMode, tiered_charge, try_tiered_charge};

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod overflow_tests;
