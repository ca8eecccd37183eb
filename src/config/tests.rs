//! Unit tests of loading, validation and compilation: each rejection names its key path.

use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;

use super::*;
use crate::cli::check_config::describe;

fn err(text: &str) -> ConfigError {
    Config::from_toml_str(text).expect_err("config should be rejected")
}

const BASE: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
[tenants.acme]
plan = "starter"
"#;

#[test]
fn accepts_the_contract_example() {
    let c = Config::from_toml_str(include_str!("../../examples/contract.toml")).unwrap();
    assert!(c.catalog.plans.contains_key("starter"));
    assert!(c.catalog.tenants.contains_key("acme"));
    assert_eq!(c.settings.pipeline.flush_interval, Duration::from_secs(5));
}

#[test]
fn defaults_apply() {
    let c = Config::from_toml_str(BASE).unwrap();
    assert_eq!(c.settings.kafka.topic, "call-events");
    assert_eq!(c.settings.kafka.dlq_topic, "call-events.dlq");
    assert_eq!(c.settings.kafka.statements_topic, "usage-statements");
    assert_eq!(c.settings.pipeline.dedup_window, Duration::from_secs(3600));
    assert_eq!(
        c.settings.pipeline.late_event_grace,
        Duration::from_secs(48 * 3600)
    );
    assert_eq!(c.settings.api.listen, "127.0.0.1:8080");
    // Per-tenant series are off unless asked for (/metrics has no token).
    assert!(!c.settings.metrics.tenant_gauges);
    assert_eq!(c.settings.metrics.tenant_gauge_cap(), 0);
    let on = Config::from_toml_str(&format!("{BASE}\n[metrics]\ntenant_gauges = true\n")).unwrap();
    assert_eq!(on.settings.metrics.tenant_gauge_cap(), 1000);
}

#[test]
fn statements_topic_must_be_named_and_not_the_events_topic() {
    let e = err("[kafka]\nstatements_topic = \" \"\n");
    assert_eq!(e.key, "kafka.statements_topic");
    let e = err("[kafka]\nstatements_topic = \"call-events\"\n");
    assert_eq!(e.key, "kafka.statements_topic");
    let c =
        Config::from_toml_str(&format!("[kafka]\nstatements_topic = \"bills\"\n{BASE}")).unwrap();
    assert_eq!(c.settings.kafka.statements_topic, "bills");
}

#[test]
fn rejects_unknown_keys_with_path() {
    let e = err("[pipeline]\nflush_intervall = \"5s\"\n");
    assert_eq!(e.key, "pipeline.flush_intervall");
    assert!(e.reason.contains("flush_intervall"), "{e}");
}

#[test]
fn rejects_missing_currency() {
    let e = err("[plans.p]\nbase_fee = \"1\"\n");
    assert_eq!(e.key, "plans.p.currency");
}

#[test]
fn rejects_bad_currency() {
    assert_eq!(
        err("[plans.p]\ncurrency = \"usd\"\n").key,
        "plans.p.currency"
    );
}

#[test]
fn rejects_bad_decimal() {
    let e = err("[plans.p]\ncurrency = \"USD\"\nbase_fee = \"7x\"\n");
    assert_eq!(e.key, "plans.p.base_fee");
}

#[test]
fn rejects_negative_fee() {
    let e = err("[plans.p]\ncurrency = \"USD\"\nbase_fee = \"-1\"\n");
    assert_eq!(e.key, "plans.p.base_fee");
}

#[test]
fn rejects_unknown_plan_for_tenant() {
    let e = err("[tenants.t]\nplan = \"nope\"\n");
    assert_eq!(e.key, "tenants.t.plan");
}

#[test]
fn rejects_bad_timezone() {
    let e = err(&format!("{BASE}timezone = \"Mars/Olympus\"\n"));
    assert_eq!(e.key, "tenants.acme.timezone");
}

#[test]
fn rejects_bad_anchor_day() {
    assert_eq!(
        err(&format!("{BASE}anchor_day = 32\n")).key,
        "tenants.acme.anchor_day"
    );
    assert_eq!(
        err(&format!("{BASE}anchor_day = 0\n")).key,
        "tenants.acme.anchor_day"
    );
}

#[test]
fn rejects_bad_billing_cycle() {
    let e = err(&format!("{BASE}billing_cycle = \"weekly\"\n"));
    assert_eq!(e.key, "tenants.acme.billing_cycle");
}

#[test]
fn rejects_unknown_addon() {
    let e = err(&format!("{BASE}addons = {{ nope = 1 }}\n"));
    assert_eq!(e.key, "tenants.acme.addons.nope");
}

#[test]
fn rejects_unknown_meter_in_plan() {
    let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.nope]\nrate = \"1\"\n");
    assert_eq!(e.key, "plans.p.meters.nope");
}

