//! Hostile input (issue 12): a poison pill (a running total beyond `Decimal(38, 9)`) is
//! dead-lettered and the process keeps consuming with the other totals exact; a record
//! stamped in the year 2100 does not switch deduplication off, before or after a restart;
//! a `rounding = "ceil"` meter fires its 80 %, 100 % and overage alerts once each.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rdkafka::producer::FutureRecord;

use crate::common::{World, eventually};

const PRICING: &str = r#"
[meters.units]
event_type = "usage.units"
aggregation = "sum"
value = "units"
[meters.ai_minutes]
event_type = "call.completed"
aggregation = "sum"
value = "duration_ms"
divisor = 60000
rounding = "ceil"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "100000"
[plans.starter.meters.ai_minutes]
included = "100"
overage_rate = "0.10"
[tenants.acme]
plan = "starter"
"#;

fn now_minus(mins: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(mins)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn envelope(id: &str, ty: &str, time: &str, data: &str) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"voice/eu-1","type":"{ty}","subject":"acme","time":"{time}","data":{data}}}"#
    )
    .into_bytes()
}

fn call(id: &str, time: &str) -> Vec<u8> {
    envelope(
        id,
        "call.completed",
        time,
        r#"{"call_id":"c","duration_ms":60000,"direction":"inbound"}"#,
    )
}

/// The meter's value for acme in ClickHouse (all periods), as ClickHouse prints it.
async fn value(w: &World, meter: &str) -> Option<String> {
    w.ch()
        .scalar(&format!(
            "SELECT toString(sum(value)) FROM {}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = '{meter}'",
            w.database
        ))
        .await
}

/// Whether the meter's value for acme equals `want` exactly, compared by ClickHouse as
/// `Decimal(38, 9)` (ClickHouse 18.16's `toString` garbles Decimal128 values above 2^64 units).
async fn value_is(w: &World, meter: &str, want: &str) -> bool {
    w.ch()
        .scalar(&format!(
            "SELECT sum(value) = toDecimal128('{want}', 9) FROM {}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = '{meter}'",
            w.database
        ))
        .await
        .as_deref()
        == Some("1")
}

