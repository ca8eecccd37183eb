//! Period close: one statement per closed (tenant, period), made when the watermark passes
//! end + grace, not made again once stored, and the same statement whatever crash
//! interrupts the flush that writes it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::*;
use crate::config::Config;
use crate::subscription::SubscriptionRecord;

const CONFIG: &str = r#"
[pricing]
default_plan = "free"
[pipeline]
dedup_window = "1h"
late_event_grace = "48h"
[plans.free]
currency = "USD"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "10"
overage_rate = "0.5"
overage_cap = "2"
[plans.starter.addons.extra_minutes]
meter = "call_minutes"
included = "100"
price = "15.00"
[tenants.acme]
plan = "starter"
timezone = "Europe/Paris"
"#;

fn config() -> Config {
    Config::from_toml_str(CONFIG).unwrap()
}

fn processor(c: &Config) -> Processor {
    Processor::new(
        Shared::new(c.catalog.clone()),
        Params::from_settings(&c.settings),
    )
}

fn call(tenant: &str, id: &str, time: &str, ms: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"{tenant}","time":"{time}","data":{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}}}"#
    )
}

/// A subscription event (`ty` without its `subscription.` prefix).
fn sub(tenant: &str, id: &str, ty: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"subscription.{ty}","subject":"{tenant}","time":"{time}","data":{data}}}"#
    )
}

