use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
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
    let shared = Shared::new(c.catalog.clone());
    Processor::new(shared, Params::from_settings(&c.settings))
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

/// Feeds payloads to partition 0 from `offset`, timestamps 1 ms apart from `ts0`.
fn feed(p: &mut Processor, from: i64, payloads: &[String], ts0: i64) -> Vec<Outcome> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, pl)| {
            p.process(
                &InMessage {
                    partition: 0,
                    offset: from + i as i64,
                    payload: Some(pl.as_bytes()),
                    timestamp_ms: Some(ts0 + i as i64),
                },
                now(),
            )
        })
        .collect()
}

fn fresh(p: &mut Processor) {
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
}

fn usage(p: &Processor, tenant: &str, meter: &str, period_start: i64) -> Option<Decimal> {
    let cat = p.catalog.clone();
    let mid = cat.meter_id(meter).unwrap();
    let t = p.shared.tenants.get(tenant)?;
    p.shared
        .tenant_raw(t, mid, period_start)
        .map(|(raw, _)| cat.meter(mid).value(raw))
}

fn ts(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

#[test]
fn counts_meters_and_drops_duplicates() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis() - 10_000;
    let out = feed(
        &mut p,
        0,
        &[
            call("acme", "a", "2026-11-20T10:00:00Z", 90_000),
            call("acme", "b", "2026-11-20T10:01:00Z", 30_000),
            call("acme", "a", "2026-11-20T10:00:00Z", 90_000),
        ],
        t0,
    );
    assert_eq!(
        out,
        vec![Outcome::Counted, Outcome::Counted, Outcome::Duplicate]
    );
    let start = ts("2026-11-01T00:00:00+01:00");
    assert_eq!(
        usage(&p, "acme", "call_minutes", start),
        Some(Decimal::from(2))
    );
    assert_eq!(usage(&p, "acme", "calls", start), Some(Decimal::from(2)));
    assert_eq!(usage(&p, "acme", "revenue", start), None);
}

#[test]
fn duplicate_after_the_window_counts_again() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let e = call("acme", "a", "2026-11-20T10:00:00Z", 60_000);
    let t0 = now().timestamp_millis() - 3 * 3600 * 1000;
    assert_eq!(
        feed(&mut p, 0, std::slice::from_ref(&e), t0),
        vec![Outcome::Counted]
    );
    assert_eq!(
        feed(&mut p, 1, std::slice::from_ref(&e), t0 + 3_600_001),
        vec![Outcome::Counted]
    );
    assert_eq!(
        feed(&mut p, 2, std::slice::from_ref(&e), t0 + 3_600_002),
        vec![Outcome::Duplicate]
    );
}

#[test]
fn rejections() {
    let c = Config::from_toml_str(&CONFIG.replace("default_plan = \"free\"", "")).unwrap();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis();
    let code = |o: &Outcome| match o {
        Outcome::Rejected(r) => r.code,
        other => panic!("{other:?}"),
    };
    let out = feed(
        &mut p,
        0,
        &[
            call("nobody", "a", "2026-11-20T10:00:00Z", 1),
            call("acme", "b", "2026-11-23T12:06:00Z", 1),
            r#"{"specversion":"1.0","id":"r","source":"s","type":"revenue.recorded","subject":"acme","time":"2026-11-20T10:00:00Z","data":{"amount":"5","currency":"EUR"}}"#.to_string(),
            "{".to_string(),
            call("acme", "c", "2026-11-23T12:04:00Z", 1),
        ],
        t0,
    );
    assert_eq!(code(&out[0]), ErrorCode::UnknownTenant);
    assert_eq!(code(&out[1]), ErrorCode::FutureEvent);
    assert_eq!(code(&out[2]), ErrorCode::CurrencyMismatch);
    assert_eq!(code(&out[3]), ErrorCode::InvalidJson);
    assert_eq!(out[4], Outcome::Counted);
}

#[test]
fn oversized_events_are_rejected() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let big = call("acme", &"x".repeat(100), "2026-11-20T10:00:00Z", 1).replace(
        "\"direction\"",
        &format!("\"pad\":\"{}\",\"direction\"", "y".repeat(70_000)),
    );
    match &feed(&mut p, 0, &[big], now().timestamp_millis())[0] {
        Outcome::Rejected(r) => assert_eq!(r.code, ErrorCode::InvalidEvent),
        o => panic!("{o:?}"),
    }
}

