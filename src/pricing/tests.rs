//! Charges, limits and entitlements: the seeds' worked examples, our own boundary cases, and
//! property tests (never negative, monotone, independent of event order and duplication).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::meter::{CALL_MINUTES, CALLS, REVENUE};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn catalog(toml: &str) -> Arc<Catalog> {
    Config::from_toml_str(toml)
        .unwrap_or_else(|e| panic!("{e}"))
        .catalog
}

/// Usage by meter name.
fn usage(cat: &Catalog, u: &[(&str, &str)]) -> Vec<MeterUsage> {
    u.iter()
        .map(|(m, v)| MeterUsage {
            meter: cat.meter_id(m).unwrap_or_else(|| panic!("meter {m}")),
            name: m.to_string(),
            usage: d(v),
        })
        .collect()
}

/// Charges of `tenant` for the period containing `at`, seen at `now`.
fn charge_at(
    cat: &Catalog,
    tenant: &str,
    at: &str,
    now: &str,
    u: &[(&str, &str)],
    first: bool,
) -> Charges {
    let t = cat.tenant(tenant).unwrap();
    let mu = usage(cat, u);
    charges(&ChargeInput {
        tenant: &t,
        period: t.period_at(utc(at)),
        usage: &mu,
        first_period: first,
        now: utc(now),
    })
}

/// Charges for the period containing 2026-11-20, seen after it ended.
fn charge(cat: &Catalog, tenant: &str, u: &[(&str, &str)]) -> Charges {
    charge_at(
        cat,
        tenant,
        "2026-11-20T12:00:00Z",
        "2027-01-01T00:00:00Z",
        u,
        false,
    )
}

/// `kind[:meter|item]=amount` per line, for compact assertions.
fn lines(c: &Charges) -> Vec<String> {
    c.lines
        .iter()
        .map(|l| {
            let tag = l.item.as_deref().or(l.meter.as_deref());
            match tag {
                Some(t) => format!("{}:{}={}", l.kind, t, money_str::format(l.amount)),
                None => format!("{}={}", l.kind, money_str::format(l.amount)),
            }
        })
        .collect()
}

fn total(c: &Charges) -> String {
    money_str::format(c.total)
}

// ---------------------------------------------------------------------------------------
// Seed 002: three EUR models.

const SEED_002: &str = r#"
[plans.starter]
currency = "EUR"
base_fee = "204.00"
yearly_discount = "0.10"
[plans.starter.meters.call_minutes]
included = "500"
overage_rate = "0.50"
[plans.growth]
currency = "EUR"
base_fee = "366.00"
yearly_discount = "0.10"
[plans.growth.meters.call_minutes]
included = "1000"
overage_rate = "0.50"
[plans.enterprise]
currency = "EUR"
base_fee = "624.00"
yearly_discount = "0.10"
[plans.enterprise.meters.call_minutes]
included = "2000"
overage_rate = "0.50"
[plans.starter_tiers]
currency = "EUR"
base_fee = "204.00"
[plans.starter_tiers.meters.call_minutes]
tiers_mode = "graduated"
tiers = [ { up_to = "500", unit_price = "0" }, { up_to = "inf", unit_price = "0.50" } ]
[plans.per_call]
currency = "EUR"
base_fee = "49.00"
[plans.per_call.meters.calls]
rate = "0.50"
[plans.revenue]
currency = "EUR"
base_fee = "199.00"
revenue_share = "0.05"
[tenants.pack_starter]
plan = "starter"
[tenants.pack_growth]
plan = "growth"
[tenants.pack_enterprise_yearly]
plan = "enterprise"
billing_cycle = "yearly"
[tenants.tiers]
plan = "starter_tiers"
[tenants.calls]
plan = "per_call"
[tenants.shop]
plan = "revenue"
"#;

#[test]
fn seed_002_worked_examples() {
    let cat = catalog(SEED_002);
    // "100 calls = EUR 49 + (100 x EUR 0.50) = EUR 99"
    let c = charge(&cat, "calls", &[("calls", "100")]);
    assert_eq!(lines(&c), ["base_fee=49.00", "usage:calls=50.00"]);
    assert_eq!(total(&c), "99.00");
    // "EUR 10,000 revenue = EUR 199 + (5% x EUR 10,000) = EUR 699"
    let c = charge(&cat, "shop", &[("revenue", "10000")]);
    assert_eq!(
        lines(&c),
        ["base_fee=199.00", "revenue_share:revenue=500.00"]
    );
    assert_eq!(total(&c), "699.00");
}

