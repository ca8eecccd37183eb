//! Stripe reporting against the Stripe test server (`callmeter::stripe::test_server`), run
//! in-process with fault injection: what Stripe accepted equals ClickHouse's totals x
//! multiplier in whole units, per customer and meter, after `kill -9`s of the pipeline and
//! with injected 429s, 500s, timeouts, dropped connections and expired sessions; no
//! identifier is accepted twice; refunds are carried forward; a rejected event does not
//! block the others; usage older than Stripe's window is flagged, not sent.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use callmeter::cli::loadgen::{LoadSpec, generate};
use callmeter::stripe::test_server::{Config, Faults, Summary, TestServer};

use crate::common::{Ch, World, eventually, free_port};

const KEY: &str = "sk_test_callmeter_it";

/// meter -> (event name, multiplier)
const METERS: &[(&str, &str, &str)] = &[
    ("call_minutes", "voice_minutes", "1"),
    ("calls", "calls", "1"),
    ("revenue", "revenue_cents", "100"),
];

fn stripe_section(url: &str, api: &str, batch_size: usize) -> String {
    let mut s = format!(
        r#"
[stripe]
enabled = true
api = "{api}"
api_base = "{url}"
meter_events_base = "{url}"
report_interval = "300ms"
batch_size = {batch_size}
rate_limit = 500
request_timeout = "1s"
"#
    );
    for (meter, name, mult) in METERS {
        s.push_str(&format!(
            "[stripe.meters.{meter}]\nevent_name = \"{name}\"\nmultiplier = {mult}\n"
        ));
    }
    s
}

fn plan() -> &'static str {
    r#"
[plans.basic]
currency = "USD"
base_fee = "10.00"
[plans.basic.meters.call_minutes]
included = "1000"
overage_rate = "0.10"
"#
}

/// Expected units per (tenant, meter): the sum over periods of floor(total x multiplier),
/// from ClickHouse. Periods listed in `skip` (tenant, period start) are left out.
async fn expected_units(
    ch: &Ch,
    db: &str,
    skip: &BTreeSet<(String, String)>,
) -> BTreeMap<(String, String), i128> {
    let rows = ch
        .query(&format!(
            "SELECT tenant_id, meter, toUInt32(period_start), toString(sum(value)) \
             FROM {db}.usage_rollups FINAL GROUP BY tenant_id, meter, period_start"
        ))
        .await
        .unwrap();
    let mut out: BTreeMap<(String, String), i128> = BTreeMap::new();
    for r in rows {
        if skip.contains(&(r[0].clone(), r[2].clone())) {
            continue;
        }
        let Some((_, _, mult)) = METERS.iter().find(|m| m.0 == r[1]) else {
            continue;
        };
        let v = Decimal::from_str(&r[3]).unwrap() * Decimal::from_str(mult).unwrap();
        let units: i128 = v.floor().to_string().parse().unwrap();
        *out.entry((r[0].clone(), r[1].clone())).or_default() += units.max(0);
    }
    out
}

/// (customer, event name, expected, accepted) for every tenant and meter that differ.
fn mismatches(
    tenants: &BTreeMap<String, String>,
    expected: &BTreeMap<(String, String), i128>,
    s: &Summary,
) -> Vec<(String, String, i128, i128)> {
    let mut out = Vec::new();
    for (tenant, customer) in tenants {
        for (meter, name, _) in METERS {
            let want = expected
                .get(&(tenant.clone(), meter.to_string()))
                .copied()
                .unwrap_or(0);
            let got = s.value(customer, name);
            if want != got {
                out.push((customer.clone(), name.to_string(), want, got));
            }
        }
    }
    out
}

/// Ledger identifiers by their current status.
async fn ledger(ch: &Ch, db: &str) -> BTreeMap<String, (String, String, String)> {
    ch.query(&format!(
        "SELECT identifier, argMax(status, version), any(tenant_id), argMax(error_code, version) \
         FROM {db}.stripe_reports GROUP BY identifier"
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone(), r[3].clone())))
    .collect()
}