#[test]
fn late_events_within_grace_count_and_later_ones_are_closed() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis();
    // October (Paris) ends 2026-11-01T00:00+01:00 = 2026-10-31T23:00Z; grace 48 h.
    let out = feed(
        &mut p,
        0,
        &[
            call("acme", "nov", "2026-11-02T22:00:00Z", 60_000),
            call("acme", "oct-late", "2026-10-31T12:00:00Z", 60_000),
            call("acme", "nov2", "2026-11-02T23:00:01Z", 60_000),
            call("acme", "oct-too-late", "2026-10-31T12:00:00Z", 60_000),
        ],
        t0,
    );
    assert_eq!(out[0], Outcome::Counted);
    assert_eq!(out[1], Outcome::Counted);
    assert_eq!(out[2], Outcome::Counted);
    match &out[3] {
        Outcome::Rejected(r) => assert_eq!(r.code, ErrorCode::PeriodClosed),
        o => panic!("{o:?}"),
    }
    let oct = ts("2026-10-01T00:00:00+02:00");
    assert_eq!(usage(&p, "acme", "call_minutes", oct), Some(Decimal::ONE));
}

#[test]
fn closed_periods_free_their_rows_and_alert_state() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis();
    // October (Paris): 9 minutes cross 80% of the 10 included minutes.
    feed(
        &mut p,
        0,
        &[call("acme", "oct", "2026-10-20T10:00:00Z", 9 * 60_000)],
        t0,
    );
    assert_eq!(p.take_new_alerts().len(), 1);
    let oct = ts("2026-10-01T00:00:00+02:00");
    let tid = p.shared.tenants.get("acme").unwrap();
    let key = (tid, crate::meter::CALL_MINUTES, oct);
    assert!(p.alert_state.contains_key(&key));
    // November events move the watermark past October's end plus the 48 h grace.
    feed(
        &mut p,
        1,
        &[call("acme", "nov", "2026-11-05T10:00:00Z", 60_000)],
        t0 + 1,
    );
    let b = p.snapshot();
    p.flushed(&b.checkpoints);
    assert_eq!(usage(&p, "acme", "call_minutes", oct), None, "row evicted");
    assert!(!p.alert_state.contains_key(&key), "alert state evicted");
    assert!(!p.shared.alerts.contains_key(&key));
    let nov = ts("2026-11-01T00:00:00+01:00");
    assert_eq!(usage(&p, "acme", "call_minutes", nov), Some(Decimal::ONE));
}

#[test]
fn alerts_fire_once_in_order() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis();
    // Limit 10 min: 8 min -> 80%; +3 -> 100% and overage; +3 -> overage 4 min x 0.5 = cap 2.
    feed(
        &mut p,
        0,
        &[call("acme", "a", "2026-11-20T10:00:00Z", 8 * 60_000)],
        t0,
    );
    let a: Vec<String> = p.take_new_alerts().into_iter().map(|a| a.kind).collect();
    assert_eq!(a, ["80%"]);
    feed(
        &mut p,
        1,
        &[call("acme", "b", "2026-11-20T10:01:00Z", 3 * 60_000)],
        t0 + 1,
    );
    let a: Vec<Alert> = p.take_new_alerts();
    let kinds: Vec<&str> = a.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["100%", "overage"]);
    assert_eq!(a[0].usage, "11");
    assert_eq!(a[0].limit.as_deref(), Some("10"));
    assert_eq!(a[0].event_id, "b");
    assert_eq!(a[0].period_start, "2026-10-31T23:00:00Z");
    feed(
        &mut p,
        2,
        &[call("acme", "c", "2026-11-20T10:02:00Z", 60_000)],
        t0 + 2,
    );
    assert!(p.take_new_alerts().is_empty());
    feed(
        &mut p,
        3,
        &[call("acme", "d", "2026-11-20T10:03:00Z", 2 * 60_000)],
        t0 + 3,
    );
    let kinds: Vec<String> = p.take_new_alerts().into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds, ["overage_cap"]);
    // Default-plan tenants have no limits: no alerts.
    feed(
        &mut p,
        4,
        &[call("other", "e", "2026-11-20T10:00:00Z", 1_000_000)],
        t0 + 4,
    );
    assert!(p.take_new_alerts().is_empty());
}