#[test]
fn seed_002_tiered_packages() {
    let cat = catalog(SEED_002);
    // (tenant, minutes, lines, total)
    let table: &[(&str, &str, &[&str], &str)] = &[
        ("pack_starter", "0", &["base_fee=204.00"], "204.00"),
        ("pack_starter", "500", &["base_fee=204.00"], "204.00"),
        (
            "pack_starter",
            "620",
            &["base_fee=204.00", "overage:call_minutes=60.00"],
            "264.00",
        ),
        (
            "pack_starter",
            "500.01",
            &["base_fee=204.00", "overage:call_minutes=0.01"],
            "204.01",
        ),
        // 0.009 min over x 0.50 = 0.0045 -> 0.00: no line.
        ("pack_starter", "500.009", &["base_fee=204.00"], "204.00"),
        // 0.01 min over x 0.50 = 0.005 -> half-up 0.01.
        (
            "pack_starter",
            "500.010",
            &["base_fee=204.00", "overage:call_minutes=0.01"],
            "204.01",
        ),
        ("pack_growth", "999.5", &["base_fee=366.00"], "366.00"),
        (
            "pack_growth",
            "1250",
            &["base_fee=366.00", "overage:call_minutes=125.00"],
            "491.00",
        ),
        // Yearly: 10% off the base fee only. 624 x 0.9 = 561.60.
        (
            "pack_enterprise_yearly",
            "2100",
            &["base_fee=561.60", "overage:call_minutes=50.00"],
            "611.60",
        ),
        // The same package as Stripe graduated tiers (first 500 at 0, then 0.50).
        (
            "tiers",
            "620",
            &["base_fee=204.00", "tiered:call_minutes=60.00"],
            "264.00",
        ),
        ("tiers", "500", &["base_fee=204.00"], "204.00"),
    ];
    for (tenant, minutes, want_lines, want_total) in table {
        let c = charge(&cat, tenant, &[("call_minutes", minutes)]);
        assert_eq!(&lines(&c), want_lines, "{tenant} at {minutes} min");
        assert_eq!(&total(&c), want_total, "{tenant} at {minutes} min");
    }
}

// ---------------------------------------------------------------------------------------
// Seed 004: AI minutes and human coach calls.

const SEED_004: &str = r#"
[meters.ai_minutes]
event_type = "call.completed"
value = "duration_ms"
divisor = 60000
where = { handled_by = "ai" }
[meters.human_calls]
event_type = "call.completed"
aggregation = "count"
where = { handled_by = "human" }

[plans.free]
currency = "USD"
[plans.free.meters.ai_minutes]
included_once = "15"
hard_limit = true
[plans.free.meters.human_calls]
included = "0"
hard_limit = true

[plans.lifestyle]
currency = "USD"
base_fee = "29.00"
[plans.lifestyle.meters.ai_minutes]
included = "120"
overage_rate = "0.10"
overage_cap = "20.00"
[plans.lifestyle.meters.human_calls]
included = "0"
hard_limit = true

[plans.growth]
currency = "USD"
base_fee = "79.00"
[plans.growth.meters.ai_minutes]
included = "300"
overage_rate = "0.08"
[plans.growth.meters.human_calls]
included = "1"
overage_rate = "25.00"

[plans.mastery]
currency = "USD"
base_fee = "199.00"
[plans.mastery.meters.ai_minutes]
included = "unlimited"
[plans.mastery.meters.human_calls]
included = "4"
overage_rate = "20.00"

[tenants.free]
plan = "free"
[tenants.life]
plan = "lifestyle"
[tenants.grow]
plan = "growth"
[tenants.master]
plan = "mastery"
"#;

#[test]
fn seed_004_tiers() {
    let cat = catalog(SEED_004);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let table: &[Case] = &[
        // Lifestyle: 120 min, then $0.10/min, at most $20.
        (
            "life",
            &[("ai_minutes", "120")],
            &["base_fee=29.00"],
            "29.00",
        ),
        (
            "life",
            &[("ai_minutes", "300")],
            &["base_fee=29.00", "overage:ai_minutes=18.00"],
            "47.00",
        ),
        (
            "life",
            &[("ai_minutes", "320")],
            &["base_fee=29.00", "overage:ai_minutes=20.00"],
            "49.00",
        ),
        // Capped: 280 min over would be $28.
        (
            "life",
            &[("ai_minutes", "400")],
            &["base_fee=29.00", "overage:ai_minutes=20.00"],
            "49.00",
        ),
        // Growth: 300 min then $0.08/min; 1 human call then $25/call.
        (
            "grow",
            &[("ai_minutes", "350"), ("human_calls", "3")],
            &[
                "base_fee=79.00",
                "overage:ai_minutes=4.00",
                "overage:human_calls=50.00",
            ],
            "133.00",
        ),
        (
            "grow",
            &[("ai_minutes", "300"), ("human_calls", "1")],
            &["base_fee=79.00"],
            "79.00",
        ),
        // Mastery: unlimited AI; 4 human calls then $20/call.
        (
            "master",
            &[("ai_minutes", "100000"), ("human_calls", "6")],
            &["base_fee=199.00", "overage:human_calls=40.00"],
            "239.00",
        ),
        // Free: nothing to pay, ever.
        ("free", &[("ai_minutes", "15")], &[], "0.00"),
    ];
    for (tenant, u, want_lines, want_total) in table {
        let c = charge(&cat, tenant, u);
        assert_eq!(&lines(&c), want_lines, "{tenant} {u:?}");
        assert_eq!(&total(&c), want_total, "{tenant} {u:?}");
    }
}

