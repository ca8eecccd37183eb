//! ClickHouse faults the pipeline must survive without stalling or losing data (issue 12):
//! a permanent error (a table gone) turns `/readyz` to 503 naming it while state is kept and
//! totals end exact once fixed; a final flush that cannot reach ClickHouse makes the exit
//! status non-zero within `pipeline.shutdown_timeout`; ClickHouse frozen (SIGSTOP) under
//! sustained load stays within `pipeline.max_memory`: consumption pauses and the totals are
//! exact after SIGCONT; a dedup set that alone fills the budget never stalls consumption.

use std::time::{Duration, Instant};

use callmeter::cli::loadgen::{Generated, generate};

use crate::common::{ClickHouseServer, World, eventually, rss_kb, signal};
use crate::faults::{PRICING, spec, stream, tail, truth, wait_exact};

async fn ready_status(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

/// The value of an unlabelled series on `/metrics` (0 if absent).
async fn metric(url: &str, name: &str) -> f64 {
    let Ok(r) = reqwest::get(url).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_clickhouse_error_turns_unready_then_recovers_exactly() {
    let w = World::new("permanent", 2)
        .extra(PRICING)
        .section("clickhouse", "permanent_error_retry = \"2s\"");
    let msgs: Vec<Generated> = generate(&spec(4_000, 10, 21)).collect();
    let truth = truth(&msgs);
    let mut p = w.run("i0");
    assert!(
        eventually(Duration::from_secs(60), || async {
            ready_status(&w.api("/readyz"))
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await
    );
    // A schema that no longer matches: the checkpoint table is gone.
    w.ch()
        .exec(&format!("DROP TABLE {}.partition_checkpoints", w.database))
        .await
        .unwrap();
    stream(&w, msgs, 4_000).await;
    let unready = eventually(Duration::from_secs(30), || async {
        ready_status(&w.api("/readyz"))
            .await
            .is_some_and(|(c, body)| c == 503 && body.contains("clickhouse"))
    })
    .await;
    let body = ready_status(&w.api("/readyz")).await.unwrap().1;
    assert!(unready, "readyz names the permanent error; got {body:?}");
    assert!(
        body.contains("Code: 60"),
        "the ClickHouse error is named: {body}"
    );
    assert!(p.is_running(), "state kept: the process keeps running");
    // The operator fixes the schema; the slow retry stores everything.
    let out = w.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = wait_exact(&w, &truth, Duration::from_secs(90)).await;
    assert_eq!(bad, 0, "log:\n{}", tail(&p.log_text()));
    assert!(
        eventually(Duration::from_secs(20), || async {
            ready_status(&w.api("/readyz"))
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await,
        "ready again once flushes succeed"
    );
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn final_flush_failure_exits_non_zero_within_the_shutdown_bound() {
    let mut ch = ClickHouseServer::start("finalflush");
    let brokers = crate::common::shared().brokers.clone();
    let w = World::on("finalflush", 1, &brokers, &ch.url)
        .extra(PRICING)
        .section(
            "pipeline",
            "flush_interval = \"1h\"\nshutdown_timeout = \"6s\"",
        );
    let msgs: Vec<Generated> = generate(&spec(500, 5, 5)).collect();
    let mut p = w.run("i0");
    assert!(
        eventually(Duration::from_secs(60), || async {
            ready_status(&w.api("/readyz"))
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await
    );
    stream(&w, msgs, 5_000).await;
    // Every event consumed (held in memory: the flush interval is an hour).
    let consumed = eventually(Duration::from_secs(30), || async {
        metric(&w.api("/metrics"), "callmeter_events_consumed_total").await >= 500.0
    })
    .await;
    assert!(consumed, "log:\n{}", tail(&p.log_text()));
    ch.stop();
    let started = Instant::now();
    let code = p.terminate(Duration::from_secs(20));
    let took = started.elapsed();
    eprintln!("final flush failure: exit {code:?} after {took:?}");
    assert_eq!(
        code,
        Some(1),
        "exit status non-zero; log:\n{}",
        tail(&p.log_text())
    );
    assert!(
        took < Duration::from_secs(8),
        "shutdown bounded by shutdown_timeout (6 s) plus the watchdog's second: {took:?}"
    );
    assert!(
        p.log_text().contains("final flush failed"),
        "the reason is logged; log:\n{}",
        tail(&p.log_text())
    );
}

/// ClickHouse frozen with SIGSTOP for 60 s while 6,000 events/s arrive, with
/// `max_memory = "64MiB"` and raw events on (640 B each wait in memory for their flush):
/// consumption pauses (`callmeter_consumption_paused` 1), the process's RSS grows by no more
/// than the budget plus 150 MiB (the allocator's retained pages, librdkafka's fetch queue of
/// up to 64 MiB, `queued.max.messages.kbytes`, and the flush snapshot's encoding buffers),
/// and after SIGCONT every event is counted exactly.
#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_frozen_under_load_stays_within_the_memory_budget() {
    const BUDGET_MIB: u64 = 64;
    const MARGIN_MIB: u64 = 150;
    let ch = ClickHouseServer::start("frozen");
    let brokers = crate::common::shared().brokers.clone();
    let w = World::on("frozen", 2, &brokers, &ch.url)
        .extra(PRICING)
        .section(
            "pipeline",
            &format!(
                "flush_interval = \"1s\"\nmax_memory = \"{BUDGET_MIB}MiB\"\ndedup_window = \"1h\"\nmax_dirty_rows = 1000000"
            ),
        )
        .section("clickhouse", "raw_events = true\nrequest_timeout = \"5s\"");
    // 480,000 distinct events (5 % duplicates), 500 tenants: 80 s at 6,000 events/s.
    let msgs: Vec<Generated> = generate(&spec(480_000, 500, 31)).collect();
    let truth = truth(&msgs);
    let mut p = w.run("i0");
    assert!(
        eventually(Duration::from_secs(60), || async {
            ready_status(&w.api("/readyz"))
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await
    );
    let pid = p.pid().expect("running");
    let before = rss_kb(pid).expect("rss");
    let ch_pid = ch.pid().expect("ClickHouse running");
    let producer = {
        let w = w.clone();
        tokio::spawn(async move { stream(&w, msgs, 6_000).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(ch_pid, "STOP");
    let frozen_at = Instant::now();
    let (mut peak, mut paused_seen, mut used_peak) = (before, false, 0.0f64);
    while frozen_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kb(pid).unwrap_or(0));
        paused_seen |= metric(&w.api("/metrics"), "callmeter_consumption_paused").await == 1.0;
        used_peak = used_peak.max(metric(&w.api("/metrics"), "callmeter_memory_used_bytes").await);
    }
    let at_thaw = rss_kb(pid).unwrap_or(0);
    signal(ch_pid, "CONT");
    producer.await.expect("producer");
    let bad = wait_exact(&w, &truth, Duration::from_secs(180)).await;
    let after = rss_kb(pid).unwrap_or(0);
    eprintln!(
        "memory under a frozen ClickHouse (budget {BUDGET_MIB} MiB): RSS before {} MiB, peak {} MiB (growth {} MiB), at SIGCONT {} MiB, after catching up {} MiB; estimate peak {:.1} MiB; paused seen: {paused_seen}",
        before / 1024,
        peak / 1024,
        peak.saturating_sub(before) / 1024,
        at_thaw / 1024,
        after / 1024,
        used_peak / 1048576.0
    );
    assert!(
        paused_seen,
        "consumption paused; log:\n{}",
        tail(&p.log_text())
    );
    assert!(
        peak.saturating_sub(before) <= (BUDGET_MIB + MARGIN_MIB) * 1024,
        "RSS growth {} MiB is over the budget plus {MARGIN_MIB} MiB",
        peak.saturating_sub(before) / 1024
    );
    assert_eq!(
        bad,
        0,
        "totals exact after SIGCONT; log:\n{}",
        tail(&p.log_text())
    );
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
}

/// Dedup entries inside the window alone over `pipeline.max_memory` (1 MiB holds about
/// 40,300 of them at 26 B; 60,000 distinct events arrive): no pause could free them, because
/// they age out only as newer events arrive. Consumption goes on instead of stalling,
/// `callmeter_memory_unholdable` says so, and the totals are exact.
#[tokio::test(flavor = "multi_thread")]
async fn dedup_set_over_the_memory_budget_never_stalls_consumption() {
    let w = World::new("unholdable", 2).extra(PRICING).section(
        "pipeline",
        "flush_interval = \"1s\"\nmax_memory = \"1MiB\"\ndedup_window = \"1h\"",
    );
    let msgs: Vec<Generated> = generate(&spec(60_000, 10, 41)).collect();
    let truth = truth(&msgs);
    let mut p = w.run("i0");
    assert!(
        eventually(Duration::from_secs(60), || async {
            ready_status(&w.api("/readyz"))
                .await
                .is_some_and(|(c, _)| c == 200)
        })
        .await
    );
    stream(&w, msgs, 5_000).await;
    let bad = wait_exact(&w, &truth, Duration::from_secs(90)).await;
    assert_eq!(
        bad,
        0,
        "every event counted although the dedup set alone is over the budget; log:\n{}",
        tail(&p.log_text())
    );
    assert_eq!(
        metric(&w.api("/metrics"), "callmeter_memory_unholdable").await,
        1.0,
        "the gauge says the budget cannot be held by pausing"
    );
    assert!(
        p.log_text().contains("a pause could not free them"),
        "the reason is logged; log:\n{}",
        tail(&p.log_text())
    );
    assert_eq!(p.terminate(Duration::from_secs(60)), Some(0));
}