#[test]
fn rejects_unknown_default_plan() {
    assert_eq!(
        err("[pricing]\ndefault_plan = \"x\"\n").key,
        "pricing.default_plan"
    );
}

#[test]
fn rejects_bad_tiers() {
    let e = err(
        "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers = [ { up_to = \"500\", unit_price = \"0\" } ]\n",
    );
    assert_eq!(e.key, "plans.p.meters.call_minutes.tiers[0].up_to");
    let e = err(
        "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers = [ { up_to = \"500\", unit_price = \"0\" }, { up_to = \"100\", unit_price = \"1\" }, { up_to = \"inf\", unit_price = \"1\" } ]\n",
    );
    assert_eq!(e.key, "plans.p.meters.call_minutes.tiers[1].up_to");
    let e = err(
        "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers_mode = \"stairs\"\ntiers = [ { up_to = \"inf\", unit_price = \"0\" } ]\n",
    );
    assert_eq!(e.key, "plans.p.meters.call_minutes.tiers_mode");
}

#[test]
fn rejects_cap_without_rate() {
    let e = err(
        "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\nincluded = \"10\"\noverage_cap = \"20\"\n",
    );
    assert_eq!(e.key, "plans.p.meters.call_minutes.overage_cap");
}

#[test]
fn rejects_overage_without_included() {
    let e = err(
        "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\noverage_rate = \"0.2\"\n",
    );
    assert_eq!(e.key, "plans.p.meters.call_minutes.overage_rate");
}

#[test]
fn rejects_bad_thresholds() {
    let e = err("[plans.p]\ncurrency = \"USD\"\nalert_thresholds = [\"0.8\", \"0.5\"]\n");
    assert_eq!(e.key, "plans.p.alert_thresholds");
    let e = err("[plans.p]\ncurrency = \"USD\"\nalert_thresholds = [\"1.5\"]\n");
    assert_eq!(e.key, "plans.p.alert_thresholds[0]");
}

#[test]
fn rejects_bad_meter_definitions() {
    assert_eq!(
        err("[meters.x]\nevent_type = \"call.completed\"\naggregation = \"avg\"\n").key,
        "meters.x.aggregation"
    );
    assert_eq!(
        err("[meters.x]\nevent_type = \"call.completed\"\n").key,
        "meters.x.value"
    );
    assert_eq!(
        err("[meters.x]\nevent_type = \"call.completed\"\nvalue = \"duration_ms\"\ndivisor = 0\n")
            .key,
        "meters.x.divisor"
    );
    assert_eq!(
        err("[meters.x]\nevent_type = \"call.completed\"\nvalue = \"d\"\nrounding = \"floor\"\n")
            .key,
        "meters.x.rounding"
    );
    assert_eq!(
        err("[meters.calls]\nevent_type = \"call.completed\"\naggregation = \"count\"\n").key,
        "meters.calls"
    );
}

#[test]
fn rejects_bad_runtime_settings() {
    assert_eq!(err("[api]\nlisten = \"nowhere\"\n").key, "api.listen");
    assert_eq!(
        err("[clickhouse]\nurl = \"tcp://x\"\n").key,
        "clickhouse.url"
    );
    assert_eq!(
        err("[pipeline]\nflush_interval = \"0s\"\n").key,
        "pipeline.flush_interval"
    );
    assert_eq!(
        err("[pipeline]\nflush_interval = \"soon\"\n").key,
        "pipeline.flush_interval"
    );
    assert_eq!(err("[stripe]\napi = \"v3\"\n").key, "stripe.api");
    assert_eq!(err("[stripe]\nbatch_size = 500\n").key, "stripe.batch_size");
    assert_eq!(
        err("[stripe.meters.nope]\nevent_name = \"x\"\n").key,
        "stripe.meters.nope"
    );
    assert_eq!(
        err("[stripe]\napi_base = \"api.stripe.com\"\n").key,
        "stripe.api_base"
    );
    assert_eq!(
        err("[stripe]\nrequest_timeout = \"0s\"\n").key,
        "stripe.request_timeout"
    );
    assert_eq!(
        err("[stripe]\nclock = \"March 1999\"\n").key,
        "stripe.clock"
    );
    // The demo clock never reaches the real Stripe.
    assert_eq!(
        err("[stripe]\nclock = \"1999-03-03T00:00:00Z\"\n").key,
        "stripe.clock"
    );
    assert!(
            Config::from_toml_str(
                "[stripe]\nclock = \"1999-03-03T00:00:00Z\"\napi_base = \"http://127.0.0.1:12111\"\nmeter_events_base = \"http://127.0.0.1:12111\"\n"
            )
            .is_ok()
        );
}

#[test]
fn rejects_bad_tenant_id() {
    let e = err("[plans.p]\ncurrency = \"USD\"\n[tenants.\"a b\"]\nplan = \"p\"\n");
    assert_eq!(e.key, "tenants.a b");
}

