//! Subscription events through the processor: applied in partition order with the usage,
//! deduplicated, alerts judged against the new limit, `no_subscription` after a
//! cancellation, `unknown_plan`, written in the flush before the checkpoint, and replay-safe
//! (a restore from the stored records and a replay past the checkpoint give the same state).

use chrono::{DateTime, Utc};

use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[plans.basic]
currency = "USD"
base_fee = "30.00"
[plans.basic.meters.call_minutes]
included = "100"
overage_rate = "0.10"
[plans.pro]
currency = "USD"
base_fee = "90.00"
[plans.pro.meters.call_minutes]
included = "1000"
overage_rate = "0.05"
[tenants.acme]
plan = "basic"
"#;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn call(id: &str, time: &str, minutes: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"acme","time":"{time}","data":{{"call_id":"{id}","duration_ms":{},"direction":"inbound"}}}}"#,
        minutes * 60_000
    )
}

fn sub(id: &str, ty: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"billing","type":"{ty}","subject":"acme","time":"{time}","data":{data}}}"#
    )
}

fn events() -> Vec<String> {
    vec![
        call("c1", "2026-11-10T10:00:00Z", 50),
        sub(
            "u1",
            "subscription.updated",
            "2026-11-11T00:00:00Z",
            r#"{"plan":"pro"}"#,
        ),
        sub(
            "u1",
            "subscription.updated",
            "2026-11-11T00:00:00Z",
            r#"{"plan":"pro"}"#,
        ),
        call("c2", "2026-11-12T10:00:00Z", 700),
        call("c3", "2026-11-13T10:00:00Z", 100),
        sub("x1", "subscription.canceled", "2026-11-20T00:00:00Z", "{}"),
        call("c4", "2026-11-21T10:00:00Z", 5),
        sub(
            "p1",
            "subscription.updated",
            "2026-11-21T00:00:00Z",
            r#"{"plan":"gold"}"#,
        ),
    ]
}

fn processor(c: &Config) -> Processor {
    Processor::new(
        Shared::new(c.catalog.clone()),
        Params::from_settings(&c.settings),
    )
}

/// A processor owning partition 0, restored empty.
fn owning_partition_0(c: &Config) -> Processor {
    let mut p = processor(c);
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
    p
}

fn feed(p: &mut Processor, from: usize, evs: &[String]) -> Vec<Outcome> {
    let ts0 = now().timestamp_millis() - 60_000;
    evs.iter()
        .enumerate()
        .skip(from)
        .map(|(i, e)| {
            p.process(
                &InMessage {
                    partition: 0,
                    offset: i as i64,
                    payload: Some(e.as_bytes()),
                    timestamp_ms: Some(ts0 + i as i64),
                },
                now(),
            )
        })
        .collect()
}

fn code(o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Rejected(r) => Some(r.code.as_str()),
        _ => None,
    }
}

