//! The tenant usage page (CONTRACT section 10): one self-contained HTML document, pure text
//! from the usage answer (the JSON of `GET /v1/tenants/{t}/usage`, read as a
//! `serde_json::Value` so that fields added to that answer, such as `features`, show up
//! here without a second model), the daily series ([`super::daily`]) and the statements.
//!
//! Self-contained: no script, no external style sheet, font, image or frame; the one
//! `<style>` block is allowed by its SHA-256 in [`content_security_policy`]
//! (`default-src 'none'`), bars and charts are inline SVG drawn with presentation
//! attributes (not `style=`, which the policy blocks). Every value written into the
//! document goes through [`esc`] (text and attribute values alike; attributes are always
//! double-quoted). Accessible: landmarks and headings, `role="meter"` with
//! `aria-valuemin/max/now/text` on each bar, the chart as `role="img"` with a title plus
//! the same numbers in a table, tables with captions and `scope`d headers, a skip link and
//! visible focus rings; colours have at least 4.5:1 contrast on white for text and 3:1 for
//! bar fills (WCAG 2.1, 1.4.3 and 1.4.11).

use std::fmt::Write;
use std::sync::LazyLock;

use base64::Engine;
use chrono::{DateTime, Duration, FixedOffset};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::daily::Daily;

/// Escapes text for HTML content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light;--ink:#1b1f24;--muted:#4b5563;--line:#d0d5dc;--track:#e8ebef;\
--ok:#2456a6;--warn:#8a5300;--over:#b42318;--bg:#ffffff;--panel:#f6f7f9}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif}\
.skip{position:absolute;left:-999px;top:0;background:var(--ink);color:#fff;padding:.5em 1em}\
.skip:focus{left:0}\
header,main,footer{max-width:860px;margin:0 auto;padding:0 20px}\
header{padding-top:20px;border-bottom:1px solid var(--line)}\
h1{font-size:1.5rem;margin:.2em 0}h2{font-size:1.15rem;margin:1.6em 0 .6em}h3{font-size:1rem;margin:0 0 .3em}\
.sub{color:var(--muted);margin:.2em 0 1em}\
.notice{border:2px solid var(--warn);background:#fff8e6;padding:12px 16px;border-radius:6px;margin-top:18px}\
.notice.over{border-color:var(--over);background:#fdecea}\
.notice h2{margin:0 0 .3em}.notice p{margin:.2em 0}\
a{color:#0b4fb3}a:focus-visible,summary:focus-visible{outline:3px solid #0b4fb3;outline-offset:2px}\
.btn{display:inline-block;margin-top:6px;background:#0b4fb3;color:#fff;padding:6px 14px;border-radius:5px;text-decoration:none;font-weight:600}\
.btn:focus-visible{outline:3px solid var(--ink)}\
.meter{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:0 0 12px}\
.meter svg{display:block;width:100%;height:auto;margin:6px 0}\
dl{display:flex;flex-wrap:wrap;gap:4px 22px;margin:4px 0}dl div{min-width:7em}\
dt{color:var(--muted);font-size:.85rem}dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}\
.alerts{margin:6px 0 0;padding:0;list-style:none;display:flex;gap:6px;flex-wrap:wrap}\
.alerts li{border:1px solid var(--warn);color:var(--warn);border-radius:999px;padding:0 9px;font-size:.85rem;font-weight:600}\
.alerts li.k-over{border-color:var(--over);color:var(--over)}\
table{border-collapse:collapse;width:100%;margin:0 0 8px;font-variant-numeric:tabular-nums}\
caption{text-align:left;color:var(--muted);padding:0 0 4px}\
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left}\
td.num,th.num{text-align:right}tfoot td,tfoot th{font-weight:700;border-bottom:none}\
figure{margin:0}figure svg{width:100%;height:auto;display:block}\
figcaption,.empty{color:var(--muted);font-size:.9rem}\
details{margin:6px 0 12px}summary{cursor:pointer;color:#0b4fb3}\
footer{color:var(--muted);font-size:.85rem;padding:24px 20px 32px}";

/// `'sha256-<base64>'` of the page's style block.
static STYLE_HASH: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(STYLE.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
});

/// The `Content-Security-Policy` of every portal page: nothing may load or run; only the
/// page's own style block (by hash) applies. No `frame-ancestors`: platforms embed the page
/// in their dashboards (it has no actions to click-jack; its one link opens the upgrade URL).
pub fn content_security_policy() -> String {
    format!(
        "default-src 'none'; style-src {}; base-uri 'none'; form-action 'none'",
        *STYLE_HASH
    )
}

/// What one page shows.
pub struct PageInput<'a> {
    /// The usage answer of the tenant's period, as served by the API.
    pub usage: &'a Value,
    /// Daily usage, or why there is none.
    pub daily: Result<&'a Daily, String>,
    /// Past statements (the statements answer, `{"tenant_id", "statements": [...]}`), or
    /// why they could not be read.
    pub statements: Result<&'a Value, String>,
    /// `api.portal_upgrade_url`.
    pub upgrade_url: Option<&'a str>,
    /// Meters whose limit is hard on the period's plan (usage refused at 100%).
    pub hard_limits: &'a [String],
    /// When the page was made (RFC 3339).
    pub generated_at: &'a str,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn dec(v: &str) -> Option<Decimal> {
    v.parse().ok()
}

fn percent(ratio: Decimal) -> String {
    let p = (ratio * Decimal::ONE_HUNDRED).round_dp(1).normalize();
    format!("{p}%")
}

fn parse_time(t: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(t).ok()
}

fn human_date(t: &DateTime<FixedOffset>) -> String {
    t.format("%-d %b %Y").to_string()
}

fn kind_label(k: &str) -> &str {
    match k {
        "base_fee" => "Base fee",
        "overage" => "Overage",
        "usage" => "Usage",
        "tiered" => "Tiered usage",
        "revenue_share" => "Revenue share",
        "addon" => "Add-on",
        other => other,
    }
}

/// The page for the input.
pub fn render(p: &PageInput) -> String {
    let u = p.usage;
    let tenant = s(u, "tenant_id");
    let currency = s(u, "currency");
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>Usage – {t}</title><style>{STYLE}</style></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to usage</a>",
        t = esc(tenant)
    );
    header(&mut h, u);
    let _ = write!(h, "<main id=\"main\" tabindex=\"-1\">");
    upgrade(&mut h, p);
    meters(&mut h, u);
    features(&mut h, u);
    daily(&mut h, p);
    charges(&mut h, u, currency);
    statements(&mut h, p);
    let _ = writeln!(
        h,
        "</main><footer><p>Figures as of <time datetime=\"{g}\">{g}</time>. Amounts in {c}, \
         before taxes. This page is for <span id=\"footer-tenant\">{t}</span> only.</p></footer>\
         </body></html>",
        g = esc(p.generated_at),
        c = esc(currency),
        t = esc(tenant)
    );
    h
}

fn header(h: &mut String, u: &Value) {
    let period = u.get("period").cloned().unwrap_or(Value::Null);
    let (start, end) = (s(&period, "start"), s(&period, "end"));
    let shown = match (parse_time(start), parse_time(end)) {
        (Some(a), Some(b)) => format!(
            "{} – {}",
            human_date(&a),
            human_date(&(b - Duration::days(1)))
        ),
        _ => format!("{start} – {end}"),
    };
    let _ = write!(
        h,
        "<header><h1>Usage for <span id=\"tenant\">{t}</span></h1>\
         <p class=\"sub\">Plan <strong id=\"plan\">{plan}</strong> · Period \
         <time id=\"period-start\" datetime=\"{s}\">{shown}</time>\
         <time id=\"period-end\" datetime=\"{e}\"></time> ({tz})</p></header>",
        t = esc(s(u, "tenant_id")),
        plan = esc(s(u, "plan")),
        s = esc(start),
        e = esc(end),
        shown = esc(&shown),
        tz = esc(s(&period, "timezone")),
    );
}

/// The meters at or above 80% of a limit: (name, ratio).
fn near_limits(u: &Value) -> Vec<(String, Decimal)> {
    let mut out = vec![];
    for m in u
        .get("meters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = dec(s(m, "ratio"))
            && r >= Decimal::new(8, 1)
        {
            out.push((s(m, "meter").to_string(), r));
        }
    }
    out
}

fn upgrade(h: &mut String, p: &PageInput) {
    let near = near_limits(p.usage);
    if near.is_empty() {
        return;
    }
    let over = near.iter().any(|(_, r)| *r >= Decimal::ONE);
    let _ = write!(
        h,
        "<section id=\"upgrade\" class=\"notice{}\" aria-labelledby=\"h-upgrade\">\
         <h2 id=\"h-upgrade\">{}</h2>",
        if over { " over" } else { "" },
        if over {
            "You have reached a limit"
        } else {
            "You are close to a limit"
        }
    );
    for (m, r) in &near {
        let hard = p.hard_limits.iter().any(|x| x == m);
        let consequence = match (hard, *r >= Decimal::ONE) {
            (true, true) => "further usage is refused until the next period",
            (true, false) => "usage will be refused at 100%",
            (false, true) => "usage beyond the limit is charged as overage",
            (false, false) => "usage beyond the limit will be charged as overage",
        };
        let _ = write!(
            h,
            "<p><strong>{}</strong> is at {} of its limit: {}.</p>",
            esc(m),
            percent(*r),
            consequence
        );
    }
    if let Some(url) = p.upgrade_url {
        let _ = write!(
            h,
            "<a id=\"upgrade-link\" class=\"btn\" href=\"{}\" rel=\"noreferrer noopener\" \
             target=\"_blank\">Upgrade your plan</a>",
            esc(url)
        );
    }
    h.push_str("</section>");
}

/// The bar of one meter: usage against the limit, marks at 80% and 100%.
fn bar(h: &mut String, usage: Decimal, limit: Decimal) {
    let w = Decimal::from(600);
    let domain = (limit * Decimal::new(125, 2)).max(usage).max(Decimal::ONE);
    let x = |v: Decimal| {
        (v.max(Decimal::ZERO) / domain * w)
            .round_dp(1)
            .min(w)
            .normalize()
    };
    let ratio = if limit > Decimal::ZERO {
        usage / limit
    } else {
        Decimal::MAX
    };
    let fill = if ratio >= Decimal::ONE {
        "#b42318"
    } else if ratio >= Decimal::new(8, 1) {
        "#8a5300"
    } else {
        "#2456a6"
    };
    let _ = write!(
        h,
        "<svg viewBox=\"0 0 600 46\" aria-hidden=\"true\" focusable=\"false\">\
         <rect x=\"0\" y=\"6\" width=\"600\" height=\"18\" rx=\"3\" fill=\"#e8ebef\"/>\
         <rect class=\"fill\" x=\"0\" y=\"6\" width=\"{w}\" height=\"18\" rx=\"3\" fill=\"{fill}\"/>",
        w = x(usage)
    );
    for (label, at) in [("80%", limit * Decimal::new(8, 1)), ("100%", limit)] {
        let xm = x(at);
        let anchor = if xm > Decimal::from(580) {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            h,
            "<line x1=\"{xm}\" y1=\"1\" x2=\"{xm}\" y2=\"29\" stroke=\"#1b1f24\" stroke-width=\"2\"/>\
             <text x=\"{xm}\" y=\"43\" font-size=\"12\" text-anchor=\"{anchor}\" fill=\"#1b1f24\">{label}</text>"
        );
    }
    h.push_str("</svg>");
}

fn meters(h: &mut String, u: &Value) {
    h.push_str("<section aria-labelledby=\"h-meters\"><h2 id=\"h-meters\">Usage this period</h2>");
    let list = u.get("meters").and_then(Value::as_array);
    if list.is_none_or(|l| l.is_empty()) {
        h.push_str("<p class=\"empty\">No metered usage on this plan.</p>");
    }
    for (i, m) in list.into_iter().flatten().enumerate() {
        let name = s(m, "meter");
        let usage = s(m, "usage");
        let limit = m.get("limit").and_then(Value::as_str);
        let _ = write!(
            h,
            "<article class=\"meter\" data-meter=\"{n}\" aria-labelledby=\"m{i}\">\
             <h3 id=\"m{i}\">{n}</h3>",
            n = esc(name)
        );
        if let (Some(l), Some(ud), Some(ld)) = (limit, dec(usage), limit.and_then(dec)) {
            let ratio = m.get("ratio").and_then(Value::as_str);
            let text = match ratio.and_then(dec) {
                Some(r) => format!("{usage} of {l} ({})", percent(r)),
                None => format!("{usage} of {l}"),
            };
            let _ = write!(
                h,
                "<div role=\"meter\" aria-labelledby=\"m{i}\" aria-valuemin=\"0\" \
                 aria-valuemax=\"{l}\" aria-valuenow=\"{v}\" aria-valuetext=\"{t}\">",
                l = esc(l),
                v = esc(&ud.min(ld.max(Decimal::ZERO)).to_string()),
                t = esc(&text)
            );
            bar(h, ud, ld);
            h.push_str("</div>");
        }
        h.push_str("<dl>");
        let field = |h: &mut String, label: &str, key: &str, v: &str| {
            let _ = write!(
                h,
                "<div><dt>{label}</dt><dd data-field=\"{key}\">{}</dd></div>",
                esc(v)
            );
        };
        field(h, "Used", "usage", usage);
        match limit {
            Some(l) => {
                field(h, "Limit", "limit", l);
                field(h, "Remaining", "remaining", s(m, "remaining"));
                if let Some(r) = m.get("ratio").and_then(Value::as_str).and_then(dec) {
                    field(h, "Of limit", "percent", &percent(r));
                }
            }
            None => field(h, "Limit", "limit", "none (billed per use)"),
        }
        h.push_str("</dl>");
        let alerts: Vec<&str> = m
            .get("alerts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if alerts.is_empty() {
            h.push_str("<p class=\"empty\" data-field=\"alerts\">No alerts this period.</p>");
        } else {
            h.push_str("<p class=\"empty\">Alerts fired this period:</p><ul class=\"alerts\" data-field=\"alerts\">");
            for a in alerts {
                let cls = if a == "80%" { "k-warn" } else { "k-over" };
                let _ = write!(h, "<li class=\"{cls}\">{}</li>", esc(a));
            }
            h.push_str("</ul>");
        }
        h.push_str("</article>");
    }
    h.push_str("</section>");
}

fn feature_value(v: &Value) -> String {
    match v {
        Value::Bool(true) => "included".into(),
        Value::Bool(false) => "not included".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("value")
            .map(feature_value)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

fn features(h: &mut String, u: &Value) {
    let Some(f) = u.get("features").and_then(Value::as_object) else {
        return;
    };
    h.push_str(
        "<section aria-labelledby=\"h-features\"><h2 id=\"h-features\">Features</h2>\
         <table id=\"features\"><caption>Features of your plan and add-ons</caption>\
         <thead><tr><th scope=\"col\">Feature</th><th scope=\"col\">Value</th></tr></thead><tbody>",
    );
    for (k, v) in f {
        let _ = write!(
            h,
            "<tr data-feature=\"{k}\"><th scope=\"row\">{k}</th><td>{}</td></tr>",
            esc(&feature_value(v)),
            k = esc(k)
        );
    }
    h.push_str("</tbody></table></section>");
}

/// The largest of `values` rounded up to a "nice" axis maximum (1, 2 or 5 x 10^n).
fn nice_max(max: Decimal) -> Decimal {
    if max <= Decimal::ZERO {
        return Decimal::ONE;
    }
    let mut step = Decimal::new(1, 6);
    loop {
        for m in [1, 2, 5] {
            let c = step * Decimal::from(m);
            if c >= max {
                return c.normalize();
            }
        }
        match step.checked_mul(Decimal::TEN) {
            Some(s) => step = s,
            None => return max,
        }
    }
}

fn chart(h: &mut String, d: &Daily, meter: usize) {
    let m = &d.meters[meter];
    let n = d.days.len().max(1);
    let (left, top, width, height) = (56i64, 10i64, 650i64, 170i64);
    let max = m.values.iter().copied().max().unwrap_or_default();
    let axis = nice_max(max);
    let total: Decimal = m.values.iter().copied().sum();
    let slot = Decimal::from(width) / Decimal::from(n as i64);
    let bw = (slot * Decimal::new(7, 1)).round_dp(1);
    let id = format!("chart-{meter}");
    let _ = write!(
        h,
        "<figure><svg id=\"{id}\" viewBox=\"0 0 720 212\" role=\"img\" aria-labelledby=\"{id}-t\" \
         data-meter=\"{name}\"><title id=\"{id}-t\">{name} per day: {n} days, {total} in total, \
         at most {max} on one day</title>",
        name = esc(&m.meter),
        total = total.normalize(),
        max = max.normalize()
    );
    for i in 0..=2i64 {
        let v = axis * Decimal::from(i) / Decimal::TWO;
        let y = top + height - height * i / 2;
        let _ = write!(
            h,
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#d0d5dc\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\" fill=\"#4b5563\">{v}</text>",
            x2 = left + width,
            tx = left - 6,
            ty = y + 4,
            v = v.normalize()
        );
    }
    for (i, (day, v)) in d.days.iter().zip(&m.values).enumerate() {
        let x = Decimal::from(left) + slot * Decimal::from(i as i64) + (slot - bw) / Decimal::TWO;
        let bh = (Decimal::from(height) * *v / axis).round_dp(1);
        let y = Decimal::from(top + height) - bh;
        let _ = write!(
            h,
            "<rect x=\"{}\" y=\"{}\" width=\"{bw}\" height=\"{bh}\" fill=\"#2456a6\">\
             <title>{}: {}</title></rect>",
            x.round_dp(1),
            y.round_dp(1),
            day.format("%-d %b"),
            v.normalize()
        );
        if i % 7 == 0 || i + 1 == n {
            let _ = write!(
                h,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#4b5563\">{}</text>",
                (x + bw / Decimal::TWO).round_dp(1),
                top + height + 18,
                day.format("%-d %b")
            );
        }
    }
    let _ = write!(
        h,
        "</svg><figcaption>{} per day, in the period's time zone.</figcaption></figure>\
         <details><summary>{} per day as a table</summary><table data-daily=\"{}\">\
         <thead><tr><th scope=\"col\">Day</th><th scope=\"col\" class=\"num\">{}</th></tr></thead><tbody>",
        esc(&m.meter),
        esc(&m.meter),
        esc(&m.meter),
        esc(&m.meter)
    );
    for (day, v) in d.days.iter().zip(&m.values) {
        let _ = write!(
            h,
            "<tr><th scope=\"row\"><time datetime=\"{day}\">{}</time></th><td class=\"num\">{}</td></tr>",
            day.format("%-d %b %Y"),
            v.normalize()
        );
    }
    let _ = write!(
        h,
        "</tbody><tfoot><tr><th scope=\"row\">Total</th><td class=\"num\">{}</td></tr></tfoot></table></details>",
        total.normalize()
    );
}

fn daily(h: &mut String, p: &PageInput) {
    h.push_str("<section aria-labelledby=\"h-daily\"><h2 id=\"h-daily\">Daily usage</h2>");
    match &p.daily {
        Ok(d)
            if d.meters
                .iter()
                .any(|m| m.values.iter().any(|v| !v.is_zero())) =>
        {
            for (i, m) in d.meters.iter().enumerate() {
                if m.values.iter().any(|v| !v.is_zero()) {
                    chart(h, d, i);
                }
            }
            if d.truncated {
                h.push_str("<p class=\"empty\">Only the first 200,000 events of the period are charted.</p>");
            }
        }
        Ok(_) => h.push_str("<p class=\"empty\">No usage yet this period.</p>"),
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"empty\">Daily usage is not available: {}.</p>",
                esc(e)
            );
        }
    }
    h.push_str("</section>");
}

fn charges(h: &mut String, u: &Value, currency: &str) {
    let c = u.get("charges").cloned().unwrap_or(Value::Null);
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-charges\"><h2 id=\"h-charges\">Charges so far</h2>\
         <table id=\"charges\"><caption>This period's charges until now, in {}</caption>\
         <thead><tr><th scope=\"col\">Charge</th><th scope=\"col\">Meter</th>\
         <th scope=\"col\" class=\"num\">Amount</th></tr></thead><tbody>",
        esc(currency)
    );
    for l in c
        .get("lines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut label = kind_label(s(l, "kind")).to_string();
        if let Some(item) = l.get("item").and_then(Value::as_str) {
            label = format!("{label} ({item})");
        }
        let _ = write!(
            h,
            "<tr data-kind=\"{}\"><td>{}</td><td>{}</td><td class=\"num\" data-field=\"amount\">{}</td></tr>",
            esc(s(l, "kind")),
            esc(&label),
            esc(l.get("meter").and_then(Value::as_str).unwrap_or("–")),
            esc(s(l, "amount"))
        );
    }
    let _ = write!(
        h,
        "</tbody><tfoot><tr><th scope=\"row\" colspan=\"2\">Total</th>\
         <td class=\"num\" id=\"charges-total\">{} {}</td></tr></tfoot></table></section>",
        esc(s(&c, "total")),
        esc(currency)
    );
}

