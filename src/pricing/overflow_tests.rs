//! Amounts beyond `Decimal`'s range: errors from the checked variants, saturation from the plain ones.

use chrono::{DateTime, Utc};

use super::*;
use crate::config::Config;
use crate::meter::{CALL_MINUTES, MeterId};

const CONFIG: &str = r#"
[plans.p]
currency = "USD"
base_fee = "79228162514264337593543950335"
revenue_share = "0.5"
[plans.p.meters.call_minutes]
included = "10"
overage_rate = "1000"
[plans.p.meters.calls]
rate = "1000"
[plans.capped]
currency = "USD"
[plans.capped.meters.call_minutes]
included = "10"
overage_rate = "1000"
overage_cap = "25"
[plans.t]
currency = "USD"
[plans.t.meters.call_minutes]
tiers_mode = "volume"
tiers = [ { up_to = "10", unit_price = "0" }, { up_to = "inf", unit_price = "1000" } ]
[tenants.a]
plan = "p"
[tenants.c]
plan = "capped"
[tenants.v]
plan = "t"
"#;

fn input_charges(tenant: &str, usage: &[(MeterId, Decimal)]) -> Result<Charges, PricingError> {
    let cat = Config::from_toml_str(CONFIG).unwrap().catalog;
    let t = cat.tenant(tenant).unwrap();
    let usage: Vec<MeterUsage> = usage
        .iter()
        .map(|(m, u)| MeterUsage {
            meter: *m,
            name: String::new(),
            usage: *u,
        })
        .collect();
    let now = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let input = ChargeInput {
        tenant: &t,
        period: t.period_at(now - chrono::Duration::days(40)),
        usage: &usage,
        first_period: false,
        now,
    };
    // The plain variant never panics, whatever the checked one says.
    let plain = charges(&input);
    let checked = try_charges(&input);
    if let Ok(c) = &checked {
        assert_eq!(&plain, c);
    }
    checked
}

#[test]
fn absurd_amounts_are_errors_not_panics() {
    let huge = Decimal::from_str_exact("50000000000000000000000000000").unwrap();
    // The base fee alone is at the limit: any usage line takes the total beyond it.
    let e = input_charges("a", &[(crate::meter::CALLS, Decimal::ONE)]).unwrap_err();
    assert!(e.to_string().contains("total"), "{e}");
    let e = input_charges("a", &[(CALL_MINUTES, huge)]).unwrap_err();
    assert!(e.to_string().contains("overage of call_minutes"), "{e}");
    let e = input_charges("a", &[(crate::meter::CALLS, huge)]).unwrap_err();
    assert!(e.to_string().contains("usage charge of calls"), "{e}");
    let e = input_charges("a", &[(crate::meter::REVENUE, huge)]).unwrap_err();
    assert!(e.to_string().contains("total"), "{e}");
    let e = input_charges("v", &[(CALL_MINUTES, huge)]).unwrap_err();
    assert!(
        e.to_string().contains("tiered charge of call_minutes"),
        "{e}"
    );
    // Two usage records of one meter that cannot be summed.
    let e = input_charges("v", &[(CALL_MINUTES, huge), (CALL_MINUTES, huge)]).unwrap_err();
    assert!(e.to_string().contains("usage of call_minutes"), "{e}");
    // A cap bounds the overage however large the usage.
    let c = input_charges("c", &[(CALL_MINUTES, huge)]).unwrap();
    assert_eq!(c.total, Decimal::from(25));
}

#[test]
fn plain_variants_saturate() {
    let cat = Config::from_toml_str(CONFIG).unwrap().catalog;
    let plan = &cat.plans["p"];
    let pm = &plan.meters[&CALL_MINUTES];
    assert_eq!(
        overage_charge(pm, Decimal::MAX, Decimal::ZERO),
        Decimal::MAX
    );
    assert!(try_overage_charge(pm, Decimal::MAX, Decimal::ZERO).is_err());
    assert_eq!(
        try_overage_charge(pm, Decimal::MIN, Decimal::MAX),
        Ok(Decimal::ZERO)
    );
    let (mode, tiers) = cat.plans["t"].meters[&CALL_MINUTES].tiers.clone().unwrap();
    assert_eq!(tiered_charge(mode, &tiers, Decimal::MAX), Decimal::MAX);
    assert!(try_tiered_charge(mode, &tiers, Decimal::MAX, "m").is_err());
    assert_eq!(
        Threshold::new(Decimal::MAX).kind.as_ref(),
        format!("{}x", Decimal::MAX)
    );
    let e = entitlement(plan, Some(Decimal::MAX), CALL_MINUTES, Decimal::MIN, None);
    assert_eq!(e.remaining, Some(Decimal::MAX));
}
