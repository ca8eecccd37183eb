//! Price computation for a tenant's usage period ([`callmeter::pricing::charges`]), as the
//! usage API and the Stripe reporter do it, on the example plans: overage with add-ons, a
//! prorated plan change, yearly discounts, per-call rates, revenue share, graduated tiers,
//! prepaid wallets and one-time allowances.
//!
//! `cargo bench --bench pricing`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;

use callmeter::catalog::Catalog;
use callmeter::config::Config;
use callmeter::pricing::{ChargeInput, MeterUsage, Tenant, charges, entitlement};

const EXAMPLES: &[(&str, &str)] = &[
    (
        "seed-000",
        include_str!("../examples/seed-000-hybrid-tiered.toml"),
    ),
    (
        "seed-001",
        include_str!("../examples/seed-001-prepaid-wallet.toml"),
    ),
    (
        "seed-002",
        include_str!("../examples/seed-002-pricing-models.toml"),
    ),
    (
        "seed-004",
        include_str!("../examples/seed-004-coaching-tiers.toml"),
    ),
    ("contract", include_str!("../examples/contract.toml")),
];

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .with_timezone(&Utc)
}

/// A busy month: 750.5 minutes, 300 calls, 4,200 of revenue, 100 of anything else.
fn usage(cat: &Catalog) -> Vec<MeterUsage> {
    let values: Vec<(callmeter::meter::MeterId, Decimal)> = cat
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let v = match &*m.name {
                "call_minutes" => Decimal::new(7505, 1),
                "calls" => Decimal::from(300),
                "revenue" => Decimal::new(420000, 2),
                _ => Decimal::from(100),
            };
            (callmeter::meter::MeterId(i as u16), v)
        })
        .collect();
    MeterUsage::from_values(cat, values.iter().map(|(m, v)| (m, v)))
}

struct Case {
    name: String,
    tenant: Arc<Tenant>,
    usage: Vec<MeterUsage>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (file, toml) in EXAMPLES {
        let cat = Config::from_toml_str(toml)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .catalog;
        let u = usage(&cat);
        for (id, t) in &cat.tenants {
            out.push(Case {
                name: format!("{file}:{id}"),
                tenant: t.clone(),
                usage: u.clone(),
            });
        }
        // Plans no example tenant uses (graduated tiers): a tenant on each.
        for (pid, plan) in &cat.plans {
            if !plan.legacy && !cat.tenants.values().any(|t| t.plan.id == *pid) {
                out.push(Case {
                    name: format!("{file}:on-{pid}"),
                    tenant: Arc::new(Tenant::on_default_plan("bench", plan.clone())),
                    usage: u.clone(),
                });
            }
        }
    }
    out
}

fn price(c: &Case, at: DateTime<Utc>, now: DateTime<Utc>) -> Decimal {
    let ch = charges(&ChargeInput {
        tenant: &c.tenant,
        period: c.tenant.period_at(at),
        usage: &c.usage,
        first_period: false,
        now,
    });
    ch.total
}

fn pricing(c: &mut Criterion) {
    let at = utc("2026-11-20T12:00:00Z");
    let now = utc("2026-11-25T12:00:00Z");
    let cases = cases();
    let mut g = c.benchmark_group("pricing");

    // Representative plan models, one tenant each.
    g.throughput(Throughput::Elements(1));
    for name in [
        "seed-000:acme",              // overage, add-ons raising the limit, priced features
        "seed-000:upgrader",          // plan change inside the period: prorated base fees
        "seed-002:brasserie-lyon",    // yearly discount, overage
        "seed-002:pizzeria-nice",     // per-call rate
        "seed-002:traiteur-bordeaux", // revenue share
        "seed-002:on-starter_graduated", // graduated tiers
        "seed-001:corecomm-growth",   // prepaid wallet plan
        "seed-004:coachee-eli",       // custom meters, plan change
    ] {
        let case = cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name}"));
        g.bench_function(BenchmarkId::new("charges", name), |b| {
            b.iter(|| price(std::hint::black_box(case), at, now))
        });
    }

    // Every tenant of every example (what the usage API answers, one period each), and the
    // entitlement check of each tenant's first metered meter.
    g.throughput(Throughput::Elements(cases.len() as u64));
    g.bench_function(BenchmarkId::new("charges_all_examples", cases.len()), |b| {
        b.iter(|| {
            let mut sum = Decimal::ZERO;
            for c in &cases {
                sum += price(c, at, now);
            }
            sum
        })
    });
    g.bench_function(
        BenchmarkId::new("entitlement_all_examples", cases.len()),
        |b| {
            b.iter(|| {
                let mut allowed = 0usize;
                for c in &cases {
                    let plan = c.tenant.plan_at(at);
                    let Some((m, _)) = plan.meters.iter().next() else {
                        continue;
                    };
                    let limit = c.tenant.limit(plan, *m, false);
                    let used = c
                        .usage
                        .iter()
                        .find(|u| u.meter == *m)
                        .map(|u| u.usage)
                        .unwrap_or_default();
                    allowed += entitlement(plan, limit, *m, used, None).allowed as usize;
                }
                allowed
            })
        },
    );
    g.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
