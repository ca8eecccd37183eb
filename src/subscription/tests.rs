//! Subscription records and the timeline they make: resolution against the catalog, and
//! proration edges (a change at the period's start and at its end, two changes in one
//! period, a change then a cancellation, a tenant created mid-period), priced by the same
//! `pricing::charges` every caller uses.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::*;
use crate::config::Config;
use crate::event::{ErrorCode, SubscriptionCanceled, SubscriptionUpdated};
use crate::meter::CALL_MINUTES;
use crate::pricing::{ChargeInput, Charges, MeterUsage, money_str};

const CATALOG: &str = r#"
[plans.basic]
currency = "USD"
base_fee = "100.00"
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "1.00"
[plans.pro]
currency = "USD"
base_fee = "300.00"
yearly_discount = "0.5"
[plans.pro.meters.call_minutes]
included = "1000"
overage_rate = "0.50"
[plans.pro.addons.extra_minutes]
meter = "call_minutes"
included = "500"
price = "20.00"
[plans.old]
currency = "USD"
legacy = true
[plans.euro]
currency = "EUR"
[tenants.acme]
plan = "basic"
[tenants.veteran]
plan = "old"
"#;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cat() -> Arc<Catalog> {
    Config::from_toml_str(CATALOG)
        .unwrap_or_else(|e| panic!("{e}"))
        .catalog
}

fn upd(plan: &str, at: &str, addons: &[(&str, u32)]) -> SubscriptionUpdated {
    SubscriptionUpdated {
        plan: plan.into(),
        addons: addons.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
        billing_cycle: None,
        stripe_customer_id: None,
        effective_at: Some(utc(at)),
        timezone: None,
        anchor_day: None,
    }
}

fn cancel(at: &str) -> SubscriptionCanceled {
    SubscriptionCanceled {
        effective_at: Some(utc(at)),
    }
}

/// Applies `changes` to `tenant` in order, as the processor does; returns the tenant.
fn apply(cat: &Catalog, tenant: &str, changes: &[Change<'_>]) -> Arc<Tenant> {
    let mut records = Vec::new();
    let mut cur = cat.tenant(tenant);
    for (i, c) in changes.iter().enumerate() {
        let r = resolve(
            cat,
            cur.as_deref(),
            *c,
            Origin {
                tenant,
                event_id: &format!("e{i}"),
                partition: 0,
                offset: i as i64,
            },
        )
        .unwrap_or_else(|e| panic!("change {i}: {e}"));
        records.push(r);
        cur = merge(cat, tenant, cat.tenant(tenant).as_ref(), &records);
    }
    cur.unwrap()
}

fn charges_of(t: &Tenant, at: &str, minutes: &str) -> Charges {
    let usage = vec![MeterUsage {
        meter: CALL_MINUTES,
        name: "call_minutes".into(),
        usage: minutes.parse().unwrap(),
    }];
    crate::pricing::charges(&ChargeInput {
        tenant: t,
        period: t.period_at(utc(at)),
        usage: &usage,
        first_period: false,
        now: utc("2027-06-01T00:00:00Z"),
    })
}

fn lines(c: &Charges) -> Vec<String> {
    let mut v: Vec<String> = c
        .lines
        .iter()
        .map(|l| {
            let tag = l.item.as_deref().or(l.meter.as_deref());
            match tag {
                Some(t) => format!("{}:{}={}", l.kind, t, money_str::format(l.amount)),
                None => format!("{}={}", l.kind, money_str::format(l.amount)),
            }
        })
        .collect();
    v.push(format!("total={}", money_str::format(c.total)));
    v
}

#[test]
fn a_change_at_the_period_start_governs_the_whole_period() {
    let cat = cat();
    let t = apply(
        &cat,
        "acme",
        &[Change::Updated(&upd("pro", "2026-11-01T00:00:00Z", &[]))],
    );
    // November is all pro: no proration; October all basic.
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "1100")),
        [
            "base_fee=300.00",
            "overage:call_minutes=50.00",
            "total=350.00"
        ]
    );
    assert_eq!(
        lines(&charges_of(&t, "2026-10-20T00:00:00Z", "150")),
        [
            "base_fee=100.00",
            "overage:call_minutes=50.00",
            "total=150.00"
        ]
    );
}