/// Waits until the meter's value parses to `want` (f64 comparison is enough for counts).
async fn wait_value(w: &World, meter: &str, want: f64, timeout: Duration) -> bool {
    eventually(timeout, || async move {
        value(w, meter)
            .await
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= want)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_pill_is_dead_lettered_and_the_pipeline_keeps_counting() {
    let w = World::new("poison", 1).extra(PRICING);
    let mut p = w.run("i0");
    let big = "50000000000000000000000000000";
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        msgs.push(("acme".into(), call(&format!("c{i}"), &now_minus(30 - i))));
    }
    let units = |id: &str, u: &str| {
        envelope(
            id,
            "usage.units",
            &now_minus(20),
            &format!(r#"{{"units":{u}}}"#),
        )
    };
    msgs.push(("acme".into(), units("u1", big)));
    let poison = units("u2", big);
    msgs.push(("acme".into(), poison.clone()));
    msgs.push(("acme".into(), units("u3", "1")));
    // A revenue of 1e20 fits Decimal(38, 9) and must be stored exactly (not as 0).
    msgs.push((
        "acme".into(),
        envelope(
            "r1",
            "revenue.recorded",
            &now_minus(20),
            r#"{"amount":"100000000000000000000","currency":"USD"}"#,
        ),
    ));
    for i in 5..10 {
        msgs.push(("acme".into(), call(&format!("c{i}"), &now_minus(30 - i))));
    }
    w.produce(&msgs).await;

    let dlq = w.read_topic(&w.dlq, 1, Duration::from_secs(60));
    assert_eq!(
        dlq.len(),
        1,
        "the poison pill dead-lettered; log:\n{}",
        p.log_text()
    );
    assert_eq!(dlq[0].payload.as_deref(), Some(&poison[..]));
    assert_eq!(dlq[0].headers["callmeter.error"], "invalid_data");
    assert!(
        dlq[0].headers["callmeter.error.message"].contains("Decimal(38, 9)"),
        "{:?}",
        dlq[0].headers
    );
    assert!(
        wait_value(&w, "calls", 10.0, Duration::from_secs(60)).await,
        "the calls after the poison pill are counted; log:\n{}",
        p.log_text()
    );
    // Later input is still consumed.
    w.produce(&[("acme".into(), call("c10", &now_minus(1)))])
        .await;
    assert!(
        wait_value(&w, "calls", 11.0, Duration::from_secs(60)).await,
        "still consuming after the poison pill; log:\n{}",
        p.log_text()
    );
    assert_eq!(value(&w, "calls").await.as_deref(), Some("11.000000000"));
    assert_eq!(
        value(&w, "call_minutes").await.as_deref(),
        Some("11.000000000")
    );
    assert!(
        value_is(&w, "units", "50000000000000000000000000001").await,
        "the first value and the later one counted exactly, the poison pill not: {:?}",
        value(&w, "units").await
    );
    assert!(
        value_is(&w, "revenue", "100000000000000000000").await,
        "a revenue of 1e20 stored exactly: {:?}",
        value(&w, "revenue").await
    );
    assert!(p.is_running(), "the poison pill never stops the pipeline");
    // Per-tenant series are off by default: /metrics names no tenant (it refreshes every 5 s).
    tokio::time::sleep(callmeter::gauges::REFRESH + Duration::from_secs(1)).await;
    let metrics = reqwest::get(w.api("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("tenant=\"acme\""),
        "no per-tenant series by default:\n{metrics}"
    );
    let ready = reqwest::get(w.api("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_far_future_record_timestamp_does_not_switch_dedup_off() {
    let w = World::new("future_ts", 1).extra(PRICING);
    // Apache Kafka refuses record timestamps more than an hour ahead by default (KIP-937,
    // `message.timestamp.after.max.ms`); a producer on a topic that allows them is the
    // scenario (tansu never checks).
    if w.flavor() == crate::common::Flavor::Kafka {
        crate::common::alter_topic(
            &w.brokers,
            &w.topic,
            &[("message.timestamp.after.max.ms", "9223372036854775807")],
        );
    }
    let mut p = w.run("i0");
    let earlier: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| ("acme".into(), call(&format!("e{i}"), &now_minus(40 - i))))
        .collect();
    w.produce(&earlier).await;
    assert!(wait_value(&w, "calls", 20.0, Duration::from_secs(60)).await);

    // One record whose Kafka timestamp is in the year 2100 (its event time is now).
    let stamp_2100 = chrono::DateTime::parse_from_rfc3339("2100-01-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let future = call("f1", &now_minus(0));
    let producer = w.producer();
    producer
        .send(
            FutureRecord::to(&w.topic)
                .key("acme")
                .payload(&future)
                .timestamp(stamp_2100),
            Duration::from_secs(30),
        )
        .await
        .expect("produce the 2100 record");
    // Counted, and flushed (the flush is where the dedup set is evicted).
    assert!(wait_value(&w, "calls", 21.0, Duration::from_secs(60)).await);

    // Duplicates of the 20 earlier events, then a sentinel: once the sentinel is counted,
    // everything before it on the (single) partition was processed.
    let mut dups = earlier.clone();
    dups.push(("acme".into(), call("s1", &now_minus(0))));
    w.produce(&dups).await;
    assert!(wait_value(&w, "calls", 22.0, Duration::from_secs(60)).await);
    assert_eq!(
        value(&w, "calls").await.as_deref(),
        Some("22.000000000"),
        "duplicates after a far-future record counted once; log:\n{}",
        p.log_text()
    );

    // And after a restart (the restore replays the dedup window from the checkpoint).
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
    let mut p = w.run("i0");
    let mut dups = earlier.clone();
    dups.push(("acme".into(), call("s2", &now_minus(0))));
    w.produce(&dups).await;
    assert!(wait_value(&w, "calls", 23.0, Duration::from_secs(90)).await);
    assert_eq!(
        value(&w, "calls").await.as_deref(),
        Some("23.000000000"),
        "duplicates after a restart counted once; log:\n{}",
        p.log_text()
    );
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ceil_meter_alerts_on_its_own_units_once_each() {
    let w = World::new("ceil_alerts", 2).extra(PRICING);
    let mut p = w.run("i0");
    // 102 calls of one minute each: 102 ai_minutes units of 100 included.
    let msgs: Vec<(String, Vec<u8>)> = (0..102)
        .map(|i| ("acme".into(), call(&format!("a{i}"), &now_minus(110 - i))))
        .collect();
    w.produce(&msgs).await;
    assert!(
        wait_value(&w, "ai_minutes", 102.0, Duration::from_secs(60)).await,
        "log:\n{}",
        p.log_text()
    );
    assert_eq!(
        value(&w, "ai_minutes").await.as_deref(),
        Some("102.000000000")
    );
    // Alerts are sent as they fire, before the flush that stores the rows: read for 15 s
    // more than the three expected could take, so that a repeat would be seen.
    let got = w.read_topic(&w.alerts, 4, Duration::from_secs(15));
    let mut kinds: Vec<String> = got
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(m.payload.as_deref()?).ok())
        .filter(|v| v["meter"] == "ai_minutes")
        .map(|v| v["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["100%", "80%", "overage"],
        "each alert once; log:\n{}",
        p.log_text()
    );
    let stored = w
        .ch()
        .query(&format!(
            "SELECT kind FROM {}.usage_alerts FINAL WHERE meter = 'ai_minutes' ORDER BY kind",
            w.database
        ))
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["100%", "80%", "overage"]
    );
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
}
