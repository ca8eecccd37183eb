//! Pricing end to end: several tenants on several plans (add-ons, a hard limit, per-call
//! pricing, a prepaid wallet with a top-up, the default plan) fed through Kafka; the usage
//! and entitlement answers match hand-computed values; wallet alerts reach the alerts topic
//! and `usage_alerts`; a past period is answered from ClickHouse after a restart; the
//! configuration reloads when its file changes, and a bad file is refused.

use std::time::Duration;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::common::{World, eventually};

const PRICING: &str = include_str!("../fixtures/pricing-plans.toml");

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn call(id: &str, tenant: &str, time: DateTime<Utc>, ms: u64) -> (String, Vec<u8>) {
    (
        tenant.to_string(),
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"voice/eu-1","type":"call.completed","subject":"{tenant}","time":"{}","data":{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}}}"#,
            rfc(time)
        )
        .into_bytes(),
    )
}

fn top_up(id: &str, tenant: &str, time: DateTime<Utc>, amount: &str) -> (String, Vec<u8>) {
    (
        tenant.to_string(),
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"payments","type":"wallet.topped_up","subject":"{tenant}","time":"{}","data":{{"amount":"{amount}","currency":"USD","payment_reference":"flw_{id}"}}}}"#,
            rfc(time)
        )
        .into_bytes(),
    )
}

async fn get(w: &World, path: &str, token: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .get(w.api(path))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let source = resp
                .headers()
                .get("x-callmeter-usage-source")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
                source,
            )
        }
        Err(e) => (0, Value::String(e.to_string()), None),
    }
}

