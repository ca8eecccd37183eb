//! The outbox: dead-letter copies and alerts are never dropped. With their topics missing,
//! nothing is committed and `/readyz` says why until the topics appear, then each message
//! is delivered once; a copy the dead-letter topic refuses as too large is delivered cut,
//! with its original size and digest; overrides that break exactly-once are refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::common::{World, create_topic, create_topic_admin, eventually, shared};

const PRICING: &str = include_str!("../fixtures/starter-acme.toml");

fn event(id: &str, time: &str, minutes: u32) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"voice/eu-1","type":"call.completed","subject":"acme","time":"{time}","data":{{"call_id":"{id}","duration_ms":{},"direction":"inbound"}}}}"#,
        minutes * 60_000
    )
}

/// The group's committed offset of partition 0 of the events topic (None: nothing committed).
fn committed(w: &World) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &w.brokers)
        .set("group.id", &w.group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&w.topic, 0);
    let res = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match res.find_partition(&w.topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// 130 one-minute calls on a 120-minute plan (alerts 80%, 100%, overage) and 5 invalid
/// events, produced before the dead-letter and alerts topics exist; the topics appear 90 s
/// after the pipeline started.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_and_alert_topics_created_late_get_every_message_once() {
    let s = shared();
    let w = World::without_output_topics("outbox_late", 1, &s.brokers, &s.clickhouse_url)
        .extra(PRICING);
    let now = Utc::now();
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..130 {
        let t =
            (now - chrono::Duration::minutes(200 - i)).to_rfc3339_opts(SecondsFormat::Secs, true);
        msgs.push((
            "acme".into(),
            event(&format!("call-{i}"), &t, 1).into_bytes(),
        ));
        if i % 26 == 0 {
            msgs.push(("acme".into(), format!("not json {i}").into_bytes()));
        }
    }
    let total = msgs.len() as i64;
    w.produce(&msgs).await;
    let started = Instant::now();
    let p = w.run("i0");

    // Meanwhile: no commit, and /readyz names the undelivered messages' topic.
    let reason = eventually(Duration::from_secs(80), || async {
        matches!(get(&p.api("/readyz")).await, Some((503, b)) if b.contains(&w.dlq) || b.contains(&w.alerts))
    })
    .await;
    let body = get(&p.api("/readyz")).await;
    assert!(
        reason,
        "/readyz gives the outbox's reason: {body:?}\n{}",
        p.log_text()
    );
    while started.elapsed() < Duration::from_secs(90) {
        assert_eq!(
            committed(&w),
            None,
            "nothing is committed before the topics exist"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    create_topic(&w.brokers, &w.dlq, 1);
    create_topic(&w.brokers, &w.alerts, 1);

    let all_committed = eventually(Duration::from_secs(150), || async {
        committed(&w) == Some(total)
    })
    .await;
    assert!(
        all_committed,
        "committed {:?} of {total}\n{}",
        committed(&w),
        p.log_text()
    );
    let ready = eventually(Duration::from_secs(30), || async {
        matches!(get(&p.api("/readyz")).await, Some((200, _)))
    })
    .await;
    assert!(ready, "/readyz is 200 again");

    // Waits for a sixth copy that must not come.
    let dlq = w.read_topic(&w.dlq, 6, Duration::from_secs(20));
    assert_eq!(dlq.len(), 5, "every dead-letter copy delivered, once");
    let offsets: BTreeSet<&String> = dlq
        .iter()
        .map(|m| &m.headers["callmeter.source.offset"])
        .collect();
    assert_eq!(offsets.len(), 5);
    assert!(
        dlq.iter()
            .all(|m| m.headers["callmeter.error"] == "invalid_json")
    );

    let alerts = w.read_topic(&w.alerts, 4, Duration::from_secs(30));
    let mut kinds: Vec<String> = alerts
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        {
            kinds.sort();
            kinds
        },
        ["100%", "80%", "overage"],
        "every alert delivered once"
    );

    let metrics = get(&p.api("/metrics")).await.unwrap().1;
    assert!(
        metrics.contains("callmeter_dlq_messages_total 5"),
        "counted once delivered"
    );
    assert!(metrics.contains("callmeter_outbox_undelivered 0"));
    let stored = w
        .ch()
        .scalar(&format!(
            "SELECT toString(sum(value)) FROM {}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = 'call_minutes'",
            w.database
        ))
        .await;
    assert_eq!(stored.as_deref(), Some("130.000000000"), "totals exact");
}

/// Pseudo-random (incompressible) bytes that are not JSON.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(n);
    v.push(b'#');
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push((x >> 32) as u8);
    }
    v
}

/// A 20 kB invalid event whose copy the dead-letter topic (max.message.bytes 2048) refuses:
/// delivered cut, with the original size and digest; the pipeline keeps committing.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_dead_letter_copy_is_delivered_cut() {
    let s = shared();
    let w =
        World::without_output_topics("outbox_big", 1, &s.brokers, &s.clickhouse_url).extra(PRICING);
    create_topic_admin(&w.brokers, &w.dlq, 1, &[("max.message.bytes", "2048")]);
    create_topic(&w.brokers, &w.alerts, 1);
    let now = Utc::now();
    let t =
        |m: i64| (now - chrono::Duration::minutes(m)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let big = noise(20_000);
    let mut msgs = vec![("acme".to_string(), event("a", &t(30), 1).into_bytes())];
    msgs.push(("acme".into(), big.clone()));
    msgs.push(("acme".into(), event("b", &t(20), 1).into_bytes()));
    w.produce(&msgs).await;
    let p = w.run("i0");

    let dlq = w.read_topic(&w.dlq, 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1, "the copy is delivered\n{}", p.log_text());
    let m = &dlq[0];
    assert_eq!(m.headers["callmeter.error.truncated"], "20000");
    assert_eq!(
        m.headers["callmeter.error.sha256"],
        hex::encode(Sha256::digest(&big))
    );
    assert_eq!(m.headers["callmeter.source.offset"], "1");
    let payload = m.payload.as_deref().unwrap_or_default();
    assert!(
        payload.len() < 2048 && big.starts_with(payload),
        "a prefix of the original"
    );

    // The pipeline keeps flushing and committing, and goes on with new events.
    assert!(
        eventually(Duration::from_secs(30), || async {
            committed(&w) == Some(3)
        })
        .await
    );
    w.produce(&[("acme".into(), event("c", &t(10), 1).into_bytes())])
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            committed(&w) == Some(4)
        })
        .await
    );
    let stored = w
        .ch()
        .scalar(&format!(
            "SELECT toString(sum(value)) FROM {}.usage_rollups FINAL WHERE tenant_id = 'acme' AND meter = 'call_minutes'",
            w.database
        ))
        .await;
    assert_eq!(stored.as_deref(), Some("3.000000000"));
}

/// `enable.auto.commit = true` in `[kafka.properties]`: check-config and run exit 2 naming it.
#[tokio::test(flavor = "multi_thread")]
async fn overrides_that_break_exactly_once_are_refused() {
    for (key, value) in [
        ("enable.auto.commit", "true"),
        ("enable.auto.offset.store", "true"),
        ("isolation.level", "read_uncommitted"),
    ] {
        let w = World::new("outbox_props", 1)
            .extra(PRICING)
            .extra(&format!("[kafka.properties]\n\"{key}\" = \"{value}\"\n"));
        for cmd in ["check-config", "run"] {
            let out = w.cli(&[cmd]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} with {key}: {err}");
            assert!(err.contains(&format!("kafka.properties.{key}")), "{err}");
        }
    }
}
