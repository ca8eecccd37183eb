//! The page as text: escaping, the style hash of the policy, and what each section shows.

use serde_json::json;

use super::*;
use crate::api::portal::daily::DailyMeter;

const EVIL: &str = "<script>alert(\"x\")</script>'&\"";

fn usage(tenant: &str, usage: &str, ratio: &str, alerts: &[&str]) -> Value {
    json!({
        "tenant_id": tenant, "plan": "pro<b>", "currency": "USD",
        "period": {"start": "1999-02-01T00:00:00+02:00", "end": "1999-03-01T00:00:00+02:00",
                   "timezone": "Asia/Jerusalem"},
        "meters": [
            {"meter": "call_minutes", "usage": usage, "limit": "10200", "remaining": "0",
             "ratio": ratio, "alerts": alerts},
            {"meter": "calls", "usage": "12", "limit": null, "remaining": null, "ratio": null,
             "alerts": []}
        ],
        "charges": {"lines": [{"kind": "base_fee", "meter": null, "amount": "299.00"},
                              {"kind": "overage", "meter": "call_minutes", "amount": "915.97"}],
                    "total": "1214.97"}
    })
}

static NONE: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| json!({"tenant_id": "acme", "statements": []}));

fn render_with<'a>(
    u: &'a Value,
    daily: Result<&'a Daily, String>,
    statements: Result<&'a Value, String>,
    upgrade: Option<&'a str>,
) -> String {
    render(&PageInput {
        usage: u,
        daily,
        statements,
        upgrade_url: upgrade,
        hard_limits: &[],
        generated_at: "1999-02-20T10:00:00+02:00",
    })
}

#[test]
fn escapes_every_value_written() {
    assert_eq!(
        esc(EVIL),
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&amp;&quot;"
    );
    let u = usage(EVIL, "14363.5", "1.408186", &["80%", "<i>100%</i>"]);
    let st = json!({"tenant_id": EVIL, "statements": [{
        "statement_id": EVIL, "tenant_id": EVIL, "plan": EVIL, "currency": "USD",
        "period_start": "1998-12-31T22:00:00Z", "period_end": EVIL, "lines": [],
        "total": "1.00", "closed_at": "1999-02-03T00:00:00Z"
    }]});
    let mut u2 = u.clone();
    u2["features"] = json!({EVIL: true});
    let html = render_with(
        &u2,
        Err(EVIL.into()),
        Ok(&st),
        Some("https://example.com/up?a=1&b=\"2\""),
    );
    // No markup from data: the only elements are the page's own.
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<i>"));
    assert!(!html.contains("<b>"));
    assert!(!html.contains("alert(\"x\")"));
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&amp;&quot;"));
    assert!(html.contains("href=\"https://example.com/up?a=1&amp;b=&quot;2&quot;\""));
    // Statement periods are shown in the tenant's time zone (the answer is in UTC).
    assert!(html.contains(">1 Jan 1999 – "), "{html}");
    // Attribute values never end early: every data attribute is well quoted.
    assert!(html.contains("data-statement=\"&lt;script&gt;"));
    assert!(html.contains("data-feature=\"&lt;script&gt;"));
}

#[test]
fn the_policy_allows_exactly_the_style_block() {
    let html = render_with(
        &usage("acme", "1", "0.000098", &[]),
        Err("x".into()),
        Ok(&NONE),
        None,
    );
    let css = &html[html.find("<style>").unwrap() + 7..html.find("</style>").unwrap()];
    let want = format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(css.as_bytes()))
    );
    let csp = content_security_policy();
    assert!(csp.starts_with("default-src 'none'; "), "{csp}");
    assert!(csp.contains(&format!("style-src {want};")), "{csp}");
    assert!(!csp.contains("unsafe"));
    // Nothing that could load or run: no scripts, links, images, frames, style attributes.
    for banned in [
        "<script", "<link", "<img", "<iframe", "<object", "<embed", " style=", "url(", "@import",
        "http://", "src=",
    ] {
        assert!(!html.contains(banned), "{banned}");
    }
    assert_eq!(html.matches("<style>").count(), 1);
}