#[test]
fn one_time_allowance_is_not_renewed() {
    let cat = catalog(SEED_004);
    let t = cat.tenant("free").unwrap();
    let ai = cat.meter_id("ai_minutes").unwrap();
    let human = cat.meter_id("human_calls").unwrap();
    assert_eq!(t.limit(&t.plan, ai, true), Some(d("15")));
    assert_eq!(t.limit(&t.plan, ai, false), Some(Decimal::ZERO));
    assert_eq!(t.limit(&t.plan, human, true), Some(Decimal::ZERO));
    // First period: 10 of 15 used, 5 left; at 15 the hard limit says no.
    let e = entitlement(&t.plan, t.limit(&t.plan, ai, true), ai, d("10"), None);
    assert_eq!((e.allowed, e.remaining), (true, Some(d("5"))));
    let e = entitlement(&t.plan, t.limit(&t.plan, ai, true), ai, d("15"), None);
    assert!(!e.allowed);
    assert_eq!(e.reason.as_deref(), Some(HARD_LIMIT_REACHED));
    // Any later period: the allowance is gone, even with nothing used.
    let e = entitlement(&t.plan, t.limit(&t.plan, ai, false), ai, d("0"), None);
    assert_eq!(
        (e.allowed, e.remaining, e.reason.as_deref()),
        (false, Some(Decimal::ZERO), Some(HARD_LIMIT_REACHED))
    );
    // One-time on top of a renewable quantity, with overage above both.
    let cat = catalog(
        r#"
[plans.p]
currency = "USD"
[plans.p.meters.call_minutes]
included = "100"
included_once = "50"
overage_rate = "1"
[tenants.t]
plan = "p"
"#,
    );
    let first = |u: &str, f: bool| {
        total(&charge_at(
            &cat,
            "t",
            "2026-11-20T00:00:00Z",
            "2027-01-01T00:00:00Z",
            &[("call_minutes", u)],
            f,
        ))
    };
    assert_eq!(first("150", true), "0.00");
    assert_eq!(first("150", false), "50.00");
    assert_eq!(first("160", true), "10.00");
}

#[test]
fn unlimited_meters_have_no_limit_and_no_overage() {
    let cat = catalog(SEED_004);
    let t = cat.tenant("master").unwrap();
    let ai = cat.meter_id("ai_minutes").unwrap();
    assert_eq!(t.limit(&t.plan, ai, false), None);
    let e = entitlement(&t.plan, None, ai, d("1000000"), None);
    assert_eq!((e.allowed, e.remaining), (true, None));
    // Meters the plan does not mention have no limit either.
    assert_eq!(t.limit(&t.plan, CALLS, false), None);
}

// ---------------------------------------------------------------------------------------
// Seed 000: Starter/Professional, add-ons, legacy plans.

const SEED_000: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
[plans.starter.addons.extra_minutes]
meter = "call_minutes"
included = "100"
price = "15.00"
[plans.starter.addons.phone_number]
price = "5.00"
[plans.starter.addons.call_recording]
price = "10.00"
[plans.professional]
currency = "USD"
base_fee = "299.00"
[plans.professional.meters.call_minutes]
included = "600"
overage_rate = "0.22"
hard_limit = false
[plans.professional.addons.extra_minutes]
meter = "call_minutes"
included = "100"
price = "15.00"
[plans.professional.addons.phone_number]
price = "5.00"
[plans.professional.addons.call_recording]
price = "10.00"
[plans.legacy_starter]
currency = "USD"
base_fee = "149.00"
legacy = true
[plans.legacy_starter.meters.call_minutes]
included = "300"
overage_rate = "0.25"
[tenants.acme]
plan = "starter"
addons = { extra_minutes = 2, phone_number = 3, call_recording = 1 }
[tenants.pro]
plan = "professional"
[tenants.old]
plan = "legacy_starter"
"#;

#[test]
fn seed_000_plans_and_addons() {
    let cat = catalog(SEED_000);
    let acme = cat.tenant("acme").unwrap();
    // Limit: 120 + 2 x 100 (CONTRACT section 6's example: limit 320).
    assert_eq!(acme.limit(&acme.plan, CALL_MINUTES, false), Some(d("320")));
    let c = charge(&cat, "acme", &[("call_minutes", "96.5")]);
    assert_eq!(
        lines(&c),
        [
            "base_fee=79.00",
            "addon:call_recording=10.00",
            "addon:extra_minutes=30.00",
            "addon:phone_number=15.00"
        ]
    );
    assert_eq!(total(&c), "134.00");
    assert_eq!(c.usage_total(), d("55.00"));
    // The extra-minutes add-on line names its meter; priced features name none.
    assert_eq!(c.lines[2].meter.as_deref(), Some("call_minutes"));
    assert_eq!(c.lines[1].meter, None);
    let c = charge(&cat, "acme", &[("call_minutes", "400")]);
    assert!(lines(&c).contains(&"overage:call_minutes=17.60".to_string()));
    let c = charge(&cat, "pro", &[("call_minutes", "700")]);
    assert_eq!(lines(&c), ["base_fee=299.00", "overage:call_minutes=22.00"]);
    // Grandfathered tenants are billed on their legacy plan.
    let c = charge(&cat, "old", &[("call_minutes", "310")]);
    assert_eq!(lines(&c), ["base_fee=149.00", "overage:call_minutes=2.50"]);
}

// ---------------------------------------------------------------------------------------
// Tiers: graduated and volume, boundaries, flat fees.

fn tiers(spec: &[(Option<&str>, &str, &str)]) -> Vec<Tier> {
    spec.iter()
        .map(|(up, price, flat)| Tier {
            up_to: up.map(d),
            unit_price: d(price),
            flat_fee: d(flat),
        })
        .collect()
}