/// `t` (RFC 3339) as a date in the time zone `tz` (the statements answer is in UTC).
fn local_date(t: &str, tz: Option<chrono_tz::Tz>, minus_a_day: bool) -> String {
    let Some(mut t) = parse_time(t) else {
        return t.to_string();
    };
    if let Some(tz) = tz {
        t = t.with_timezone(&tz).fixed_offset();
    }
    if minus_a_day {
        t -= Duration::days(1);
    }
    human_date(&t)
}

fn statements(h: &mut String, p: &PageInput) {
    h.push_str(
        "<section aria-labelledby=\"h-statements\"><h2 id=\"h-statements\">Past statements</h2>",
    );
    let tz: Option<chrono_tz::Tz> = p
        .usage
        .get("period")
        .map(|v| s(v, "timezone"))
        .and_then(|z| z.parse().ok());
    match &p.statements {
        Ok(answer) => {
            let list = answer
                .get("statements")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if list.is_empty() {
                h.push_str("<p class=\"empty\" id=\"no-statements\">No closed periods yet.</p>");
            } else {
                h.push_str(
                    "<table id=\"statements\"><caption>Closed periods, newest first</caption><thead><tr>\
                     <th scope=\"col\">Period</th><th scope=\"col\">Plan</th>\
                     <th scope=\"col\" class=\"num\">Total</th></tr></thead><tbody>",
                );
                for st in list {
                    let (start, end) = (s(st, "period_start"), s(st, "period_end"));
                    let period = format!(
                        "{} – {}",
                        local_date(start, tz, false),
                        local_date(end, tz, true)
                    );
                    let _ = write!(
                        h,
                        "<tr data-statement=\"{}\"><th scope=\"row\"><time datetime=\"{}\">{}</time></th>\
                         <td>{}</td><td class=\"num\" data-field=\"total\">{} {}</td></tr>",
                        esc(s(st, "statement_id")),
                        esc(start),
                        esc(&period),
                        esc(s(st, "plan")),
                        esc(s(st, "total")),
                        esc(s(st, "currency"))
                    );
                }
                h.push_str("</tbody></table>");
            }
        }
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"empty\">Statements are not available: {}.</p>",
                esc(e)
            );
        }
    }
    h.push_str("</section>");
}

/// A minimal page for a refusal (401, 404, 503): the status and a sentence, same policy.
pub fn message_page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><main id=\"main\">\
         <h1>{t}</h1><p>{m}</p></main></body></html>\n",
        t = esc(title),
        m = esc(message)
    )
}

#[cfg(test)]
mod tests;
