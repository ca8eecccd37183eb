//! Statement construction: lines with quantities, proration, the empty statement, the id,
//! the JSON shape, merging, and the overflow error.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::*;
use crate::catalog::Catalog;
use crate::config::Config;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const CONFIG: &str = r#"
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
[plans.pro]
currency = "USD"
base_fee = "299.00"
[plans.pro.meters.call_minutes]
included = "600"
overage_rate = "0.22"
[plans.free]
currency = "EUR"
[plans.huge]
currency = "USD"
[plans.huge.meters.calls]
rate = "1000000000000000000"
[tenants.acme]
plan = "starter"
timezone = "Europe/Paris"
addons = { extra_minutes = 2 }
[tenants.up]
plan = "starter"
[[tenants.up.plan_changes]]
at = "2026-11-16T00:00:00Z"
plan = "pro"
[tenants.nothing]
plan = "free"
[tenants.big]
plan = "huge"
"#;

fn catalog() -> Arc<Catalog> {
    Config::from_toml_str(CONFIG)
        .unwrap_or_else(|e| panic!("{e}"))
        .catalog
}

fn stmt(cat: &Catalog, tenant: &str, at: &str, u: &[(&str, &str)]) -> Statement {
    let t = cat.tenant(tenant).unwrap();
    let usage: Vec<MeterUsage> = u
        .iter()
        .map(|(m, v)| MeterUsage {
            meter: cat.meter_id(m).unwrap(),
            name: m.to_string(),
            usage: d(v),
        })
        .collect();
    build(&t, t.period_at(utc(at)), &usage, false, 48 * 3600).unwrap()
}

#[test]
fn statement_id_is_a_pinned_function_of_tenant_and_period_start() {
    // November 2026 in Paris starts at 2026-10-31T23:00:00Z = 1793487600.
    assert_eq!(
        statement_id("acme", 1_793_487_600),
        "9ac3985b3d8d39d70a2798fe3fd49784"
    );
    assert_eq!(
        statement_id("acme", 1_793_487_600),
        statement_id("acme", 1_793_487_600)
    );
    assert_ne!(
        statement_id("acme", 1_793_487_600),
        statement_id("acme", 1_793_487_601)
    );
    assert_ne!(
        statement_id("acme", 1_793_487_600),
        statement_id("acm", 1_793_487_600)
    );
    // Length prefixes: moving characters between fields changes the id.
    assert_ne!(statement_id("a1", 23), statement_id("a", 123));
}

#[test]
fn lines_carry_quantities_and_the_json_is_the_contract_shape() {
    let cat = catalog();
    let s = stmt(
        &cat,
        "acme",
        "2026-11-20T10:00:00Z",
        &[("call_minutes", "500.5")],
    );
    assert_eq!(s.statement_id, "9ac3985b3d8d39d70a2798fe3fd49784");
    assert_eq!(s.period.start, 1_793_487_600);
    assert_eq!(s.closed_at, s.period.end + 48 * 3600);
    // Limit 120 + 2 x 100 = 320: 180.5 minutes over at 0.22 = 39.71.
    assert_eq!(
        serde_json::to_value(s.body()).unwrap(),
        json!({
            "statement_id": "9ac3985b3d8d39d70a2798fe3fd49784",
            "tenant_id": "acme", "plan": "starter", "currency": "USD",
            "period_start": "2026-10-31T23:00:00Z", "period_end": "2026-11-30T23:00:00Z",
            "lines": [
                {"kind": "base_fee", "meter": null, "item": null, "quantity": "1", "amount": "79.00"},
                {"kind": "overage", "meter": "call_minutes", "item": null, "quantity": "180.5", "amount": "39.71"},
                {"kind": "addon", "meter": "call_minutes", "item": "extra_minutes", "quantity": "2", "amount": "30.00"}
            ],
            "total": "148.71",
            "closed_at": "2026-12-02T23:00:00Z"
        })
    );
    let (key, body) = s.record();
    assert_eq!(key, b"acme");
    let back: StatementBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(back, s.body());
}

#[test]
fn the_same_inputs_give_the_same_statement() {
    let cat = catalog();
    let a = stmt(
        &cat,
        "acme",
        "2026-11-20T10:00:00Z",
        &[("call_minutes", "500.5")],
    );
    let b = stmt(
        &cat,
        "acme",
        "2026-11-02T00:00:00Z",
        &[("call_minutes", "500.5")],
    );
    assert_eq!(a, b);
    assert_eq!(a.record(), b.record());
}

#[test]
fn a_plan_change_prorates_the_base_fee_with_fractions_as_quantities() {
    let cat = catalog();
    let s = stmt(
        &cat,
        "up",
        "2026-11-20T10:00:00Z",
        &[("call_minutes", "650")],
    );
    assert_eq!(s.plan, "pro");
    let lines: Vec<(String, Option<String>, String, String)> = s
        .lines
        .iter()
        .map(|l| {
            (
                l.kind.clone(),
                l.item.clone(),
                l.quantity.to_string(),
                l.amount.to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                "base_fee".into(),
                Some("pro".into()),
                "0.5".into(),
                "149.50".into()
            ),
            (
                "base_fee".into(),
                Some("starter".into()),
                "0.5".into(),
                "39.50".into()
            ),
            ("overage".into(), None, "50".into(), "11.00".into()),
        ]
    );
    assert_eq!(s.total, d("200.00"));
}

#[test]
fn a_period_without_charges_has_no_lines_and_a_zero_total() {
    let cat = catalog();
    let s = stmt(&cat, "nothing", "2026-11-20T10:00:00Z", &[("calls", "3")]);
    assert!(s.lines.is_empty());
    assert_eq!(s.body().total, "0.00");
    assert_eq!(s.currency, "EUR");
}

#[test]
fn lines_with_the_same_key_are_merged_in_canonical_order() {
    let l = |kind: &str, meter: Option<&str>, item: Option<&str>, q: &str, a: &str| StatementLine {
        kind: kind.into(),
        meter: meter.map(str::to_string),
        item: item.map(str::to_string),
        quantity: d(q),
        amount: d(a),
    };
    let got = canonical_lines(vec![
        l("addon", None, Some("rec"), "1", "10.00"),
        l("base_fee", None, Some("a"), "0.25", "10.00"),
        l("overage", Some("call_minutes"), None, "3", "0.66"),
        l("base_fee", None, Some("b"), "0.5", "20.00"),
        l("base_fee", None, Some("a"), "0.25", "10.00"),
    ])
    .unwrap();
    assert_eq!(
        got,
        [
            l("base_fee", None, Some("a"), "0.5", "20.00"),
            l("base_fee", None, Some("b"), "0.5", "20.00"),
            l("overage", Some("call_minutes"), None, "3", "0.66"),
            l("addon", None, Some("rec"), "1", "10.00"),
        ]
    );
}

#[test]
fn an_amount_beyond_range_is_an_error_not_a_statement() {
    let cat = catalog();
    let t = cat.tenant("big").unwrap();
    let usage = [MeterUsage {
        meter: crate::meter::CALLS,
        name: "calls".into(),
        usage: d("100000000000000000000"),
    }];
    let err = build(
        &t,
        t.period_at(utc("2026-11-20T10:00:00Z")),
        &usage,
        false,
        0,
    );
    assert!(matches!(err, Err(PricingError::Overflow { .. })), "{err:?}");
}