#[test]
fn graduated_tiers_at_boundaries() {
    let t = tiers(&[
        (Some("100"), "1", "0"),
        (Some("200"), "0.5", "0"),
        (None, "0.1", "0"),
    ]);
    let g = |u: &str| tiered_charge(TiersMode::Graduated, &t, d(u));
    assert_eq!(g("0"), d("0"));
    assert_eq!(g("1"), d("1"));
    assert_eq!(g("100"), d("100"));
    assert_eq!(g("100.5"), d("100.25"));
    assert_eq!(g("200"), d("150"));
    assert_eq!(g("250"), d("155"));
    assert_eq!(g("-5"), d("0"));
    // Flat fees: the first tier is always entered; later ones once usage passes into them.
    let t = tiers(&[
        (Some("100"), "0", "20"),
        (Some("200"), "0.5", "5"),
        (None, "0.1", "1"),
    ]);
    let g = |u: &str| tiered_charge(TiersMode::Graduated, &t, d(u));
    assert_eq!(g("0"), d("20"));
    assert_eq!(g("100"), d("20"));
    assert_eq!(g("100.000001"), d("25.0000005"));
    assert_eq!(g("200"), d("75"));
    assert_eq!(g("201"), d("76.1"));
}

#[test]
fn volume_tiers_at_boundaries() {
    let t = tiers(&[
        (Some("100"), "1", "0"),
        (Some("200"), "0.5", "10"),
        (None, "0.1", "0"),
    ]);
    let v = |u: &str| tiered_charge(TiersMode::Volume, &t, d(u));
    assert_eq!(v("0"), d("0"));
    assert_eq!(v("100"), d("100"));
    // All units at the tier the total falls in (this is why volume pricing is not monotone).
    assert_eq!(v("101"), d("60.5"));
    assert_eq!(v("200"), d("110"));
    assert_eq!(v("200.5"), d("20.05"));
    assert_eq!(v("1000"), d("100"));
}

#[test]
fn tiers_through_the_configuration() {
    let cat = catalog(
        r#"
[plans.g]
currency = "EUR"
[plans.g.meters.call_minutes]
tiers_mode = "graduated"
tiers = [ { up_to = "100", unit_price = "0.10" }, { up_to = "inf", unit_price = "0.05", flat_fee = "2" } ]
[plans.v]
currency = "EUR"
[plans.v.meters.call_minutes]
tiers_mode = "volume"
tiers = [ { up_to = "100", unit_price = "0.10" }, { up_to = "inf", unit_price = "0.05" } ]
[tenants.g]
plan = "g"
[tenants.v]
plan = "v"
"#,
    );
    let g = charge(&cat, "g", &[("call_minutes", "150")]);
    assert_eq!(lines(&g), ["tiered:call_minutes=14.50"]);
    let v = charge(&cat, "v", &[("call_minutes", "150")]);
    assert_eq!(lines(&v), ["tiered:call_minutes=7.50"]);
    let v = charge(&cat, "v", &[("call_minutes", "100")]);
    assert_eq!(lines(&v), ["tiered:call_minutes=10.00"]);
}

// ---------------------------------------------------------------------------------------
// Caps, rates, revenue share, rounding.

#[test]
fn overage_cap_bounds_only_the_overage() {
    let pm = PlanMeter {
        name: "call_minutes".into(),
        included: Included::Finite(d("100")),
        included_once: None,
        overage_rate: Some(d("0.3")),
        overage_cap: Some(d("10")),
        hard_limit: false,
        rate: None,
        tiers: None,
    };
    assert_eq!(overage_charge(&pm, d("50"), d("100")), d("0"));
    assert_eq!(overage_charge(&pm, d("110"), d("100")), d("3.0"));
    assert_eq!(overage_charge(&pm, d("133.33"), d("100")), d("9.999"));
    assert_eq!(overage_charge(&pm, d("133.34"), d("100")), d("10"));
    assert_eq!(overage_charge(&pm, d("100000"), d("100")), d("10"));
    let uncapped = PlanMeter {
        overage_cap: None,
        ..pm.clone()
    };
    assert_eq!(overage_charge(&uncapped, d("200"), d("100")), d("30.0"));
    let no_rate = PlanMeter {
        overage_rate: None,
        overage_cap: None,
        ..pm
    };
    assert_eq!(overage_charge(&no_rate, d("200"), d("100")), d("0"));
}

#[test]
fn revenue_share_never_below_zero_and_lines_round_half_up() {
    let cat = catalog(
        r#"
[plans.r]
currency = "EUR"
revenue_share = "0.05"
[plans.m]
currency = "EUR"
base_fee = "0.125"
[plans.m.meters.calls]
rate = "0.0049"
[plans.m.meters.call_minutes]
rate = "0.0051"
[tenants.r]
plan = "r"
[tenants.m]
plan = "m"
"#,
    );
    // Refunds exceeding orders: the share is not negative, it is zero (no line).
    let c = charge(&cat, "r", &[("revenue", "-300")]);
    assert!(c.lines.is_empty());
    assert_eq!(total(&c), "0.00");
    let c = charge(&cat, "r", &[("revenue", "0.1")]);
    assert_eq!(lines(&c), ["revenue_share:revenue=0.01"]);
    // Each line is rounded on its own (0.125 -> 0.13; 0.49 and 0.51), then summed.
    let c = charge(&cat, "m", &[("calls", "100"), ("call_minutes", "100")]);
    assert_eq!(
        lines(&c),
        [
            "base_fee=0.13",
            "usage:call_minutes=0.51",
            "usage:calls=0.49"
        ]
    );
    assert_eq!(total(&c), "1.13");
    // 1 call: 0.0049 rounds to 0.00 and is left out.
    let c = charge(&cat, "m", &[("calls", "1")]);
    assert_eq!(lines(&c), ["base_fee=0.13"]);
}

