//! Exact totals under crashes, rebalances, duplicates and outages (issue: exactly-once).
//!
//! Ground truth comes from the produced messages themselves: distinct event identities, each
//! call once, summed per tenant and UTC month.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};

use callmeter::cli::loadgen::{Generated, LoadSpec, generate};

use crate::common::{Broker, ClickHouseServer, Engine, Flavor, World, eventually};

/// Limits low enough that most tenants cross every threshold.
pub(crate) const PRICING: &str = include_str!("../fixtures/small-plan-3000-minutes.toml");

const LIMIT: i64 = 3000;

fn month_start(t: chrono::DateTime<Utc>) -> i64 {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .unwrap()
        .timestamp()
}

/// (tenant, month start) -> (calls, ms), counting each identity once.
pub(crate) fn truth(msgs: &[Generated]) -> BTreeMap<(String, i64), (u64, u64)> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<(String, i64), (u64, u64)> = BTreeMap::new();
    for g in msgs {
        if !seen.insert((g.tenant.clone(), g.id.clone())) {
            continue;
        }
        let e = out
            .entry((g.tenant.clone(), month_start(g.time)))
            .or_default();
        e.0 += 1;
        e.1 += g.duration_ms;
    }
    out
}

fn minutes(ms: u64) -> Decimal {
    (Decimal::from(ms) / Decimal::from(60_000))
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
}

/// Stored (tenant, period start) -> (calls, minutes).
async fn stored(w: &World) -> BTreeMap<(String, i64), (Decimal, Decimal)> {
    let rows = w
        .ch()
        .query(&format!(
            "SELECT tenant_id, toUInt32(period_start), meter, toString(sum(value)) FROM {}.usage_rollups FINAL \
             WHERE meter IN ('calls', 'call_minutes') GROUP BY tenant_id, period_start, meter",
            w.database
        ))
        .await
        .unwrap_or_default();
    let mut out: BTreeMap<(String, i64), (Decimal, Decimal)> = BTreeMap::new();
    for r in rows {
        let e = out
            .entry((r[0].clone(), r[1].parse().unwrap()))
            .or_default();
        let v: Decimal = r[3].parse().unwrap();
        if r[2] == "calls" {
            e.0 = v;
        } else {
            e.1 = v;
        }
    }
    out
}

/// Number of (tenant, period) totals that differ from the truth.
async fn mismatches(w: &World, truth: &BTreeMap<(String, i64), (u64, u64)>) -> usize {
    let got = stored(w).await;
    let mut bad = 0;
    for (k, (calls, ms)) in truth {
        match got.get(k) {
            Some((c, m)) if *c == Decimal::from(*calls) && *m == minutes(*ms) => {}
            _ => bad += 1,
        }
    }
    bad + got.keys().filter(|k| !truth.contains_key(*k)).count()
}