/// A statement's lines as `kind:item-or-meter:quantity=amount`, and its total.
fn summary(s: &Statement) -> (Vec<String>, String) {
    let b = s.body();
    let lines = b
        .lines
        .iter()
        .map(|l| {
            let tag = l.item.as_deref().or(l.meter.as_deref()).unwrap_or("");
            format!("{}:{tag}:{}={}", l.kind, l.quantity, l.amount)
        })
        .collect();
    (lines, b.total)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn secs(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

fn process(p: &mut Processor, offset: i64, payload: &str) -> Outcome {
    p.process(
        &InMessage {
            partition: 0,
            offset,
            payload: Some(payload.as_bytes()),
            timestamp_ms: Some(now().timestamp_millis() - 60_000 + offset),
        },
        now(),
    )
}

fn fresh(p: &mut Processor) {
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
}

#[test]
fn a_period_closes_once_when_the_watermark_passes_end_plus_grace() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    // October in Paris: 2026-09-30T22:00Z .. 2026-10-31T23:00Z; closed after 2026-11-02T23:00Z.
    let oct = secs("2026-09-30T22:00:00Z");
    assert_eq!(
        process(
            &mut p,
            0,
            &call("acme", "a", "2026-10-10T10:00:00Z", 360_000)
        ),
        Outcome::Counted
    );
    assert_eq!(
        process(
            &mut p,
            1,
            &call("acme", "b", "2026-10-20T10:00:00Z", 360_000)
        ),
        Outcome::Counted
    );
    assert_eq!(
        process(
            &mut p,
            2,
            &call("other", "c", "2026-10-21T10:00:00Z", 1_000)
        ),
        Outcome::Counted
    );
    // Exactly at end + grace the period is still open.
    process(
        &mut p,
        3,
        &call("acme", "d", "2026-11-02T23:00:00Z", 60_000),
    );
    let b = p.snapshot();
    assert!(b.statements.is_empty());
    assert!(p.take_new_statements().is_empty());
    p.flushed(&b.checkpoints);

    process(
        &mut p,
        4,
        &call("acme", "e", "2026-11-02T23:00:01Z", 60_000),
    );
    let b = p.snapshot();
    let sent = p.take_new_statements();
    assert_eq!(b.statements, sent);
    assert_eq!(b.statements.len(), 1, "{:?}", b.statements);
    let acme = &b.statements[0];
    assert_eq!(acme.tenant_id, "acme");
    assert_eq!(acme.period.start, oct);
    assert_eq!(acme.closed_at, secs("2026-11-02T23:00:00Z"));
    assert_eq!(
        acme.statement_id,
        crate::statement::statement_id("acme", oct)
    );
    // 12 minutes against 10 included: 2 over at 0.5.
    let body = acme.body();
    assert_eq!(body.total, "80.00");
    assert_eq!(
        body.lines
            .iter()
            .map(|l| format!("{}:{}={}", l.kind, l.quantity, l.amount))
            .collect::<Vec<_>>(),
        ["base_fee:1=79.00", "overage:2=1.00"]
    );
    assert!(p.stated("acme", oct));
    p.flushed(&b.checkpoints);

    // `other` (default plan, UTC) closes October an hour later (2026-11-03T00:00Z): a
    // statement without charges. acme's is never made again.
    process(
        &mut p,
        5,
        &call("acme", "f", "2026-11-10T00:00:00Z", 60_000),
    );
    let b = p.snapshot();
    assert_eq!(b.statements.len(), 1, "{:?}", b.statements);
    let other = &b.statements[0];
    assert_eq!(other.tenant_id, "other");
    assert!(other.lines.is_empty());
    assert_eq!(other.period.start, secs("2026-10-01T00:00:00Z"));
    assert_eq!(p.take_new_statements().len(), 1);
    p.flushed(&b.checkpoints);
    process(
        &mut p,
        6,
        &call("acme", "g", "2026-11-11T00:00:00Z", 60_000),
    );
    assert!(p.snapshot().statements.is_empty());
    assert!(p.take_new_statements().is_empty());
    // Later events of a closed period are dead-lettered.
    assert!(matches!(
        process(&mut p, 7, &call("acme", "h", "2026-10-30T00:00:00Z", 60_000)),
        Outcome::Rejected(r) if r.code == ErrorCode::PeriodClosed
    ));
}

/// CONTRACT section 10: a statement for every tenant with at least one counted event in the
/// period, usage or subscription. A period whose only events are subscription events (the
/// period of one is the tenant's usage period containing its `effective_at`) gets the
/// statement the pricing gives for zero usage, when the period closes, once; the state that
/// waited for it is freed once the statement is written.
#[test]
fn a_period_with_only_subscription_events_gets_its_statement() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let outcomes = [
        process(
            &mut p,
            0,
            &call("acme", "a", "2026-08-10T10:00:00Z", 360_000),
        ),
        // newco: created on 15 August (on the default plan `free` before), never calls.
        process(
            &mut p,
            1,
            &sub(
                "newco",
                "n1",
                "updated",
                "2026-08-15T00:00:00Z",
                r#"{"plan":"starter","timezone":"UTC","anchor_day":1}"#,
            ),
        ),
        // Sent in August, effective in October: an event of October, not of August or
        // September.
        process(
            &mut p,
            2,
            &sub(
                "newco",
                "n2",
                "updated",
                "2026-08-20T00:00:00Z",
                r#"{"plan":"starter","addons":{"extra_minutes":2},"effective_at":"2026-10-01T00:00:00Z"}"#,
            ),
        ),
        // acme cancels at midnight (Paris) on 16 September and does not call in September.
        process(
            &mut p,
            3,
            &sub(
                "acme",
                "x1",
                "canceled",
                "2026-09-10T00:00:00Z",
                r#"{"effective_at":"2026-09-15T22:00:00Z"}"#,
            ),
        ),
    ];
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Counted),
        "{outcomes:?}"
    );

    // The watermark (10 September) closes August: acme's (usage) and newco's (only its
    // creation): 17 of August's 31 days on starter.
    let b = p.snapshot();
    assert_eq!(b.statements, p.take_new_statements());
    let mut got: Vec<(String, i64, (Vec<String>, String))> = b
        .statements
        .iter()
        .map(|s| (s.tenant_id.clone(), s.period.start, summary(s)))
        .collect();
    got.sort();
    let aug = secs("2026-08-01T00:00:00Z");
    assert_eq!(
        got,
        [
            (
                "acme".to_string(),
                secs("2026-07-31T22:00:00Z"),
                (vec!["base_fee::1=79.00".to_string()], "79.00".to_string())
            ),
            (
                "newco".to_string(),
                aug,
                (
                    vec!["base_fee:starter:0.548387=43.32".to_string()],
                    "43.32".to_string()
                )
            ),
        ]
    );
    let newco = b
        .statements
        .iter()
        .find(|s| s.tenant_id == "newco")
        .unwrap();
    assert_eq!(newco.plan, "starter");
    assert_eq!(newco.period.end, secs("2026-09-01T00:00:00Z"));
    assert_eq!(newco.closed_at, secs("2026-09-03T00:00:00Z"));
    assert_eq!(
        newco.statement_id,
        crate::statement::statement_id("newco", aug)
    );
    assert!(p.stated("newco", aug));
    p.flushed(&b.checkpoints);

    // September closes (5 October): acme's cancellation is its only September event: half
    // of September's base fee. newco has no event in September: no statement.
    process(
        &mut p,
        4,
        &call("other", "o1", "2026-10-05T00:00:00Z", 60_000),
    );
    let b = p.snapshot();
    let got: Vec<(String, (Vec<String>, String))> = b
        .statements
        .iter()
        .map(|s| (s.tenant_id.clone(), summary(s)))
        .collect();
    assert_eq!(
        got,
        [(
            "acme".to_string(),
            (
                vec!["base_fee:starter:0.5=39.50".to_string()],
                "39.50".to_string()
            )
        )]
    );
    assert_eq!(b.statements[0].period.start, secs("2026-08-31T22:00:00Z"));
    assert_eq!(p.take_new_statements().len(), 1);
    p.flushed(&b.checkpoints);

    // October closes: newco's add-on change effective on 1 October.
    process(
        &mut p,
        5,
        &call("other", "o2", "2026-11-04T00:00:00Z", 60_000),
    );
    let b = p.snapshot();
    let mut got: Vec<(String, (Vec<String>, String))> = b
        .statements
        .iter()
        .map(|s| (s.tenant_id.clone(), summary(s)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "newco".to_string(),
                (
                    vec![
                        "base_fee::1=79.00".to_string(),
                        "addon:extra_minutes:2=30.00".to_string()
                    ],
                    "109.00".to_string()
                )
            ),
            ("other".to_string(), (vec![], "0.00".to_string())),
        ]
    );
    let oct = secs("2026-10-01T00:00:00Z");
    assert!(p.stated("newco", oct));
    p.take_new_statements();
    p.flushed(&b.checkpoints);

    // Written: nothing of newco's periods is kept, and nothing is made again.
    assert!(!p.stated("newco", aug));
    assert!(!p.stated("newco", oct));
    assert_eq!(p.watched_periods(), 0);
    process(
        &mut p,
        6,
        &call("other", "o3", "2026-11-20T00:00:00Z", 60_000),
    );
    assert!(p.snapshot().statements.is_empty());
}