/// ClickHouse as the pipeline sees it: replacing tables keyed like the real ones
/// (`rollup_state` and `usage_rollups` are written one after the other, as the sink does).
#[derive(Default, Clone)]
struct FakeStore {
    state: BTreeMap<(String, String, i64), RollupRecord>,
    rows: BTreeMap<(String, String, i64), RollupRecord>,
    checkpoint: Option<Checkpoint>,
    alerts: BTreeMap<String, Alert>,
}

impl FakeStore {
    /// Writes the first `upto` row inserts of a batch (state rows, then rollup rows) and,
    /// if `checkpoint`, its checkpoints.
    fn write(&mut self, b: &FlushBatch, upto: usize, checkpoint: bool) {
        fn put(t: &mut BTreeMap<(String, String, i64), RollupRecord>, r: &RollupRecord) {
            let k = (r.tenant.to_string(), r.meter.to_string(), r.period_start);
            match t.get(&k) {
                Some(old) if old.through_offset > r.through_offset => {}
                _ => {
                    t.insert(k, r.clone());
                }
            }
        }
        for a in &b.alerts {
            self.alerts.insert(a.alert_id.clone(), a.clone());
        }
        for r in b.rows.iter().take(upto) {
            put(&mut self.state, r);
        }
        for r in b.rows.iter().take(upto.saturating_sub(b.rows.len())) {
            put(&mut self.rows, r);
        }
        if checkpoint {
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
            .state
            .iter()
            .filter(|(_, r)| r.period_end >= min_end)
            .map(|(k, r)| StoredRow {
                tenant: r.tenant.to_string(),
                meter: r.meter.to_string(),
                period_start: r.period_start,
                period_end: r.period_end,
                raw: r.raw,
                events: r.events,
                through_offset: r.through_offset,
                rollup_stale: self
                    .rows
                    .get(k)
                    .is_none_or(|u| u.through_offset < r.through_offset),
            })
            .collect();
        Restored {
            subscriptions: vec![],
            partition: 0,
            rows,
            alerts: self
                .alerts
                .values()
                .map(|a| {
                    (
                        a.tenant_id.clone(),
                        a.meter.clone(),
                        ts(&a.period_start),
                        a.kind.clone(),
                    )
                })
                .collect(),
            replay_from: 0,
            checkpoint: self.checkpoint.clone(),
            committed: None,
            first_periods: vec![],
            stated: vec![],
        }
    }

    fn totals(&self) -> BTreeMap<(String, String, i64), Decimal> {
        self.rows
            .iter()
            .map(|(k, r)| (k.clone(), r.value))
            .collect()
    }
}

/// Ground truth: distinct (subject, source, id) within the window, each call once.
fn truth(msgs: &[(String, i64)], c: &Config) -> BTreeMap<(String, String, i64), Decimal> {
    let mut p = processor(c);
    fresh(&mut p);
    for (i, (pl, ts)) in msgs.iter().enumerate() {
        p.process(
            &InMessage {
                partition: 0,
                offset: i as i64,
                payload: Some(pl.as_bytes()),
                timestamp_ms: Some(*ts),
            },
            now(),
        );
    }
    let b = p.snapshot();
    b.rows
        .into_iter()
        .map(|r| {
            (
                (r.tenant.to_string(), r.meter.to_string(), r.period_start),
                r.value,
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the crash points, flush points and partial writes, and however many events
    /// are applied between a flush's cut and the reading of its rows, the stored totals
    /// equal the totals of one uninterrupted run.
    #[test]
    fn crashes_never_change_totals(
        events in prop::collection::vec((0u8..4, 0u32..40, 0u64..600_000, 0u8..10), 1..120),
        crashes in prop::collection::vec((1usize..120, 0usize..12, any::<bool>()), 0..6),
        flush_every in 1usize..30,
        applied_while_read in 0usize..6,
    ) {
        let c = config();
        // Messages: tenant, id (small range: duplicates), duration, day offset.
        let base = now().timestamp_millis() - 600_000;
        let msgs: Vec<(String, i64)> = events
            .iter()
            .enumerate()
            .map(|(i, (t, id, ms, day))| {
                let tenant = ["acme", "t1", "t2", "t3"][*t as usize];
                let time = format!("2026-11-{:02}T10:00:00Z", 10 + *day as u32);
                (call(tenant, &format!("id{id}"), &time, *ms), base + i as i64 * 1000)
            })
            .collect();
        let expected = truth(&msgs, &c);

        let mut store = FakeStore::default();
        let mut p = processor(&c);
        p.assign(0);
        p.install(store.restore(172_800));
        let mut crashes = crashes;
        crashes.sort();
        let mut next_crash = crashes.into_iter().peekable();
        let mut i = 0usize;
        let mut processed = 0usize;
        let mut steps = 0usize;
        while i < msgs.len() {
            steps += 1;
            prop_assert!(steps < 10_000);
            let (pl, ts) = &msgs[i];
            p.process(&InMessage { partition: 0, offset: i as i64, payload: Some(pl.as_bytes()), timestamp_ms: Some(*ts) }, now());
            i += 1;
            processed += 1;
            if processed.is_multiple_of(flush_every) {
                let cut = p.cut();
                // The consuming thread goes on while the flush task reads the cut's rows.
                for _ in 0..applied_while_read.min(msgs.len() - i) {
                    let (pl, ts) = &msgs[i];
                    p.process(&InMessage { partition: 0, offset: i as i64, payload: Some(pl.as_bytes()), timestamp_ms: Some(*ts) }, now());
                    i += 1;
                    processed += 1;
                }
                let b = cut.materialize();
                store.write(&b, usize::MAX, true);
                p.flushed(&b.checkpoints);
            }
            if let Some((at, partial_rows, with_ck)) = next_crash.peek().copied()
                && processed >= at
            {
                next_crash.next();
                // A crash in the middle of a flush: some state rows or some rollup rows
                // written, maybe no checkpoint.
                let b = p.snapshot();
                store.write(&b, partial_rows, with_ck && partial_rows >= 2 * b.rows.len());
                // Restart: a new processor restores and re-reads from its replay start.
                p = processor(&c);
                p.assign(0);
                let r = store.restore(172_800);
                let from = r.checkpoint.as_ref().map(|c| c.position).unwrap_or(0);
                // The dedup window is 1 h and test timestamps span minutes: replay from 0.
                let r = Restored { replay_from: 0.min(from), ..r };
                p.install(r);
                i = 0;
            }
        }
        let b = p.snapshot();
        store.write(&b, usize::MAX, true);
        prop_assert_eq!(store.totals(), expected);
    }
}

/// An event counted on several meters is counted on all or on none: when the second meter's
/// total would leave `Decimal(38, 9)`, the first meter's row is put back as it was (value,
/// event count, not dirty), a row created for it is removed, and the event is `invalid_data`.
#[test]
fn an_overflow_on_one_meter_undoes_the_others() {
    let c = Config::from_toml_str(
        r#"
[pricing]
default_plan = "free"
[meters.a_units]
event_type = "usage.units"
aggregation = "sum"
value = "units"
where = { kind = "x" }
[meters.b_milli]
event_type = "usage.units"
aggregation = "sum"
value = "units"
divisor = "0.001"
rounding = "ceil"
[plans.free]
currency = "USD"
"#,
    )
    .unwrap();
    let (a, b) = (
        c.catalog.meter_id("a_units").unwrap(),
        c.catalog.meter_id("b_milli").unwrap(),
    );
    assert!(a < b, "a_units is added before b_milli");
    let mut p = processor(&c);
    fresh(&mut p);
    let units = |tenant: &str, id: &str, u: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"usage.units","subject":"{tenant}","time":"2026-11-20T10:00:00Z","data":{{"units":{u},"kind":"x"}}}}"#
        )
    };
    // 4e25 units are 4e28 on b_milli; twice that is beyond Decimal(38, 9).
    let big = "40000000000000000000000000";
    let ts0 = now().timestamp_millis() - 60_000;
    let out = feed(
        &mut p,
        0,
        &[
            units("acme", "u1", big),
            units("acme", "u2", big),
            units("acme", "u3", "1"),
        ],
        ts0,
    );
    assert_eq!(out[0], Outcome::Counted);
    match &out[1] {
        Outcome::Rejected(r) => assert_eq!(r.code, ErrorCode::InvalidData, "{r}"),
        other => panic!("expected invalid_data, got {other:?}"),
    }
    assert_eq!(out[2], Outcome::Counted, "the next event counts on both");
    let start = ts("2026-11-01T00:00:00Z");
    assert_eq!(
        usage(&p, "acme", "a_units", start),
        Some("40000000000000000000000001".parse().unwrap())
    );
    let row = |p: &Processor, tenant: &str, m| {
        let t = p.shared.tenants.get(tenant).unwrap();
        p.shared.row(&RowKey {
            tenant: t,
            meter: m,
            period_start: start,
            partition: 0,
        })
    };
    assert_eq!(
        row(&p, "acme", a).unwrap().events,
        2,
        "u2 is not in a_units"
    );
    assert_eq!(row(&p, "acme", b).unwrap().events, 2);
    assert_eq!(p.dirty_rows(), 2, "each row is dirty once");