#[test]
fn money_strings() {
    assert_eq!(money_str::format(d("79")), "79.00");
    assert_eq!(money_str::format(d("0.005")), "0.01");
    assert_eq!(money_str::format(d("-0.005")), "-0.01");
    assert_eq!(money_str::format(d("12.344999")), "12.34");
    let json = serde_json::to_value(Charges {
        lines: vec![ChargeLine {
            kind: "base_fee",
            meter: None,
            item: None,
            quantity: d("1"),
            amount: d("79"),
        }],
        total: d("79"),
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"lines": [{"kind": "base_fee", "meter": null, "quantity": "1", "amount": "79.00"}], "total": "79.00"})
    );
}

#[test]
fn yearly_discount_applies_to_the_base_fee_only() {
    let cat = catalog(
        r#"
[plans.p]
currency = "USD"
base_fee = "49.00"
yearly_discount = "0.15"
[plans.p.meters.calls]
rate = "1"
[tenants.m]
plan = "p"
[tenants.y]
plan = "p"
billing_cycle = "yearly"
"#,
    );
    let m = charge(&cat, "m", &[("calls", "10")]);
    let y = charge(&cat, "y", &[("calls", "10")]);
    assert_eq!(lines(&m), ["base_fee=49.00", "usage:calls=10.00"]);
    // 49 x 0.85 = 41.65
    assert_eq!(lines(&y), ["base_fee=41.65", "usage:calls=10.00"]);
}

// ---------------------------------------------------------------------------------------
// Plan changes, anchors and time zones.

const CHANGES: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
yearly_discount = "0.10"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
[plans.pro]
currency = "USD"
base_fee = "299.00"
yearly_discount = "0.10"
[plans.pro.meters.call_minutes]
included = "600"
overage_rate = "0.22"
[tenants.up]
plan = "starter"
[[tenants.up.plan_changes]]
at = "2026-11-16T00:00:00Z"
plan = "pro"
[tenants.yearly_up]
plan = "starter"
billing_cycle = "yearly"
[[tenants.yearly_up.plan_changes]]
at = "2026-11-16T00:00:00Z"
plan = "pro"
[tenants.paris]
plan = "starter"
timezone = "Europe/Paris"
anchor_day = 15
[[tenants.paris.plan_changes]]
at = "2026-10-25T12:00:00+01:00"
plan = "pro"
[[tenants.paris.plan_changes]]
at = "2026-11-20T00:00:00+01:00"
plan = "starter"
"#;

#[test]
fn plan_change_prorates_the_base_fee_and_reprices_the_whole_period() {
    let cat = catalog(CHANGES);
    // November UTC has 30 days; the change is at day 15 exactly: half and half.
    let c = charge(&cat, "up", &[("call_minutes", "650")]);
    assert_eq!(
        lines(&c),
        [
            "base_fee:starter=39.50",
            "base_fee:pro=149.50",
            "overage:call_minutes=11.00"
        ]
    );
    assert_eq!(total(&c), "200.00");
    // The new plan's 600 minutes apply to the whole period's usage.
    let c = charge(&cat, "up", &[("call_minutes", "500")]);
    assert_eq!(total(&c), "189.00");
    // Yearly: the discount applies to each prorated part.
    let c = charge(&cat, "yearly_up", &[("call_minutes", "0")]);
    assert_eq!(lines(&c), ["base_fee:starter=35.55", "base_fee:pro=134.55"]);
    // Seen before the change happens: the old plan, not prorated.
    let c = charge_at(
        &cat,
        "up",
        "2026-11-10T00:00:00Z",
        "2026-11-10T00:00:00Z",
        &[("call_minutes", "500")],
        false,
    );
    assert_eq!(lines(&c), ["base_fee=79.00", "overage:call_minutes=83.60"]);
    // The period before and after: one plan each, whole fees.
    let c = charge_at(
        &cat,
        "up",
        "2026-10-10T00:00:00Z",
        "2027-01-01T00:00:00Z",
        &[],
        false,
    );
    assert_eq!(lines(&c), ["base_fee=79.00"]);
    let c = charge_at(
        &cat,
        "up",
        "2026-12-10T00:00:00Z",
        "2027-01-01T00:00:00Z",
        &[],
        false,
    );
    assert_eq!(lines(&c), ["base_fee=299.00"]);
}

