//! The wallet ledger (pure): top-ups, grants, deductions as usage accrues, plan changes,
//! one-time allowances, alerts due.

use super::*;
use crate::config::Config;
use crate::meter::CALL_MINUTES;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const CONFIG: &str = r#"
[pricing]
default_plan = "free"
[plans.free]
currency = "USD"
[plans.free.meters.call_minutes]
included_once = "10"
overage_rate = "0.20"
[plans.free.wallet]

[plans.starter]
currency = "USD"
base_fee = "49.00"
[plans.starter.meters.call_minutes]
rate = "0.10"
[plans.starter.addons.phone_number]
price = "3.00"
[plans.starter.wallet]
monthly_grant = "5.00"
low_balance = "10.00"

[plans.invoiced]
currency = "USD"
base_fee = "99.00"
[plans.invoiced.meters.call_minutes]
rate = "0.10"

[tenants.acme]
plan = "starter"
addons = { phone_number = 2 }
wallet_low_balance = "20"

[tenants.mover]
plan = "invoiced"
[[tenants.mover.plan_changes]]
at = "2026-11-01T00:00:00Z"
plan = "starter"
"#;

fn cat() -> Arc<Catalog> {
    Config::from_toml_str(CONFIG).unwrap().catalog
}

fn month(y: i32, m: u32) -> Period {
    let tz: chrono_tz::Tz = "UTC".parse().unwrap();
    crate::period::parse_period_spec(&format!("{y}-{m:02}"), tz, 1).unwrap()
}

fn pu(period: Period, u: &[(MeterId, &str)]) -> PeriodUsage {
    PeriodUsage {
        period,
        usage: u.iter().map(|(m, v)| (*m, d(v))).collect(),
    }
}

#[test]
fn top_ups_grants_and_deductions() {
    let cat = cat();
    let acme = cat.tenant("acme").unwrap();
    let now = utc("2026-11-20T00:00:00Z");
    // No usage yet: the current period's grant less the add-ons (2 x 3.00).
    let s = compute(&cat, &acme, &[], now);
    assert_eq!(s.balance, d("-1.00"));
    assert_eq!(s.period, month(2026, 11));
    assert_eq!((s.plan.as_str(), s.prepaid), ("starter", true));
    assert_eq!(s.low_balance, Some(d("20")));
    // October: top-up 100, 120 min (12.00) -> 100 + 5 - 12 - 6 = 87.
    // November: 30 min so far (3.00) -> 87 + 5 - 3 - 6 = 83. The base fee is never deducted.
    let stored = [
        pu(
            month(2026, 10),
            &[(WALLET_CREDIT, "100"), (CALL_MINUTES, "120")],
        ),
        pu(month(2026, 11), &[(CALL_MINUTES, "30")]),
    ];
    let entries = ledger(&cat, &acme, &stored, now);
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0].credit, entries[0].grant, entries[0].charges),
        (d("100"), d("5.00"), d("18.00"))
    );
    assert_eq!(compute(&cat, &acme, &stored, now).balance, d("83.00"));
    // A quiet month in between still grants and charges add-ons: +5 - 6.
    let later = utc("2027-01-05T00:00:00Z");
    assert_eq!(compute(&cat, &acme, &stored, later).balance, d("81.00"));
    // Order of the stored periods does not matter.
    let rev = [stored[1].clone(), stored[0].clone()];
    assert_eq!(compute(&cat, &acme, &rev, later).balance, d("81.00"));
}

#[test]
fn usage_is_deducted_as_it_accrues() {
    let cat = cat();
    let acme = cat.tenant("acme").unwrap();
    let now = utc("2026-11-20T00:00:00Z");
    let mut last = None;
    for minutes in ["0", "1", "10", "10.04", "10.05", "500"] {
        let s = compute(
            &cat,
            &acme,
            &[pu(
                month(2026, 11),
                &[(WALLET_CREDIT, "50"), (CALL_MINUTES, minutes)],
            )],
            now,
        );
        if let Some(prev) = last {
            assert!(s.balance <= prev, "{minutes}");
        }
        last = Some(s.balance);
    }
    // 50 + 5 - 6 - 50.00 (500 min at 0.10)
    assert_eq!(last, Some(d("-1.00")));
}

#[test]
fn only_periods_on_a_wallet_plan_grant_and_deduct() {
    let cat = cat();
    let mover = cat.tenant("mover").unwrap();
    let now = utc("2026-11-20T00:00:00Z");
    // October on the invoiced plan: its 100 min are invoiced; the top-up still counts.
    let stored = [
        pu(
            month(2026, 10),
            &[(WALLET_CREDIT, "30"), (CALL_MINUTES, "100")],
        ),
        pu(month(2026, 11), &[(CALL_MINUTES, "20")]),
    ];
    let e = ledger(&cat, &mover, &stored, now);
    assert_eq!(e[0].plan, "invoiced");
    assert_eq!((e[0].grant, e[0].charges), (d("0"), d("0")));
    assert_eq!(e[1].plan, "starter");
    // 30 + 5 - 2.00
    assert_eq!(compute(&cat, &mover, &stored, now).balance, d("33.00"));
}