#[test]
fn subscription_events_apply_in_order_and_replay_the_same() {
    let c = Config::from_toml_str(CONFIG).unwrap();
    let mut p = owning_partition_0(&c);
    let evs = events();
    let out = feed(&mut p, 0, &evs);
    assert_eq!(out[0], Outcome::Counted);
    assert_eq!(out[1], Outcome::Counted);
    assert_eq!(out[2], Outcome::Duplicate);
    assert_eq!(out[3], Outcome::Counted);
    assert_eq!(out[5], Outcome::Counted);
    assert_eq!(code(&out[6]), Some("no_subscription"));
    assert_eq!(code(&out[7]), Some("unknown_plan"));
    // 750 minutes after the upgrade: no alert (80% of pro's 1000 is 800); 850: 80%, once.
    let alerts = p.take_new_alerts();
    assert_eq!(
        alerts
            .iter()
            .map(|a| a.kind.to_string())
            .collect::<Vec<_>>(),
        ["80%"]
    );
    assert_eq!(
        alerts[0].limit.as_ref().map(|l| l.to_string()),
        Some("1000".into())
    );
    assert_eq!(alerts[0].event_id, "c3");
    let t = p.shared().tenant("acme").unwrap();
    assert_eq!(t.plan_changes.len(), 2);
    assert!(t.plan_changes[1].canceled);

    // The flush writes both records, with the checkpoint past them.
    let batch = p.snapshot();
    assert_eq!(batch.subscriptions.len(), 2);
    assert_eq!(batch.subscriptions[0].through_offset, 2);
    assert_eq!(batch.subscriptions[1].through_offset, 6);
    assert_eq!(batch.checkpoints[0].position, 8);
    let stored = batch.subscriptions.clone();

    // A failed flush gives them back for the next one.
    p.unflushed(batch);
    assert_eq!(p.snapshot().subscriptions.len(), 2);

    // Restored with both records at the checkpoint: the same tenant.
    let mut r = processor(&c);
    r.assign(0);
    r.install(Restored {
        partition: 0,
        subscriptions: stored.clone(),
        checkpoint: Some(Checkpoint {
            partition: 0,
            position: 8,
            watermark_us: p.partition(0).unwrap().watermark_us,
            max_ts_ms: p.partition(0).unwrap().max_ts_ms,
        }),
        replay_from: 8,
        ..Default::default()
    });
    assert_eq!(
        r.shared().tenant("acme").unwrap().plan_changes,
        t.plan_changes
    );

    // Restored at a checkpoint between the two (only the first stored at or below it), then
    // the partition replayed from the start: the second is applied again, once.
    let mut r = processor(&c);
    r.assign(0);
    r.install(Restored {
        partition: 0,
        subscriptions: stored[..1].to_vec(),
        checkpoint: Some(Checkpoint {
            partition: 0,
            position: 4,
            watermark_us: DateTime::parse_from_rfc3339("2026-11-12T10:00:00Z")
                .unwrap()
                .timestamp_micros(),
            max_ts_ms: 0,
        }),
        replay_from: 0,
        ..Default::default()
    });
    let out = feed(&mut r, 0, &evs);
    assert!(out[..4].iter().all(|o| *o == Outcome::Replayed), "{out:?}");
    assert_eq!(out[5], Outcome::Counted);
    assert_eq!(code(&out[6]), Some("no_subscription"));
    assert_eq!(
        r.shared().tenant("acme").unwrap().plan_changes,
        t.plan_changes
    );
    let again = r.snapshot();
    assert_eq!(again.subscriptions, stored[1..].to_vec());

    // Revoked: the records go with the partition.
    r.revoke(0);
    assert!(r.shared().subscribed_tenant("acme").is_none());
    assert!(r.shared().tenant("acme").unwrap().plan_changes.is_empty());
}

#[test]
fn a_tenant_created_by_an_event_survives_a_restore() {
    let c = Config::from_toml_str(CONFIG).unwrap();
    let mut p = owning_partition_0(&c);
    let mk = |tenant: &str, id: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"b","type":"subscription.updated","subject":"{tenant}","time":"2026-11-16T00:00:00Z","data":{data}}}"#
        )
    };
    let usage = |id: &str, time: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"newco","time":"{time}","data":{{"call_id":"{id}","duration_ms":60000,"direction":"inbound"}}}}"#
        )
    };
    let evs = vec![
        usage("early", "2026-11-15T00:00:00Z"),
        mk("newco", "n0", r#"{"plan":"pro"}"#),
        mk(
            "newco",
            "n1",
            r#"{"plan":"pro","timezone":"Asia/Jerusalem","anchor_day":16}"#,
        ),
        usage("late", "2026-11-17T00:00:00Z"),
        mk("newco", "n2", r#"{"plan":"pro","timezone":"UTC"}"#),
    ];
    let out = feed(&mut p, 0, &evs);
    assert_eq!(code(&out[0]), Some("unknown_tenant"));
    assert_eq!(code(&out[1]), Some("invalid_data"));
    assert_eq!(out[2], Outcome::Counted);
    assert_eq!(out[3], Outcome::Counted);
    assert_eq!(code(&out[4]), Some("invalid_data"));
    let batch = p.snapshot();
    assert_eq!(batch.rows.len(), 2, "calls and call_minutes of newco");
    let mut r = processor(&c);
    r.assign(0);
    r.install(Restored {
        partition: 0,
        subscriptions: batch.subscriptions.clone(),
        checkpoint: Some(batch.checkpoints[0].clone()),
        replay_from: 5,
        ..Default::default()
    });
    let t = r.shared().tenant("newco").unwrap();
    assert_eq!((t.tz.name(), t.anchor_day), ("Asia/Jerusalem", 16));
    assert_eq!(t.plan_at(now()).id, "pro");
}

/// A downgrade inside a period lowers the thresholds: the next event is judged against the
/// new limit at once, although the raw sum below which nothing could fire on the old plan
/// was cached with the tenant's period (the subscription change outdates it).
#[test]
fn a_downgrade_fires_the_lower_thresholds_at_the_next_event() {
    let c = Config::from_toml_str(CONFIG).unwrap();
    let mut p = owning_partition_0(&c);
    let evs = vec![
        sub(
            "u1",
            "subscription.updated",
            "2026-11-01T00:00:00Z",
            r#"{"plan":"pro"}"#,
        ),
        call("c1", "2026-11-10T10:00:00Z", 300),
        call("c2", "2026-11-10T11:00:00Z", 100),
        sub(
            "d1",
            "subscription.updated",
            "2026-11-10T12:00:00Z",
            r#"{"plan":"basic"}"#,
        ),
        call("c3", "2026-11-10T13:00:00Z", 1),
    ];
    let out = feed(&mut p, 0, &evs);
    assert!(out.iter().all(|o| *o == Outcome::Counted), "{out:?}");
    let alerts = p.take_new_alerts();
    // 400 of pro's 1000 minutes: nothing; 401 of basic's 100: 80%, 100% and overage.
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.kind.to_string(), a.event_id.to_string()))
            .collect::<Vec<_>>(),
        [
            ("80%".to_string(), "c3".to_string()),
            ("100%".to_string(), "c3".to_string()),
            ("overage".to_string(), "c3".to_string())
        ]
    );
}