#[test]
fn proration_uses_the_tenant_period_across_dst() {
    let cat = catalog(CHANGES);
    let t = cat.tenant("paris").unwrap();
    // Period 2026-10-15T00:00+02:00 .. 2026-11-15T00:00+01:00: 31 days + 1 h (DST ends
    // 2026-10-25). Starter until 2026-10-25T12:00+01:00, then pro.
    let p = t.period_at(utc("2026-10-20T00:00:00Z"));
    assert_eq!(p.start_utc(), utc("2026-10-15T00:00:00+02:00"));
    assert_eq!(p.end_utc(), utc("2026-11-15T00:00:00+01:00"));
    assert_eq!(p.seconds(), (31 * 24 + 1) * 3600);
    let segs = plan_segments(&t, p, utc("2027-01-01T00:00:00Z"));
    let starter_secs = (utc("2026-10-25T12:00:00+01:00") - p.start_utc()).num_seconds();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].1, starter_secs);
    assert_eq!(segs[0].1 + segs[1].1, p.seconds());
    let c = charge_at(
        &cat,
        "paris",
        "2026-10-20T00:00:00Z",
        "2027-01-01T00:00:00Z",
        &[],
        false,
    );
    let secs = Decimal::from(p.seconds());
    let want_starter = round_money(d("79") * Decimal::from(starter_secs) / secs);
    let want_pro = round_money(d("299") * Decimal::from(p.seconds() - starter_secs) / secs);
    assert_eq!(c.lines[0].amount, want_starter);
    assert_eq!(c.lines[1].amount, want_pro);
    // 253 h of 745 h on starter: 79 x 253/745 = 26.83; 492 h on pro: 299 x 492/745 = 197.46.
    assert_eq!(lines(&c), ["base_fee:starter=26.83", "base_fee:pro=197.46"]);
    // Next period (from 2026-11-15, Paris): pro for 5 days, back to starter; the plan of
    // the period's end (starter) sets limits and rates.
    let p2 = t.period_at(utc("2026-11-23T10:00:00Z"));
    assert_eq!(p2.start_utc(), utc("2026-11-15T00:00:00+01:00"));
    assert_eq!(
        t.plan_for_period(p2, utc("2027-01-01T00:00:00Z")).id,
        "starter"
    );
    assert_eq!(t.plan_for_period(p2, utc("2026-11-18T00:00:00Z")).id, "pro");
    let c = charge_at(
        &cat,
        "paris",
        "2026-11-23T10:00:00Z",
        "2027-01-01T00:00:00Z",
        &[("call_minutes", "130")],
        false,
    );
    // 5 of 30 days on pro: 299/6 = 49.83; 25 days starter: 79 x 5/6 = 65.83; 10 min over.
    assert_eq!(
        lines(&c),
        [
            "base_fee:pro=49.83",
            "base_fee:starter=65.83",
            "overage:call_minutes=2.20"
        ]
    );
}

#[test]
fn anchors_and_time_zones_pick_the_period() {
    let cat = catalog(
        r#"
[plans.p]
currency = "USD"
base_fee = "10"
[tenants.t]
plan = "p"
timezone = "America/New_York"
anchor_day = 31
"#,
    );
    let t = cat.tenant("t").unwrap();
    // 2026-03-01T03:00Z is still Feb 28 in New York: the period anchored on Feb 28.
    let p = t.period_at(utc("2026-03-01T03:00:00Z"));
    assert_eq!(p.start_utc(), utc("2026-02-28T00:00:00-05:00"));
    // Ends on Mar 31 local midnight, after the DST change (EDT, -04:00).
    assert_eq!(p.end_utc(), utc("2026-03-31T00:00:00-04:00"));
    let c = charge_at(
        &cat,
        "t",
        "2026-03-01T03:00:00Z",
        "2026-03-01T03:00:00Z",
        &[],
        false,
    );
    assert_eq!(total(&c), "10.00");
}

// ---------------------------------------------------------------------------------------
// Entitlements.

#[test]
fn entitlements() {
    let cat = catalog(
        r#"
[plans.hard]
currency = "USD"
[plans.hard.meters.call_minutes]
included = "100"
hard_limit = true
[plans.soft]
currency = "USD"
[plans.soft.meters.call_minutes]
included = "100"
overage_rate = "0.1"
[plans.prepaid]
currency = "USD"
[plans.prepaid.meters.call_minutes]
rate = "0.1"
[plans.prepaid.wallet]
monthly_grant = "5"
[plans.postpaid]
currency = "USD"
[plans.postpaid.wallet]
prepaid = false
"#,
    );
    let p = |id: &str| cat.plans[id].clone();
    let l = Some(d("100"));
    let e = entitlement(&p("hard"), l, CALL_MINUTES, d("99.5"), None);
    assert_eq!((e.allowed, e.remaining), (true, Some(d("0.5"))));
    let e = entitlement(&p("hard"), l, CALL_MINUTES, d("100"), None);
    assert_eq!(
        (e.allowed, e.reason.as_deref(), e.remaining),
        (false, Some(HARD_LIMIT_REACHED), Some(Decimal::ZERO))
    );
    // Soft limits never refuse; remaining does not go negative.
    let e = entitlement(&p("soft"), l, CALL_MINUTES, d("150"), None);
    assert_eq!((e.allowed, e.remaining), (true, Some(Decimal::ZERO)));
    // Prepaid wallets refuse at zero; an unknown balance does not refuse.
    let e = entitlement(&p("prepaid"), None, CALL_MINUTES, d("1"), Some(d("0")));
    assert_eq!(
        (e.allowed, e.reason.as_deref(), e.remaining),
        (false, Some(WALLET_EMPTY), None)
    );
    let e = entitlement(&p("prepaid"), None, CALL_MINUTES, d("1"), Some(d("-0.01")));
    assert!(!e.allowed);
    let e = entitlement(&p("prepaid"), None, CALL_MINUTES, d("1"), Some(d("0.01")));
    assert!(e.allowed);
    let e = entitlement(&p("prepaid"), None, CALL_MINUTES, d("1"), None);
    assert!(e.allowed);
    // A wallet that is not prepaid never refuses.
    let e = entitlement(&p("postpaid"), None, CALL_MINUTES, d("1"), Some(d("-50")));
    assert!(e.allowed);
    assert_eq!(
        serde_json::to_value(entitlement(&p("hard"), l, CALL_MINUTES, d("100"), None)).unwrap(),
        serde_json::json!({"allowed": false, "reason": "hard_limit_reached", "remaining": "0"})
    );
    assert_eq!(
        serde_json::to_value(entitlement(&p("soft"), None, CALLS, d("3"), None)).unwrap(),
        serde_json::json!({"allowed": true, "reason": null, "remaining": null})
    );
}