/// The first few differences from the truth, for a failure message.
pub(crate) async fn differences(w: &World, truth: &BTreeMap<(String, i64), (u64, u64)>) -> String {
    let got = stored(w).await;
    truth
        .iter()
        .filter_map(|(k, (calls, ms))| {
            let want = (Decimal::from(*calls), minutes(*ms));
            match got.get(k) {
                Some(g) if *g == want => None,
                g => Some(format!(
                    "{k:?}: want (calls, minutes) {want:?}, stored {g:?}"
                )),
            }
        })
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) async fn wait_exact(
    w: &World,
    truth: &BTreeMap<(String, i64), (u64, u64)>,
    timeout: Duration,
) -> usize {
    let mut last = usize::MAX;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        last = mismatches(w, truth).await;
        if last == 0 {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

fn expected_alerts(truth: &BTreeMap<(String, i64), (u64, u64)>) -> BTreeSet<(String, i64, String)> {
    let mut out = BTreeSet::new();
    for ((t, p), (_, ms)) in truth {
        let m = Decimal::from(*ms) / Decimal::from(60_000);
        let l = Decimal::from(LIMIT);
        let mut add = |k: &str| {
            out.insert((t.clone(), *p, k.to_string()));
        };
        if m >= l * Decimal::new(8, 1) {
            add("80%");
        }
        if m >= l {
            add("100%");
        }
        if m > l {
            add("overage");
        }
        if (m - l) * Decimal::new(1, 1) >= Decimal::from(100) {
            add("overage_cap");
        }
    }
    out
}

/// Produces `msgs` at about `rate` per second (sends are pipelined; deliveries are awaited
/// at the end).
pub(crate) async fn stream(w: &World, msgs: Vec<Generated>, rate: usize) {
    use rdkafka::producer::FutureRecord;
    let started = Instant::now();
    let n = msgs.len();
    let producer = w.producer();
    let mut futs = Vec::with_capacity(n);
    for (i, g) in msgs.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        let now = started.elapsed();
        if due > now + Duration::from_millis(20) {
            tokio::time::sleep(due - now).await;
        }
        let mut rec = FutureRecord::to(&w.topic)
            .key(&g.tenant)
            .payload(&g.payload);
        // Enqueue now (send_result), so messages go out at the intended pace.
        let fut = loop {
            match producer.send_result(rec) {
                Ok(f) => break f,
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        futs.push(fut);
    }
    for f in futures::future::join_all(futs).await {
        f.expect("delivery report").expect("delivered");
    }
    eprintln!("{}: streamed {n} events in {:?}", w.name, started.elapsed());
}

pub(crate) fn spec(events: u64, tenants: u32, seed: u64) -> LoadSpec {
    LoadSpec {
        events,
        tenants,
        seed,
        start: Utc::now() - chrono::Duration::minutes(50),
        step_ms: 2,
        duplicate_rate: 0.05,
        disorder_rate: 0.2,
        disorder_ms: 60_000,
        ..Default::default()
    }
}

/// The seconds from each start of the pipeline to its first consuming partition.
fn recovery_times(log: &str) -> Vec<f64> {
    let ts = |line: &str| {
        let clean: String = line.chars().filter(|c| !c.is_control()).collect();
        let start = clean.find("20")?;
        chrono::DateTime::parse_from_rfc3339(clean.get(start..start + 27)?)
            .ok()
            .map(|t| t.timestamp_micros() as f64 / 1e6)
    };
    let mut out = Vec::new();
    let mut started: Option<f64> = None;
    for line in log.lines() {
        if line.contains("HTTP API listening") {
            started = ts(line);
        } else if line.contains("partition consuming")
            && let (Some(s), Some(t)) = (started, ts(line))
        {
            out.push(t - s);
            started = None;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_twenty_times_while_streaming_keeps_totals_exact() {
    let broker = Broker::start("crash", Engine::Memory);
    let ch = ClickHouseServer::start("crash");
    let w = World::on("crash", 4, &broker.addr, &ch.url)
        .extra(PRICING)
        .section("pipeline", "flush_interval = \"1s\"");
    let msgs: Vec<Generated> = generate(&spec(200_000, 40, 7)).collect();
    let dups = msgs.iter().filter(|g| g.duplicate).count();
    let late = msgs.windows(2).filter(|p| p[1].time < p[0].time).count();
    let truth = truth(&msgs);

    let producer = {
        let w2 = w.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move { stream(&w2, msgs, 4_000).await })
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let crashes = 20;
    for i in 0..crashes {
        let mut p = w.run("i0");
        let uptime = Duration::from_millis(rng.random_range(3_000..11_000));
        tokio::time::sleep(uptime).await;
        p.kill9();
        eprintln!("crash test: kill -9 #{} after {:?}", i + 1, uptime);
    }
    let mut p = w.run("i0");
    producer.await.unwrap();
    let bad = wait_exact(&w, &truth, Duration::from_secs(240)).await;
    let rec = recovery_times(&p.log_text());
    let mut sorted = rec.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "crash test: events={} duplicates={dups} out_of_order={late} crashes={crashes} tenants_periods={} mismatches={bad} recovery_s p50={:.1} max={:.1} (n={})",
        msgs.len(),
        truth.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
        sorted.len()
    );
    if bad != 0 {
        panic!(
            "totals differ from the ground truth:\n{}\nlog:\n{}",
            differences(&w, &truth).await,
            tail(&p.log_text())
        );
    }

    // Alerts: every expected one stored once and delivered at least once, one id per kind.
    let want = expected_alerts(&truth);
    assert!(want.len() > 40, "the limits make tenants cross thresholds");
    let rows = w
        .ch()
        .query(&format!(
            "SELECT tenant_id, toUInt32(period_start), kind, alert_id FROM {}.usage_alerts FINAL WHERE meter = 'call_minutes'",
            w.database
        ))
        .await
        .unwrap();
    let got: BTreeSet<(String, i64, String)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].clone()))
        .collect();
    assert_eq!(rows.len(), got.len(), "one row per alert");
    assert_eq!(got, want);
    let delivered = w.read_topic(&w.alerts, want.len(), Duration::from_secs(60));
    let mut ids: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for m in &delivered {
        let v: serde_json::Value = serde_json::from_slice(m.payload.as_ref().unwrap()).unwrap();
        ids.entry((
            v["tenant_id"].as_str().unwrap().to_string(),
            v["period_start"].as_str().unwrap().to_string(),
            v["kind"].as_str().unwrap().to_string(),
        ))
        .or_default()
        .insert(v["alert_id"].as_str().unwrap().to_string());
    }
    assert!(
        ids.values().all(|s| s.len() == 1),
        "one alert_id per (tenant, period, kind)"
    );
    assert_eq!(
        ids.len(),
        want.len(),
        "every expected alert delivered at least once"
    );
    eprintln!(
        "crash test: alerts expected={} delivered messages={} (repeats after crashes carry the same id)",
        want.len(),
        delivered.len()
    );
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

pub(crate) fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_mid_stream_keep_totals_exact() {
    let broker = Broker::start("rebalance", Engine::Memory);
    let ch_url = crate::common::shared().clickhouse_url.clone();
    let w = World::on("rebalance", 4, &broker.addr, &ch_url)
        .extra(PRICING)
        .section("pipeline", "flush_interval = \"1s\"");
    let msgs: Vec<Generated> = generate(&spec(24_000, 30, 11)).collect();
    let truth = truth(&msgs);
    let producer = {
        let w2 = w.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move { stream(&w2, msgs, 1_500).await })
    };
    // Dynamic members (static ones: the crash test and tests/it/rebalance.rs).
    let mut a = w.run_dynamic("a");
    let mut b = w.run_dynamic("b");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let all = "partitions assigned";
    let before = a.log_text().matches(all).count();
    b.kill9();
    // b's partitions stay with it until its session times out (10 s). Then Apache Kafka
    // rebalances the group and the survivor takes every partition; a replacement instance
    // joins after that. (tansu 0.6 does not bump the generation when a member times out, so
    // there only the replacement joining moves b's partitions.)
    if w.flavor() == Flavor::Kafka {
        let took_over = eventually(Duration::from_secs(40), || async {
            let log = a.log_text();
            log.matches(all).count() > before
                && log[log.rfind(all).unwrap()..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains("[0, 1, 2, 3]"))
        })
        .await;
        assert!(
            took_over,
            "the survivor took every partition; a log:\n{}",
            tail(&a.log_text())
        );
    } else {
        tokio::time::sleep(Duration::from_secs(13)).await;
    }
    let mut c = w.run_dynamic("c");
    producer.await.unwrap();
    let waited = Instant::now();
    let bad = wait_exact(&w, &truth, Duration::from_secs(120)).await;
    eprintln!("rebalance test: exact after {:?}", waited.elapsed());
    assert_eq!(
        bad,
        0,
        "a log:\n{}\nc log:\n{}",
        tail(&a.log_text()),
        tail(&c.log_text())
    );
    assert!(
        a.log_text().contains("partitions revoked"),
        "a rebalance happened"
    );
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(c.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_outage_pauses_then_catches_up_exactly() {
    let mut ch = ClickHouseServer::start("outage");
    let broker_addr = crate::common::shared().brokers.clone();
    let w = World::on("outage", 2, &broker_addr, &ch.url)
        .extra(PRICING)
        .section(
            "pipeline",
            "flush_interval = \"500ms\"\nmax_dirty_rows = 20",
        );
    let msgs: Vec<Generated> = generate(&spec(16_000, 25, 13)).collect();
    let truth = truth(&msgs);
    let mut p = w.run("i0");
    assert!(
        eventually(Duration::from_secs(60), || async {
            reqwest::get(w.api("/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    let producer = {
        let w2 = w.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move { stream(&w2, msgs, 2_000).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    ch.stop();
    // While ClickHouse is down the pipeline keeps running and pauses at the dirty-row bound.
    let paused = eventually(Duration::from_secs(20), || async {
        let m = reqwest::get(w.api("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains("callmeter_consumption_paused 1")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(p.is_running(), "no crash during the outage");
    ch.restart();
    producer.await.unwrap();
    let bad = wait_exact(&w, &truth, Duration::from_secs(120)).await;
    assert_eq!(bad, 0, "log:\n{}", tail(&p.log_text()));
    assert!(paused, "consumption paused while rows could not be stored");
    let m = reqwest::get(w.api("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: f64 = m
        .lines()
        .find(|l| l.starts_with("callmeter_flush_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failures > 0.0, "failed flushes were retried");
    assert!(m.contains("callmeter_consumption_paused 0"), "resumed");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_reconnects_without_loss_or_double_counting() {
    let mut broker = Broker::start("restart", Engine::Sqlite);
    let ch_url = crate::common::shared().clickhouse_url.clone();
    let w = World::on("brokerrestart", 2, &broker.addr, &ch_url)
        .extra(PRICING)
        .section("pipeline", "flush_interval = \"500ms\"");
    let msgs: Vec<Generated> = generate(&spec(12_000, 20, 17)).collect();
    let truth = truth(&msgs);
    let (first, second) = msgs.split_at(6_000);
    let mut p = w.run("i0");
    stream(&w, first.to_vec(), 3_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    stream(&w, second.to_vec(), 3_000).await;
    let bad = wait_exact(&w, &truth, Duration::from_secs(120)).await;
    assert_eq!(bad, 0, "log:\n{}", tail(&p.log_text()));
    assert!(p.is_running());
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_raw_events_equal_to_rollups() {
    let w = World::new("reconcile", 2)
        .extra(PRICING)
        .section("clickhouse", "raw_events = true");
    let msgs: Vec<Generated> = generate(&spec(3_000, 10, 19)).collect();
    let truth = truth(&msgs);
    let mut p = w.run("i0");
    let batch: Vec<(String, Vec<u8>)> = msgs
        .iter()
        .map(|g| (g.tenant.clone(), g.payload.clone().into_bytes()))
        .collect();
    w.produce(&batch).await;
    assert_eq!(wait_exact(&w, &truth, Duration::from_secs(60)).await, 0);
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let month = msgs[0].time.format("%Y-%m").to_string();
    let out = w.cli(&["reconcile", "--period", &month]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 mismatches"), "{text}");
    // Tamper with a rollup: reconcile must notice.
    let t = &msgs[0].tenant;
    w.ch()
        .exec(&format!(
            "INSERT INTO {db}.usage_rollups SELECT tenant_id, meter, period_start, period_end, value + 1, event_count, source_topic, source_partition, through_offset + 1000000, updated_at FROM {db}.usage_rollups FINAL WHERE tenant_id = '{t}' AND meter = 'calls'",
            db = w.database
        ))
        .await
        .unwrap();
    let out = w.cli(&["reconcile", "--period", &month]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("MISMATCH"), "{text}");
}

/// A crash between the `rollup_state` and `usage_rollups` inserts of a flush leaves the
/// rollups behind the state. The next owner must repair them from the restored state, even
/// when no new event arrives for those rows.
#[tokio::test(flavor = "multi_thread")]
async fn torn_flush_is_repaired_on_restart_without_new_events() {
    let w = World::new("torn", 2)
        .extra(PRICING)
        .section("pipeline", "flush_interval = \"200ms\"");
    let msgs: Vec<Generated> = generate(&spec(4_000, 10, 23)).collect();
    let (first, _) = msgs.split_at(2_000);
    let as_batch = |m: &[Generated]| -> Vec<(String, Vec<u8>)> {
        m.iter()
            .map(|g| (g.tenant.clone(), g.payload.clone().into_bytes()))
            .collect()
    };
    let db = &w.database;

    let mut p = w.run("i0");
    w.produce(&as_batch(first)).await;
    assert_eq!(
        wait_exact(&w, &truth(first), Duration::from_secs(60)).await,
        0
    );
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
    let ch = w.ch();
    ch.exec(&format!(
        "CREATE TABLE {db}.rollups_before AS {db}.usage_rollups"
    ))
    .await
    .unwrap();
    ch.exec(&format!(
        "INSERT INTO {db}.rollups_before SELECT * FROM {db}.usage_rollups FINAL"
    ))
    .await
    .unwrap();

    let mut p = w.run("i0");
    w.produce(&as_batch(&msgs[2_000..])).await;
    let all = truth(&msgs);
    assert_eq!(wait_exact(&w, &all, Duration::from_secs(60)).await, 0);
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));

    // Tear: the rollups go back to the first half while the state stays at the end.
    ch.exec(&format!("TRUNCATE TABLE {db}.usage_rollups"))
        .await
        .unwrap();
    ch.exec(&format!(
        "INSERT INTO {db}.usage_rollups SELECT * FROM {db}.rollups_before"
    ))
    .await
    .unwrap();
    assert!(mismatches(&w, &all).await > 0, "the rollups are behind");

    let mut p = w.run("i0");
    let bad = wait_exact(&w, &all, Duration::from_secs(60)).await;
    if bad != 0 {
        panic!(
            "stale rollups were not repaired:\n{}\nlog:\n{}",
            differences(&w, &all).await,
            tail(&p.log_text())
        );
    }
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}
