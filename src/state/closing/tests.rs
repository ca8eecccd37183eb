//! Period close: one statement per closed (tenant, period), made when the watermark passes
//! end + grace, not made again once stored, and the same statement whatever crash
//! interrupts the flush that writes it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::*;
use crate::config::Config;

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

/// ClickHouse as the crash test sees it: state rows (the newest `through_offset` wins), the
/// checkpoint, and statement rows by id (a statement written again replaces itself).
#[derive(Default)]
struct Store {
    rows: BTreeMap<(String, String, i64), RollupRecord>,
    checkpoint: Option<Checkpoint>,
    statements: BTreeMap<String, Statement>,
}

impl Store {
    /// Writes a batch in the sink's order, stopping after `steps` of: rows, statements,
    /// checkpoint.
    fn write(&mut self, b: &FlushBatch, steps: usize) {
        if steps >= 1 {
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
        let stated = self
            .statements
            .values()
            .filter(|s| {
                rows.iter()
                    .any(|r| r.tenant == s.tenant_id && r.period_start == s.period.start)
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
        let c = config();
        let msgs = messages(&events);
        let grace = 172_800;

        // One uninterrupted run.
        let mut want = Store::default();
        let mut p = processor(&c);
        fresh(&mut p);
        for (i, m) in msgs.iter().enumerate() {
            process(&mut p, i as i64, m);
            if (i + 1).is_multiple_of(flush_every) {
                let b = p.snapshot();
                want.write(&b, 3);
                p.flushed(&b.checkpoints);
            }
        }
        let b = p.snapshot();
        want.write(&b, 3);

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
            if let Some((at, steps)) = next.peek().copied() && processed >= at {
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
    }
}