    // A row created for the first meter is removed: `zeta` has only a b_milli row (its
    // first event is not of kind x), so a_units' row is new when b_milli overflows.
    let other = format!(
        r#"{{"specversion":"1.0","id":"z1","source":"s","type":"usage.units","subject":"zeta","time":"2026-11-20T10:00:00Z","data":{{"units":{big}}}}}"#
    );
    let out = feed(&mut p, 3, &[other, units("zeta", "z2", big)], ts0 + 10);
    assert_eq!(out[0], Outcome::Counted);
    assert!(matches!(&out[1], Outcome::Rejected(r) if r.code == ErrorCode::InvalidData));
    assert!(row(&p, "zeta", a).is_none(), "no a_units row left for zeta");
    assert_eq!(row(&p, "zeta", b).unwrap().events, 1);
    assert_eq!(p.dirty_rows(), 3);
}

/// A flush reads its rows after the cut while events go on being applied: it gets each
/// row's value at the cut (a row changed since keeps it aside), at the cut's position, and
/// the next flush gets the changes made meanwhile.
#[test]
fn a_cut_reads_the_rows_as_they_were_at_the_cut() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    let t0 = now().timestamp_millis();
    let at = "2026-11-20T10:00:00Z";
    feed(
        &mut p,
        0,
        &[call("acme", "a", at, 60_000), call("acme", "b", at, 60_000)],
        t0,
    );
    let cut = p.cut();
    assert_eq!(cut.rows(), 2, "acme's calls and call_minutes rows");
    assert_eq!(p.dirty_rows(), 0);
    // Applied after the cut: acme's rows change, another tenant's rows appear.
    feed(
        &mut p,
        2,
        &[
            call("acme", "c", at, 120_000),
            call("other", "d", at, 60_000),
        ],
        t0 + 2,
    );
    assert_eq!(p.dirty_rows(), 4);
    let b = cut.materialize();
    let minutes = |b: &FlushBatch, t: &str| {
        b.rows
            .iter()
            .find(|r| &*r.tenant == t && &*r.meter == "call_minutes")
            .map(|r| (r.value, r.events, r.through_offset))
    };
    assert_eq!(minutes(&b, "acme"), Some((Decimal::from(2), 2, 2)));
    assert_eq!(minutes(&b, "other"), None);
    assert_eq!(b.checkpoints.len(), 1);
    assert_eq!(b.checkpoints[0].position, 2);
    p.flushed(&b.checkpoints);
    let b = p.snapshot();
    assert_eq!(minutes(&b, "acme"), Some((Decimal::from(4), 3, 4)));
    assert_eq!(minutes(&b, "other"), Some((Decimal::from(1), 1, 4)));
    assert_eq!(b.checkpoints[0].position, 4);
}

