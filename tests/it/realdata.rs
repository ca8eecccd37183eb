//! The real call records through the whole pipeline: per tenant and month, ClickHouse holds
//! exactly the calls and minutes an independent reading of the raw files gives, and the
//! alerts that the limits imply.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::common::{World, dataset_dir, eventually};

/// (tenant, "YYMM") -> (calls, total ms), straight from the files.
fn ground_truth() -> BTreeMap<(String, String), (u64, u64)> {
    let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for f in ["january.txt", "february.txt"] {
        let text = std::fs::read_to_string(dataset_dir().join(f)).expect("data set file");
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
            let key = (
                format!("anonbank-{}", cols[4].to_lowercase()),
                cols[5][..4].to_string(),
            );
            let e = out.entry(key).or_default();
            e.0 += 1;
            e.1 += 1000 * secs as u64;
        }
    }
    out
}

/// The limits of examples/anonbank.toml: tenant -> (limit, overage rate, cap).
fn limits() -> BTreeMap<&'static str, (Decimal, Decimal, Option<Decimal>)> {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    BTreeMap::from([
        ("anonbank-ps", (d("80000"), d("0.05"), None)),
        ("anonbank-nw", (d("15000"), d("0.50"), None)),
        ("anonbank-ne", (d("10200"), d("0.22"), None)),
        ("anonbank-tt", (d("120"), d("0.10"), Some(d("20.00")))),
        ("anonbank-pe", (d("700"), d("0.35"), None)),
    ])
}

fn expected_alerts(tenant: &str, minutes: Decimal) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    if let Some((limit, rate, cap)) = limits().get(tenant) {
        if minutes >= limit * Decimal::new(8, 1) {
            s.insert("80%".to_string());
        }
        if minutes >= *limit {
            s.insert("100%".to_string());
        }
        if minutes > *limit {
            s.insert("overage".to_string());
        }
        if let Some(cap) = cap
            && (minutes - limit) * rate >= *cap
        {
            s.insert("overage_cap".to_string());
        }
    }
    s
}

/// Unix seconds of a period start -> "YYMM" of the month it starts in, in Israel.
fn yymm(secs: &str) -> String {
    let t = chrono::DateTime::from_timestamp(secs.parse().unwrap(), 0).unwrap();
    t.with_timezone(&chrono_tz::Asia::Jerusalem)
        .format("%y%m")
        .to_string()
}

/// Plans, tenants and meters of the example config (everything after the runtime sections).
pub fn example_pricing() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/anonbank.toml"
    ))
    .unwrap();
    let at = text.find("[meters.").expect("example has meters");
    text[at..].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_records_give_exact_totals_and_alerts() {
    let w = World::new("realdata", 4).extra(&example_pricing());
    let truth = ground_truth();
    let total: u64 = truth.values().map(|v| v.0).sum();
    assert_eq!(total, 64_423, "independent count of call rows");

    let mut p = w.run("i0");
    let out = w.cli(&["replay", "--dataset", dataset_dir().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ch = w.ch();
    let db = w.database.clone();
    let counted = eventually(Duration::from_secs(120), || {
        let ch = ch.clone();
        let db = db.clone();
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

    let rows = ch
        .query(&format!(
            "SELECT tenant_id, toUInt32(period_start), meter, toString(sum(value)) \
             FROM {db}.usage_rollups FINAL WHERE meter IN ('calls', 'call_minutes') \
             GROUP BY tenant_id, period_start, meter"
        ))
        .await
        .unwrap();
    let mut got: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    for r in rows {
        let e = got.entry((r[0].clone(), yymm(&r[1]))).or_default();
        let v: Decimal = r[3].parse().unwrap();
        if r[2] == "calls" {
            e.0 = v;
        } else {
            e.1 = v;
        }
    }
    assert_eq!(got.len(), truth.len());
    for (k, (calls, ms)) in &truth {
        let minutes = (Decimal::from(*ms) / Decimal::from(60_000))
            .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero);
        let g = got.get(k).unwrap_or_else(|| panic!("no rollup for {k:?}"));
        assert_eq!(g.0, Decimal::from(*calls), "calls of {k:?}");
        assert_eq!(g.1, minutes, "minutes of {k:?}");
    }

    // Alerts: exactly the kinds the limits imply, one row per kind, ids deterministic.
    let alerts = ch
        .query(&format!(
            "SELECT tenant_id, toUInt32(period_start), kind, alert_id \
             FROM {db}.usage_alerts FINAL WHERE meter = 'call_minutes'"
        ))
        .await
        .unwrap();
    let mut got_alerts: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for a in &alerts {
        assert!(
            got_alerts
                .entry((a[0].clone(), yymm(&a[1])))
                .or_default()
                .insert(a[2].clone()),
            "duplicate alert {a:?}"
        );
        assert_eq!(a[3].len(), 32);
    }
    let mut want_alerts: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (k, (_, ms)) in &truth {
        let minutes = Decimal::from(*ms) / Decimal::from(60_000);
        let e = expected_alerts(&k.0, minutes);
        if !e.is_empty() {
            want_alerts.insert(k.clone(), e);
        }
    }
    assert_eq!(got_alerts, want_alerts);
    // Some tenants cross every threshold, the example is meant to show them.
    assert!(want_alerts.values().any(|s| s.contains("overage_cap")));

    // The same alerts went to the alerts topic.
    let msgs = w.read_topic(&w.alerts, alerts.len(), Duration::from_secs(30));
    let ids: BTreeSet<String> = msgs
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
            v["alert_id"].as_str().unwrap().to_string()
        })
        .collect();
    let stored: BTreeSet<String> = alerts.iter().map(|a| a[3].clone()).collect();
    assert_eq!(ids, stored);

    assert_eq!(
        p.terminate(Duration::from_secs(30)),
        Some(0),
        "clean exit on SIGTERM"
    );
}