/// A replay judges each message against the subscription records of the events before it,
/// not against the ones a restore applied from later events. acme cancels (offset 1), a call
/// after the cancellation is refused (offset 2), and a later event re-subscribes acme from a
/// time before that call (offset 3); the checkpoint is past all three. Replayed from the
/// start, the call must fail again as `no_subscription`: it leaves the watermark and the dedup
/// set alone, so past the checkpoint a late October call still counts (not `period_closed`
/// under a watermark in November) and a copy of the refused call counts (not `duplicate`).
#[test]
fn a_replay_judges_a_call_against_the_subscription_at_its_offset() {
    let c = Config::from_toml_str(CONFIG).unwrap();
    let evs = vec![
        call("c1", "2026-10-20T10:00:00Z", 10),
        sub("x1", "subscription.canceled", "2026-10-25T00:00:00Z", "{}"),
        call("c2", "2026-11-05T10:00:00Z", 5),
        sub(
            "u1",
            "subscription.updated",
            "2026-10-27T00:00:00Z",
            r#"{"plan":"basic","effective_at":"2026-10-26T00:00:00Z"}"#,
        ),
        // Past the checkpoint (position 4).
        call("c3", "2026-10-28T10:00:00Z", 7),
        call("c2", "2026-11-05T10:00:00Z", 5),
    ];

    // One run without a crash.
    let mut p = owning_partition_0(&c);
    let first = feed(&mut p, 0, &evs[..4]);
    assert_eq!(first[..2], [Outcome::Counted, Outcome::Counted]);
    assert_eq!(code(&first[2]), Some("no_subscription"));
    assert_eq!(first[3], Outcome::Counted);
    let batch = p.snapshot();
    let ck = batch.checkpoints[0].clone();
    assert_eq!(ck.position, 4);
    assert_eq!(
        ck.watermark_us,
        DateTime::parse_from_rfc3339("2026-10-27T00:00:00Z")
            .unwrap()
            .timestamp_micros(),
        "the refused call did not move the watermark"
    );
    let entries = p.dedup_entries();
    assert_eq!(entries, 3, "c1, x1 and u1; not the refused c2");
    let after = feed(&mut p, 4, &evs);
    assert_eq!(after, [Outcome::Counted, Outcome::Counted]);

    // Restored at the checkpoint (both records applied, the re-subscription from offset 3
    // included) and replayed from the start: the same decisions.
    let mut r = processor(&c);
    r.assign(0);
    r.install(Restored {
        partition: 0,
        subscriptions: batch.subscriptions.clone(),
        checkpoint: Some(ck.clone()),
        replay_from: 0,
        ..Default::default()
    });
    assert_eq!(r.shared().tenant("acme").unwrap().plan_changes.len(), 2);
    let replayed = feed(&mut r, 0, &evs[..4]);
    assert!(
        replayed.iter().all(|o| *o == Outcome::Replayed),
        "{replayed:?}"
    );
    assert_eq!(r.partition(0).unwrap().watermark_us, ck.watermark_us);
    assert_eq!(r.dedup_entries(), entries);
    assert_eq!(feed(&mut r, 4, &evs), after);
    // Readers saw the tenant as counted all along.
    assert_eq!(
        r.shared().tenant("acme").unwrap().plan_changes,
        p.shared().tenant("acme").unwrap().plan_changes
    );
}
