//! Subscriptions as events and features (CONTRACT section 10), end to end on the real broker
//! and ClickHouse: an upgrade in mid-period (prorated base fee, the new limit, alerts judged
//! against it, each exactly once); an add-on bought in mid-period through
//! `PUT /v1/tenants/{tenant}/subscription` (admin token; the same Idempotency-Key twice is
//! one event; a read token gets 403) raising a limit and granting a feature; a cancellation
//! after which usage is `no_subscription`; `unknown_plan`; a tenant created by its first
//! event; and all of it surviving kill -9 (restored from `subscriptions`).

use std::time::Duration;

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::common::{Consumed, World, eventually};

const PLANS: &str = r#"
[plans.basic]
currency = "USD"
base_fee = "30.00"
[plans.basic.features]
modules = 2
call_recording = false
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "0.10"
[plans.basic.addons.more_minutes]
meter = "call_minutes"
included = "50"
price = "5.00"
[plans.basic.addons.recording]
price = "10.00"
features = { call_recording = true }
[plans.pro]
currency = "USD"
base_fee = "90.00"
[plans.pro.features]
modules = 12
[plans.pro.meters.call_minutes]
included = "1000"
overage_rate = "0.05"
[tenants.acme]
plan = "basic"
[tenants.addy]
plan = "basic"
[tenants.gone]
plan = "basic"
"#;

const ADMIN: &str = "admin-token";

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn call(id: &str, tenant: &str, time: DateTime<Utc>, minutes: u64) -> (String, Vec<u8>) {
    (
        tenant.to_string(),
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"voice/eu-1","type":"call.completed","subject":"{tenant}","time":"{}","data":{{"call_id":"{id}","duration_ms":{},"direction":"inbound"}}}}"#,
            rfc(time),
            minutes * 60_000
        )
        .into_bytes(),
    )
}