#[test]
fn a_failed_flush_writes_the_same_statements_again_without_sending_them_again() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    process(
        &mut p,
        0,
        &call("acme", "a", "2026-10-10T10:00:00Z", 360_000),
    );
    process(
        &mut p,
        1,
        &call("acme", "b", "2026-11-05T10:00:00Z", 360_000),
    );
    let b = p.snapshot();
    assert_eq!(b.statements.len(), 1);
    assert_eq!(p.take_new_statements().len(), 1);
    let first = b.statements.clone();
    p.unflushed(b);
    let b = p.snapshot();
    assert_eq!(b.statements, first);
    assert!(p.take_new_statements().is_empty());
    p.flushed(&b.checkpoints);
    assert!(p.snapshot().statements.is_empty());
}

fn restored_closed_october(stated: bool) -> Restored {
    let oct = secs("2026-09-30T22:00:00Z");
    Restored {
        partition: 0,
        rows: vec![StoredRow {
            tenant: "acme".into(),
            meter: "call_minutes".into(),
            period_start: oct,
            period_end: secs("2026-10-31T23:00:00Z"),
            raw: Decimal::from(720_000),
            events: 2,
            through_offset: 2,
            rollup_stale: false,
        }],
        checkpoint: Some(Checkpoint {
            partition: 0,
            position: 2,
            // Just past end + grace: the row is within restore's one-second margin.
            watermark_us: (secs("2026-11-02T23:00:00Z") + 1) * 1_000_000 + 1,
            max_ts_ms: now().timestamp_millis() - 60_000,
        }),
        replay_from: 2,
        stated: if stated {
            vec![("acme".into(), oct)]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

#[test]
fn a_stored_statement_is_not_made_again_after_a_restore() {
    let c = config();
    let mut p = processor(&c);
    p.assign(0);
    p.install(restored_closed_october(true));
    process(
        &mut p,
        2,
        &call("acme", "x", "2026-11-06T10:00:00Z", 60_000),
    );
    assert!(p.snapshot().statements.is_empty());
    assert!(p.take_new_statements().is_empty());

    // Without a stored statement (rows from before statements existed) it is made.
    let mut p = processor(&c);
    p.assign(0);
    p.install(restored_closed_october(false));
    process(
        &mut p,
        2,
        &call("acme", "x", "2026-11-06T10:00:00Z", 60_000),
    );
    let b = p.snapshot();
    assert_eq!(b.statements.len(), 1);
    assert_eq!(b.statements[0].body().total, "80.00");
}

/// A subscription record as stored for partition 0.
fn record(
    tenant: &str,
    event_id: &str,
    effective: &str,
    through_offset: i64,
) -> SubscriptionRecord {
    SubscriptionRecord {
        tenant: tenant.into(),
        plan: "starter".into(),
        addons: Default::default(),
        billing_cycle: crate::pricing::BillingCycle::Monthly,
        effective_at: secs(effective),
        canceled: false,
        event_id: event_id.into(),
        partition: 0,
        through_offset,
        timezone: Some("UTC".into()),
        anchor_day: Some(1),
        stripe_customer_id: None,
    }
}

/// Partition 0 restored with newco's creation (15 August, stored) and a checkpoint at
/// `watermark`, with or without newco's August statement stored.
fn restored_newco(watermark: &str, stated: bool) -> Restored {
    Restored {
        partition: 0,
        checkpoint: Some(Checkpoint {
            partition: 0,
            position: 1,
            watermark_us: secs(watermark) * 1_000_000,
            max_ts_ms: now().timestamp_millis() - 60_000,
        }),
        replay_from: 1,
        subscriptions: vec![record("newco", "n1", "2026-08-15T00:00:00Z", 1)],
        stated: if stated {
            vec![("newco".into(), secs("2026-08-01T00:00:00Z"))]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

/// A restore finds the period of a stored subscription record again: still open under the
/// checkpoint, it is stated when it closes, unless its statement was stored (a crash
/// between the statement and the checkpoint); closed under the checkpoint, its statement
/// was stored with that checkpoint and nothing is watched.
#[test]
fn a_restored_subscription_period_is_stated_once() {
    let c = config();
    let aug = secs("2026-08-01T00:00:00Z");
    let close_august = |p: &mut Processor| {
        process(p, 1, &call("other", "o1", "2026-09-10T00:00:00Z", 60_000));
        let b = p.snapshot();
        assert_eq!(b.statements, p.take_new_statements());
        b
    };

    let mut p = processor(&c);
    p.assign(0);
    p.install(restored_newco("2026-08-20T00:00:00Z", false));
    assert_eq!(p.watched_periods(), 1);
    let b = close_august(&mut p);
    let got: Vec<(String, i64, (Vec<String>, String))> = b
        .statements
        .iter()
        .map(|s| (s.tenant_id.clone(), s.period.start, summary(s)))
        .collect();
    assert_eq!(
        got,
        [(
            "newco".to_string(),
            aug,
            (
                vec!["base_fee:starter:0.548387=43.32".to_string()],
                "43.32".to_string()
            )
        )]
    );
    p.flushed(&b.checkpoints);
    assert_eq!(p.watched_periods(), 0);
    assert!(!p.stated("newco", aug));

    let mut p = processor(&c);
    p.assign(0);
    p.install(restored_newco("2026-08-20T00:00:00Z", true));
    assert!(p.stated("newco", aug));
    let b = close_august(&mut p);
    assert!(b.statements.is_empty(), "{:?}", b.statements);
    p.flushed(&b.checkpoints);
    assert_eq!(p.watched_periods(), 0);
    assert!(!p.stated("newco", aug));

    let mut p = processor(&c);
    p.assign(0);
    p.install(restored_newco("2026-09-05T00:00:00Z", false));
    assert_eq!(p.watched_periods(), 0);
    assert!(close_august(&mut p).statements.is_empty());
}

/// ClickHouse as the crash test sees it: state rows (the newest `through_offset` wins),
/// subscription records (likewise), the checkpoint, and statement rows by id (a statement
/// written again replaces itself).
#[derive(Default)]
struct Store {
    rows: BTreeMap<(String, String, i64), RollupRecord>,
    subscriptions: BTreeMap<(String, i64, String), SubscriptionRecord>,
    checkpoint: Option<Checkpoint>,
    statements: BTreeMap<String, Statement>,
}

impl Store {
    /// Writes a batch in the sink's order, stopping after `steps` of: subscriptions and
    /// rows, statements, checkpoint.
    fn write(&mut self, b: &FlushBatch, steps: usize) {
        if steps >= 1 {
            for r in &b.subscriptions {
                let k = (r.tenant.to_string(), r.effective_at, r.event_id.clone());
                if self
                    .subscriptions
                    .get(&k)
                    .is_none_or(|o| o.through_offset <= r.through_offset)
                {
                    self.subscriptions.insert(k, r.clone());
                }
            }
            for r in &b.rows {
                let k = (r.tenant.to_string(), r.meter.to_string(), r.period_start);
                if self
                    .rows
                    .get(&k)
                    .is_none_or(|o| o.through_offset <= r.through_offset)
                {
                    self.rows.insert(k, r.clone());
                }
            }
        }
        if steps >= 2 {
            for s in &b.statements {
                self.statements.insert(s.statement_id.clone(), s.clone());
            }
        }
        if steps >= 3 {
            for c in &b.checkpoints {
                if self
                    .checkpoint
                    .as_ref()
                    .is_none_or(|o| o.position <= c.position)
                {
                    self.checkpoint = Some(c.clone());
                }
            }
        }
    }

    fn restore(&self, grace: i64) -> Restored {
        let min_end = match &self.checkpoint {
            Some(c) if c.watermark_us != i64::MIN => {
                c.watermark_us.div_euclid(1_000_000) - grace - 1
            }
            _ => 0,
        };
        let rows: Vec<StoredRow> = self
            .rows
            .values()
            .filter(|r| r.period_end >= min_end)
            .map(|r| StoredRow {
                tenant: r.tenant.to_string(),
                meter: r.meter.to_string(),
                period_start: r.period_start,
                period_end: r.period_end,
                raw: r.raw,
                events: r.events,
                through_offset: r.through_offset,
                rollup_stale: false,
            })
            .collect();
        let position = self.checkpoint.as_ref().map(|c| c.position).unwrap_or(0);
        let mut subscriptions: Vec<SubscriptionRecord> = self
            .subscriptions
            .values()
            .filter(|r| r.through_offset <= position)
            .cloned()
            .collect();
        subscriptions
            .sort_by(|a, b| (a.through_offset, &a.event_id).cmp(&(b.through_offset, &b.event_id)));
        // The statements of the restored rows' periods, and of the periods ending at or
        // after the bound of the tenants with subscription records.
        let stated = self
            .statements
            .values()
            .filter(|s| {
                rows.iter()
                    .any(|r| r.tenant == s.tenant_id && r.period_start == s.period.start)
                    || (s.period.end >= min_end
                        && self.subscriptions.keys().any(|k| k.0 == s.tenant_id))
            })
            .map(|s| (s.tenant_id.clone(), s.period.start))
            .collect();
        let mut first: BTreeMap<String, i64> = BTreeMap::new();
        for r in self.rows.values() {
            let f = first.entry(r.tenant.to_string()).or_insert(r.period_start);
            *f = (*f).min(r.period_start);
        }
        Restored {
            partition: 0,
            rows,
            checkpoint: self.checkpoint.clone(),
            replay_from: 0,
            first_periods: first.into_iter().collect(),
            subscriptions,
            stated,
            ..Default::default()
        }
    }
}

/// Messages: (tenant, id, duration, day since 2026-08-01), in day order with a little
/// disorder; Kafka timestamps a second apart.
fn messages(events: &[(u8, u32, u64, u16)]) -> Vec<String> {
    let mut ev = events.to_vec();
    ev.sort_by_key(|e| e.3 / 3);
    let base = secs("2026-08-01T08:00:00Z");
    ev.iter()
        .map(|(t, id, ms, day)| {
            let tenant = ["acme", "t1", "t2"][*t as usize % 3];
            let time = DateTime::<Utc>::from_timestamp(base + *day as i64 * 86_400, 0)
                .unwrap()
                .to_rfc3339();
            call(tenant, &format!("id{id}"), &time, *ms)
        })
        .collect()
}

/// Messages with subscription events: (kind, tenant, id, duration, day since 2026-08-01),
/// in day order with a little disorder. Kinds 0 and 1 are calls, 2 a
/// `subscription.updated` (to `starter` with 0..2 add-on units or to `free`), 3 a
/// `subscription.canceled`, each effective up to 3 days before its time (so a later change
/// can reach back before an earlier call). `solo` (tenant 3), created by the first message,
/// never calls, so its periods have only subscription events. Calls and subscription events
/// draw their ids from one range: a call and a subscription event can be copies of one
/// identity, so a decision on either decides the other's dedup.
fn messages_with_subscriptions(events: &[(u8, u8, u32, u64, u16)]) -> Vec<String> {
    let mut ev = events.to_vec();
    ev.sort_by_key(|e| e.4 / 3);
    let base = secs("2026-08-01T08:00:00Z");
    let at = |day: u16, back: i64| {
        DateTime::<Utc>::from_timestamp(base + (day as i64 - back) * 86_400, 0)
            .unwrap()
            .to_rfc3339()
    };
    let mut out = vec![sub(
        "solo",
        "s-created",
        "updated",
        &at(0, 0),
        r#"{"plan":"starter","timezone":"UTC","anchor_day":1}"#,
    )];
    out.extend(ev.iter().map(|&(kind, t, id, ms, day)| {
        let tenant = ["acme", "t1", "t2", "solo"][t as usize % 4];
        let kind = if tenant == "solo" { 2 + kind % 2 } else { kind };
        let id = format!("e{id}");
        let effective = at(day, ms as i64 % 4);
        match kind {
            0 | 1 => call(tenant, &id, &at(day, 0), ms),
            3 => sub(
                tenant,
                &id,
                "canceled",
                &at(day, 0),
                &format!(r#"{{"effective_at":"{effective}"}}"#),
            ),
            _ => {
                let zone = if tenant == "acme" {
                    ""
                } else {
                    r#","timezone":"UTC","anchor_day":1"#
                };
                let plan = if ms % 2 == 0 {
                    format!(
                        r#""plan":"starter","addons":{{"extra_minutes":{}}}"#,
                        ms % 3
                    )
                } else {
                    r#""plan":"free""#.to_string()
                };
                let data = format!(r#"{{{plan}{zone},"effective_at":"{effective}"}}"#);
                sub(tenant, &id, "updated", &at(day, 0), &data)
            }
        }
    }));
    out
}

/// Runs `msgs` once without interruption and once with the flushes interrupted by
/// `crashes` ((messages processed, steps of the flush written)), each followed by a
/// restore from the store; checks that both store the same statements, and that every
/// message sent (a repeat after a crash included) is a stored statement. Returns the
/// uninterrupted run's processor, outcomes and store.
fn crash_property(
    msgs: &[String],
    crashes: Vec<(usize, usize)>,
    flush_every: usize,
) -> Result<(Processor, Vec<Outcome>, Store), TestCaseError> {
    let c = config();
    let grace = 172_800;

    // One uninterrupted run.
    let mut want = Store::default();
    let mut p = processor(&c);
    fresh(&mut p);
    let mut outcomes = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        outcomes.push(process(&mut p, i as i64, m));
        if (i + 1).is_multiple_of(flush_every) {
            let b = p.snapshot();
            want.write(&b, 3);
            p.flushed(&b.checkpoints);
        }
    }
    let b = p.snapshot();
    want.write(&b, 3);
    p.flushed(&b.checkpoints);
    let uninterrupted = p;

    let mut store = Store::default();
    let mut sent: Vec<Statement> = Vec::new();
    let mut p = processor(&c);
    p.assign(0);
    p.install(store.restore(grace));
    let mut crashes = crashes;
    crashes.sort();
    let mut next = crashes.into_iter().peekable();
    let (mut i, mut processed) = (0usize, 0usize);
    while i < msgs.len() {
        process(&mut p, i as i64, &msgs[i]);
        i += 1;
        processed += 1;
        if processed.is_multiple_of(flush_every) {
            let b = p.snapshot();
            sent.extend(p.take_new_statements());
            store.write(&b, 3);
            p.flushed(&b.checkpoints);
        }
        if let Some((at, steps)) = next.peek().copied()
            && processed >= at
        {
            next.next();
            // The flush's messages are produced before it writes; then it stops.
            let b = p.snapshot();
            sent.extend(p.take_new_statements());
            store.write(&b, steps);
            p = processor(&c);
            p.assign(0);
            p.install(store.restore(grace));
            i = 0;
        }
    }
    let b = p.snapshot();
    sent.extend(p.take_new_statements());
    store.write(&b, 3);

    prop_assert_eq!(&store.statements, &want.statements);
    for s in &sent {
        prop_assert_eq!(Some(s), store.statements.get(&s.statement_id));
    }
    for id in store.statements.keys() {
        prop_assert!(sent.iter().any(|s| &s.statement_id == id));
    }
    Ok((uninterrupted, outcomes, want))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Whatever crashes interrupt the flushes, each closed (tenant, period) ends with one
    /// stored statement, equal to the one an uninterrupted run makes, and every message
    /// sent for it (a repeat after a crash included) is that same statement.
    #[test]
    fn crashes_never_change_or_duplicate_statements(
        events in prop::collection::vec((0u8..3, 0u32..60, 0u64..900_000, 0u16..110), 1..90),
        crashes in prop::collection::vec((1usize..90, 0usize..4), 0..5),
        flush_every in 1usize..20,
    ) {
        crash_property(&messages(&events), crashes, flush_every)?;
    }

    /// The same with subscription events, some in periods without usage: and every period
    /// with a counted subscription event (the period of its `effective_at`) that closed has
    /// its statement, and nothing stays watched once it closed.
    #[test]
    fn crashes_never_change_or_duplicate_statements_of_subscription_periods(
        events in prop::collection::vec(
            (0u8..4, 0u8..4, 0u32..60, 0u64..900_000, 0u16..110), 1..90),
        crashes in prop::collection::vec((1usize..90, 0usize..4), 0..5),
        flush_every in 1usize..20,
    ) {
        let msgs = messages_with_subscriptions(&events);
        let (p, outcomes, store) = crash_property(&msgs, crashes, flush_every)?;
        let wm_secs = p.partition(0).unwrap().watermark_us.div_euclid(1_000_000);
        let grace = 172_800;
        let mut watched = 0;
        for (m, o) in msgs.iter().zip(&outcomes) {
            let ev: serde_json::Value = serde_json::from_str(m).unwrap();
            let ty = ev["type"].as_str().unwrap();
            if *o != Outcome::Counted || !ty.starts_with("subscription.") {
                continue;
            }
            let tenant = ev["subject"].as_str().unwrap();
            let at = ev["data"]["effective_at"].as_str().or(ev["time"].as_str()).unwrap();
            let at = DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc);
            let tz = if tenant == "acme" { chrono_tz::Europe::Paris } else { chrono_tz::UTC };
            let period = crate::period::period_containing(tz, 1, at);
            if period.end + grace < wm_secs {
                prop_assert!(
                    store.statements.contains_key(&crate::statement::statement_id(tenant, period.start)),
                    "no statement for {} {:?}", tenant, period
                );
            } else {
                watched += 1;
            }
        }
        // Periods still open stay watched (at most one entry per counted event).
        prop_assert!(p.watched_periods() <= watched);
        if watched == 0 {
            prop_assert_eq!(p.watched_periods(), 0);
        }
    }
}
