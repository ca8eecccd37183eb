//! Features a plan grants (CONTRACT section 10): booleans (seed 000's call recording) or
//! whole numbers (seed 004's 2/12/18/31 modules per tier), configured as
//! `[plans.<id>.features]` and raised by add-ons (`[plans.<id>.addons.<name>] features =
//! {...}`). Pure.
//!
//! A tenant's value of a feature is its plan's, raised by the add-ons it holds: a boolean is
//! true if the plan or any held add-on grants it; a number is the plan's value plus, per
//! add-on, units held x the add-on's value (saturating, never panicking). A feature the
//! plan does not name starts at `false` or `0`.
//!
//! Decisions where CONTRACT section 10 is silent:
//!
//! - Numbers are whole (TOML integers, `0..=i64::MAX`): features count things (modules,
//!   seats, phone numbers); fractional ones are rejected by the configuration.
//! - The features of a tenant are every feature any plan or add-on of the catalog names (the
//!   catalog's vocabulary, [`vocabulary`]), so that a lower tier answers "not in plan <id>"
//!   instead of 404 for a feature only higher tiers have. A feature keeps one kind (boolean
//!   or number) across the catalog, and no feature may share a meter's name (the
//!   entitlement route looks names up in both); the configuration checks both.
//! - `allowed` is `value == true` or `value > 0`; a canceled subscription is never allowed
//!   (value `false` or `0`, reason `"subscription canceled"`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pricing::Plan;

/// A feature's value: granted or not, or how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum FeatureValue {
    Bool(bool),
    Number(i64),
}

impl FeatureValue {
    /// `false` or `0`: the value of a feature nothing grants.
    pub fn zero_like(self) -> FeatureValue {
        match self {
            FeatureValue::Bool(_) => FeatureValue::Bool(false),
            FeatureValue::Number(_) => FeatureValue::Number(0),
        }
    }

    /// True or positive.
    pub fn granted(self) -> bool {
        match self {
            FeatureValue::Bool(b) => b,
            FeatureValue::Number(n) => n > 0,
        }
    }

    /// `"bool"` or `"number"` (configuration messages).
    pub fn kind(self) -> &'static str {
        match self {
            FeatureValue::Bool(_) => "a boolean",
            FeatureValue::Number(_) => "a number",
        }
    }

    /// `self` raised by `units` of an add-on granting `by`. Kinds must agree (the
    /// configuration checks it); a mismatch leaves `self` unchanged.
    fn raised(self, by: FeatureValue, units: u32) -> FeatureValue {
        match (self, by) {
            (FeatureValue::Bool(a), FeatureValue::Bool(b)) => {
                FeatureValue::Bool(a || (b && units > 0))
            }
            (FeatureValue::Number(a), FeatureValue::Number(b)) => {
                FeatureValue::Number(a.saturating_add(b.saturating_mul(units as i64)))
            }
            (a, _) => a,
        }
    }
}

impl std::fmt::Display for FeatureValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureValue::Bool(b) => write!(f, "{b}"),
            FeatureValue::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Every feature any plan or add-on of `plans` names, with the value nothing grants
/// (`false` or `0`).
pub fn vocabulary<'a>(plans: impl IntoIterator<Item = &'a Plan>) -> BTreeMap<String, FeatureValue> {
    let mut out = BTreeMap::new();
    for p in plans {
        for (name, v) in p
            .features
            .iter()
            .chain(p.addons.values().flat_map(|a| a.features.iter()))
        {
            out.entry(name.clone()).or_insert(v.zero_like());
        }
    }
    out
}

/// The value of every feature of `vocab` under `plan` with `addons` held (add-on name ->
/// units; add-ons the plan does not have are ignored).
pub fn resolve(
    vocab: &BTreeMap<String, FeatureValue>,
    plan: &Plan,
    addons: &BTreeMap<String, u32>,
) -> BTreeMap<String, FeatureValue> {
    let mut out = vocab.clone();
    for (name, v) in &plan.features {
        out.insert(name.clone(), *v);
    }
    for (aname, units) in addons {
        let Some(a) = plan.addons.get(aname) else {
            continue;
        };
        for (name, by) in &a.features {
            let cur = out.get(name).copied().unwrap_or(by.zero_like());
            out.insert(name.clone(), cur.raised(*by, *units));
        }
    }
    out
}

/// Reason of a feature the plan (with its add-ons) does not grant: `not in plan <id>`.
pub fn not_in_plan(plan: &str) -> String {
    format!("not in plan {plan}")
}

/// Reason of any entitlement of a tenant whose subscription is canceled.
pub const SUBSCRIPTION_CANCELED: &str = "subscription canceled";