fn sub(id: &str, tenant: &str, ty: &str, time: DateTime<Utc>, data: Value) -> (String, Vec<u8>) {
    (
        tenant.to_string(),
        json!({"specversion": "1.0", "id": id, "source": "billing", "type": ty,
               "subject": tenant, "time": rfc(time), "data": data})
        .to_string()
        .into_bytes(),
    )
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth("test-token")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let st = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (
                st,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

async fn put(
    base: &str,
    tenant: &str,
    token: Option<&str>,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .put(format!("{base}/v1/tenants/{tenant}/subscription"))
        .header("Idempotency-Key", key)
        .json(&body)
        .timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `path` until `ok` holds; returns the last answer.
async fn until(base: &str, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (st, body) = get(base, path).await;
        if st == 200 && ok(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: last answer {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn lines(usage: &Value) -> Vec<String> {
    usage["charges"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let tag = l["item"].as_str().or(l["meter"].as_str());
            match tag {
                Some(t) => format!(
                    "{}:{}={}",
                    l["kind"].as_str().unwrap(),
                    t,
                    l["amount"].as_str().unwrap()
                ),
                None => format!(
                    "{}={}",
                    l["kind"].as_str().unwrap(),
                    l["amount"].as_str().unwrap()
                ),
            }
        })
        .collect()
}

fn money(d: Decimal) -> String {
    callmeter::pricing::money_str::format(d)
}

/// The base fee of `fee` for `secs` of a period of `period` seconds, as the pricing rounds it.
fn prorated(fee: i64, secs: i64, period: i64) -> Decimal {
    callmeter::pricing::round_money(
        Decimal::from(fee) * Decimal::from(secs) / Decimal::from(period),
    )
}

fn dlq_codes(dlq: &[Consumed]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = dlq
        .iter()
        .map(|m| {
            let ev: Value =
                serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).unwrap();
            (
                ev["id"].as_str().unwrap_or_default().to_string(),
                m.headers
                    .get("callmeter.error")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_changes_end_to_end_and_across_kill_9() {
    let w = World::new("subs", 2).extra(PLANS);
    let env = [("CALLMETER_API__ADMIN_TOKENS", "[\"admin-token\"]")];
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::seconds(5);
    // The tenants' current usage period (UTC, anchored on the 1st) and points inside it,
    // all before `now`.
    let period = callmeter::period::period_containing(chrono_tz::Tz::UTC, 1, now);
    let start = period.start_utc();
    let span = (now - start).num_seconds().max(40);
    let at = |frac: i64| (start + TimeDelta::seconds(span * frac / 10)).min(now);
    let upgrade = at(5);

    let mut msgs = vec![
        // acme: 90 minutes on basic (80% of 100), upgraded to pro in mid-period (twice the
        // same event: counted once), then 700 and 220 more: 1010 of pro's 1000.
        call("a1", "acme", at(2), 90),
        sub(
            "up1",
            "acme",
            "subscription.updated",
            at(4),
            json!({"plan": "pro", "effective_at": rfc(upgrade)}),
        ),
        sub(
            "up1",
            "acme",
            "subscription.updated",
            at(4),
            json!({"plan": "pro", "effective_at": rfc(upgrade)}),
        ),
        call("a2", "acme", at(6), 700),
        call("a3", "acme", at(7), 220),
        // An unknown plan.
        sub(
            "bad1",
            "acme",
            "subscription.updated",
            at(7),
            json!({"plan": "gold"}),
        ),
        // gone: usage, a cancellation, usage after it.
        call("g1", "gone", at(2), 10),
        sub(
            "x1",
            "gone",
            "subscription.canceled",
            at(3),
            json!({"effective_at": rfc(at(4))}),
        ),
        call("g2", "gone", at(6), 10),
        // newco: created by its first subscription event; usage before it has no
        // subscription (no default plan).
        call("n0", "newco", at(3), 5),
        sub(
            "n1",
            "newco",
            "subscription.updated",
            at(4),
            json!({"plan": "pro", "timezone": "UTC", "anchor_day": 1}),
        ),
        call("n2", "newco", at(6), 30),
        call("n3", "newco", at(3), 5),
    ];
    // addy's usage before its add-on.
    msgs.push(call("d1", "addy", at(2), 70));
    let mut p = w.run_with("i0", &env);
    w.produce(&msgs).await;

    // acme: the new plan's limit, the prorated base fee, and the overage on pro's rate.
    let acme = until(&p.api(""), "/v1/tenants/acme/usage", |b| {
        b["meters"][0]["usage"] == json!("1010")
    })
    .await;
    assert_eq!(acme["plan"], json!("pro"));
    assert_eq!(acme["meters"][0]["limit"], json!("1000"));
    let psecs = period.seconds();
    let basic_secs = (upgrade - start).num_seconds();
    let fee_basic = prorated(30, basic_secs, psecs);
    let fee_pro = prorated(90, psecs - basic_secs, psecs);
    let overage = Decimal::new(50, 2); // 10 minutes x 0.05
    let want: Vec<String> = [
        ("base_fee:basic", fee_basic),
        ("base_fee:pro", fee_pro),
        ("overage:call_minutes", overage),
    ]
    .iter()
    .filter(|(_, a)| !a.is_zero())
    .map(|(k, a)| format!("{k}={}", money(*a)))
    .collect();
    assert_eq!(lines(&acme), want);
    assert_eq!(
        acme["charges"]["total"],
        json!(money(fee_basic + fee_pro + overage))
    );
    assert_eq!(acme["features"]["modules"], json!(12));

    // Alerts: 80% against basic's 100 (before the upgrade); 100% and overage against pro's
    // 1000 at a3, not at a2 (790 minutes, which was over basic's limit). Each once.
    let alerts = w.read_topic(&w.alerts, 3, Duration::from_secs(60));
    let mut got: Vec<(String, String, String)> = alerts
        .iter()
        .map(|m| serde_json::from_slice::<Value>(m.payload.as_deref().unwrap()).unwrap())
        .filter(|a| a["tenant_id"] == json!("acme"))
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_string(),
                a["limit"].as_str().unwrap().to_string(),
                a["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("100%".to_string(), "1000".to_string(), "a3".to_string()),
            ("80%".to_string(), "100".to_string(), "a1".to_string()),
            ("overage".to_string(), "1000".to_string(), "a3".to_string()),
        ]
    );

    // The write route: 401 without a token, 403 with a read token.
    let base = p.api("");
    let buy = json!({"plan": "basic", "addons": {"more_minutes": 2, "recording": 1}});
    assert_eq!(put(&base, "addy", None, "buy-1", buy.clone()).await.0, 401);
    let (st, b) = put(&base, "addy", Some("test-token"), "buy-1", buy.clone()).await;
    assert_eq!(st, 403, "{b}");
    let (st, b) = put(&base, "addy", Some(ADMIN), "buy-2", json!({"plan": "gold"})).await;
    assert_eq!(st, 422, "{b}");
    // Before the add-on: no call recording, basic's limit.
    let e = until(&base, "/v1/tenants/addy/entitlements/call_recording", |b| {
        b["allowed"].is_boolean()
    })
    .await;
    assert_eq!(
        e,
        json!({"allowed": false, "reason": "not in plan basic", "value": false})
    );
    // Bought in mid-period, sent twice with the same Idempotency-Key: one event.
    for _ in 0..2 {
        let (st, b) = put(&base, "addy", Some(ADMIN), "buy-1", buy.clone()).await;
        assert_eq!((st, b), (202, json!({"event_id": "buy-1"})));
    }
    // 160 minutes: 80% of 200 (with basic's 100 alone it would be 100% and overage).
    w.produce(&[call("d2", "addy", Utc::now(), 90)]).await;
    let addy = until(&base, "/v1/tenants/addy/usage", |b| {
        b["meters"][0]["usage"] == json!("160")
    })
    .await;
    assert_eq!(addy["meters"][0]["limit"], json!("200"));
    assert_eq!(addy["meters"][0]["alerts"], json!(["80%"]));
    assert!(
        lines(&addy).contains(&"addon:more_minutes=10.00".to_string()),
        "{addy}"
    );
    assert!(
        lines(&addy).contains(&"addon:recording=10.00".to_string()),
        "{addy}"
    );
    let (_, e) = get(&base, "/v1/tenants/addy/entitlements/call_recording").await;
    assert_eq!(e, json!({"allowed": true, "reason": null, "value": true}));
    let (_, all) = get(&base, "/v1/tenants/addy/entitlements").await;
    assert_eq!(all["meters"]["call_minutes"]["remaining"], json!("40"));
    assert_eq!(all["features"]["modules"]["value"], json!(2));

    // gone and newco.
    let (st, e) = get(&base, "/v1/tenants/gone/entitlements/call_minutes").await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["reason"], json!("subscription canceled"));
    let newco = until(&base, "/v1/tenants/newco/usage", |b| {
        b["meters"][0]["usage"] == json!("30")
    })
    .await;
    assert_eq!(newco["plan"], json!("pro"));
    // Created at at(4): pro's fee prorated from then.
    let newco_secs =
        (period.end_utc() - at(4).duration_trunc(TimeDelta::seconds(1)).unwrap()).num_seconds();
    assert_eq!(
        lines(&newco),
        [format!(
            "base_fee:pro={}",
            money(prorated(90, newco_secs, psecs))
        )]
    );

    // The dead-letter topic: the unknown plan and the usage without a subscription.
    // (n0 came before newco existed: unknown_tenant; n3 after, but earlier than its
    // subscription: no_subscription.)
    let dlq = w.read_topic(&w.dlq, 4, Duration::from_secs(60));
    assert_eq!(
        dlq_codes(&dlq),
        [
            ("bad1".to_string(), "unknown_plan".to_string()),
            ("g2".to_string(), "no_subscription".to_string()),
            ("n0".to_string(), "unknown_tenant".to_string()),
            ("n3".to_string(), "no_subscription".to_string()),
        ]
    );

    // Stored: one row per applied change (the duplicates collapsed into nothing).
    let ch = w.ch();
    let db = &w.database;
    let q = format!(
        "SELECT tenant_id, plan, addons, billing_cycle, canceled, event_id FROM {db}.subscriptions FINAL ORDER BY tenant_id"
    );
    let want = vec![
        vec!["acme", "pro", "{}", "monthly", "0", "up1"],
        vec![
            "addy",
            "basic",
            r#"{"more_minutes":2,"recording":1}"#,
            "monthly",
            "0",
            "buy-1",
        ],
        vec!["gone", "basic", "{}", "monthly", "1", "x1"],
        vec!["newco", "pro", "{}", "monthly", "0", "n1"],
    ];
    let stored = eventually(Duration::from_secs(30), || {
        let ch = ch.clone();
        let q = q.clone();
        let want = want.clone();
        async move { ch.query(&q).await.map(|r| r == want).unwrap_or(false) }
    })
    .await;
    assert!(stored, "subscriptions: {:?}", ch.query(&q).await);
    let n: u64 = ch
        .scalar(&format!(
            "SELECT count() FROM {db}.subscriptions WHERE event_id = 'buy-1'"
        ))
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(n, 1, "the same Idempotency-Key twice is one event");
    let on_topic = w
        .read_topic(&w.topic, msgs.len() + 3, Duration::from_secs(30))
        .iter()
        .filter(|m| {
            String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()).contains("\"buy-1\"")
        })
        .count();
    assert_eq!(on_topic, 2, "both requests produced");
    // Let the last flush's checkpoint land, then kill -9.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.kill9();

    // Restarted: the subscriptions come back from ClickHouse.
    let mut p = w.run_with("i0", &env);
    let base = p.api("");
    let acme2 = until(&base, "/v1/tenants/acme/usage", |b| {
        b["meters"][0]["usage"] == json!("1010")
    })
    .await;
    assert_eq!(lines(&acme2), lines(&acme));
    assert_eq!(acme2["meters"][0]["limit"], json!("1000"));
    let addy2 = until(&base, "/v1/tenants/addy/usage", |b| {
        b["meters"][0]["usage"] == json!("160")
    })
    .await;
    assert_eq!(addy2["meters"][0]["limit"], json!("200"));
    assert_eq!(lines(&addy2), lines(&addy));
    let newco2 = until(&base, "/v1/tenants/newco/usage", |b| {
        b["plan"] == json!("pro")
    })
    .await;
    assert_eq!(newco2["period"]["timezone"], json!("UTC"));
    // Later usage of gone is still refused, and acme's next minutes alert nothing again.
    w.produce(&[
        call("g3", "gone", Utc::now(), 1),
        call("a4", "acme", Utc::now(), 1),
    ])
    .await;
    let dlq = w.read_topic(&w.dlq, 5, Duration::from_secs(60));
    assert!(
        dlq_codes(&dlq).contains(&("g3".to_string(), "no_subscription".to_string())),
        "{:?}",
        dlq_codes(&dlq)
    );
    until(&base, "/v1/tenants/acme/usage", |b| {
        b["meters"][0]["usage"] == json!("1011")
    })
    .await;
    let kinds = ch
        .query(&format!(
            "SELECT kind, uniqExact(alert_id) FROM {db}.usage_alerts WHERE tenant_id = 'acme' GROUP BY kind ORDER BY kind"
        ))
        .await
        .unwrap();
    assert_eq!(kinds, [["100%", "1"], ["80%", "1"], ["overage", "1"]]);
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

/// The consumed-events counter of an instance, from its `/metrics`.
async fn consumed(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()
        .map(|r| r.text())
        .unwrap_or_else(|| panic!("metrics of {base}"))
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("callmeter_events_consumed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Subscription state moves with its partition: changes applied by one instance are
/// restored by the instance that takes the partition over in a rebalance, which then judges
/// later usage by them (new limits for alerts, `no_subscription` after a cancellation).
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_move_with_their_partitions_on_a_rebalance() {
    if crate::common::flavor() != crate::common::Flavor::Kafka {
        eprintln!("subscriptions rebalance: skipped (Apache Kafka only)");
        return;
    }
    let tenants: Vec<String> = (0..16).map(|i| format!("t{i:02}")).collect();
    let mut cfg = PLANS.to_string();
    for t in &tenants {
        cfg.push_str(&format!("[tenants.{t}]\nplan = \"basic\"\n"));
    }
    let w = World::new("subsreb", 4).extra(&cfg);
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::seconds(5);
    let period = callmeter::period::period_containing(chrono_tz::Tz::UTC, 1, now);
    let span = (now - period.start_utc()).num_seconds().max(40);
    let at = |frac: i64| (period.start_utc() + TimeDelta::seconds(span * frac / 10)).min(now);
    // Even tenants upgrade to pro, odd ones cancel, after 50 minutes on basic (no alert).
    let mut first = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        first.push(call(&format!("{t}-a"), t, at(2), 50));
        if i % 2 == 0 {
            first.push(sub(
                &format!("{t}-up"),
                t,
                "subscription.updated",
                at(4),
                json!({"plan": "pro"}),
            ));
        } else {
            first.push(sub(
                &format!("{t}-x"),
                t,
                "subscription.canceled",
                at(4),
                json!({}),
            ));
        }
    }
    let mut a = w.run("a");
    w.produce(&first).await;
    let ch = w.ch();
    let q = format!("SELECT count() FROM {}.subscriptions FINAL", w.database);
    let stored = eventually(Duration::from_secs(90), || {
        let ch = ch.clone();
        let q = q.clone();
        async move { ch.scalar(&q).await.as_deref() == Some("16") }
    })
    .await;
    assert!(stored, "subscriptions stored: {:?}", ch.scalar(&q).await);

    // b joins: partitions move from a to b (revoked, flushed, restored).
    let mut b = w.run("b");
    let b_base = b.api("");
    let ready = eventually(Duration::from_secs(90), || {
        let u = format!("{b_base}/readyz");
        async move {
            reqwest::get(&u)
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(ready, "b ready; log:\n{}", b.log_text());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 760 more minutes each: 810 is 80% of pro's 1000 (with basic's 100 it would also be
    // 100% and overage); canceled tenants' usage is refused.
    let later: Vec<(String, Vec<u8>)> = tenants
        .iter()
        .map(|t| call(&format!("{t}-b"), t, Utc::now(), 760))
        .collect();
    w.produce(&later).await;
    let b_consumed = eventually(Duration::from_secs(60), || {
        let base = b_base.clone();
        async move { consumed(&base).await > 0 }
    })
    .await;
    assert!(b_consumed, "b consumed events of its partitions");
    let alerts = w.read_topic(&w.alerts, 8, Duration::from_secs(60));
    let mut got: Vec<(String, String, String)> = alerts
        .iter()
        .map(|m| serde_json::from_slice::<Value>(m.payload.as_deref().unwrap()).unwrap())
        .map(|a| {
            (
                a["tenant_id"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
                a["limit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    got.dedup();
    let want: Vec<(String, String, String)> = tenants
        .iter()
        .step_by(2)
        .map(|t| (t.clone(), "80%".to_string(), "1000".to_string()))
        .collect();
    assert_eq!(got, want);
    let dlq = w.read_topic(&w.dlq, 8, Duration::from_secs(60));
    let want: Vec<(String, String)> = tenants
        .iter()
        .skip(1)
        .step_by(2)
        .map(|t| (format!("{t}-b"), "no_subscription".to_string()))
        .collect();
    assert_eq!(dlq_codes(&dlq), want);
    // Either instance answers each tenant with its subscription (from memory or from what
    // ClickHouse stored).
    for base in [a.api(""), b.api("")] {
        let (st, u) = get(&base, "/v1/tenants/t00/usage").await;
        assert_eq!(st, 200, "{u}");
        assert_eq!(u["plan"], json!("pro"), "{base}: {u}");
        let (_, e) = get(&base, "/v1/tenants/t01/entitlements/modules").await;
        assert_eq!(e["reason"], json!("subscription canceled"), "{base}: {e}");
    }
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
}