async fn metrics(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_v2_reports_exactly_once_under_faults_and_kill9() {
    let stop = CancellationToken::new();
    let server = TestServer::new(Config {
        session_ttl: Duration::from_secs(3),
        api_key: Some(KEY.into()),
        faults: Faults {
            rate_429: 0.06,
            rate_500: 0.06,
            rate_timeout: 0.03,
            rate_drop: 0.04,
            rate_expire: 0.03,
            timeout_delay: Duration::from_millis(1500),
        },
        seed: 7,
        ..Config::default()
    });
    let url = server.spawn(stop.clone()).await.unwrap();

    const TENANTS: u32 = 80;
    let mut pricing = plan().to_string();
    let mut customers = BTreeMap::new();
    for i in 0..TENANTS {
        let t = callmeter::cli::loadgen::tenant_id("t", i);
        let c = format!("cus_{t}");
        pricing.push_str(&format!(
            "[tenants.{t}]\nplan = \"basic\"\nstripe_customer_id = \"{c}\"\n"
        ));
        customers.insert(t, c);
    }
    let w = World::new("stripe_v2", 4)
        .extra(&stripe_section(&url, "v2", 100))
        .extra(&pricing);

    let spec = LoadSpec {
        events: 3000,
        tenants: TENANTS,
        seed: 11,
        start: Utc::now() - chrono::Duration::minutes(40),
        step_ms: 600,
        duplicate_rate: 0.05,
        ..Default::default()
    };
    let generated: Vec<_> = generate(&spec).collect();
    let distinct = generated.iter().filter(|g| !g.duplicate).count();
    let msgs: Vec<(String, Vec<u8>)> = generated
        .iter()
        .map(|g| (g.tenant.clone(), g.payload.clone().into_bytes()))
        .collect();

    // Two instances; each reports the groups of the partitions it owns.
    let env = [("STRIPE_API_KEY", KEY)];
    let ports = [w.api_port, free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let start = |i: usize| {
        w.run_with(
            &format!("i{i}"),
            &[env[0], ("CALLMETER_API__LISTEN", listen[i].as_str())],
        )
    };
    let mut pipes = vec![start(0), start(1)];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let chunks: Vec<&[(String, Vec<u8>)]> = msgs.chunks(500).collect();
    let mut kills = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        w.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        if k >= 1 && kills < 4 {
            let i = k % 2;
            pipes[i].kill9();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            pipes[i] = start(i);
        }
    }

    let ch = w.ch();
    let db = w.database.clone();
    let all_counted = eventually(Duration::from_secs(90), || {
        let ch = ch.clone();
        let db = db.clone();
        async move {
            ch.scalar(&format!(
                "SELECT sum(event_count) FROM {db}.usage_rollups FINAL WHERE meter = 'calls'"
            ))
            .await
            .is_some_and(|v| v == distinct.to_string())
        }
    })
    .await;
    assert!(
        all_counted,
        "ClickHouse holds every call; logs:\n{}\n{}",
        pipes[0].log_text(),
        pipes[1].log_text()
    );

    let expected = expected_units(&ch, &db, &BTreeSet::new()).await;
    let converged = eventually(Duration::from_secs(60), || {
        let server = server.clone();
        let (ch, db) = (ch.clone(), db.clone());
        let (customers, expected) = (customers.clone(), expected.clone());
        async move {
            mismatches(&customers, &expected, &server.summary()).is_empty()
                && ledger(&ch, &db).await.values().all(|s| s.0 == "sent")
        }
    })
    .await;
    let s = server.summary();
    let bad = mismatches(&customers, &expected, &s);
    assert!(
        converged && bad.is_empty(),
        "Stripe differs from ClickHouse (customer, event, expected, accepted): {bad:?}\nsummary: {s:?}\nlogs:\n{}\n{}",
        pipes[0].log_text(),
        pipes[1].log_text()
    );

    // No identifier accepted twice, and the ledger's identifiers are exactly those accepted.
    assert!(s.identifiers.values().all(|n| *n == 1), "{s:?}");
    let led = ledger(&ch, &db).await;
    let ledger_ids: BTreeSet<&String> = led.keys().collect();
    let accepted_ids: BTreeSet<&String> = s.identifiers.keys().collect();
    assert_eq!(ledger_ids, accepted_ids);
    assert!(s.max_events_per_request <= 100);
    let faults: u64 = s.faults.values().sum();
    assert!(faults > 0, "faults were injected: {s:?}");
    let total_units: i128 = expected.values().sum();
    eprintln!(
        "stripe v2: {} events in {} stream requests (max {} per request), {} sessions, {} units; \
         faults injected {:?}; duplicates dropped {}; expired sessions {}; kill -9 x{kills}; \
         mismatches {}",
        s.identifiers.len(),
        s.requests.get("v2_stream").copied().unwrap_or(0),
        s.max_events_per_request,
        s.requests.get("v2_session").copied().unwrap_or(0),
        total_units,
        s.faults,
        s.duplicates,
        s.expired_sessions,
        bad.len()
    );

    // The pipeline's metrics say what was sent.
    let m = metrics(ports[0]).await + &metrics(ports[1]).await;
    assert!(m.contains("callmeter_stripe_events_sent_total"), "{m}");
    assert!(m.contains("callmeter_stripe_last_success_timestamp_seconds"));
    assert!(m.contains("callmeter_stripe_report_lag_seconds"));

    for p in &mut pipes {
        assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
    }
    stop.cancel();
}

fn event(id: &str, tenant: &str, time: chrono::DateTime<Utc>, ty: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"it/stripe","type":"{ty}","subject":"{tenant}","time":"{}","data":{data}}}"#,
        time.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

