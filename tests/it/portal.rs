//! The tenant portal in a real browser (headless Chromium through chromedriver) against a
//! real pipeline: the Anonymous Bank records replayed through Kafka into ClickHouse, the
//! page of anonbank-ne for February 1999. The page shows the numbers the API gives, its
//! daily chart adds up to the period's usage, nothing on it comes from the network, it
//! refuses forged, expired and foreign tokens, and no token reaches the log.
//!
//! `UPDATE_PORTAL_SCREENSHOT=1` writes the screenshot to `docs/portal.png` (the README's);
//! otherwise it goes to the test's directory.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use fantoccini::Locator;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::common::browser::Browser;
use crate::common::{World, dataset_dir, eventually};
use crate::realdata::example_pricing;

const READ: &str = "test-token";
const ADMIN: &str = "admin-token";
const SECRET: &str = "it-portal-secret-0123456789abcdef0123456789";
const TENANT: &str = "anonbank-ne";
/// An instant in February 1999 in Israel: the page of that period.
const FEB: &str = "1999-02-15T12:00:00+02:00";
const JAN: &str = "1999-01-15T12:00:00+02:00";

async fn get_json(url: &str, bearer: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn mint(w: &World, tenant: &str, ttl: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(w.api("/v1/portal/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"tenant_id": tenant, "ttl": ttl}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Stores January's statement of anonbank-ne in `usage_statements`, one row per charge
/// line, from the API's January charges: the rows the statement emitter writes when a
/// period closes (CONTRACT section 10), here so that the page has a past period to list.
/// Where the pipeline emits statements itself, wait for its January statement instead.
async fn store_january_statement(w: &World, jan: &Value) {
    let start = chrono::DateTime::parse_from_rfc3339(jan["period"]["start"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let end = chrono::DateTime::parse_from_rfc3339(jan["period"]["end"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let total = jan["charges"]["total"].as_str().unwrap();
    for l in jan["charges"]["lines"].as_array().unwrap() {
        let meter = l["meter"].as_str().unwrap_or("");
        let qty = jan["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == meter)
            .map(|m| m["usage"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "1".into());
        let sql = format!(
            "INSERT INTO {db}.usage_statements SELECT 'st-ne-1999-01', '{TENANT}', '{plan}', '{cur}', \
             toDateTime({start}, 'UTC'), toDateTime({end}, 'UTC'), '{kind}', '{meter}', '{item}', \
             CAST('{qty}' AS Decimal(38, 9)), CAST('{amount}' AS Decimal(38, 9)), \
             CAST('{total}' AS Decimal(38, 9)), toDateTime({closed}, 'UTC')",
            db = w.database,
            plan = jan["plan"].as_str().unwrap(),
            cur = jan["currency"].as_str().unwrap(),
            kind = l["kind"].as_str().unwrap(),
            item = l["item"].as_str().unwrap_or(""),
            amount = l["amount"].as_str().unwrap(),
            closed = end + 2 * 86_400,
        );
        w.ch().exec(&sql).await.unwrap();
    }
}

/// `textContent` of every element matching `css` (hidden ones too).
async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let v = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);",
            vec![json!(css)],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Presses Tab (a real key event) and returns the focused element.
async fn tab(b: &Browser) -> Element {
    let key = char::from(Key::Tab);
    let press = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    b.client.perform_actions(press).await.unwrap();
    b.client.active_element().await.unwrap()
}

async fn text(b: &Browser, css: &str) -> String {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_page_in_a_browser_shows_the_api_numbers_for_real_data() {
    let w = World::new("portal", 4)
        .section("clickhouse", "raw_events = true")
        .extra(&example_pricing());
    let mut p = w.run_with(
        "i0",
        &[
            (
                "RUST_LOG",
                "debug,rdkafka=warn,axum=trace,hyper=trace,tower=trace,tower_http=trace",
            ),
            ("CALLMETER_API__ADMIN_TOKENS", &format!("[\"{ADMIN}\"]")),
            ("CALLMETER_API__PORTAL_SECRET", SECRET),
            (
                "CALLMETER_API__PORTAL_UPGRADE_URL",
                "https://voice.example/upgrade?plan=business",
            ),
        ],
    );
    let out = w.cli(&["replay", "--dataset", dataset_dir().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ch, db) = (w.ch(), w.database.clone());
    let counted = eventually(Duration::from_secs(180), || {
        let (ch, db) = (ch.clone(), db.clone());
        async move {
            ch.scalar(&format!(
                "SELECT sum(event_count) FROM {db}.usage_rollups FINAL WHERE meter = 'calls'"
            ))
            .await
            .is_some_and(|v| v == "64423")
        }
    })
    .await;
    assert!(counted, "all calls counted; log:\n{}", p.log_text());

    // What the API says, and a past statement to list.
    let usage_url = |at: &str| w.api(&format!("/v1/tenants/{TENANT}/usage?at={}", enc(at)));
    let (st, feb) = get_json(&usage_url(FEB), READ).await;
    assert_eq!(st, 200, "{feb}");
    let (_, jan) = get_json(&usage_url(JAN), READ).await;
    store_january_statement(&w, &jan).await;
    let (st, statements) =
        get_json(&w.api(&format!("/v1/tenants/{TENANT}/statements")), READ).await;
    assert_eq!(st, 200, "{statements}");
    assert_eq!(statements["tenant_id"], TENANT);
    let list = statements["statements"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{statements}");
    assert_eq!(list[0]["total"], jan["charges"]["total"]);
    assert_eq!(list[0]["period_start"], "1998-12-31T22:00:00Z");

    // Tokens: admin only.
    let resp = reqwest::Client::new()
        .post(w.api("/v1/portal/tokens"))
        .bearer_auth(READ)
        .json(&json!({"tenant_id": TENANT, "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let minted = mint(&w, TENANT, "1h").await;
    let token = minted["token"].as_str().unwrap().to_string();
    let page_url = w.api(&format!(
        "{}&at={}",
        minted["url"].as_str().unwrap(),
        enc(FEB)
    ));

    // The portal's JSON routes answer as the tenant routes, for the token's tenant only.
    let (st, pu) = get_json(&w.api(&format!("/v1/portal/usage?at={}", enc(FEB))), &token).await;
    assert_eq!(st, 200);
    assert_eq!(pu, feb);
    let (st, ps) = get_json(&w.api("/v1/portal/statements"), &token).await;
    assert_eq!((st, &ps), (200, &statements));
    for other in [
        "/v1/tenants/anonbank-ps/usage",
        "/v1/tenants/anonbank-ne/usage",
        "/v1/tenants/anonbank-ne/statements",
    ] {
        assert_eq!(get_json(&w.api(other), &token).await.0, 401, "{other}");
    }

    // The page over plain HTTP: status and policy.
    let resp = reqwest::get(&page_url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");

    let b = Browser::start(1100, 1400).await;
    b.client.goto(&page_url).await.unwrap();
    assert_eq!(text(&b, "#tenant").await, TENANT);
    assert_eq!(text(&b, "#plan").await, feb["plan"].as_str().unwrap());
    assert_eq!(
        b.client
            .find(Locator::Css("#period-start"))
            .await
            .unwrap()
            .attr("datetime")
            .await
            .unwrap()
            .as_deref(),
        feb["period"]["start"].as_str()
    );
    // Every meter: usage, limit, remaining and alerts as the API gives them.
    let meters = feb["meters"].as_array().unwrap();
    assert!(!meters.is_empty());
    for m in meters {
        let name = m["meter"].as_str().unwrap();
        let sel = |f: &str| format!("article[data-meter=\"{name}\"] [data-field=\"{f}\"]");
        assert_eq!(text(&b, &sel("usage")).await, m["usage"].as_str().unwrap());
        if let Some(limit) = m["limit"].as_str() {
            assert_eq!(text(&b, &sel("limit")).await, limit);
            assert_eq!(
                text(&b, &sel("remaining")).await,
                m["remaining"].as_str().unwrap()
            );
            let meter_el = b
                .client
                .find(Locator::Css(&format!(
                    "article[data-meter=\"{name}\"] [role=\"meter\"]"
                )))
                .await
                .unwrap();
            assert_eq!(
                meter_el.attr("aria-valuemax").await.unwrap().as_deref(),
                Some(limit)
            );
        }
        let alerts: Vec<String> = texts(
            &b,
            &format!("article[data-meter=\"{name}\"] ul[data-field=\"alerts\"] li"),
        )
        .await;
        let want: Vec<String> = m["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(alerts, want, "{name}");
    }
    // February's minutes are over the limit: the alerts fired, the upgrade notice shows.
    let minutes = meters
        .iter()
        .find(|m| m["meter"] == "call_minutes")
        .unwrap();
    assert!(
        minutes["alerts"]
            .as_array()
            .unwrap()
            .contains(&json!("100%"))
    );
    let link = b.client.find(Locator::Css("#upgrade-link")).await.unwrap();
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some("https://voice.example/upgrade?plan=business")
    );
    // Charges: each line and the total.
    let amounts = texts(&b, "#charges tbody td[data-field=\"amount\"]").await;
    let want: Vec<String> = feb["charges"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(amounts, want);
    assert_eq!(
        text(&b, "#charges-total").await,
        format!(
            "{} {}",
            feb["charges"]["total"].as_str().unwrap(),
            feb["currency"].as_str().unwrap()
        )
    );
    // The past statement.
    let totals = texts(&b, "#statements td[data-field=\"total\"]").await;
    assert_eq!(
        totals,
        [format!(
            "{} {}",
            jan["charges"]["total"].as_str().unwrap(),
            jan["currency"].as_str().unwrap()
        )]
    );
    assert_eq!(
        texts(&b, "#statements tbody th time").await,
        ["1 Jan 1999 – 31 Jan 1999"]
    );
    // The daily chart: one bar and one row per day of February, adding up to the month.
    let days = texts(&b, "table[data-daily=\"call_minutes\"] tbody td").await;
    assert_eq!(days.len(), 28);
    let sum: Decimal = days.iter().map(|d| d.parse::<Decimal>().unwrap()).sum();
    let usage: Decimal = minutes["usage"].as_str().unwrap().parse().unwrap();
    assert!(
        (sum - usage).abs() <= Decimal::new(28, 6),
        "days add up to {sum}, the month is {usage}"
    );
    let bars = b
        .client
        .execute(
            "return document.querySelectorAll('svg[data-meter=\"call_minutes\"] rect').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bars, json!(28));

    // Nothing came from the network: no resource entries, no element that could load one,
    // and the style block applied under the policy (its hash is right).
    let probe = b
        .client
        .execute(
            "return {
               resources: performance.getEntriesByType('resource').map(e => e.name),
               loaders: document.querySelectorAll('script,link,img,iframe,object,embed,audio,video,source').length,
               radius: getComputedStyle(document.querySelector('.meter')).borderTopLeftRadius,
               sheets: document.styleSheets.length,
             };",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(probe["resources"], json!([]), "{probe}");
    assert_eq!(probe["loaders"], json!(0), "{probe}");
    assert_eq!(probe["radius"], json!("8px"), "style applied: {probe}");
    assert_eq!(probe["sheets"], json!(1));

    // Keyboard: the first Tab reaches the skip link, the next the upgrade link.
    let active = tab(&b).await;
    assert_eq!(active.attr("class").await.unwrap().as_deref(), Some("skip"));
    let active = tab(&b).await;
    assert_eq!(
        active.attr("id").await.unwrap().as_deref(),
        Some("upgrade-link")
    );

    // The screenshot of the whole page: the window grown until the viewport holds it.
    b.client
        .execute(
            "document.activeElement.blur(); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let size = b
            .client
            .execute(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .unwrap();
        let (page, chrome) = (size[0].as_u64().unwrap(), size[1].as_u64().unwrap());
        b.client
            .set_window_size(1100, (page + chrome).clamp(600, 8000) as u32)
            .await
            .unwrap();
    }
    let png = b.client.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = if std::env::var_os("UPDATE_PORTAL_SCREENSHOT").is_some() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/portal.png")
    } else {
        w.dir.join("portal.png")
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();

    // Refusals: forged, expired, and another tenant's token shows that tenant, not ours.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let expired = mint(&w, TENANT, "1s").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, payload_tag) = token.split_once('.').unwrap();
    let (_, tag) = payload_tag.split_once('.').unwrap();
    let other_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"t":"anonbank-ps","exp":4102444800}"#);
    let swapped = format!("cmp1.{other_payload}.{tag}");
    let mut seen = BTreeMap::new();
    for (what, t) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("payload of another tenant", swapped.as_str()),
        ("missing", ""),
    ] {
        let url = w.api(&format!("/portal/?token={t}&at={}", enc(FEB)));
        assert_eq!(
            reqwest::get(&url).await.unwrap().status().as_u16(),
            401,
            "{what}"
        );
        b.client.goto(&url).await.unwrap();
        let h1 = text(&b, "h1").await;
        assert_eq!(h1, "This link is not valid", "{what}");
        assert!(
            b.client.find(Locator::Css("#tenant")).await.is_err(),
            "{what}"
        );
        seen.insert(what, h1);
        assert_eq!(
            get_json(&w.api("/v1/portal/usage"), t).await.0,
            401,
            "{what}"
        );
    }
    let ps_token = mint(&w, "anonbank-ps", "10m").await;
    b.client
        .goto(&w.api(&format!(
            "{}&at={}",
            ps_token["url"].as_str().unwrap(),
            enc(FEB)
        )))
        .await
        .unwrap();
    assert_eq!(text(&b, "#tenant").await, "anonbank-ps");
    let (_, ps_usage) = get_json(&usage_url(FEB).replace(TENANT, "anonbank-ps"), READ).await;
    assert_eq!(
        text(
            &b,
            "article[data-meter=\"call_minutes\"] [data-field=\"usage\"]"
        )
        .await,
        ps_usage["meters"][0]["usage"].as_str().unwrap()
    );
    b.close().await;

    // No token in the log, at debug with the HTTP stack at trace.
    let log = p.log_text();
    assert!(log.contains("HTTP API listening"), "{log}");
    for t in [&token, &expired, &forged] {
        assert!(!log.contains(t.as_str()), "a portal token reached the log");
        let (_, tail) = t.rsplit_once('.').unwrap();
        assert!(!log.contains(tail), "a token's signature reached the log");
    }
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}