/// The entitlement answer for a feature (CONTRACT section 10):
/// `{"allowed": bool, "reason": string|null, "value": bool|number}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FeatureEntitlement {
    pub allowed: bool,
    /// `not in plan <id>` or `subscription canceled` when not allowed, else null.
    #[schema(example = json!(null))]
    pub reason: Option<String>,
    /// The tenant's value: a boolean, or a whole number.
    #[schema(value_type = serde_json::Value, example = json!(12))]
    pub value: FeatureValue,
}

/// The entitlement of a feature whose resolved value is `value`, for a tenant on `plan`.
pub fn entitlement(plan: &str, value: FeatureValue, canceled: bool) -> FeatureEntitlement {
    if canceled {
        return FeatureEntitlement {
            allowed: false,
            reason: Some(SUBSCRIPTION_CANCELED.into()),
            value: value.zero_like(),
        };
    }
    let allowed = value.granted();
    FeatureEntitlement {
        allowed,
        reason: (!allowed).then(|| not_in_plan(plan)),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CATALOG: &str = r#"
[plans.basic]
currency = "USD"
[plans.basic.features]
modules = 2
call_recording = false
[plans.basic.addons.call_recording]
price = "10.00"
features = { call_recording = true }
[plans.basic.addons.module_pack]
price = "5.00"
features = { modules = 3 }
[plans.pro]
currency = "USD"
[plans.pro.features]
modules = 12
human_coach = true
"#;

    fn held(a: &[(&str, u32)]) -> BTreeMap<String, u32> {
        a.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn plan_values_raised_by_held_addons() {
        let c = Config::from_toml_str(CATALOG).unwrap_or_else(|e| panic!("{e}"));
        let cat = &c.catalog;
        let vocab = vocabulary(cat.plans.values().map(|p| p.as_ref()));
        assert_eq!(vocab.len(), 3);
        let basic = &cat.plans["basic"];
        // Nothing held: the plan's values; a feature only `pro` names is false here.
        let f = resolve(&vocab, basic, &BTreeMap::new());
        assert_eq!(f["modules"], FeatureValue::Number(2));
        assert_eq!(f["call_recording"], FeatureValue::Bool(false));
        assert_eq!(f["human_coach"], FeatureValue::Bool(false));
        // A boolean add-on grants; a number add-on adds units x value.
        let f = resolve(
            &vocab,
            basic,
            &held(&[("call_recording", 1), ("module_pack", 2)]),
        );
        assert_eq!(f["call_recording"], FeatureValue::Bool(true));
        assert_eq!(f["modules"], FeatureValue::Number(8));
        // Zero units grant nothing; an add-on of another plan is ignored.
        let f = resolve(&vocab, basic, &held(&[("call_recording", 0), ("x", 9)]));
        assert_eq!(f["call_recording"], FeatureValue::Bool(false));
        let pro = &cat.plans["pro"];
        let f = resolve(&vocab, pro, &held(&[("module_pack", 5)]));
        assert_eq!(f["modules"], FeatureValue::Number(12));
        assert_eq!(f["human_coach"], FeatureValue::Bool(true));
        // Saturating, never panicking.
        assert_eq!(
            FeatureValue::Number(i64::MAX).raised(FeatureValue::Number(i64::MAX), u32::MAX),
            FeatureValue::Number(i64::MAX)
        );
    }

    #[test]
    fn entitlement_reasons() {
        let e = entitlement("basic", FeatureValue::Bool(false), false);
        assert!(!e.allowed);
        assert_eq!(e.reason.as_deref(), Some("not in plan basic"));
        let e = entitlement("basic", FeatureValue::Number(0), false);
        assert_eq!(e.reason.as_deref(), Some("not in plan basic"));
        let e = entitlement("pro", FeatureValue::Number(12), false);
        assert!(e.allowed && e.reason.is_none());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"allowed":true,"reason":null,"value":12}"#
        );
        let e = entitlement("pro", FeatureValue::Bool(true), true);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"allowed":false,"reason":"subscription canceled","value":false}"#
        );
    }

    #[test]
    fn configuration_rejects_bad_features() {
        let err = |t: &str| Config::from_toml_str(t).unwrap_err();
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.features]\nmodules = 2.5\n");
        assert_eq!(e.key, "plans.p.features.modules");
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.features]\nmodules = -1\n");
        assert_eq!(e.key, "plans.p.features.modules");
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.features]\ncalls = true\n");
        assert_eq!(e.key, "plans.p.features.calls");
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.features]\nrec = true\n[plans.q]\ncurrency = \"USD\"\n[plans.q.addons.a]\nprice = \"1\"\nfeatures = { rec = 2 }\n",
        );
        assert_eq!(e.key, "plans.q.addons.a.features.rec");
    }
}