#[test]
fn rejects_plan_change_out_of_order_or_currency() {
    let text = r#"
[plans.a]
currency = "USD"
[plans.b]
currency = "EUR"
[tenants.t]
plan = "a"
[[tenants.t.plan_changes]]
at = "2026-01-10T00:00:00Z"
plan = "b"
"#;
    assert_eq!(err(text).key, "tenants.t.plan_changes[0].plan");
    let text = r#"
[plans.a]
currency = "USD"
[tenants.t]
plan = "a"
[[tenants.t.plan_changes]]
at = "yesterday"
plan = "a"
"#;
    assert_eq!(err(text).key, "tenants.t.plan_changes[0].at");
}

const LEGACY: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.legacy_starter]
currency = "USD"
base_fee = "149.00"
legacy = true
[tenants.old]
plan = "legacy_starter"
"#;

#[test]
fn legacy_plans_keep_their_tenants() {
    let c = Config::from_toml_str(LEGACY).unwrap();
    assert!(c.catalog.plans["legacy_starter"].legacy);
    assert_eq!(c.catalog.tenants["old"].plan.id, "legacy_starter");
    // Leaving a legacy plan is fine.
    let c = Config::from_toml_str(&format!(
        "{LEGACY}[[tenants.old.plan_changes]]\nat = \"2026-11-16T00:00:00Z\"\nplan = \"starter\"\n"
    ))
    .unwrap();
    assert_eq!(c.catalog.tenants["old"].plan_changes[0].plan.id, "starter");
    let out = describe(&c);
    assert!(out.contains("legacy_starter (legacy)"), "{out}");
    assert!(
        out.contains("legacy_starter (1 grandfathered tenants)"),
        "{out}"
    );
}

#[test]
fn rejects_legacy_default_plan() {
    let e = err(&format!(
        "{LEGACY}[pricing]\ndefault_plan = \"legacy_starter\"\n"
    ));
    assert_eq!(e.key, "pricing.default_plan");
    assert!(e.reason.contains("legacy"), "{e}");
}

#[test]
fn rejects_plan_change_onto_a_legacy_plan() {
    let e = err(&format!(
        "{LEGACY}[tenants.new]\nplan = \"starter\"\n[[tenants.new.plan_changes]]\nat = \"2026-11-16T00:00:00Z\"\nplan = \"legacy_starter\"\n"
    ));
    assert_eq!(e.key, "tenants.new.plan_changes[0].plan");
    assert!(e.reason.contains("legacy"), "{e}");
}

#[test]
fn rejects_plan_change_to_a_plan_without_the_tenants_addons() {
    let text = r#"
[plans.a]
currency = "USD"
[plans.a.addons.phone_number]
price = "5"
[plans.b]
currency = "USD"
[tenants.t]
plan = "a"
addons = { phone_number = 1 }
[[tenants.t.plan_changes]]
at = "2026-11-16T00:00:00Z"
plan = "b"
"#;
    let e = err(text);
    assert_eq!(e.key, "tenants.t.plan_changes[0].plan");
    assert!(e.reason.contains("phone_number"), "{e}");
}

#[test]
fn rejects_zero_wallet_refresh() {
    assert_eq!(
        err("[pricing]\nwallet_refresh_interval = \"0s\"\n").key,
        "pricing.wallet_refresh_interval"
    );
}

#[test]
fn rejects_negative_wallet_terms() {
    let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.wallet]\nmonthly_grant = \"-1\"\n");
    assert_eq!(e.key, "plans.p.wallet.monthly_grant");
    let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.wallet]\nlow_balance = \"-1\"\n");
    assert_eq!(e.key, "plans.p.wallet.low_balance");
}

#[test]
fn wallets_are_prepaid_unless_said_otherwise() {
    let c = Config::from_toml_str(
            "[plans.a]\ncurrency = \"USD\"\n[plans.a.wallet]\nmonthly_grant = \"10\"\n[plans.b]\ncurrency = \"USD\"\n[plans.b.wallet]\nprepaid = false\n",
        )
        .unwrap();
    assert!(c.catalog.plans["a"].wallet.as_ref().unwrap().prepaid);
    assert!(!c.catalog.plans["b"].wallet.as_ref().unwrap().prepaid);
}

