//! Usage alerts (CONTRACT section 4): which thresholds a usage crosses (pure), and the alert
//! message sent to the `usage-alerts` topic and stored in `usage_alerts`.
//!
//! Each kind fires at most once per (tenant, meter, usage period). The `alert_id` is a
//! deterministic function of (tenant, meter, period_start, kind), so an alert repeated after a
//! crash carries the same id and consumers can drop the repeat.
//!
//! Arithmetic is checked and exact: a threshold `ratio x limit` beyond [`Decimal`]'s range
//! is above every usage, so it is never crossed (no error to report); the overage cap uses
//! [`try_overage_charge`], whose only error (no cap) cannot occur here.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use crate::pricing::{Plan, PlanMeter, try_overage_charge};

pub const OVERAGE: &str = "overage";
pub const OVERAGE_CAP: &str = "overage_cap";
pub const WALLET_LOW: &str = "wallet_low";
pub const WALLET_EMPTY: &str = "wallet_empty";

/// The kinds newly crossed by `usage`, in firing order: the plan's percentage thresholds
/// ascending, then `overage`, then `overage_cap`. Kinds in `fired` are skipped.
/// A meter without a finite, positive limit crosses nothing.
pub fn crossed(
    plan: &Plan,
    pm: Option<&PlanMeter>,
    limit: Option<Decimal>,
    usage: Decimal,
    fired: &[Arc<str>],
) -> SmallVec<[Arc<str>; 4]> {
    let mut out = SmallVec::new();
    let Some(limit) = limit.filter(|l| *l > Decimal::ZERO) else {
        return out;
    };
    let done = |k: &str| fired.iter().any(|f| &**f == k);
    for th in &plan.thresholds {
        if trigger(th.ratio, limit).is_some_and(|at| usage >= at) && !done(&th.kind) {
            out.push(th.kind.clone());
        }
    }
    if usage > limit && !done(OVERAGE) {
        out.push(Arc::from(OVERAGE));
    }
    if let Some(pm) = pm
        && let Some(cap) = pm.overage_cap
        && pm.overage_rate.is_some()
        && usage > limit
        && try_overage_charge(pm, usage, limit).is_ok_and(|c| c >= cap)
        && !done(OVERAGE_CAP)
    {
        out.push(Arc::from(OVERAGE_CAP));
    }
    out
}

/// The smallest usage at which a not-yet-fired kind could fire (`None`: nothing left), so
/// callers can skip the check for most events.
pub fn next_trigger(
    plan: &Plan,
    pm: Option<&PlanMeter>,
    limit: Option<Decimal>,
    fired: &[Arc<str>],
) -> Option<Decimal> {
    let limit = limit.filter(|l| *l > Decimal::ZERO)?;
    let done = |k: &str| fired.iter().any(|f| &**f == k);
    let mut best: Option<Decimal> = None;
    let mut consider = |v: Decimal| {
        best = Some(best.map_or(v, |b| b.min(v)));
    };
    for th in &plan.thresholds {
        if !done(&th.kind)
            && let Some(at) = trigger(th.ratio, limit)
        {
            consider(at);
        }
    }
    if !done(OVERAGE) {
        // Fires strictly above the limit; any usage >= limit must be checked.
        consider(limit);
    }
    if let Some(pm) = pm
        && pm.overage_cap.is_some()
        && pm.overage_rate.is_some()
        && !done(OVERAGE_CAP)
    {
        consider(limit);
    }
    best
}

/// The usage at which a threshold fires: `ratio x limit`, `None` when that is beyond
/// [`Decimal`]'s range (no usage reaches it).
pub fn trigger(ratio: Decimal, limit: Decimal) -> Option<Decimal> {
    ratio.checked_mul(limit)
}

/// Deterministic id: the first 32 hex digits of SHA-256 over the identifying fields.
pub fn alert_id(tenant: &str, meter: &str, period_start: i64, kind: &str) -> String {
    let mut h = Sha256::new();
    for part in [tenant, meter, &period_start.to_string(), kind] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// An alert as sent to Kafka (JSON) and stored in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub tenant_id: String,
    pub meter: String,
    pub kind: String,
    /// RFC 3339, UTC.
    pub period_start: String,
    pub period_end: String,
    /// Decimal strings.
    pub usage: String,
    pub limit: Option<String>,
    pub plan: String,
    /// The event whose application crossed the threshold.
    pub event_id: String,
    pub fired_at: String,
}