#[test]
fn a_change_at_the_period_end_starts_with_the_next_period() {
    let cat = cat();
    let t = apply(
        &cat,
        "acme",
        &[Change::Updated(&upd("pro", "2026-12-01T00:00:00Z", &[]))],
    );
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "150")),
        [
            "base_fee=100.00",
            "overage:call_minutes=50.00",
            "total=150.00"
        ]
    );
    assert_eq!(
        lines(&charges_of(&t, "2026-12-20T00:00:00Z", "150")),
        ["base_fee=300.00", "total=300.00"]
    );
}

#[test]
fn two_changes_in_one_period_prorate_each_plan_and_bill_the_last_addons() {
    let cat = cat();
    // November has 30 days: basic 10 days, pro 20 days (add-ons bought on the 21st, which
    // does not prorate the base fee again).
    let t = apply(
        &cat,
        "acme",
        &[
            Change::Updated(&upd("pro", "2026-11-11T00:00:00Z", &[])),
            Change::Updated(&upd("pro", "2026-11-21T00:00:00Z", &[("extra_minutes", 2)])),
        ],
    );
    // Limit 1000 + 2 x 500 = 2000: 2100 minutes are 100 over at 0.50.
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "2100")),
        [
            "base_fee:basic=33.33",
            "base_fee:pro=200.00",
            "overage:call_minutes=50.00",
            "addon:extra_minutes=40.00",
            "total=323.33"
        ]
    );
    let p = t.period_at(utc("2026-11-20T00:00:00Z"));
    let now = utc("2027-01-01T00:00:00Z");
    assert_eq!(
        t.governing_terms(p, now).limit(CALL_MINUTES, false),
        Some(Decimal::from(2000))
    );
    // Before the add-on, as known on the 15th: the pro limit alone, no add-on line.
    let mid = t.governing_terms(p, utc("2026-11-15T00:00:00Z"));
    assert_eq!(mid.limit(CALL_MINUTES, false), Some(Decimal::from(1000)));
    // Back and forth: basic, pro, basic again: one base-fee line per plan.
    let t = apply(
        &cat,
        "acme",
        &[
            Change::Updated(&upd("pro", "2026-11-11T00:00:00Z", &[])),
            Change::Updated(&upd("basic", "2026-11-21T00:00:00Z", &[])),
        ],
    );
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "0")),
        [
            "base_fee:basic=66.67",
            "base_fee:pro=100.00",
            "total=166.67"
        ]
    );
}

#[test]
fn a_change_then_a_cancellation() {
    let cat = cat();
    let t = apply(
        &cat,
        "acme",
        &[
            Change::Updated(&upd("pro", "2026-11-11T00:00:00Z", &[("extra_minutes", 1)])),
            Change::Canceled(&cancel("2026-11-21T00:00:00Z")),
        ],
    );
    // Basic 10 days, pro 10 days, nothing after; usage priced on pro with the add-on held
    // at cancellation (limit 1500).
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "1600")),
        [
            "base_fee:basic=33.33",
            "base_fee:pro=100.00",
            "overage:call_minutes=50.00",
            "addon:extra_minutes=20.00",
            "total=203.33"
        ]
    );
    // Later usage has no subscription; at the cancellation's second it still counts.
    assert_eq!(
        t.canceled_before(utc("2026-11-25T00:00:00Z")),
        Some(utc("2026-11-21T00:00:00Z"))
    );
    assert_eq!(t.canceled_before(utc("2026-11-21T00:00:00Z")), None);
    assert_eq!(t.canceled_before(utc("2026-11-15T00:00:00Z")), None);
    // December: nothing at all.
    assert_eq!(
        lines(&charges_of(&t, "2026-12-20T00:00:00Z", "0")),
        ["total=0.00"]
    );
    // A new subscription after the cancellation starts again.
    let t = apply(
        &cat,
        "acme",
        &[
            Change::Canceled(&cancel("2026-11-21T00:00:00Z")),
            Change::Updated(&upd("basic", "2026-11-26T00:00:00Z", &[])),
        ],
    );
    assert_eq!(t.canceled_before(utc("2026-11-27T00:00:00Z")), None);
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "0")),
        ["base_fee:basic=83.33", "total=83.33"]
    );
}

