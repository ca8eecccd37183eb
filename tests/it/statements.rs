//! Period-close statements end to end (CONTRACT section 10): the real call records' January
//! and February 1999 statements equal the charges this test computes from the raw files; a
//! crash between the statement's message and its rows, and kill -9 at arbitrary moments,
//! leave exactly one statement per (tenant, period), the same on the topic and in
//! ClickHouse; the statements route answers from ClickHouse. The views over the statements
//! are tested in `views`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use crate::common::{Ch, World, dataset_dir, eventually};
use crate::realdata::example_pricing;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn money(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn money_str(x: Decimal) -> String {
    let mut m = money(x);
    m.rescale(2);
    m.to_string()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

async fn distinct_statements(ch: &Ch, db: &str, filter: &str) -> usize {
    ch.scalar(&format!(
        "SELECT uniqExact(statement_id) FROM {db}.usage_statements FINAL WHERE {filter}"
    ))
    .await
    .and_then(|v| v.parse().ok())
    .unwrap_or(0)
}

/// Statement messages on the topic, by statement id (every copy).
fn messages_by_id(w: &World, min: usize) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in w.read_topic(&w.statements, min, Duration::from_secs(60)) {
        let v: Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
        assert_eq!(
            m.key.as_deref(),
            v["tenant_id"].as_str().map(str::as_bytes),
            "key = tenant id"
        );
        out.entry(v["statement_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    out
}

/// Every stored statement as the topic's JSON, rebuilt from the rows (FINAL), by id.
async fn stored_by_id(ch: &Ch, db: &str) -> BTreeMap<String, Value> {
    let rows = ch
        .query(&format!(
            "SELECT statement_id, tenant_id, plan, currency, toUInt32(period_start), \
             toUInt32(period_end), line_kind, meter, item, toString(quantity), \
             toString(amount), toString(total), toUInt32(closed_at) \
             FROM {db}.usage_statements FINAL ORDER BY statement_id"
        ))
        .await
        .unwrap();
    let t = |s: &str| rfc(Utc.timestamp_opt(s.parse().unwrap(), 0).unwrap());
    let rank = |k: &str| {
        [
            "base_fee",
            "overage",
            "usage",
            "tiered",
            "revenue_share",
            "addon",
        ]
        .iter()
        .position(|x| *x == k)
        .unwrap_or(9)
    };
    /// (kind rank, meter, item, line JSON): sorts as the statement orders its lines.
    type Line = (usize, String, String, Value);
    let mut out: BTreeMap<String, (Value, Vec<Line>)> = BTreeMap::new();
    for r in rows {
        let e = out.entry(r[0].clone()).or_insert_with(|| {
            (
                json!({
                    "statement_id": r[0], "tenant_id": r[1], "plan": r[2], "currency": r[3],
                    "period_start": t(&r[4]), "period_end": t(&r[5]),
                    "total": money_str(d(&r[11])), "closed_at": t(&r[12]),
                }),
                vec![],
            )
        });
        if !r[6].is_empty() {
            let opt = |s: &str| {
                if s.is_empty() {
                    Value::Null
                } else {
                    Value::String(s.into())
                }
            };
            e.1.push((
                rank(&r[6]),
                r[7].clone(),
                r[8].clone(),
                json!({"kind": r[6], "meter": opt(&r[7]), "item": opt(&r[8]),
                       "quantity": d(&r[9]).normalize().to_string(),
                       "amount": money_str(d(&r[10]))}),
            ));
        }
    }
    out.into_iter()
        .map(|(id, (mut v, mut lines))| {
            lines.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
            v["lines"] = Value::Array(lines.into_iter().map(|l| l.3).collect());
            (id, v)
        })
        .collect()
}

/// (tenant, "YYMM") -> (calls, total ms), read from the raw files (as `realdata` does).
fn raw_usage() -> BTreeMap<(String, String), (u64, u64)> {
    let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for f in ["january.txt", "february.txt"] {
        let text = std::fs::read_to_string(dataset_dir().join(f)).unwrap();
        for line in text.lines().skip(1) {
            let mut cols: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
            if cols.len() != 17 {
                cols = line.split_whitespace().collect();
            }
            if cols.len() != 17 || cols[12] == "PHANTOM" || cols[4] == "AA" {
                continue;
            }
            let n = |s: &str| s.trim().parse::<i64>().unwrap();
            let secs = n(cols[8]).max(0) + n(cols[11]) + n(cols[15]);
            let e = out
                .entry((
                    format!("anonbank-{}", cols[4].to_lowercase()),
                    cols[5][..4].to_string(),
                ))
                .or_default();
            e.0 += 1;
            e.1 += 1000 * secs as u64;
        }
    }
    out
}

/// The statement the plans of examples/anonbank.toml give, computed here from the plan
/// terms written out by hand: (plan, currency, lines as JSON, total).
fn expected_anonbank(tenant: &str, calls: u64, ms: u64) -> (String, String, Vec<Value>, String) {
    let minutes = (Decimal::from(ms) / Decimal::from(60_000))
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero);
    // (plan, currency, base fee, included minutes, overage rate, cap, per-call rate, add-on)
    type Terms = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<(&'static str, u32, &'static str, &'static str)>,
    );
    let terms: Terms = match tenant {
        "anonbank-ps" => (
            "enterprise_volume",
            "EUR",
            "624",
            Some("80000"),
            Some("0.05"),
            None,
            None,
            None,
        ),
        "anonbank-nw" => (
            "growth_pack",
            "EUR",
            "366",
            Some("15000"),
            Some("0.50"),
            None,
            None,
            None,
        ),
        "anonbank-ne" => (
            "professional",
            "USD",
            "299",
            Some("600"),
            Some("0.22"),
            None,
            None,
            Some(("extra_minutes", 96, "100", "15.00")),
        ),
        "anonbank-tt" => (
            "lifestyle",
            "USD",
            "29",
            Some("120"),
            Some("0.10"),
            Some("20.00"),
            None,
            None,
        ),
        "anonbank-in" => (
            "pay_per_call",
            "EUR",
            "49",
            None,
            None,
            None,
            Some("0.50"),
            None,
        ),
        "anonbank-pe" => (
            "legacy_professional",
            "USD",
            "399",
            Some("700"),
            Some("0.35"),
            None,
            None,
            None,
        ),
        other => panic!("unexpected tenant {other}"),
    };
    let (plan, currency, base, included, rate, cap, per_call, addon) = terms;
    let mut lines = Vec::new();
    let mut total = Decimal::ZERO;
    let mut push = |kind: &str, meter: Value, item: Value, q: Decimal, amount: Decimal| {
        let amount = money(amount);
        if !amount.is_zero() {
            total += amount;
            lines.push(json!({"kind": kind, "meter": meter, "item": item,
                              "quantity": q.normalize().to_string(), "amount": money_str(amount)}));
        }
    };
    push("base_fee", Value::Null, Value::Null, Decimal::ONE, d(base));
    if let (Some(inc), Some(rate)) = (included, rate) {
        let mut limit = d(inc);
        if let Some((_, units, per_unit, _)) = addon {
            limit += Decimal::from(units) * d(per_unit);
        }
        let over = (minutes - limit).max(Decimal::ZERO);
        let mut charge = over * d(rate);
        if let Some(c) = cap {
            charge = charge.min(d(c));
        }
        push("overage", json!("call_minutes"), Value::Null, over, charge);
    }
    if let Some(r) = per_call {
        push(
            "usage",
            json!("calls"),
            Value::Null,
            Decimal::from(calls),
            Decimal::from(calls) * d(r),
        );
    }
    if let Some((name, units, _, price)) = addon {
        push(
            "addon",
            json!("call_minutes"),
            json!(name),
            Decimal::from(units),
            Decimal::from(units) * d(price),
        );
    }
    (plan.into(), currency.into(), lines, money_str(total))
}

/// The start of a month in Israel, as UTC.
fn israel_month(year: i32, month: u32) -> DateTime<Utc> {
    chrono_tz::Asia::Jerusalem
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn real_records_close_into_the_statements_the_raw_files_imply() {
    let w = World::new("stmt_real", 4).extra(&example_pricing()).extra(
        "[tenants.statement-clock]\nplan = \"pay_per_call\"\ntimezone = \"Asia/Jerusalem\"\n",
    );
    let raw = raw_usage();
    let total: u64 = raw.values().map(|v| v.0).sum();
    let mut p = w.run("i0");
    let out = w.cli(&["replay", "--dataset", dataset_dir().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ch = w.ch();
    let db = w.database.clone();
    let counted = eventually(Duration::from_secs(180), || {
        let (ch, db) = (ch.clone(), db.clone());
        async move {
            ch.scalar(&format!(
                "SELECT sum(event_count) FROM {db}.usage_rollups FINAL WHERE meter = 'calls'"
            ))
            .await
            .is_some_and(|v| v == total.to_string())
        }
    })
    .await;
    assert!(counted, "all calls counted; log:\n{}", p.log_text());
    // January closed during the February replay; February closes once each tenant's
    // partition sees an event past 1999-03-02T22:00Z (end + 48 h): one clock tick per
    // partition that holds a tenant, from a tenant of its own.
    let parts = ch
        .query(&format!(
            "SELECT DISTINCT source_partition FROM {db}.usage_rollups WHERE tenant_id LIKE 'anonbank-%'"
        ))
        .await
        .unwrap();
    let producer = w.producer();
    for (i, row) in parts.iter().enumerate() {
        let part: i32 = row[0].parse().unwrap();
        let payload = format!(
            r#"{{"specversion":"1.0","id":"tick-{i}","source":"clock","type":"call.completed","subject":"statement-clock","time":"1999-03-05T12:00:00Z","data":{{"call_id":"tick-{i}","duration_ms":1000,"direction":"inbound"}}}}"#
        );
        producer
            .send(
                FutureRecord::to(&w.topic)
                    .partition(part)
                    .key("statement-clock")
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("tick delivered");
    }
    let want_count = raw.len();
    assert_eq!(want_count, 12, "6 tenants x 2 months");
    let closed =
        eventually(Duration::from_secs(90), || {
            let (ch, db) = (ch.clone(), db.clone());
            async move {
                distinct_statements(&ch, &db, "tenant_id LIKE 'anonbank-%'").await == want_count
            }
        })
        .await;
    assert!(closed, "12 statements stored; log:\n{}", p.log_text());

    let stored = stored_by_id(&ch, &db).await;
    assert_eq!(
        stored.len(),
        want_count,
        "no statement for the clock's open March"
    );
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for ((tenant, yymm), (calls, ms)) in &raw {
        let month: u32 = yymm[2..].parse().unwrap();
        let start = israel_month(1999, month);
        let end = israel_month(1999, month + 1);
        let (plan, currency, lines, total) = expected_anonbank(tenant, *calls, *ms);
        let body = json!({
            "statement_id": stored.values()
                .find(|s| s["tenant_id"] == json!(tenant) && s["period_start"] == json!(rfc(start)))
                .map(|s| s["statement_id"].clone())
                .unwrap_or_else(|| panic!("no statement for {tenant} {yymm}")),
            "tenant_id": tenant, "plan": plan, "currency": currency,
            "period_start": rfc(start), "period_end": rfc(end),
            "lines": lines, "total": total,
            "closed_at": rfc(end + chrono::Duration::hours(48)),
        });
        expected.insert(body["statement_id"].as_str().unwrap().to_string(), body);
    }
    for (id, want) in &expected {
        assert_eq!(&stored[id], want, "stored statement {id}");
    }
    // Some statements show each kind of line the example is meant to show.
    let kinds: BTreeSet<String> = expected
        .values()
        .flat_map(|s| s["lines"].as_array().unwrap().iter())
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "addon".into(),
            "base_fee".into(),
            "overage".into(),
            "usage".into()
        ])
    );

    // The same statements on the topic, once each (no crash here).
    let msgs = messages_by_id(&w, want_count);
    assert_eq!(msgs.len(), want_count);
    for (id, copies) in &msgs {
        assert_eq!(copies.len(), 1, "{id}");
        assert_eq!(&copies[0], &expected[id], "message {id}");
    }

    // The route: newest first, limits, errors.
    let url = |path: &str| w.api(path);
    let (status, body) = get(
        &url("/v1/tenants/anonbank-ne/statements"),
        Some("test-token"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ne: Vec<&Value> = ["9902", "9901"]
        .iter()
        .map(|m| {
            let start = rfc(israel_month(1999, m[2..].parse().unwrap()));
            expected
                .values()
                .find(|s| {
                    s["tenant_id"] == json!("anonbank-ne") && s["period_start"] == json!(start)
                })
                .unwrap()
        })
        .collect();
    assert_eq!(body, json!({"tenant_id": "anonbank-ne", "statements": ne}));
    let (status, body) = get(
        &url("/v1/tenants/anonbank-ne/statements?limit=1"),
        Some("test-token"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["statements"], json!([ne[0]]));
    let (status, _) = get(
        &url("/v1/tenants/anonbank-ne/statements?limit=0"),
        Some("test-token"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(
        &url("/v1/tenants/anonbank-ne/statements?limit=101"),
        Some("test-token"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(&url("/v1/tenants/nobody/statements"), Some("test-token")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&url("/v1/tenants/anonbank-ne/statements"), None).await;
    assert_eq!(status, 401);
    let (status, body) = get(
        &url("/v1/tenants/statement-clock/statements"),
        Some("test-token"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"tenant_id": "statement-clock", "statements": []})
        )
    );

    // `callmeter report` prints the statements.
    let out = w.cli(&["report"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for s in expected.values() {
        let line = format!(
            "{} {}",
            s["currency"].as_str().unwrap(),
            s["total"].as_str().unwrap()
        );
        assert!(text.contains(&line), "report shows {line}:\n{text}");
    }
    assert!(text.contains("extra_minutes"), "{text}");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

const CRASH_PRICING: &str = r#"
[pricing]
default_plan = "basic"
[plans.basic]
currency = "USD"
base_fee = "10.00"
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "0.10"
"#;

/// Calls of month `m` (2026) for every tenant: (key, payload, tenant, ms).
fn month_calls(
    m: u32,
    tenants: usize,
    per: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>, String, u64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + m as u64);
    let mut out = Vec::new();
    for day in 1..=28u32 {
        for t in 0..tenants {
            if day as usize % per != t % per {
                continue;
            }
            let tenant = format!("crash-{t}");
            let ms: u64 = rng.random_range(60_000..3_600_000);
            let id = format!("{m}-{day}-{t}");
            let time = Utc.with_ymd_and_hms(2026, m, day, 12, 0, 0).unwrap();
            let payload = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"crash","type":"call.completed","subject":"{tenant}","time":"{}","data":{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}}}"#,
                rfc(time)
            );
            out.push((tenant.clone(), payload.into_bytes(), tenant, ms));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_leave_one_statement_per_period_identical_everywhere() {
    let w = World::new("stmt_crash", 2).extra(CRASH_PRICING);
    let ch = w.ch();
    let db = w.database.clone();
    let tenants = 6;
    let mut truth: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut produce_month = |m: u32| {
        let calls = month_calls(m, tenants, 3, 7);
        for (_, _, t, ms) in &calls {
            *truth.entry((t.clone(), m)).or_default() += ms;
        }
        calls
            .into_iter()
            .map(|(k, v, _, _)| (k, v))
            .collect::<Vec<_>>()
    };

    // 1. A crash between the statement's message and its rows: the table is gone while May
    //    closes, so the flush that holds May's statements sends them and then fails; kill -9.
    let mut p = w.run("c0");
    let ready = eventually(Duration::from_secs(60), || async {
        get(&w.api("/readyz"), None).await.0 == 200
    })
    .await;
    assert!(ready, "{}", p.log_text());
    ch.exec(&format!("DROP TABLE {db}.usage_statements"))
        .await
        .unwrap();
    let may = produce_month(5);
    let june = produce_month(6);
    w.produce(&may).await;
    w.produce(&june).await;
    let sent = w.read_topic(&w.statements, tenants, Duration::from_secs(90));
    assert_eq!(
        sent.len(),
        tenants,
        "May's statements sent; log:\n{}",
        p.log_text()
    );
    p.kill9();
    assert_eq!(
        ch.scalar(&format!("EXISTS TABLE {db}.usage_statements"))
            .await
            .as_deref(),
        Some("0")
    );

    // 2. The restart (which migrates the table again) replays May's closing: the same
    //    statements again.
    let mut p = w.run("c0");
    let stored = eventually(Duration::from_secs(90), || async {
        distinct_statements(&ch, &db, "1").await == tenants
    })
    .await;
    assert!(stored, "May's statements stored; log:\n{}", p.log_text());

    // 3. kill -9 at arbitrary moments while July..September close June..August.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    for m in 7..=9 {
        let batch = produce_month(m);
        w.produce(&batch).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
        p.kill9();
        p = w.run("c0");
    }
    let want = tenants * 4;
    let all = eventually(Duration::from_secs(120), || async {
        distinct_statements(&ch, &db, "1").await == want
    })
    .await;
    assert!(all, "May..August stored; log:\n{}", p.log_text());

    let stored = stored_by_id(&ch, &db).await;
    assert_eq!(stored.len(), want);
    let per_period: BTreeSet<(String, String)> = stored
        .values()
        .map(|s| {
            (
                s["tenant_id"].as_str().unwrap().into(),
                s["period_start"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(per_period.len(), want, "one statement per (tenant, period)");
    // Totals from the produced calls: 10.00 + 0.10 per minute above 100.
    for s in stored.values() {
        let tenant = s["tenant_id"].as_str().unwrap();
        let start = DateTime::parse_from_rfc3339(s["period_start"].as_str().unwrap()).unwrap();
        let ms = truth[&(tenant.to_string(), chrono::Datelike::month(&start))];
        let minutes = (Decimal::from(ms) / Decimal::from(60_000))
            .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero);
        let over = money((minutes - d("100")).max(Decimal::ZERO) * d("0.10"));
        assert_eq!(s["total"], json!(money_str(d("10") + over)), "{s}");
    }
    // Every message, repeats included, is the stored statement; May's were sent twice.
    let msgs = messages_by_id(&w, want + tenants);
    assert_eq!(msgs.len(), want);
    for (id, copies) in &msgs {
        for c in copies {
            assert_eq!(c, &stored[id], "message {id}");
        }
    }
    let may_start = rfc(Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap());
    for (id, copies) in &msgs {
        if stored[id]["period_start"] == json!(may_start) {
            assert!(
                copies.len() >= 2,
                "May's statement {id} sent again after the crash"
            );
        }
    }
    // And the route answers the same.
    let (status, body) = get(&w.api("/v1/tenants/crash-0/statements"), Some("test-token")).await;
    assert_eq!(status, 200, "{body}");
    let mut mine: Vec<&Value> = stored
        .values()
        .filter(|s| s["tenant_id"] == json!("crash-0"))
        .collect();
    mine.sort_by(|a, b| b["period_start"].as_str().cmp(&a["period_start"].as_str()));
    assert_eq!(body["statements"], json!(mine));
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

const SUBSCRIPTION_ONLY_PRICING: &str = r#"
[plans.basic]
currency = "USD"
base_fee = "30.00"
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "0.10"
[plans.basic.addons.more_minutes]
meter = "call_minutes"
included = "50"
price = "5.00"
[tenants.acme]
plan = "basic"
[tenants.gone]
plan = "basic"
[tenants.clock]
plan = "basic"
"#;

/// A CloudEvent of March 2025 or around it, keyed by its tenant.
fn event(id: &str, tenant: &str, ty: &str, time: &str, data: Value) -> (String, Vec<u8>) {
    (
        tenant.to_string(),
        json!({"specversion": "1.0", "id": id, "source": "billing", "type": ty,
               "subject": tenant, "time": time, "data": data})
        .to_string()
        .into_bytes(),
    )
}

fn minutes_call(id: &str, tenant: &str, time: &str, minutes: u64) -> (String, Vec<u8>) {
    event(
        id,
        tenant,
        "call.completed",
        time,
        json!({"call_id": id, "duration_ms": minutes * 60_000, "direction": "inbound"}),
    )
}

/// A line of a statement's JSON.
fn line(
    kind: &str,
    meter: Option<&str>,
    item: Option<&str>,
    quantity: &str,
    amount: &str,
) -> Value {
    json!({"kind": kind, "meter": meter, "item": item, "quantity": quantity, "amount": amount})
}

/// CONTRACT section 10: "a statement is emitted for every tenant with at least one counted
/// event (usage or subscription) in the period". In March 2025 three tenants have only
/// subscription events: acme buys an add-on unit (it called in February only), newco is
/// created by its first event on the 11th (no default plan: no subscription before) and
/// never calls, gone cancels on the 16th. Once March closes each gets exactly one
/// statement, on the topic and in `usage_statements`, priced as for zero usage (prorated
/// base fee, add-ons); a graceful restart and a kill -9 after the checkpoint make none
/// again.
#[tokio::test(flavor = "multi_thread")]
async fn subscription_only_periods_get_one_statement_across_restarts() {
    let w = World::new("stmt_subonly", 1).extra(SUBSCRIPTION_ONLY_PRICING);
    let ch = w.ch();
    let db = w.database.clone();
    let mut p = w.run("s0");
    w.produce(&[
        minutes_call("a-feb", "acme", "2025-02-10T10:00:00Z", 10),
        event(
            "a-addon",
            "acme",
            "subscription.updated",
            "2025-03-05T00:00:00Z",
            json!({"plan": "basic", "addons": {"more_minutes": 1}}),
        ),
        event(
            "n-created",
            "newco",
            "subscription.updated",
            "2025-03-11T00:00:00Z",
            json!({"plan": "basic", "addons": {"more_minutes": 2},
                   "timezone": "UTC", "anchor_day": 1}),
        ),
        event(
            "g-cancel",
            "gone",
            "subscription.canceled",
            "2025-03-16T00:00:00Z",
            json!({}),
        ),
        // March (UTC) closes once the partition sees an event past 3 April 00:00 (end + 48 h).
        minutes_call("tick-1", "clock", "2025-04-05T00:00:00Z", 1),
    ])
    .await;

    let (feb, mar, apr) = (
        "2025-02-01T00:00:00Z",
        "2025-03-01T00:00:00Z",
        "2025-04-01T00:00:00Z",
    );
    let statement = |tenant: &str, start: &str, end: &str, lines: Vec<Value>, total: &str| {
        let start_secs = DateTime::parse_from_rfc3339(start).unwrap().timestamp();
        let closed = DateTime::parse_from_rfc3339(end)
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::hours(48);
        json!({
            "statement_id": callmeter::statement::statement_id(tenant, start_secs),
            "tenant_id": tenant, "plan": "basic", "currency": "USD",
            "period_start": start, "period_end": end, "lines": lines, "total": total,
            "closed_at": rfc(closed),
        })
    };
    let expected: BTreeMap<String, Value> = [
        // February: usage (10 minutes, within the 100 included).
        statement(
            "acme",
            feb,
            mar,
            vec![line("base_fee", None, None, "1", "30.00")],
            "30.00",
        ),
        // March: an add-on change alone does not prorate the base fee.
        statement(
            "acme",
            mar,
            apr,
            vec![
                line("base_fee", None, None, "1", "30.00"),
                line(
                    "addon",
                    Some("call_minutes"),
                    Some("more_minutes"),
                    "1",
                    "5.00",
                ),
            ],
            "35.00",
        ),
        // 21 of March's 31 days: 30.00 x 21 / 31 = 20.32.
        statement(
            "newco",
            mar,
            apr,
            vec![
                line("base_fee", None, Some("basic"), "0.677419", "20.32"),
                line(
                    "addon",
                    Some("call_minutes"),
                    Some("more_minutes"),
                    "2",
                    "10.00",
                ),
            ],
            "30.32",
        ),
        // 15 of 31 days: 14.52.
        statement(
            "gone",
            mar,
            apr,
            vec![line("base_fee", None, Some("basic"), "0.483871", "14.52")],
            "14.52",
        ),
    ]
    .into_iter()
    .map(|s| (s["statement_id"].as_str().unwrap().to_string(), s))
    .collect();

    let stored = eventually(Duration::from_secs(90), || async {
        distinct_statements(&ch, &db, "1").await == expected.len()
    })
    .await;
    assert!(stored, "4 statements stored; log:\n{}", p.log_text());
    assert_eq!(stored_by_id(&ch, &db).await, expected);
    // (Asking for one message more than expected waits out the reader's timeout: a repeat
    // would be seen.)
    let check_topic = |when: &str| {
        let msgs = messages_by_id(&w, expected.len() + 1);
        assert_eq!(
            msgs.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{when}"
        );
        for (id, copies) in &msgs {
            assert_eq!(copies.len(), 1, "{when}: one message for {id}");
            assert_eq!(copies[0], expected[id], "{when}: message {id}");
        }
    };
    check_topic("first run");
    let (status, body) = get(&w.api("/v1/tenants/newco/statements"), Some("test-token")).await;
    assert_eq!(status, 200, "{body}");
    let newco_id = callmeter::statement::statement_id(
        "newco",
        DateTime::parse_from_rfc3339(mar).unwrap().timestamp(),
    );
    assert_eq!(
        body,
        json!({"tenant_id": "newco", "statements": [expected[&newco_id]]})
    );

    // Restarts: a graceful one, then kill -9 once the flush after the next tick has landed.
    // Each restarted instance restores the partition and reads on: no statement again.
    let clock_calls = |n: u64| {
        let (ch, db) = (ch.clone(), db.clone());
        async move {
            ch.scalar(&format!(
                "SELECT sum(event_count) FROM {db}.usage_rollups FINAL \
                 WHERE tenant_id = 'clock' AND meter = 'calls'"
            ))
            .await
            .is_some_and(|v| v == n.to_string())
        }
    };
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let mut p = w.run("s0");
    w.produce(&[minutes_call("tick-2", "clock", "2025-04-06T00:00:00Z", 1)])
        .await;
    let counted = eventually(Duration::from_secs(90), || clock_calls(2)).await;
    assert!(counted, "tick-2 counted; log:\n{}", p.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.kill9();
    let mut p = w.run("s0");
    w.produce(&[minutes_call("tick-3", "clock", "2025-04-07T00:00:00Z", 1)])
        .await;
    let counted = eventually(Duration::from_secs(90), || clock_calls(3)).await;
    assert!(counted, "tick-3 counted; log:\n{}", p.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(distinct_statements(&ch, &db, "1").await, expected.len());
    assert_eq!(stored_by_id(&ch, &db).await, expected);
    check_topic("after the restarts");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}