// ---------------------------------------------------------------------------------------
// Properties.

/// Volume mode and (bound step, unit price cents, flat fee) per tier.
type TierSpec = (bool, Vec<(u32, u32, u32)>);

/// A random plan: every pricing feature, all prices non-negative.
fn plan_toml(
    base: u32,
    included: Option<u32>,
    over: Option<(u32, Option<u32>)>,
    rate: Option<u32>,
    tiers: Option<TierSpec>,
    share: Option<u32>,
    addon: Option<(u32, u32)>,
) -> String {
    let mut s = format!("[plans.p]\ncurrency = \"USD\"\nbase_fee = \"{base}.25\"\n");
    if let Some(sh) = share {
        s += &format!("revenue_share = \"0.{sh:02}\"\n");
    }
    s += "[plans.p.meters.call_minutes]\n";
    if let Some(i) = included {
        s += &format!("included = \"{i}\"\n");
        if let Some((r, cap)) = over {
            s += &format!("overage_rate = \"0.{r:02}\"\n");
            if let Some(c) = cap {
                s += &format!("overage_cap = \"{c}\"\n");
            }
        }
    }
    if let Some((volume, t)) = tiers.filter(|_| over.is_none() || included.is_none()) {
        s += &format!(
            "tiers_mode = \"{}\"\ntiers = [",
            if volume { "volume" } else { "graduated" }
        );
        let mut up = 0;
        for (i, (step, price, flat)) in t.iter().enumerate() {
            up += step + 1;
            let bound = if i + 1 == t.len() {
                "inf".to_string()
            } else {
                up.to_string()
            };
            s += &format!(
                "{{ up_to = \"{bound}\", unit_price = \"0.{price:02}\", flat_fee = \"{flat}\" }},"
            );
        }
        s += "]\n";
    } else if let Some(r) = rate {
        s += "[plans.p.meters.calls]\n";
        s += &format!("rate = \"0.{r:02}\"\n");
    }
    if let Some((inc, price)) = addon {
        s += &format!(
            "[plans.p.addons.extra]\nmeter = \"call_minutes\"\nincluded = \"{inc}\"\nprice = \"{price}\"\n"
        );
    }
    s += "[tenants.t]\nplan = \"p\"\naddons = { ";
    if addon.is_some() {
        s += "extra = 2";
    }
    s += " }\n";
    s
}

fn arb_plan() -> impl Strategy<Value = (String, bool)> {
    (
        0u32..300,
        prop::option::of(0u32..1000),
        prop::option::of((0u32..100, prop::option::of(0u32..50))),
        prop::option::of(0u32..100),
        prop::option::of((
            any::<bool>(),
            prop::collection::vec((0u32..500, 0u32..100, 0u32..5), 1..4),
        )),
        prop::option::of(0u32..100),
        prop::option::of((0u32..200, 0u32..30)),
    )
        .prop_map(|(base, inc, over, rate, tiers, share, addon)| {
            let volume = tiers.as_ref().is_some_and(|t| t.0);
            (
                plan_toml(base, inc, over, rate, tiers, share, addon),
                volume,
            )
        })
}

fn arb_usage() -> impl Strategy<Value = (u32, u32, i64)> {
    (0u32..5_000_000, 0u32..2000, -100_000i64..1_000_000)
}