fn call(
    id: &str,
    tenant: &str,
    time: chrono::DateTime<Utc>,
    minutes: u64,
    revenue: Option<&str>,
) -> (String, Vec<u8>) {
    let rev = revenue
        .map(|r| format!(r#","revenue":{{"amount":"{r}","currency":"USD"}}"#))
        .unwrap_or_default();
    let data = format!(
        r#"{{"call_id":"{id}","duration_ms":{},"direction":"inbound"{rev}}}"#,
        minutes * 60_000
    );
    (
        tenant.to_string(),
        event(id, tenant, time, "call.completed", &data).into_bytes(),
    )
}

fn revenue(id: &str, tenant: &str, time: chrono::DateTime<Utc>, amount: &str) -> (String, Vec<u8>) {
    let data = format!(r#"{{"amount":"{amount}","currency":"USD"}}"#);
    (
        tenant.to_string(),
        event(id, tenant, time, "revenue.recorded", &data).into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_v1_carries_refunds_rejects_alone_and_flags_unreportable_usage() {
    let stop = CancellationToken::new();
    let server = TestServer::new(Config {
        api_key: Some(KEY.into()),
        customers: Some(BTreeSet::from(["cus_a".to_string(), "cus_b".to_string()])),
        faults: Faults {
            rate_429: 0.1,
            rate_500: 0.05,
            rate_timeout: 0.02,
            rate_drop: 0.05,
            timeout_delay: Duration::from_millis(1500),
            ..Faults::default()
        },
        seed: 9,
        ..Config::default()
    });
    let url = server.spawn(stop.clone()).await.unwrap();
    let tenants = r#"
[tenants.a]
plan = "basic"
stripe_customer_id = "cus_a"
[tenants.b]
plan = "basic"
stripe_customer_id = "cus_b"
[tenants.bad]
plan = "basic"
stripe_customer_id = "cus_unknown"
[tenants.c]
plan = "basic"
"#;
    let w = World::new("stripe_v1", 1)
        .extra(&stripe_section(&url, "v1", 100))
        .extra(plan())
        .extra(tenants);
    // Enabled without the secret key: a start-up error naming the variable.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callmeter"))
        .args(["run", "--config"])
        .arg(w.config())
        .env_remove("STRIPE_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRIPE_API_KEY"));

    let now = Utc::now() - chrono::Duration::minutes(2);
    let old = Utc::now() - chrono::Duration::days(75);
    // The old call first: the partition's watermark still accepts its period.
    let phase1 = vec![
        call("old-1", "b", old, 10, None),
        call("a-1", "a", now, 2, Some("100.00")),
        call("bad-1", "bad", now, 3, None),
        call("c-1", "c", now, 4, None),
        call("b-1", "b", now, 5, None),
    ];
    let env = [("STRIPE_API_KEY", KEY)];
    let mut p = w.run_with("i0", &env);
    w.produce(&phase1).await;

    let ch = w.ch();
    let db = w.database.clone();
    let want = |pairs: Vec<(&'static str, &'static str, i128)>| {
        let server = server.clone();
        move || {
            let s = server.summary();
            let ok = pairs.iter().all(|(c, e, v)| s.value(c, e) == *v);
            async move { ok }
        }
    };
    assert!(
        eventually(
            Duration::from_secs(60),
            want(vec![
                ("cus_a", "revenue_cents", 10_000),
                ("cus_a", "voice_minutes", 2),
                ("cus_a", "calls", 1),
                ("cus_b", "voice_minutes", 5),
                ("cus_b", "calls", 1),
            ])
        )
        .await,
        "phase 1 reported: {:?}\nlog:\n{}",
        server.summary(),
        p.log_text()
    );
    // The unknown customer's events were rejected (recorded, counted), nothing else blocked.
    let rejected_recorded = eventually(Duration::from_secs(30), || {
        let (ch, db) = (ch.clone(), db.clone());
        async move {
            let l = ledger(&ch, &db).await;
            l.values().filter(|s| s.1 == "bad").count() == 2
                && l.values()
                    .filter(|s| s.1 == "bad")
                    .all(|s| s.0 == "rejected" && s.2 == "meter_event_customer_not_found")
        }
    })
    .await;
    assert!(rejected_recorded, "{:?}", ledger(&ch, &db).await);
    let s = server.summary();
    assert!(
        s.accepted
            .iter()
            .all(|a| a.stripe_customer_id != "cus_unknown")
    );
    // Tenant c has no customer id: nothing reported, nothing in the ledger.
    assert!(ledger(&ch, &db).await.values().all(|s| s.1 != "c"));
    // The 75-day-old call cannot be reported: flagged, never sent.
    let old_row = ch
        .query(&format!(
            "SELECT argMax(status, version), any(value) FROM {db}.stripe_reports \
             WHERE tenant_id = 'b' AND meter = 'call_minutes' AND period_start < now() - 86400 * 40 \
             GROUP BY identifier"
        ))
        .await
        .unwrap();
    assert_eq!(
        old_row,
        vec![vec!["unreportable".to_string(), "10".to_string()]]
    );
    let m = metrics(w.api_port).await;
    assert_eq!(
        metric(
            &m,
            r#"callmeter_stripe_unreportable_units_total{meter="call_minutes"}"#
        ),
        Some(10.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"callmeter_stripe_events_rejected_total{code="meter_event_customer_not_found"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{m}"
    );

    // A 30.00 refund: ClickHouse says 70.00, Stripe keeps 100.00, 3000 cents carried forward.
    w.produce(&[revenue("refund-1", "a", now, "-30.00")]).await;
    let refunded = eventually(Duration::from_secs(30), || {
        let w_port = w.api_port;
        async move {
            let m = reqwest::get(format!("http://127.0.0.1:{w_port}/metrics"))
                .await
                .ok();
            let Some(m) = m else { return false };
            let m = m.text().await.unwrap_or_default();
            metric(
                &m,
                r#"callmeter_stripe_carried_forward_units{meter="revenue"}"#,
            ) == Some(3000.0)
        }
    })
    .await;
    assert!(refunded, "refund carried forward; log:\n{}", p.log_text());
    assert_eq!(server.summary().value("cus_a", "revenue_cents"), 10_000);

    // A crash, then 50.00 more: only the 20.00 above what was reported is sent.
    p.kill9();
    let mut p = w.run_with("i0", &env);
    w.produce(&[revenue("sale-2", "a", now, "50.00")]).await;
    assert!(
        eventually(
            Duration::from_secs(60),
            want(vec![("cus_a", "revenue_cents", 12_000)])
        )
        .await,
        "{:?}\nlog:\n{}",
        server.summary(),
        p.log_text()
    );

    // Everything reportable matches ClickHouse; the old period and the rejected tenant aside.
    let old_period: Vec<Vec<String>> = ch
        .query(&format!(
            "SELECT tenant_id, toString(toUInt32(period_start)) FROM {db}.usage_rollups FINAL \
             WHERE period_start < now() - 86400 * 40 GROUP BY tenant_id, period_start"
        ))
        .await
        .unwrap();
    let skip: BTreeSet<(String, String)> = old_period
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let expected = expected_units(&ch, &db, &skip).await;
    let customers = BTreeMap::from([
        ("a".to_string(), "cus_a".to_string()),
        ("b".to_string(), "cus_b".to_string()),
    ]);
    let s = server.summary();
    assert_eq!(mismatches(&customers, &expected, &s), vec![]);
    assert!(s.identifiers.values().all(|n| *n == 1));
    assert_eq!(expected[&("a".to_string(), "revenue".to_string())], 12_000);
    eprintln!(
        "stripe v1: {} events accepted in {} requests; faults injected {:?}; duplicates refused {}; rejected {:?}",
        s.identifiers.len(),
        s.requests.get("v1").copied().unwrap_or(0),
        s.faults,
        s.duplicates,
        s.rejected
    );
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
    stop.cancel();
}

/// A tenant configured with a customer id Stripe does not know: its reports are rejected
/// (`meter_event_customer_not_found`). Once the configuration is fixed and reloaded
/// (SIGHUP), the refused units are reported again, to the right customer, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn units_refused_for_a_wrong_customer_id_are_reported_once_it_is_fixed() {
    let stop = CancellationToken::new();
    let server = TestServer::new(Config {
        api_key: Some(KEY.into()),
        customers: Some(BTreeSet::from(["cus_fixed".to_string()])),
        ..Config::default()
    });
    let url = server.spawn(stop.clone()).await.unwrap();
    let tenants = |customer: &str| {
        format!("[tenants.t]\nplan = \"basic\"\nstripe_customer_id = \"{customer}\"\n")
    };
    // v1: Stripe's v2 meter event stream accepts any customer and reports errors later,
    // asynchronously; v1 rejects an unknown customer in the response.
    let mut w = World::new("stripe_fix", 1)
        .extra(&stripe_section(&url, "v1", 100))
        .extra(plan());
    let base = w.extra.clone();
    w.extra = format!("{base}{}", tenants("cus_typo"));
    let env = [("STRIPE_API_KEY", KEY)];
    let mut p = w.run_with("i0", &env);
    let now = Utc::now() - chrono::Duration::minutes(2);
    w.produce(&[
        call("t-1", "t", now, 3, None),
        call("t-2", "t", now, 4, None),
    ])
    .await;
    let (ch, db) = (w.ch(), w.database.clone());
    let rejected = eventually(Duration::from_secs(60), || {
        let (ch, db) = (ch.clone(), db.clone());
        async move {
            let l = ledger(&ch, &db).await;
            l.values()
                .any(|s| s.0 == "rejected" && s.2 == "meter_event_customer_not_found")
        }
    })
    .await;
    assert!(
        rejected,
        "{:?}\nlog:\n{}",
        ledger(&ch, &db).await,
        p.log_text()
    );
    assert_eq!(server.summary().value("cus_fixed", "voice_minutes"), 0);

    // The operator fixes the customer id and reloads.
    w.extra = format!("{base}{}", tenants("cus_fixed"));
    w.config();
    crate::common::signal(p.pid().expect("running"), "HUP");
    let want = || {
        let s = server.summary();
        let ok = s.value("cus_fixed", "voice_minutes") == 7 && s.value("cus_fixed", "calls") == 2;
        async move { ok }
    };
    assert!(
        eventually(Duration::from_secs(60), want).await,
        "the refused units reported to the fixed customer: {:?}\nlog:\n{}",
        server.summary(),
        p.log_text()
    );
    // Nothing more, also after a restart (the ledger's resync sees the fixed customer's
    // reports, and the refused ones stay excluded).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let mut p = w.run_with("i0", &env);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = server.summary();
    assert_eq!(s.value("cus_fixed", "voice_minutes"), 7, "{s:?}");
    assert_eq!(s.value("cus_fixed", "calls"), 2, "{s:?}");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    stop.cancel();
}
