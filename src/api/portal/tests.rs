//! The portal routes over a real listener, with usage in memory and ClickHouse pointing
//! nowhere (statements and daily usage then say they are unavailable; the page still loads).

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::Utc;
use serde_json::Value;

use super::*;
use crate::api::router;
use crate::config::Config;
use crate::sink::clickhouse::ClickHouse;
use crate::state::{InMessage, Params, Processor, Restored, Shared};
use crate::telemetry::Telemetry;

const SECRET: &str = "portal-secret-portal-secret-0123456789";
const CONFIG: &str = r#"
[clickhouse]
url = "http://127.0.0.1:9"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
[tenants.acme]
plan = "starter"
[tenants.globex]
plan = "starter"
"#;

async fn serve(secret: &str) -> String {
    let c = Config::from_toml_str(CONFIG).unwrap();
    let mut portal = Portal::from_settings(&c.settings);
    portal.secret = secret.as_bytes().into();
    portal.upgrade_url = Some("https://example.com/upgrade".into());
    let shared = Shared::new(c.catalog.clone());
    // One call of acme's in memory (this instance holds partition 0), so usage needs no
    // ClickHouse.
    let mut p = Processor::new(shared.clone(), Params::from_settings(&c.settings));
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
    let now = Utc::now();
    let ev = format!(
        r#"{{"specversion":"1.0","id":"c1","source":"s","type":"call.completed","subject":"acme","time":"{}","data":{{"call_id":"c1","duration_ms":90000,"direction":"inbound"}}}}"#,
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let o = p.process(
        &InMessage {
            partition: 0,
            offset: 0,
            payload: Some(ev.as_bytes()),
            timestamp_ms: Some(now.timestamp_millis()),
        },
        now,
    );
    assert_eq!(o, crate::state::Outcome::Counted);
    std::mem::forget(p);
    let state = ApiState {
        shared,
        telemetry: Telemetry::install(),
        ch: ClickHouse::new(&c.settings.clickhouse),
        tokens: Arc::new(ArcSwap::from_pointee(vec!["read".to_string()])),
        admin_tokens: Arc::new(ArcSwap::from_pointee(vec!["admin".to_string()])),
        portal,
        events: None,
        wallets: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    base
}

async fn post_token(base: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/portal/tokens"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(
    base: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn sign(tenant: &str, secret: &str) -> String {
    token::sign(
        secret.as_bytes(),
        tenant,
        Utc::now().timestamp(),
        std::time::Duration::from_secs(600),
    )
    .unwrap()
    .0
}

#[tokio::test]
async fn tokens_need_an_admin_token_a_known_tenant_and_a_short_ttl() {
    let base = serve(SECRET).await;
    let ok = r#"{"tenant_id": "acme", "ttl": "1h"}"#;
    assert_eq!(post_token(&base, None, ok).await.0, 401);
    assert_eq!(post_token(&base, Some("nope"), ok).await.0, 401);
    let (st, body) = post_token(&base, Some("read"), ok).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"], "this route needs one of api.admin_tokens");
    let (st, body) = post_token(&base, Some("admin"), ok).await;
    assert_eq!(st, 200, "{body}");
    let tok = body["token"].as_str().unwrap();
    assert_eq!(body["url"], format!("/portal/?token={tok}"));
    let exp = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let left = exp.timestamp() - Utc::now().timestamp();
    assert!((3590..=3600).contains(&left), "{left}");
    let c = token::verify(SECRET.as_bytes(), tok, Utc::now().timestamp()).unwrap();
    assert_eq!(c.tenant, "acme");
    // Default ttl 1h; 24h is the most.
    let (st, _) = post_token(&base, Some("admin"), r#"{"tenant_id": "acme"}"#).await;
    assert_eq!(st, 200);
    let (st, _) = post_token(
        &base,
        Some("admin"),
        r#"{"tenant_id": "acme", "ttl": "24h"}"#,
    )
    .await;
    assert_eq!(st, 200);
    for bad in [
        r#"{"tenant_id": "acme", "ttl": "25h"}"#,
        r#"{"tenant_id": "acme", "ttl": "0s"}"#,
        r#"{"tenant_id": "acme", "ttl": "forever"}"#,
        r#"{"ttl": "1h"}"#,
        r#"{"tenant_id": "acme", "extra": 1}"#,
        "not json",
    ] {
        let (st, body) = post_token(&base, Some("admin"), bad).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let (st, body) = post_token(&base, Some("admin"), r#"{"tenant_id": "<script>\"x'"}"#).await;
    assert_eq!(st, 404, "{body}");
}

#[tokio::test]
async fn portal_tokens_open_their_tenant_only() {
    let base = serve(SECRET).await;
    let acme = sign("acme", SECRET);
    let (st, h, body) = get(&base, "/v1/portal/usage", Some(&acme)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(h["cache-control"], "no-store");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tenant_id"], "acme");
    // The same answer as the tenant route.
    let (_, _, direct) = get(&base, "/v1/tenants/acme/usage", Some("read")).await;
    assert_eq!(v, serde_json::from_str::<Value>(&direct).unwrap());
    // A portal token is not an API token.
    for path in [
        "/v1/tenants/acme/usage",
        "/v1/tenants/globex/usage",
        "/v1/tenants/acme/entitlements/call_minutes",
    ] {
        assert_eq!(get(&base, path, Some(&acme)).await.0, 401, "{path}");
    }
    assert_eq!(
        post_token(&base, Some(&acme), r#"{"tenant_id": "acme"}"#)
            .await
            .0,
        401
    );
    // API tokens, forged and foreign tokens do not open portal routes.
    for bad in [
        "read",
        "admin",
        &sign("acme", "another-secret-another-secret-0123"),
        "",
    ] {
        let b = (!bad.is_empty()).then_some(bad);
        assert_eq!(get(&base, "/v1/portal/usage", b).await.0, 401, "{bad}");
        assert_eq!(get(&base, "/v1/portal/statements", b).await.0, 401, "{bad}");
    }
    // Statements need ClickHouse, which this test has not: 503, after the token check.
    assert_eq!(
        get(&base, "/v1/portal/statements", Some(&acme)).await.0,
        503
    );
    assert_eq!(
        get(&base, "/v1/portal/statements?limit=0", Some(&acme))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn the_page_refuses_bad_tokens_and_carries_its_policy() {
    let base = serve(SECRET).await;
    let acme = sign("acme", SECRET);
    let (st, h, html) = get(&base, &format!("/portal/?token={acme}"), None).await;
    assert_eq!(st, 200, "{html}");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        h["content-security-policy"],
        page::content_security_policy().as_str()
    );
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(html.contains("<span id=\"tenant\">acme</span>"));
    assert!(html.contains("Daily usage is not available: raw events are not stored."));
    assert!(html.contains("Statements are not available: ClickHouse could not be read."));
    assert!(!html.contains(&acme), "the page never repeats its token");
    let expired = token::sign(
        SECRET.as_bytes(),
        "acme",
        Utc::now().timestamp() - 7200,
        std::time::Duration::from_secs(3600),
    )
    .unwrap()
    .0;
    let mut forged = acme.clone();
    forged.pop();
    forged.push(if acme.ends_with('A') { 'B' } else { 'A' });
    for q in [
        String::new(),
        "?token=".into(),
        format!("?token={expired}"),
        format!("?token={forged}"),
        format!(
            "?token={}",
            sign("acme", "another-secret-another-secret-0123")
        ),
        format!("?token={}", &acme[..acme.len() - 5]),
    ] {
        let (st, h, html) = get(&base, &format!("/portal/{q}"), None).await;
        assert_eq!(st, 401, "{q}");
        assert!(h.contains_key("content-security-policy"));
        assert!(html.contains("This link is not valid"));
    }
    // A signed token for a tenant that does not exist: 404, its id escaped.
    let evil = sign("<script>alert(\"x\")</script>'", SECRET);
    let (st, _, html) = get(&base, &format!("/portal/?token={evil}"), None).await;
    assert_eq!(st, 404);
    assert!(!html.contains("<script"));
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;"));
}

#[tokio::test]
async fn without_a_secret_the_portal_is_off() {
    let base = serve("").await;
    let (st, body) = post_token(&base, Some("admin"), r#"{"tenant_id": "acme"}"#).await;
    assert_eq!(st, 503);
    assert_eq!(
        body["error"],
        "the tenant portal is off: set api.portal_secret to turn it on"
    );
    // A token signed with any key opens nothing.
    let t = sign("acme", SECRET);
    assert_eq!(get(&base, "/v1/portal/usage", Some(&t)).await.0, 503);
    assert_eq!(
        get(&base, &format!("/portal/?token={t}"), None).await.0,
        503
    );
}