#[test]
fn meters_show_the_answer_with_marks_and_alerts() {
    let u = usage("acme", "8500", "0.833333", &["80%"]);
    let html = render_with(&u, Err("raw events are not stored".into()), Ok(&NONE), None);
    assert!(html.contains("<dd data-field=\"usage\">8500</dd>"));
    assert!(html.contains("<dd data-field=\"limit\">10200</dd>"));
    assert!(html.contains("<dd data-field=\"percent\">83.3%</dd>"));
    assert!(html.contains(
        "role=\"meter\" aria-labelledby=\"m0\" aria-valuemin=\"0\" aria-valuemax=\"10200\" \
         aria-valuenow=\"8500\" aria-valuetext=\"8500 of 10200 (83.3%)\""
    ));
    // 80% and 100% marks: limit 10200 on a 12750-wide domain of 600 units.
    assert!(html.contains("<line x1=\"384\""), "{html}");
    assert!(html.contains("<line x1=\"480\""));
    assert!(html.contains(">80%</text>") && html.contains(">100%</text>"));
    assert!(html.contains("<li class=\"k-warn\">80%</li>"));
    // A meter without a limit has no bar.
    assert_eq!(html.matches("role=\"meter\"").count(), 1);
    assert!(html.contains("Daily usage is not available: raw events are not stored."));
    assert!(html.contains("id=\"no-statements\""));
    assert!(html.contains("<td class=\"num\" id=\"charges-total\">1214.97 USD</td>"));
    assert!(html.contains("<time id=\"period-start\" datetime=\"1999-02-01T00:00:00+02:00\">1 Feb 1999 – 28 Feb 1999</time>"));
}

#[test]
fn upgrade_notice_from_80_percent_with_the_configured_link() {
    let below = usage("acme", "8000", "0.784314", &[]);
    assert!(
        !render_with(
            &below,
            Err("x".into()),
            Ok(&NONE),
            Some("https://u.example/")
        )
        .contains("id=\"upgrade\"")
    );
    let near = usage("acme", "8200", "0.803922", &["80%"]);
    let html = render_with(
        &near,
        Err("x".into()),
        Ok(&NONE),
        Some("https://u.example/"),
    );
    assert!(html.contains("You are close to a limit"));
    assert!(html.contains("<a id=\"upgrade-link\" class=\"btn\" href=\"https://u.example/\""));
    let html = render_with(&near, Err("x".into()), Ok(&NONE), None);
    assert!(html.contains("id=\"upgrade\"") && !html.contains("upgrade-link"));
    let over = usage("acme", "14363.5", "1.408186", &["80%", "100%", "overage"]);
    let hard = ["call_minutes".to_string()];
    let html = render(&PageInput {
        usage: &over,
        daily: Err("x".into()),
        statements: Ok(&NONE),
        upgrade_url: None,
        hard_limits: &hard,
        generated_at: "t",
    });
    assert!(html.contains("You have reached a limit"));
    assert!(html.contains("further usage is refused until the next period"));
}

#[test]
fn daily_chart_has_a_bar_and_a_row_per_day() {
    let days: Vec<_> = chrono::NaiveDate::from_ymd_opt(1999, 2, 1)
        .unwrap()
        .iter_days()
        .take(28)
        .collect();
    let values: Vec<Decimal> = (0..28).map(|i| Decimal::from(i * 10)).collect();
    let d = Daily {
        days,
        meters: vec![DailyMeter {
            meter: "call_minutes".into(),
            values,
        }],
        truncated: false,
    };
    let u = usage("acme", "3780", "0.370588", &[]);
    let html = render_with(&u, Ok(&d), Ok(&NONE), None);
    assert!(html.contains("role=\"img\" aria-labelledby=\"chart-0-t\""));
    assert!(html.contains("call_minutes per day: 28 days, 3780 in total, at most 270 on one day"));
    assert_eq!(html.matches("fill=\"#2456a6\"><title>").count(), 28);
    assert!(html.contains("<title>28 Feb: 270</title>"));
    assert!(html.contains("<tr><th scope=\"row\"><time datetime=\"1999-02-28\">28 Feb 1999</time></th><td class=\"num\">270</td></tr>"));
    assert_eq!(nice_max(Decimal::from(270)), Decimal::from(500));
    assert_eq!(nice_max(Decimal::new(31, 1)), Decimal::from(5));
    assert_eq!(nice_max(Decimal::ZERO), Decimal::ONE);
}