#[test]
fn a_tenant_created_by_its_first_event() {
    let cat = cat();
    let mut u = upd("pro", "2026-11-16T00:00:00Z", &[]);
    // Without a time zone and anchor day it cannot be created.
    let err = resolve(
        &cat,
        None,
        Change::Updated(&u),
        Origin {
            tenant: "newco",
            event_id: "e",
            partition: 0,
            offset: 0,
        },
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidData);
    u.timezone = Some("UTC".into());
    u.anchor_day = Some(1);
    u.billing_cycle = Some(crate::event::CycleName::Yearly);
    let r = resolve(
        &cat,
        None,
        Change::Updated(&u),
        Origin {
            tenant: "newco",
            event_id: "e",
            partition: 3,
            offset: 41,
        },
    )
    .unwrap();
    assert_eq!(r.through_offset, 42);
    assert_eq!(r.addons_json(), "{}");
    let t = merge(&cat, "newco", None, &[r]).unwrap();
    // Signed up halfway through November, yearly: 300 x 0.5 x 15/30.
    assert_eq!(
        lines(&charges_of(&t, "2026-11-20T00:00:00Z", "0")),
        ["base_fee:pro=75.00", "total=75.00"]
    );
    assert!(t.canceled_before(utc("2026-11-10T00:00:00Z")).is_some());
    assert_eq!(t.canceled_before(utc("2026-11-17T00:00:00Z")), None);
    // Neither a base nor a record that creates it: no tenant.
    assert!(merge(&cat, "ghost", None, &[]).is_none());
}

#[test]
fn resolution_rejects_what_the_catalog_or_tenant_forbids() {
    let cat = cat();
    let acme = cat.tenant("acme").unwrap();
    let at = Origin {
        tenant: "acme",
        event_id: "e",
        partition: 0,
        offset: 0,
    };
    let code = |t: Option<&Tenant>, c: Change<'_>| resolve(&cat, t, c, at).unwrap_err().code;
    let u = upd("platinum", "2026-11-16T00:00:00Z", &[]);
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::UnknownPlan
    );
    let u = upd("basic", "2026-11-16T00:00:00Z", &[("extra_minutes", 1)]);
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::UnknownPlan
    );
    let u = upd("euro", "2026-11-16T00:00:00Z", &[]);
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::InvalidData
    );
    let u = upd("old", "2026-11-16T00:00:00Z", &[]);
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::InvalidData
    );
    let mut u = upd("basic", "2026-11-16T00:00:00Z", &[]);
    u.timezone = Some("Europe/Paris".into());
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::InvalidData
    );
    u.timezone = Some("UTC".into());
    u.anchor_day = Some(1);
    assert!(resolve(&cat, Some(&acme), Change::Updated(&u), at).is_ok());
    u.anchor_day = Some(15);
    assert_eq!(
        code(Some(&acme), Change::Updated(&u)),
        ErrorCode::InvalidData
    );
    let c = cancel("2026-11-16T00:00:00Z");
    assert_eq!(code(None, Change::Canceled(&c)), ErrorCode::UnknownTenant);
    // A grandfathered tenant may stay on its legacy plan (e.g. to buy add-ons).
    let vet = cat.tenant("veteran").unwrap();
    let u = upd("old", "2026-11-16T00:00:00Z", &[]);
    assert!(resolve(&cat, Some(&vet), Change::Updated(&u), at).is_ok());
}
