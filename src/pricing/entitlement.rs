//! Entitlement: whether a tenant may use more of a meter (hard limit, prepaid wallet).

use rust_decimal::Decimal;
use serde::Serialize;

use super::plan::Plan;
use crate::meter::MeterId;

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