fn charges_for(cat: &Catalog, minutes_milli: u32, calls: u32, revenue_cents: i64) -> Charges {
    let t = cat.tenant("t").unwrap();
    let u = vec![
        MeterUsage {
            meter: CALL_MINUTES,
            name: "call_minutes".into(),
            usage: Decimal::new(minutes_milli as i64, 3),
        },
        MeterUsage {
            meter: CALLS,
            name: "calls".into(),
            usage: Decimal::from(calls),
        },
        MeterUsage {
            meter: REVENUE,
            name: "revenue".into(),
            usage: Decimal::new(revenue_cents, 2),
        },
    ];
    charges(&ChargeInput {
        tenant: &t,
        period: t.period_at(utc("2026-11-20T00:00:00Z")),
        usage: &u,
        first_period: false,
        now: utc("2027-01-01T00:00:00Z"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No line and no total is ever negative, and the total is the sum of the lines, each
    /// already rounded to cents.
    #[test]
    fn charges_are_never_negative((plan, _) in arb_plan(), (m, c, r) in arb_usage()) {
        let cat = catalog(&plan);
        let ch = charges_for(&cat, m, c, r);
        for l in &ch.lines {
            prop_assert!(l.amount > Decimal::ZERO, "{l:?}");
            prop_assert_eq!(l.amount, round_money(l.amount));
        }
        prop_assert!(ch.total >= Decimal::ZERO);
        prop_assert_eq!(ch.total, ch.lines.iter().map(|l| l.amount).sum::<Decimal>());
    }

    /// More usage never costs less, for plans without volume tiers (volume pricing drops at
    /// tier boundaries by design).
    #[test]
    fn charges_are_monotone_in_usage(
        (plan, volume) in arb_plan(),
        (m, c, r) in arb_usage(),
        (dm, dc, dr) in (0u32..1_000_000, 0u32..500, 0i64..100_000),
    ) {
        prop_assume!(!volume);
        let cat = catalog(&plan);
        let lo = charges_for(&cat, m, c, r);
        let hi = charges_for(&cat, m + dm, c + dc, r + dr);
        prop_assert!(lo.total <= hi.total, "{} > {} for {}", lo.total, hi.total, plan);
    }

    /// An included quantity with an overage rate prices exactly like Stripe's graduated
    /// "first N units free, then the rate" tiers (seed 002's Stripe mapping).
    #[test]
    fn included_plus_overage_equals_graduated_tiers(
        included in 1u32..3000,
        rate in 1u32..100,
        minutes_milli in 0u32..10_000_000,
    ) {
        let a = catalog(&format!(
            "[plans.p]\ncurrency = \"EUR\"\n[plans.p.meters.call_minutes]\nincluded = \"{included}\"\noverage_rate = \"0.{rate:02}\"\n[tenants.t]\nplan = \"p\"\n"
        ));
        let b = catalog(&format!(
            "[plans.p]\ncurrency = \"EUR\"\n[plans.p.meters.call_minutes]\ntiers = [ {{ up_to = \"{included}\", unit_price = \"0\" }}, {{ up_to = \"inf\", unit_price = \"0.{rate:02}\" }} ]\n[tenants.t]\nplan = \"p\"\n"
        ));
        prop_assert_eq!(
            charges_for(&a, minutes_milli, 0, 0).total,
            charges_for(&b, minutes_milli, 0, 0).total
        );
    }
}

/// Event order and duplication do not change usage, hence charges: the same events fed to
/// the real aggregation in any order, with repeats, give the same charges.
mod order_and_duplicates {
    use super::*;
    use crate::state::{InMessage, Params, Processor, Restored, Shared};

    const CONFIG: &str = r#"
[plans.p]
currency = "EUR"
base_fee = "49.00"
revenue_share = "0.05"
[plans.p.meters.call_minutes]
included = "10"
overage_rate = "0.50"
overage_cap = "30"
[plans.p.meters.calls]
rate = "0.50"
[tenants.acme]
plan = "p"
"#;

    fn event(i: u32, ms: u32, cents: u32) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e{i}","source":"s","type":"call.completed","subject":"acme","time":"2026-11-{:02}T10:00:00Z","data":{{"call_id":"c{i}","duration_ms":{ms},"direction":"inbound","revenue":{{"amount":"{}.{:02}","currency":"EUR"}}}}}}"#,
            1 + i % 20,
            cents / 100,
            cents % 100
        )
    }

    fn run(c: &Config, payloads: &[String]) -> Charges {
        let shared = Shared::new(c.catalog.clone());
        let mut p = Processor::new(shared.clone(), Params::from_settings(&c.settings));
        p.assign(0);
        p.install(Restored {
            partition: 0,
            ..Default::default()
        });
        let now = utc("2026-11-25T00:00:00Z");
        let ts0 = now.timestamp_millis() - 100_000;
        for (i, pl) in payloads.iter().enumerate() {
            p.process(
                &InMessage {
                    partition: 0,
                    offset: i as i64,
                    payload: Some(pl.as_bytes()),
                    timestamp_ms: Some(ts0 + i as i64),
                },
                now,
            );
        }
        let cat = &c.catalog;
        let t = cat.tenant("acme").unwrap();
        let period = t.period_at(utc("2026-11-10T00:00:00Z"));
        let tidx = shared.tenants().get("acme");
        let u: Vec<MeterUsage> = cat
            .meters
            .iter()
            .enumerate()
            .map(|(i, def)| {
                let mid = crate::meter::MeterId(i as u16);
                let raw = tidx
                    .and_then(|t| shared.tenant_raw(t, mid, period.start))
                    .map(|r| r.0)
                    .unwrap_or_default();
                MeterUsage {
                    meter: mid,
                    name: def.name.to_string(),
                    usage: def.value(raw),
                }
            })
            .collect();
        charges(&ChargeInput {
            tenant: &t,
            period,
            usage: &u,
            first_period: true,
            now,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn charges_do_not_depend_on_order_or_duplicates(
            events in prop::collection::vec((1u32..600_000, 0u32..10_000), 1..40),
            order in any::<prop::sample::Index>(),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let c = Config::from_toml_str(CONFIG).unwrap();
            let payloads: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(i, (ms, cents))| event(i as u32, *ms, *cents))
                .collect();
            let expected = run(&c, &payloads);
            // A rotation plus reversal (a different order), with duplicates spliced in.
            let mut shuffled = payloads.clone();
            let k = order.index(shuffled.len());
            shuffled.rotate_left(k);
            shuffled.reverse();
            for d in &dups {
                let pick = payloads[d.index(payloads.len())].clone();
                let at = d.index(shuffled.len() + 1);
                shuffled.insert(at, pick);
            }
            let got = run(&c, &shuffled);
            prop_assert_eq!(got, expected);
        }
    }
}