#[test]
fn one_time_allowance_in_the_first_period_only() {
    let cat = cat();
    let t = cat.tenant("someone-new").unwrap();
    assert!(!t.configured);
    let now = utc("2026-12-10T00:00:00Z");
    // November (first): 12 min, 10 free, 2 x 0.20 = 0.40. December: 5 min, 1.00.
    let stored = [
        pu(
            month(2026, 11),
            &[(WALLET_CREDIT, "10"), (CALL_MINUTES, "12")],
        ),
        pu(month(2026, 12), &[(CALL_MINUTES, "5")]),
    ];
    let e = ledger(&cat, &t, &stored, now);
    assert_eq!(e[0].charges, d("0.40"));
    assert_eq!(e[1].charges, d("1.00"));
    assert_eq!(compute(&cat, &t, &stored, now).balance, d("8.60"));
}

#[test]
fn misaligned_stored_periods_count_without_grants() {
    let cat = cat();
    let acme = cat.tenant("acme").unwrap();
    let now = utc("2026-11-20T00:00:00Z");
    // A period from an earlier anchor day (15th) still holds a top-up.
    let odd = Period {
        start: utc("2026-09-15T00:00:00Z").timestamp(),
        end: utc("2026-10-15T00:00:00Z").timestamp(),
    };
    let e = ledger(&cat, &acme, &[pu(odd, &[(WALLET_CREDIT, "40")])], now);
    let odd_entry = e.iter().find(|x| x.period == odd).unwrap();
    assert_eq!(odd_entry.grant, d("0"));
    // Enumerated from the odd period's month: September, October, November.
    assert_eq!(e.len(), 4);
}

#[test]
fn alerts_due_in_order_and_once() {
    let state = |b: &str, low: Option<&str>| WalletState {
        balance: d(b),
        currency: "USD".into(),
        period: month(2026, 11),
        plan: "starter".into(),
        prepaid: true,
        low_balance: low.map(d),
        computed_at: utc("2026-11-20T00:00:00Z"),
    };
    assert!(due_alerts(&state("50", Some("10")), true, &[]).is_empty());
    assert!(due_alerts(&state("10", Some("10")), true, &[]).is_empty());
    assert_eq!(
        due_alerts(&state("9.99", Some("10")), true, &[]),
        [WALLET_LOW]
    );
    assert_eq!(
        due_alerts(&state("0", Some("10")), true, &[]),
        [WALLET_LOW, WALLET_EMPTY]
    );
    assert_eq!(
        due_alerts(&state("-3", Some("10")), true, &["wallet_low".into()]),
        [WALLET_EMPTY]
    );
    assert_eq!(due_alerts(&state("0", None), true, &[]), [WALLET_EMPTY]);
    assert!(due_alerts(&state("-1", Some("10")), false, &[]).is_empty());
    assert!(
        due_alerts(
            &state("-1", Some("10")),
            true,
            &["wallet_low".into(), "wallet_empty".into()]
        )
        .is_empty()
    );
    assert_eq!(
        wallet_alert_id("acme", 1, "wallet_low"),
        crate::alerts::alert_id("acme", "wallet_credit", 1, "wallet_low")
    );
}

#[test]
fn who_has_a_wallet() {
    let cat = cat();
    assert!(has_wallet(&cat, "acme"));
    assert!(has_wallet(&cat, "mover"));
    assert!(has_wallet(&cat, "unlisted"));
    let c = Config::from_toml_str(
        "[plans.p]\ncurrency = \"USD\"\n[tenants.t]\nplan = \"p\"\n[pricing]\ndefault_plan = \"p\"\n",
    )
    .unwrap();
    assert!(!has_wallet(&c.catalog, "t"));
    assert!(!has_wallet(&c.catalog, "unlisted"));
}

#[test]
fn mirror_keeps_the_newest_row() {
    let mut m = Mirror::default();
    let key = (0, CALL_MINUTES, 0);
    let row = |v: &str, o: i64| MirrorRow {
        period_end: 10,
        value: d(v),
        through_offset: o,
    };
    m.merge("t".into(), key, row("5", 10));
    m.merge("t".into(), key, row("3", 7));
    assert_eq!(m.rows["t"][&key].value, d("5"));
    m.merge("t".into(), key, row("8", 12));
    assert_eq!(m.rows["t"][&key].value, d("8"));
    let g = group(&m.rows["t"]);
    assert_eq!(g[0].usage[&CALL_MINUTES], d("8"));
}