#[test]
fn reload_needs_the_same_meters() {
    let meter = "[meters.ai_minutes]\nevent_type = \"call.completed\"\nvalue = \"duration_ms\"\ndivisor = 60000\n";
    let a = Config::from_toml_str(&format!("{meter}{BASE}")).unwrap();
    let b = Config::from_toml_str(&format!("{meter}{BASE}base_fee_never = 1\n"));
    assert!(b.is_err());
    let same = Config::from_toml_str(&format!("{meter}{BASE}anchor_day = 5\n")).unwrap();
    assert!(a.catalog.reloadable_to(&same.catalog).is_ok());
    let other =
        Config::from_toml_str(&format!("{}{BASE}", meter.replace("60000", "1000"))).unwrap();
    let e = ConfigError::from(a.catalog.reloadable_to(&other.catalog).unwrap_err());
    assert_eq!(e.key, "meters");
    assert!(e.reason.contains("ai_minutes"), "{e}");
    let fewer = Config::from_toml_str(BASE).unwrap();
    assert!(a.catalog.reloadable_to(&fewer.catalog).is_err());
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(describe(&c).starts_with("configuration ok"));
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} example configs");
}

#[test]
fn decimals_accept_integers_and_strings() {
    let c = Config::from_toml_str(
            "[meters.m]\nevent_type = \"x\"\nvalue = \"v\"\ndivisor = 60000\n[plans.p]\ncurrency = \"USD\"\nbase_fee = \"79.00\"\n",
        )
        .unwrap();
    let m = c.catalog.meter(c.catalog.meter_id("m").unwrap());
    assert_eq!(m.divisor, Decimal::from(60000));
    assert_eq!(c.catalog.plans["p"].base_fee, Decimal::new(79, 0));
}

#[test]
fn rejects_overrides_that_break_exactly_once() {
    for (key, value) in [
        ("enable.auto.commit", "true"),
        ("enable.auto.offset.store", "True"),
        ("isolation.level", "read_uncommitted"),
    ] {
        let e = err(&format!(
            "{BASE}[kafka.properties]\n\"{key}\" = \"{value}\"\n"
        ));
        assert_eq!(e.key, format!("kafka.properties.{key}"));
    }
    let ok = Config::from_toml_str(&format!(
        "{BASE}[kafka.properties]\n\"enable.auto.commit\" = \"false\"\n"
    ));
    assert!(ok.is_ok());
}

/// `check-config` accepts every file of `examples/` (as `callmeter check-config` loads it).
#[test]
fn every_example_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            describe(&c).starts_with("configuration ok"),
            "{}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 9, "{n} examples");
}

#[test]
fn examples_show_features_in_the_plan_table() {
    let c = Config::from_toml_str(include_str!("../../examples/seed-004-modules.toml")).unwrap();
    let t = describe(&c);
    assert!(t.contains("features[human_coach=false, modules=12]"), "{t}");
    assert!(t.contains("addon:module_pack[price 5, +3 modules]"), "{t}");
    assert!(
        t.contains("features (a plan without one has false or 0): human_coach, modules"),
        "{t}"
    );
    let ben = c.catalog.tenants["coachee-ben"].clone();
    let f = crate::features::resolve(&c.catalog.features, &ben.plan, &ben.addons);
    assert_eq!(f["modules"], crate::features::FeatureValue::Number(18));
    let c = Config::from_toml_str(include_str!("../../examples/seed-000-migration.toml")).unwrap();
    let t = describe(&c);
    assert!(
        t.contains("addon:call_recording[price 10, grants call_recording=true]"),
        "{t}"
    );
    assert_eq!(c.settings.api.admin_tokens, ["change-me-admin"]);
}

#[test]
fn portal_and_admin_settings() {
    let c = Config::from_toml_str(BASE).unwrap();
    assert!(c.settings.api.admin_tokens.is_empty());
    assert_eq!(c.settings.api.portal_secret, "");
    assert_eq!(c.settings.api.portal_upgrade_url, None);
    let secret = "k".repeat(crate::config::PORTAL_SECRET_MIN_BYTES);
    let ok = Config::from_toml_str(&format!(
        "[api]\nadmin_tokens = [\"adm\"]\nportal_secret = \"{secret}\"\nportal_upgrade_url = \"https://example.com/upgrade?x=1\"\n{BASE}"
    ))
    .unwrap();
    assert_eq!(ok.settings.api.admin_tokens, vec!["adm".to_string()]);
    assert_eq!(ok.settings.api.portal_secret, secret);
    assert_eq!(
        ok.settings.api.portal_upgrade_url.as_deref(),
        Some("https://example.com/upgrade?x=1")
    );
    let short = &secret[1..];
    assert_eq!(
        err(&format!("[api]\nportal_secret = \"{short}\"\n")).key,
        "api.portal_secret"
    );
    assert_eq!(
        err("[api]\nadmin_tokens = [\"\"]\n").key,
        "api.admin_tokens"
    );
    for bad in [
        "javascript:alert(1)",
        "example.com",
        "https://",
        "https://a b",
    ] {
        assert_eq!(
            err(&format!("[api]\nportal_upgrade_url = \"{bad}\"\n")).key,
            "api.portal_upgrade_url",
            "{bad}"
        );
    }
}