pub fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Alert {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: &str,
        meter: &str,
        kind: &str,
        period: crate::period::Period,
        usage: Decimal,
        limit: Option<Decimal>,
        plan: &str,
        event_id: &str,
        fired_at: DateTime<Utc>,
    ) -> Alert {
        Alert {
            alert_id: alert_id(tenant, meter, period.start, kind),
            tenant_id: tenant.to_string(),
            meter: meter.to_string(),
            kind: kind.to_string(),
            period_start: rfc3339(period.start),
            period_end: rfc3339(period.end),
            usage: usage.normalize().to_string(),
            limit: limit.map(|l| l.normalize().to_string()),
            plan: plan.to_string(),
            event_id: event_id.to_string(),
            fired_at: fired_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::meter::CALL_MINUTES;

    fn plan(extra: &str) -> Arc<Plan> {
        let c = Config::from_toml_str(&format!(
            "[plans.p]\ncurrency = \"USD\"\n{extra}\n[plans.p.meters.call_minutes]\nincluded = \"100\"\noverage_rate = \"0.5\"\noverage_cap = \"10\"\n"
        ))
        .unwrap();
        c.catalog.plans["p"].clone()
    }

    fn kinds(v: &SmallVec<[Arc<str>; 4]>) -> Vec<&str> {
        v.iter().map(|k| &**k).collect()
    }

    #[test]
    fn crossing_order_in_one_jump() {
        let p = plan("");
        let pm = p.meters.get(&CALL_MINUTES);
        let got = crossed(&p, pm, Some(Decimal::from(100)), Decimal::from(200), &[]);
        assert_eq!(kinds(&got), ["80%", "100%", "overage", "overage_cap"]);
    }

    #[test]
    fn exact_boundaries() {
        let p = plan("");
        let pm = p.meters.get(&CALL_MINUTES);
        let l = Some(Decimal::from(100));
        assert!(crossed(&p, pm, l, Decimal::new(79999999, 6), &[]).is_empty());
        assert_eq!(kinds(&crossed(&p, pm, l, Decimal::from(80), &[])), ["80%"]);
        let fired: Vec<Arc<str>> = vec!["80%".into()];
        assert_eq!(
            kinds(&crossed(&p, pm, l, Decimal::from(100), &fired)),
            ["100%"]
        );
        let fired: Vec<Arc<str>> = vec!["80%".into(), "100%".into()];
        assert!(crossed(&p, pm, l, Decimal::from(100), &fired).is_empty());
        assert_eq!(
            kinds(&crossed(&p, pm, l, Decimal::new(100000001, 6), &fired)),
            ["overage"]
        );
        // Cap: (usage - 100) x 0.5 >= 10 at usage 120.
        let fired: Vec<Arc<str>> = vec!["80%".into(), "100%".into(), "overage".into()];
        assert!(crossed(&p, pm, l, Decimal::new(11999, 2), &fired).is_empty());
        assert_eq!(
            kinds(&crossed(&p, pm, l, Decimal::from(120), &fired)),
            ["overage_cap"]
        );
    }

    #[test]
    fn custom_thresholds_and_no_limit() {
        let p = plan("alert_thresholds = [\"0.5\", \"0.8\", \"1.0\"]");
        let pm = p.meters.get(&CALL_MINUTES);
        let got = crossed(&p, pm, Some(Decimal::from(100)), Decimal::from(100), &[]);
        assert_eq!(kinds(&got), ["50%", "80%", "100%"]);
        assert!(crossed(&p, pm, None, Decimal::from(1000), &[]).is_empty());
        assert!(crossed(&p, pm, Some(Decimal::ZERO), Decimal::from(1000), &[]).is_empty());
    }

    #[test]
    fn next_trigger_is_the_lowest_unfired() {
        let p = plan("");
        let pm = p.meters.get(&CALL_MINUTES);
        let l = Some(Decimal::from(100));
        assert_eq!(next_trigger(&p, pm, l, &[]), Some(Decimal::from(80)));
        let fired: Vec<Arc<str>> = vec!["80%".into()];
        assert_eq!(next_trigger(&p, pm, l, &fired), Some(Decimal::from(100)));
        let all: Vec<Arc<str>> = ["80%", "100%", "overage", "overage_cap"]
            .iter()
            .map(|s| Arc::from(*s))
            .collect();
        assert_eq!(next_trigger(&p, pm, l, &all), None);
    }

    #[test]
    fn huge_limits_never_panic() {
        let p = plan("");
        let pm = p.meters.get(&CALL_MINUTES);
        let l = Some(Decimal::MAX);
        // 2 x MAX would be beyond range: such a threshold is never reached.
        assert_eq!(trigger(Decimal::TWO, Decimal::MAX), None);
        assert_eq!(
            kinds(&crossed(&p, pm, l, Decimal::MAX, &[])),
            ["80%", "100%"]
        );
        assert_eq!(
            next_trigger(&p, pm, l, &[]),
            trigger(Decimal::new(8, 1), Decimal::MAX)
        );
        let all: Vec<Arc<str>> = vec!["80%".into(), "100%".into()];
        assert_eq!(next_trigger(&p, pm, l, &all), Some(Decimal::MAX));
        // Overage cap on a usage far above a small limit.
        let got = crossed(&p, pm, Some(Decimal::ONE), Decimal::MAX, &[]);
        assert_eq!(kinds(&got), ["80%", "100%", "overage", "overage_cap"]);
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = alert_id("acme", "call_minutes", 1_700_000_000, "80%");
        assert_eq!(a, alert_id("acme", "call_minutes", 1_700_000_000, "80%"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id("acme", "call_minutes", 1_700_000_000, "100%"));
        assert_ne!(a, alert_id("acme", "call_minutes", 1_700_000_001, "80%"));
        // Length-prefixed: no ambiguity between ("ab","c") and ("a","bc").
        assert_ne!(alert_id("ab", "c", 0, "k"), alert_id("a", "bc", 0, "k"));
    }
}
