//! The HTTP API over a real listener, with usage held in memory (no ClickHouse: its URL
//! points nowhere, so any answer that needed it would be a 503), and the OpenAPI document.

use std::sync::Arc;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::*;
use crate::config::Config;
use crate::state::{InMessage, Params, Processor, Restored};

const CONFIG: &str = r#"
[clickhouse]
url = "http://127.0.0.1:9"
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
[plans.capped]
currency = "USD"
[plans.capped.meters.call_minutes]
included = "10"
hard_limit = true
[plans.capped.meters.calls]
rate = "0.50"
[tenants.acme]
plan = "starter"
timezone = "Europe/Paris"
anchor_day = 15
addons = { extra_minutes = 2 }
[tenants.capped]
plan = "capped"
[tenants.idle]
plan = "capped"
"#;

fn call(tenant: &str, id: &str, time: DateTime<Utc>, ms: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"{tenant}","time":"{}","data":{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}}}"#,
        time.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

struct Server {
    base: String,
    shared: Arc<Shared>,
}

async fn server(config: &str, events: &[String]) -> Server {
    let c = Config::from_toml_str(config).unwrap();
    let shared = Shared::new(c.catalog.clone());
    let mut p = Processor::new(shared.clone(), Params::from_settings(&c.settings));
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
    let now = Utc::now();
    for (i, e) in events.iter().enumerate() {
        let o = p.process(
            &InMessage {
                partition: 0,
                offset: i as i64,
                payload: Some(e.as_bytes()),
                timestamp_ms: Some(now.timestamp_millis() - 1000 + i as i64),
            },
            now,
        );
        assert_eq!(o, crate::state::Outcome::Counted, "{e}");
    }
    // The processor lives as long as the test (memory rows are in `shared`).
    std::mem::forget(p);
    let state = ApiState {
        shared: shared.clone(),
        telemetry: Telemetry::install(),
        ch: ClickHouse::new(&c.settings.clickhouse),
        tokens: Arc::new(arc_swap::ArcSwap::from_pointee(vec!["tok".to_string()])),
        admin_tokens: Arc::new(arc_swap::ArcSwap::from_pointee(vec!["admin".to_string()])),
        events: None,
        portal: portal::Portal::default(),
        wallets: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    Server { base, shared }
}

async fn get(s: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", s.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test]
async fn usage_answer_has_the_contract_shape() {
    // CONTRACT section 6's example: 96.5 minutes of 320 (120 + 2 x 100) in a Paris period
    // anchored on the 15th (here the October one: 2026-10-15 .. 2026-11-15).
    let t = utc("2026-10-20T12:00:00Z");
    let s = server(
        CONFIG,
        &[
            call("acme", "a", t, 90 * 60_000),
            call("acme", "b", t, 6 * 60_000 + 30_000),
        ],
    )
    .await;
    let (status, body) = get(
        &s,
        "/v1/tenants/acme/usage?at=2026-10-20T12:00:00%2B02:00",
        Some("tok"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "tenant_id": "acme", "plan": "starter", "currency": "USD",
            "period": {"start": "2026-10-15T00:00:00+02:00", "end": "2026-11-15T00:00:00+01:00", "timezone": "Europe/Paris"},
            "meters": [{"meter": "call_minutes", "usage": "96.5", "limit": "320", "remaining": "223.5",
                        "ratio": "0.301563", "alerts": []}],
            "charges": {"lines": [
                {"kind": "base_fee", "meter": null, "quantity": "1", "amount": "79.00"},
                {"kind": "addon", "meter": "call_minutes", "item": "extra_minutes", "quantity": "2", "amount": "30.00"}
            ], "total": "109.00"},
            "features": {}
        })
    );
}

#[tokio::test]
async fn auth_and_unknown_things() {
    let s = server(CONFIG, &[]).await;
    for path in [
        "/v1/tenants/acme/usage",
        "/v1/tenants/acme/entitlements/call_minutes",
    ] {
        assert_eq!(get(&s, path, None).await.0, 401, "{path}");
        assert_eq!(get(&s, path, Some("wrong")).await.0, 401, "{path}");
    }
    // Unknown tenant (no default plan): 404 even before looking anything up.
    let (st, body) = get(&s, "/v1/tenants/nobody/usage", Some("tok")).await;
    assert_eq!(st, 404);
    assert!(body["error"].as_str().unwrap().contains("nobody"));
    assert_eq!(
        get(&s, "/v1/tenants/nobody/entitlements/calls", Some("tok"))
            .await
            .0,
        404
    );
    assert_eq!(
        get(&s, "/v1/tenants/acme/entitlements/nope", Some("tok"))
            .await
            .0,
        404
    );
    assert_eq!(
        get(&s, "/v1/tenants/acme/usage?at=yesterday", Some("tok"))
            .await
            .0,
        400
    );
    assert_eq!(get(&s, "/healthz", None).await.0, 200);
    assert_eq!(get(&s, "/readyz", None).await.0, 200);
}

#[tokio::test]
async fn entitlements_follow_hard_limits() {
    let now = Utc::now() - Duration::seconds(30);
    let s = server(
        CONFIG,
        &[
            call("capped", "a", now, 6 * 60_000),
            call("acme", "x", now, 60_000),
        ],
    )
    .await;
    let (st, body) = get(
        &s,
        "/v1/tenants/capped/entitlements/call_minutes",
        Some("tok"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        body,
        json!({"allowed": true, "reason": null, "remaining": "4"})
    );
    // Rate-only meter: no limit.
    let (_, body) = get(&s, "/v1/tenants/capped/entitlements/calls", Some("tok")).await;
    assert_eq!(
        body,
        json!({"allowed": true, "reason": null, "remaining": null})
    );
    // A soft limit never refuses.
    let (_, body) = get(
        &s,
        "/v1/tenants/acme/entitlements/call_minutes",
        Some("tok"),
    )
    .await;
    assert_eq!(body["allowed"], json!(true));
    // Reach the limit: 4 more minutes.
    let c = Config::from_toml_str(CONFIG).unwrap();
    let mut p = Processor::new(s.shared.clone(), Params::from_settings(&c.settings));
    p.assign(1);
    p.install(Restored {
        partition: 1,
        ..Default::default()
    });
    let e = call("capped", "b", now, 4 * 60_000);
    p.process(
        &InMessage {
            partition: 1,
            offset: 0,
            payload: Some(e.as_bytes()),
            timestamp_ms: Some(Utc::now().timestamp_millis()),
        },
        Utc::now(),
    );
    let (_, body) = get(
        &s,
        "/v1/tenants/capped/entitlements/call_minutes",
        Some("tok"),
    )
    .await;
    assert_eq!(
        body,
        json!({"allowed": false, "reason": "hard_limit_reached", "remaining": "0"})
    );
    let (_, body) = get(&s, "/v1/tenants/capped/usage", Some("tok")).await;
    assert_eq!(body["meters"][0]["usage"], json!("10"));
    assert_eq!(body["meters"][0]["ratio"], json!("1"));
    assert_eq!(body["meters"][0]["alerts"], json!(["80%", "100%"]));
    assert_eq!(body["meters"][1]["meter"], json!("calls"));
    assert_eq!(body["meters"][1]["limit"], json!(null));
    assert_eq!(body["charges"]["total"], json!("1.00"));
    std::mem::forget(p);
}

#[tokio::test]
async fn a_reloaded_catalog_is_served_at_once() {
    let now = Utc::now() - Duration::seconds(30);
    let s = server(CONFIG, &[call("capped", "a", now, 60_000)]).await;
    let (_, body) = get(&s, "/v1/tenants/capped/usage", Some("tok")).await;
    assert_eq!(body["meters"][0]["limit"], json!("10"));
    let next =
        Config::from_toml_str(&CONFIG.replace("included = \"10\"", "included = \"30\"")).unwrap();
    s.shared.set_catalog(next.catalog);
    let (_, body) = get(&s, "/v1/tenants/capped/usage", Some("tok")).await;
    assert_eq!(body["meters"][0]["limit"], json!("30"));
}

#[test]
fn openapi_document_is_in_sync() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
    let generated = openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "schemas/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test openapi_document_is_in_sync`"
    );
    // The documented routes are the router's, and the documented fields the answers'.
    let doc: Value = serde_json::from_str(&generated).unwrap();
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/portal/statements",
            "/v1/portal/tokens",
            "/v1/portal/usage",
            "/v1/tenants/{tenant}/entitlements",
            "/v1/tenants/{tenant}/entitlements/{name}",
            "/v1/tenants/{tenant}/statements",
            "/v1/tenants/{tenant}/subscription",
            "/v1/tenants/{tenant}/usage"
        ]
    );
    let props = |schema: &str| -> Vec<String> {
        let mut v: Vec<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema}"))
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        props("UsageBody"),
        [
            "charges",
            "currency",
            "features",
            "meters",
            "period",
            "plan",
            "tenant_id",
            "wallet"
        ]
    );
    assert_eq!(
        props("StatementBody"),
        [
            "closed_at",
            "currency",
            "lines",
            "period_end",
            "period_start",
            "plan",
            "statement_id",
            "tenant_id",
            "total"
        ]
    );
    assert_eq!(props("TokenResponse"), ["expires_at", "token", "url"]);
    assert_eq!(
        props("MeterUsageBody"),
        ["alerts", "limit", "meter", "ratio", "remaining", "usage"]
    );
    assert_eq!(props("Entitlement"), ["allowed", "reason", "remaining"]);
    assert_eq!(props("StatementsBody"), ["statements", "tenant_id"]);
    assert_eq!(
        props("StatementBody"),
        [
            "closed_at",
            "currency",
            "lines",
            "period_end",
            "period_start",
            "plan",
            "statement_id",
            "tenant_id",
            "total"
        ]
    );
    assert_eq!(
        props("StatementLineBody"),
        ["amount", "item", "kind", "meter", "quantity"]
    );
    assert_eq!(
        props("ChargeLine"),
        ["amount", "item", "kind", "meter", "quantity"]
    );
}

mod subscription;
