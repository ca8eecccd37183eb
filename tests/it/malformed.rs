//! Bad input: every malformed event lands in the dead-letter topic with its original key and
//! bytes and the right code; the good ones are counted exactly; the process keeps running.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};

use crate::common::{World, eventually};

const PRICING: &str = include_str!("../fixtures/starter-acme.toml");

fn event(id: &str, tenant: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"voice/eu-1","type":"call.completed","subject":"{tenant}","time":"{time}","data":{data}}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_events_go_to_the_dlq_and_the_rest_count_exactly() {
    let w = World::new("malformed", 2).extra(PRICING);
    let now = Utc::now();
    let t = |mins: i64| {
        (now - chrono::Duration::minutes(mins)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let good_data = r#"{"call_id":"c","duration_ms":60000,"direction":"inbound"}"#;

    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut want: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    let mut bad =
        |key: &str, payload: String, code: &'static str, msgs: &mut Vec<(String, Vec<u8>)>| {
            want.insert(payload.clone().into_bytes(), code);
            msgs.push((key.to_string(), payload.into_bytes()));
        };
    // 40 good events, each sent twice (the second is a duplicate, counted once).
    for i in 0..40 {
        let e = event(&format!("good-{i}"), "acme", &t(60 - i), good_data);
        msgs.push(("acme".into(), e.clone().into_bytes()));
        msgs.push(("acme".into(), e.into_bytes()));
    }
    bad("acme", "not json at all".into(), "invalid_json", &mut msgs);
    bad(
        "acme",
        r#"{"specversion":"1.0","id":"x""#.into(),
        "invalid_json",
        &mut msgs,
    );
    bad(
        "acme",
        r#"{"specversion":"1.0","type":"call.completed"}"#.into(),
        "invalid_event",
        &mut msgs,
    );
    bad(
        "acme",
        event("b1", "acme", &t(5), good_data).replace("\"b1\"", "17"),
        "invalid_event",
        &mut msgs,
    );
    bad(
        "acme",
        event("b2", "acme", "yesterday", good_data),
        "invalid_event",
        &mut msgs,
    );
    bad(
        "acme",
        event("b3", "ac me", &t(5), good_data),
        "invalid_event",
        &mut msgs,
    );
    bad(
        "acme",
        event("b4", "acme", &t(5), good_data).replace("call.completed", "call.started"),
        "unsupported_type",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b5",
            "acme",
            &t(5),
            r#"{"call_id":"c","direction":"inbound"}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b6",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":-1,"direction":"inbound"}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b7",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":86400001,"direction":"inbound"}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b8",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":"60000","direction":"inbound"}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b9",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"12.5x","currency":"USD"}}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b10",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"1.1234567","currency":"USD"}}"#,
        ),
        "invalid_data",
        &mut msgs,
    );
    bad(
        "ghost",
        event("b11", "ghost", &t(5), good_data),
        "unknown_tenant",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b12",
            "acme",
            &t(5),
            r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"12.50","currency":"EUR"}}"#,
        ),
        "currency_mismatch",
        &mut msgs,
    );
    bad(
        "acme",
        event(
            "b13",
            "acme",
            &(now + chrono::Duration::days(1)).to_rfc3339(),
            good_data,
        ),
        "future_event",
        &mut msgs,
    );
    let huge = event(
        "b14",
        "acme",
        &t(5),
        &format!(
            r#"{{"call_id":"c","duration_ms":1,"direction":"inbound","pad":"{}"}}"#,
            "x".repeat(70_000)
        ),
    );
    bad("acme", huge, "invalid_event", &mut msgs);
    // 60 days back: its period ended long before the partition watermark minus 48 h grace.
    bad(
        "acme",
        event(
            "b15",
            "acme",
            &(now - chrono::Duration::days(62)).to_rfc3339(),
            good_data,
        ),
        "period_closed",
        &mut msgs,
    );

    let mut p = w.run("i0");
    w.produce(&msgs).await;

    let dlq = w.read_topic(&w.dlq, want.len(), Duration::from_secs(60));
    let mut got: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for m in &dlq {
        assert_eq!(m.headers["callmeter.source.topic"], w.topic);
        assert!(
            m.headers["callmeter.source.partition"]
                .parse::<i32>()
                .is_ok()
        );
        assert!(m.headers["callmeter.source.offset"].parse::<i64>().is_ok());
        assert!(!m.headers["callmeter.error.message"].is_empty());
        let payload = m.payload.clone().unwrap_or_default();
        let key = String::from_utf8(m.key.clone().unwrap()).unwrap();
        let sent = msgs
            .iter()
            .find(|(_, v)| *v == payload)
            .expect("DLQ payload is an original");
        assert_eq!(key, sent.0, "original key kept");
        got.insert(payload, m.headers["callmeter.error"].clone());
    }
    let want: BTreeMap<Vec<u8>, String> =
        want.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    let show = |m: &BTreeMap<Vec<u8>, String>| -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[..k.len().min(80)]).to_string(),
                    v.clone(),
                )
            })
            .collect()
    };
    assert_eq!(show(&got), show(&want), "log:\n{}", p.log_text());
    assert_eq!(dlq.len(), got.len(), "each bad event dead-lettered once");

    let ch = w.ch();
    let db = w.database.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            let ch = ch.clone();
            let db = db.clone();
            async move {
                ch.scalar(&format!("SELECT sum(value) FROM {db}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = 'calls'"))
                    .await
                    .is_some_and(|v| v.parse::<f64>().ok() == Some(40.0))
            }
        })
        .await,
        "40 distinct good calls counted once"
    );
    assert_eq!(
        ch.scalar(&format!("SELECT toString(sum(value)) FROM {db}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = 'call_minutes'")).await.as_deref(),
        Some("40.000000000")
    );
    assert!(p.is_running(), "bad input never stops the pipeline");
    let health = reqwest::get(w.api("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(w.api("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("callmeter_events_duplicate_total 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"callmeter_events_rejected_total{reason="invalid_data"} 6"#),
        "{metrics}"
    );
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}