/// A partition revoked (or re-installed) between a flush's cut and the reading of its rows
/// contributes nothing to that flush: no rows, no checkpoint (its new owner restores it
/// from what is stored), while the other partitions are written as usual.
#[test]
fn a_cut_of_a_partition_dropped_since_writes_nothing_of_it() {
    let c = config();
    let mut p = processor(&c);
    fresh(&mut p);
    p.assign(1);
    p.install(Restored {
        partition: 1,
        ..Default::default()
    });
    let t0 = now().timestamp_millis();
    let at = "2026-11-20T10:00:00Z";
    feed(&mut p, 0, &[call("acme", "a", at, 60_000)], t0);
    p.process(
        &InMessage {
            partition: 1,
            offset: 0,
            payload: Some(call("other", "b", at, 60_000).as_bytes()),
            timestamp_ms: Some(t0 + 1),
        },
        now(),
    );
    let cut = p.cut();
    assert_eq!(cut.rows(), 4);
    p.revoke(1);
    let b = cut.materialize();
    assert!(
        b.rows
            .iter()
            .all(|r| r.partition == 0 && &*r.tenant == "acme")
    );
    assert_eq!(b.rows.len(), 2);
    assert_eq!(
        b.checkpoints
            .iter()
            .map(|c| c.partition)
            .collect::<Vec<_>>(),
        vec![0]
    );
}
