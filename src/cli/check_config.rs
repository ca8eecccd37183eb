//! `callmeter check-config`: the meter, plan and tenant tables of a validated configuration,
//! as text.

use crate::config::Config;
use crate::meter::{Aggregation, Rounding};
use crate::pricing::Included;

/// The plan and tenant tables printed by `callmeter check-config`.
pub fn describe(c: &Config) -> String {
    use std::fmt::Write;
    let cat = &c.catalog;
    let mut out = String::new();
    let _ = writeln!(out, "configuration ok");
    let _ = writeln!(out, "\nmeters:");
    for m in &cat.meters {
        let _ = writeln!(
            out,
            "  {:<16} events={} {} divisor={}{}",
            m.name,
            m.event_types.join(","),
            match m.aggregation {
                Aggregation::Sum => format!(
                    "sum({})",
                    m.value.as_ref().map(|v| v.0.join(".")).unwrap_or_default()
                ),
                Aggregation::Count => "count".to_string(),
            },
            m.divisor,
            if m.rounding == Rounding::Ceil {
                " ceil"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\nplans:");
    let _ = writeln!(
        out,
        "  {:<20} {:<24} {:<4} {:>10} {:>8}  {:<6} meters",
        "id", "name", "cur", "base_fee", "yearly", "legacy"
    );
    for (id, p) in &cat.plans {
        let meters: Vec<String> = p
            .meters
            .iter()
            .map(|(mid, pm)| {
                let mut parts = vec![];
                match pm.included {
                    Included::Finite(d) => parts.push(format!("incl {d}")),
                    Included::Unlimited => parts.push("unlimited".into()),
                    Included::None => {}
                }
                if let Some(o) = pm.included_once {
                    parts.push(format!("once {o}"));
                }
                if let Some(r) = pm.overage_rate {
                    parts.push(format!("over {r}"));
                }
                if let Some(c) = pm.overage_cap {
                    parts.push(format!("cap {c}"));
                }
                if let Some(r) = pm.rate {
                    parts.push(format!("rate {r}"));
                }
                if let Some((mode, tiers)) = &pm.tiers {
                    parts.push(format!("{mode:?} tiers x{}", tiers.len()).to_lowercase());
                }
                if pm.hard_limit {
                    parts.push("hard".into());
                }
                format!("{}[{}]", cat.meter(*mid).name, parts.join(", "))
            })
            .collect();
        let mut extras = String::new();
        if let Some(r) = p.revenue_share {
            let _ = write!(extras, " revenue_share[{r}]");
        }
        if !p.features.is_empty() {
            let f: Vec<String> = p.features.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(extras, " features[{}]", f.join(", "));
        }
        for (a, addon) in &p.addons {
            let _ = write!(extras, " addon:{a}[price {}", addon.price);
            if let Some(m) = &addon.meter_name {
                let _ = write!(extras, ", +{} {m}", addon.included);
            }
            for (k, v) in &addon.features {
                match v {
                    crate::features::FeatureValue::Bool(_) => {
                        let _ = write!(extras, ", grants {k}={v}");
                    }
                    crate::features::FeatureValue::Number(_) => {
                        let _ = write!(extras, ", +{v} {k}");
                    }
                }
            }
            extras.push(']');
        }
        if let Some(w) = &p.wallet {
            let _ = write!(
                extras,
                " wallet[{}grant {}{}]",
                if w.prepaid { "prepaid, " } else { "" },
                w.monthly_grant,
                w.low_balance
                    .map(|l| format!(", low {l}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  {:<20} {:<24} {:<4} {:>10} {:>8}  {:<6} {}{}",
            id,
            p.display_name,
            p.currency,
            p.base_fee,
            p.yearly_discount,
            if p.legacy { "yes" } else { "no" },
            meters.join(" "),
            extras
        );
    }
    let legacy: Vec<String> = cat
        .plans
        .values()
        .filter(|p| p.legacy)
        .map(|p| {
            let n = cat.tenants.values().filter(|t| t.plan.id == p.id).count();
            format!("{} ({n} grandfathered tenants)", p.id)
        })
        .collect();
    if !legacy.is_empty() {
        let _ = writeln!(
            out,
            "  legacy plans are billable for their tenants but not offered to new ones \
             (never the default plan nor a plan change target): {}",
            legacy.join(", ")
        );
    }
    let _ = writeln!(out, "\ntenants:");
    let _ = writeln!(
        out,
        "  {:<24} {:<30} {:<20} {:>6} {:<8} addons",
        "id", "plan", "timezone", "anchor", "cycle"
    );
    for (id, t) in &cat.tenants {
        let addons: Vec<String> = t.addons.iter().map(|(a, n)| format!("{a}={n}")).collect();
        let mut plan = t.plan.id.clone();
        if t.plan.legacy {
            plan.push_str(" (legacy)");
        }
        let changes: String = t
            .plan_changes
            .iter()
            .map(|c| format!(" then {} from {}", c.plan.id, c.at.to_rfc3339()))
            .collect();
        let _ = writeln!(
            out,
            "  {:<24} {:<30} {:<20} {:>6} {:<8} {}{}",
            id,
            plan,
            t.tz.name(),
            t.anchor_day,
            format!("{:?}", t.billing_cycle).to_lowercase(),
            if addons.is_empty() {
                "-".to_string()
            } else {
                addons.join(",")
            },
            changes
        );
    }
    if !cat.features.is_empty() {
        let names: Vec<&str> = cat.features.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "\nfeatures (a plan without one has false or 0): {}",
            names.join(", ")
        );
    }
    if let Some(p) = &cat.default_plan {
        let _ = writeln!(out, "\nunlisted tenants use plan `{}`", p.id);
    } else {
        let _ = writeln!(out, "\nunlisted tenants are rejected (unknown_tenant)");
    }
    out
}

/// `callmeter check-config`: prints [`describe`] of the (already validated) configuration.
pub fn run(config: &Config) {
    print!("{}", describe(config));
}