/// Polls `path` until `ok` holds for its JSON answer; returns the last answer.
async fn until(w: &World, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) = get(w, path, Some("test-token")).await;
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_charges_entitlements_and_wallets_end_to_end() {
    let w = World::new("pricing", 2).extra(PRICING);
    let now = Utc::now();
    let recent = now - chrono::Duration::minutes(2);
    // acme's periods (Paris, anchored on the 15th): the current one, and the one two
    // periods back, closed long ago (so after a restart only ClickHouse has it).
    let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
    let cur = callmeter::period::period_containing(paris, 15, recent);
    let prev = callmeter::period::period_containing(
        paris,
        15,
        cur.start_utc() - chrono::Duration::seconds(1),
    );
    let past = callmeter::period::period_containing(
        paris,
        15,
        prev.start_utc() - chrono::Duration::seconds(1),
    );
    let in_past = past.start_utc() + chrono::Duration::days(3);

    // Past-period events first: the partition watermark is still in that period.
    let mut first = vec![
        call("p1", "acme", in_past, 200 * 60_000),
        call("p2", "acme", in_past, 130 * 60_000),
    ];
    first.push(call("p2", "acme", in_past, 130 * 60_000)); // duplicate: counted once
    // saver (UTC, anchored on the 1st): one top-up of 40 in acme's period two back, nothing
    // since: 40 + a monthly grant of 15 for every saver period from that one to today's
    // (3 from the 15th of a month on, 4 before it: acme's periods start on the 15th).
    first.push(top_up("s1", "saver", in_past, "40"));
    let months = |t: DateTime<Utc>| t.year() * 12 + t.month() as i32;
    let saver_periods = months(recent) - months(in_past) + 1;
    let saver_balance = json!(format!("{}.00", 40 + 15 * saver_periods));
    w.produce(&first).await;

    let mut msgs = vec![
        // acme: 96.5 minutes (CONTRACT section 6's example).
        call("a1", "acme", recent, 90 * 60_000),
        call("a2", "acme", recent, 6 * 60_000 + 30_000),
        // capped: 12 minutes of a hard 10.
        call("c1", "capped", recent, 8 * 60_000),
        call("c2", "capped", recent, 4 * 60_000),
        // walleted: grant 15, top-up 20, 100 minutes at 0.10: 15 + 20 - 10 = 25.
        top_up("t1", "walleted", recent, "20"),
        call("w1", "walleted", recent, 100 * 60_000),
        // A tenant on the default plan.
        call("x1", "walkin", recent, 60_000),
    ];
    // bistro: 20 calls on EUR 49 + 0.50/call.
    for i in 0..20 {
        msgs.push(call(&format!("b{i}"), "bistro", recent, 30_000));
    }
    let mut p = w.run("i0");
    w.produce(&msgs).await;

    // acme, current period, from memory.
    let body = until(&w, "/v1/tenants/acme/usage", |b| {
        b["meters"][0]["usage"] == json!("96.5")
    })
    .await;
    assert_eq!(
        body,
        json!({
            "tenant_id": "acme", "plan": "starter", "currency": "USD",
            "period": {
                "start": cur.start_utc().with_timezone(&paris).to_rfc3339_opts(SecondsFormat::Secs, false),
                "end": cur.end_utc().with_timezone(&paris).to_rfc3339_opts(SecondsFormat::Secs, false),
                "timezone": "Europe/Paris"
            },
            "meters": [{"meter": "call_minutes", "usage": "96.5", "limit": "320", "remaining": "223.5",
                        "ratio": "0.301563", "alerts": []}],
            "charges": {"lines": [
                {"kind": "base_fee", "meter": null, "quantity": "1", "amount": "79.00"},
                {"kind": "addon", "meter": "call_minutes", "item": "extra_minutes", "quantity": "2", "amount": "30.00"}
            ], "total": "109.00"},
            "features": {}
        })
    );

    // acme, the past period: 330 minutes, 10 over 320 at 0.22.
    let past_path = format!(
        "/v1/tenants/acme/usage?at={}",
        rfc(in_past).replace('+', "%2B")
    );
    let past_want = |b: &Value| {
        b["meters"][0]["usage"] == json!("330")
            && b["meters"][0]["alerts"] == json!(["80%", "100%", "overage"])
            && b["charges"]["total"] == json!("111.20")
    };
    let body = until(&w, &past_path, past_want).await;
    assert_eq!(body["meters"][0]["remaining"], json!("0"));
    assert_eq!(body["meters"][0]["ratio"], json!("1.03125"));
    assert_eq!(
        body["charges"]["lines"][1],
        json!({"kind": "overage", "meter": "call_minutes", "quantity": "10", "amount": "2.20"})
    );

    // capped: hard limit reached.
    let body = until(&w, "/v1/tenants/capped/usage", |b| {
        b["meters"][0]["usage"] == json!("12")
    })
    .await;
    assert_eq!(
        body["meters"][0]["alerts"],
        json!(["80%", "100%", "overage"])
    );
    assert_eq!(body["charges"], json!({"lines": [], "total": "0.00"}));
    let (st, ent, _) = get(
        &w,
        "/v1/tenants/capped/entitlements/call_minutes",
        Some("test-token"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        ent,
        json!({"allowed": false, "reason": "hard_limit_reached", "remaining": "0"})
    );

    // bistro: 20 calls = EUR 49 + 10 = 59.
    let body = until(&w, "/v1/tenants/bistro/usage", |b| {
        b["charges"]["total"] == json!("59.00")
    })
    .await;
    assert_eq!(body["currency"], json!("EUR"));
    assert_eq!(
        body["meters"],
        json!([{"meter": "calls", "usage": "20", "limit": null, "remaining": null, "ratio": null, "alerts": []}])
    );

    // walkin: the default plan, no meters priced.
    let body = until(&w, "/v1/tenants/walkin/usage", |_| true).await;
    assert_eq!(body["plan"], json!("free"));
    assert_eq!(body["charges"]["total"], json!("0.00"));

    // walleted: 15 + 20 - 10 = 25; above the low balance, allowed.
    let body = until(&w, "/v1/tenants/walleted/usage", |b| {
        b["wallet"]["balance"] == json!("25.00")
    })
    .await;
    assert_eq!(
        body["wallet"],
        json!({"balance": "25.00", "currency": "USD", "prepaid": true})
    );
    assert_eq!(
        body["meters"][1],
        json!({"meter": "wallet_credit", "usage": "20", "limit": null, "remaining": null, "ratio": null, "alerts": []})
    );
    let (_, ent, _) = get(
        &w,
        "/v1/tenants/walleted/entitlements/call_minutes",
        Some("test-token"),
    )
    .await;
    assert_eq!(
        ent,
        json!({"allowed": true, "reason": null, "remaining": null})
    );

    // 160 more minutes: 9.00 left, below 10: wallet_low. Then 100 more: -1.00: wallet_empty,
    // and the entitlement says no.
    w.produce(&[call("w2", "walleted", recent, 160 * 60_000)])
        .await;
    until(&w, "/v1/tenants/walleted/usage", |b| {
        b["wallet"]["balance"] == json!("9.00") && b["meters"][1]["alerts"] == json!(["wallet_low"])
    })
    .await;
    w.produce(&[call("w3", "walleted", recent, 100 * 60_000)])
        .await;
    until(&w, "/v1/tenants/walleted/usage", |b| {
        b["wallet"]["balance"] == json!("-1.00")
            && b["meters"][1]["alerts"] == json!(["wallet_low", "wallet_empty"])
    })
    .await;
    let (_, ent, _) = get(
        &w,
        "/v1/tenants/walleted/entitlements/call_minutes",
        Some("test-token"),
    )
    .await;
    assert_eq!(
        ent,
        json!({"allowed": false, "reason": "wallet_empty", "remaining": null})
    );
    // A top-up brings it back.
    w.produce(&[top_up("t2", "walleted", recent, "50")]).await;
    until(&w, "/v1/tenants/walleted/entitlements/call_minutes", |b| {
        b["allowed"] == json!(true)
    })
    .await;

    // Wallet alerts: on the alerts topic and in usage_alerts, once each.
    let msgs = w.read_topic(&w.alerts, 8, Duration::from_secs(30));
    let wallet_alerts: Vec<Value> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m.payload.as_deref()?).ok())
        .filter(|a| a["meter"] == json!("wallet_credit"))
        .collect();
    let kinds: Vec<&str> = wallet_alerts
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["wallet_low", "wallet_empty"], "{wallet_alerts:?}");
    let walleted_period = callmeter::period::period_containing(chrono_tz::UTC, 1, recent);
    assert_eq!(
        wallet_alerts[0]["alert_id"],
        json!(callmeter::alerts::alert_id(
            "walleted",
            "wallet_credit",
            walleted_period.start,
            "wallet_low"
        ))
    );
    assert_eq!(wallet_alerts[0]["usage"], json!("9"));
    assert_eq!(wallet_alerts[0]["limit"], json!("10"));
    assert_eq!(wallet_alerts[1]["usage"], json!("-1"));
    let ch = w.ch();
    let db = w.database.clone();
    let stored = ch
        .query(&format!(
            "SELECT kind FROM {db}.usage_alerts FINAL WHERE tenant_id = 'walleted' ORDER BY fired_at, kind DESC"
        ))
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![
            vec!["wallet_low".to_string()],
            vec!["wallet_empty".to_string()]
        ]
    );

    // 401 without a token, 404 for a tenant nobody has seen.
    assert_eq!(get(&w, "/v1/tenants/acme/usage", None).await.0, 401);
    assert_eq!(
        get(
            &w,
            "/v1/tenants/acme/entitlements/call_minutes",
            Some("nope")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(&w, "/v1/tenants/nobody/usage", Some("test-token"))
            .await
            .0,
        404
    );
    assert_eq!(
        get(&w, "/v1/tenants/acme/entitlements/sms", Some("test-token"))
            .await
            .0,
        404
    );

    // ClickHouse holds the exact rollups.
    let q = |tenant: &str, meter: &str, start: i64| {
        format!(
            "SELECT toString(sum(value)) FROM {db}.usage_rollups FINAL WHERE tenant_id = '{tenant}' AND meter = '{meter}' AND period_start = toDateTime({start}, 'UTC')"
        )
    };
    let past_q = q("acme", "call_minutes", past.start);
    assert!(
        eventually(Duration::from_secs(30), || {
            let (ch, sql) = (ch.clone(), past_q.clone());
            async move { ch.scalar(&sql).await.as_deref() == Some("330.000000000") }
        })
        .await
    );

    until(&w, "/v1/tenants/saver/usage", |b| {
        b["wallet"]["balance"] == saver_balance
    })
    .await;

    // Restart: the past period is answered from ClickHouse, the current one from memory
    // once restored; both unchanged. The saver's balance now comes from stored rollups only.
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let mut p = w.run("i0");
    let (_, body, source) = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = get(&w, &past_path, Some("test-token")).await;
            if r.0 == 200 && past_want(&r.1) {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "{:?}", r);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    assert_eq!(source.as_deref(), Some("clickhouse"), "{body}");
    assert!(
        eventually(Duration::from_secs(60), || async {
            reqwest::get(w.api("/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    let (_, body, source) = get(&w, "/v1/tenants/acme/usage", Some("test-token")).await;
    assert_eq!(body["charges"]["total"], json!("109.00"));
    assert_eq!(source.as_deref(), Some("memory"));
    let (_, body, _) = get(&w, &past_path, Some("test-token")).await;
    assert!(past_want(&body), "{body}");
    let body = until(&w, "/v1/tenants/saver/usage", |b| b.get("wallet").is_some()).await;
    assert_eq!(body["wallet"]["balance"], saver_balance, "{body}");
    assert_eq!(body["meters"][1]["usage"], json!("0"));

    // Reload on file change: a bad file is refused (old config kept), a good one applies.
    let path = w.config();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[plans.capped]", "[plans.capped]\nbase_fee = \"-1\""),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            p.log_text().contains("configuration reload rejected")
        })
        .await,
        "{}",
        p.log_text()
    );
    let (_, body, _) = get(&w, "/v1/tenants/capped/usage", Some("test-token")).await;
    assert_eq!(body["meters"][0]["limit"], json!("10"));
    std::fs::write(
        &path,
        good.replace("included = \"10\"", "included = \"30\""),
    )
    .unwrap();
    let body = until(&w, "/v1/tenants/capped/usage", |b| {
        b["meters"][0]["limit"] == json!("30")
    })
    .await;
    assert_eq!(body["meters"][0]["remaining"], json!("18"));
    let (_, ent, _) = get(
        &w,
        "/v1/tenants/capped/entitlements/call_minutes",
        Some("test-token"),
    )
    .await;
    assert_eq!(
        ent,
        json!({"allowed": true, "reason": null, "remaining": "18"})
    );
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

/// Every example configuration passes `callmeter check-config`.
#[test]
fn every_example_passes_check_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callmeter"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("configuration ok"),
            "{}: {}{}",
            path.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 6, "{n} examples");
}
