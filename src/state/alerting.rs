//! Usage alert state of one (tenant, meter, usage period): the kinds already fired and the
//! raw sum at which the next one could fire, so that most events cost one comparison. The
//! thresholds themselves are [`crate::alerts`]'s. Pure.

use std::sync::Arc;

use rust_decimal::Decimal;
use smallvec::SmallVec;

use crate::alerts;
use crate::meter::{Aggregation, MeterDef, MeterId, Rounding};
use crate::pricing::Plan;

/// Alert state key: (tenant, meter, period_start).
pub type AlertKey = (u32, MeterId, i64);

/// Alert kinds, as fired.
pub type Kinds = SmallVec<[Arc<str>; 4]>;

/// Fired alert kinds and the raw sum at which the next one could fire (`None`: recompute).
pub(super) type AlertEntry = (Kinds, Option<Decimal>);

/// The kinds `raw` newly crosses against a positive `limit`, with the usage (meter units)
/// they fire at; records them as fired in `entry`. `None` when nothing fires.
#[inline]
pub(super) fn crossed(
    entry: &mut AlertEntry,
    plan: &Plan,
    meter: MeterId,
    def: &MeterDef,
    limit: Decimal,
    raw: Decimal,
) -> Option<(Decimal, Kinds)> {
    let pm = plan.meters.get(&meter);
    let next = match entry.1 {
        Some(n) => n,
        None => {
            let n = alerts::next_trigger(plan, pm, Some(limit), &entry.0)
                .and_then(|v| raw_trigger(def, v))
                .unwrap_or(Decimal::MAX);
            entry.1 = Some(n);
            n
        }
    };
    if raw < next {
        return None;
    }
    let usage = def.value(raw);
    let kinds = alerts::crossed(plan, pm, Some(limit), usage, &entry.0);
    entry.1 = None;
    if kinds.is_empty() {
        return None;
    }
    entry.0.extend(kinds.iter().cloned());
    Some((usage, kinds))
}

/// The smallest raw sum whose meter value can reach `usage`; `None` when no raw sum in
/// range can. Ceil and count meters hold whole units in the raw sum (their value is the raw
/// sum); other meters hold `value x divisor`, shown rounded half-up to 6 places, so a raw
/// sum half a millionth of a unit below the usage already shows it.
pub(super) fn raw_trigger(def: &MeterDef, usage: Decimal) -> Option<Decimal> {
    match (def.aggregation, def.rounding) {
        (Aggregation::Count, _) | (_, Rounding::Ceil) => Some(usage),
        (Aggregation::Sum, Rounding::None) => {
            // The configuration admits only positive divisors.
            let eps = def.divisor.checked_div(Decimal::from(1_000_000))?;
            usage.checked_mul(def.divisor)?.checked_sub(eps)
        }
    }
}

/// Records a kind restored from storage as fired (the next trigger is recomputed).
pub(super) fn restore_kind(entry: &mut AlertEntry, kind: &str) {
    if !entry.0.iter().any(|k| **k == *kind) {
        entry.0.push(kind.into());
    }
    entry.1 = None;
}
