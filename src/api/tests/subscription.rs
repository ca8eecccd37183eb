//! Features and subscriptions through the HTTP API: feature values and entitlements of a
//! tenant whose add-on was bought mid-period by a `subscription.updated` event (applied by
//! the processor, as the pipeline does), a canceled tenant, a tenant created by its first
//! event, and the write route's auth and validation.

use chrono::{Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{call, get, server};

const CONFIG: &str = r#"
[clickhouse]
url = "http://127.0.0.1:9"
[api]
tokens = ["tok"]
[plans.basic]
currency = "USD"
base_fee = "30.00"
[plans.basic.features]
modules = 2
call_recording = false
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "0.10"
[plans.basic.addons.recording]
price = "10.00"
features = { call_recording = true }
[plans.basic.addons.more_minutes]
meter = "call_minutes"
included = "50"
price = "5.00"
features = { modules = 1 }
[plans.pro]
currency = "USD"
base_fee = "90.00"
[plans.pro.features]
modules = 12
human_coach = true
[tenants.acme]
plan = "basic"
[tenants.gone]
plan = "basic"
"#;

fn sub(tenant: &str, id: &str, ty: &str, data: &str) -> String {
    let t = (Utc::now() - Duration::seconds(30)).to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"billing","type":"{ty}","subject":"{tenant}","time":"{t}","data":{data}}}"#
    )
}

async fn put(
    base: &str,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .put(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn features_follow_addons_bought_and_cancellations() {
    let now = Utc::now() - Duration::minutes(1);
    let s = server(
        CONFIG,
        &[
            call("acme", "a1", now, 120 * 60_000),
            sub(
                "acme",
                "s1",
                "subscription.updated",
                r#"{"plan":"basic","addons":{"recording":1,"more_minutes":2}}"#,
            ),
            call("gone", "g1", now, 60_000),
            sub("gone", "s2", "subscription.canceled", "{}"),
            sub(
                "newco",
                "s3",
                "subscription.updated",
                r#"{"plan":"pro","timezone":"Europe/Paris","anchor_day":3}"#,
            ),
            call("newco", "n1", Utc::now() - Duration::seconds(5), 60_000),
        ],
    )
    .await;
    // acme: the add-ons raise the limit (100 + 2 x 50) and grant the features.
    let (st, u) = get(&s, "/v1/tenants/acme/usage", Some("tok")).await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["meters"][0]["limit"], json!("200"));
    assert_eq!(
        u["features"],
        json!({"call_recording": true, "human_coach": false, "modules": 4})
    );
    let (st, e) = get(
        &s,
        "/v1/tenants/acme/entitlements/call_recording",
        Some("tok"),
    )
    .await;
    assert_eq!(
        (st, e),
        (200, json!({"allowed": true, "reason": null, "value": true}))
    );
    let (_, e) = get(&s, "/v1/tenants/acme/entitlements/human_coach", Some("tok")).await;
    assert_eq!(
        e,
        json!({"allowed": false, "reason": "not in plan basic", "value": false})
    );
    let (_, e) = get(
        &s,
        "/v1/tenants/acme/entitlements/call_minutes",
        Some("tok"),
    )
    .await;
    assert_eq!(
        e,
        json!({"allowed": true, "reason": null, "remaining": "80"})
    );
    let (st, _) = get(&s, "/v1/tenants/acme/entitlements/teleport", Some("tok")).await;
    assert_eq!(st, 404);
    let (st, all) = get(&s, "/v1/tenants/acme/entitlements", Some("tok")).await;
    assert_eq!(st, 200, "{all}");
    assert_eq!(all["meters"]["call_minutes"]["remaining"], json!("80"));
    assert_eq!(
        all["features"]["modules"],
        json!({"allowed": true, "reason": null, "value": 4})
    );
    // gone: canceled; every entitlement says so.
    let (_, e) = get(&s, "/v1/tenants/gone/entitlements/modules", Some("tok")).await;
    assert_eq!(
        e,
        json!({"allowed": false, "reason": "subscription canceled", "value": 0})
    );
    let (_, e) = get(
        &s,
        "/v1/tenants/gone/entitlements/call_minutes",
        Some("tok"),
    )
    .await;
    assert_eq!(e["allowed"], json!(false));
    assert_eq!(e["reason"], json!("subscription canceled"));
    // newco: created by its first event, in its own time zone.
    let (st, u) = get(&s, "/v1/tenants/newco/usage", Some("tok")).await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["plan"], json!("pro"));
    assert_eq!(u["period"]["timezone"], json!("Europe/Paris"));
    assert_eq!(u["features"]["modules"], json!(12));
    assert_eq!(s.shared.tenant("newco").unwrap().anchor_day, 3);
    let (st, _) = get(&s, "/v1/tenants/nobody/entitlements", Some("tok")).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn the_write_route_needs_an_admin_token_and_a_valid_change() {
    let s = server(CONFIG, &[]).await;
    let path = "/v1/tenants/acme/subscription";
    let ok = r#"{"plan":"pro"}"#;
    assert_eq!(put(&s.base, path, None, None, ok).await.0, 401);
    assert_eq!(put(&s.base, path, Some("nope"), None, ok).await.0, 401);
    let (st, b) = put(&s.base, path, Some("tok"), None, ok).await;
    assert_eq!(st, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("admin"));
    // Admin: malformed bodies are 400, unknown plans and add-ons 422, with a JSON error.
    let (st, b) = put(&s.base, path, Some("admin"), None, "[1]").await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = put(
        &s.base,
        path,
        Some("admin"),
        None,
        r#"{"plan":"pro","anchor_day":40}"#,
    )
    .await;
    assert_eq!(st, 400);
    let (st, b) = put(&s.base, path, Some("admin"), None, r#"{"plan":"platinum"}"#).await;
    assert_eq!(st, 422, "{b}");
    assert_eq!(b["error"], json!("no plan named `platinum` is configured"));
    let (st, _) = put(
        &s.base,
        path,
        Some("admin"),
        None,
        r#"{"plan":"pro","addons":{"recording":1}}"#,
    )
    .await;
    assert_eq!(st, 422);
    // A tenant not yet known needs its time zone and anchor day.
    let (st, _) = put(
        &s.base,
        "/v1/tenants/newco/subscription",
        Some("admin"),
        None,
        ok,
    )
    .await;
    assert_eq!(st, 422);
    let (st, _) = put(&s.base, path, Some("admin"), Some(&"k".repeat(129)), ok).await;
    assert_eq!(st, 400);
    // Valid, but this server has no producer: 503, never a silent 202.
    let (st, b) = put(&s.base, path, Some("admin"), Some("k1"), ok).await;
    assert_eq!(st, 503, "{b}");
}
