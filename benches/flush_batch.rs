//! Building a ClickHouse flush batch with 100,000 dirty rows ([`Processor::snapshot`]: the
//! cut, which is all the consuming thread does, then reading the rows, which the flush task
//! does; `cut` times the first alone) and writing it the way `callmeter run` does ([`ClickHouse::write_batch`]: RowBinary, LZ4,
//! HTTP) to the clickhouse crate's in-process mock server, which accepts and drops the
//! bodies: serialisation, compression and a loopback HTTP exchange, no ClickHouse work.
//! `callmeter bench` measures the same write against a real ClickHouse.
//!
//! `cargo bench --bench flush_batch`.

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, SecondsFormat, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use callmeter::config::ClickHouseSettings;
use callmeter::sink::clickhouse::ClickHouse;
use callmeter::state::{InMessage, Outcome, Processor};

mod support;
use support::{bench_mode, config, processor, size};

/// A processor with `rows` dirty rows: `rows / 2` tenants with one call each (a
/// `call_minutes` and a `calls` row per tenant).
fn dirty_processor(rows: usize) -> Processor {
    let c = config();
    let mut p = processor(&c, 50_000_000);
    let time = (Utc::now() - ChronoDuration::hours(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let ts = Utc::now().timestamp_millis();
    for i in 0..rows / 2 {
        let tenant = callmeter::cli::loadgen::tenant_id("t", i as u32);
        let payload = format!(
            r#"{{"specversion":"1.0","id":"fb-{i}","source":"bench/eu-1","type":"call.completed","subject":"{tenant}","time":"{time}","datacontenttype":"application/json","data":{{"call_id":"fb-{i}","duration_ms":{d},"direction":"inbound","handled_by":"ai"}}}}"#,
            d = 1_000 + (i % 600) * 1_000,
        );
        let out = p.process(
            &InMessage {
                partition: 0,
                offset: i as i64,
                payload: Some(payload.as_bytes()),
                timestamp_ms: Some(ts),
            },
            Utc::now(),
        );
        assert_eq!(out, Outcome::Counted);
    }
    assert_eq!(p.dirty_rows(), rows);
    p
}

fn flush_batch(c: &mut Criterion) {
    let rows = size(100_000, 1_000);
    let mut g = c.benchmark_group("flush_batch");
    g.throughput(Throughput::Elements(rows as u64));
    if bench_mode() {
        g.sample_size(20).measurement_time(Duration::from_secs(10));
    } else {
        g.sample_size(10);
    }
    let mut p = dirty_processor(rows);

    g.bench_function(BenchmarkId::new("snapshot", rows), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let batch = p.snapshot();
                took += t.elapsed();
                assert_eq!(batch.rows.len(), rows);
                // Back to dirty, as after a failed flush (untimed).
                p.unflushed(batch);
            }
            took
        })
    });

    // The consuming thread's share: the cut alone (the rows are read untimed, as the flush
    // task does, then returned to dirty).
    g.bench_function(BenchmarkId::new("cut", rows), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let cut = p.cut();
                took += t.elapsed();
                assert_eq!(cut.rows(), rows);
                p.unflushed(cut.materialize());
            }
            took
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mock = rt.block_on(async { clickhouse::test::Mock::new() });
    let ch = ClickHouse::new(&ClickHouseSettings {
        url: mock.url().to_string(),
        ..Default::default()
    });
    let batch = p.snapshot();
    assert_eq!(batch.rows.len(), rows);
    g.bench_function(BenchmarkId::new("write_batch_to_mock_server", rows), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                // rollup_state, usage_rollups, partition_checkpoints.
                let controls: Vec<_> = (0..3)
                    .map(|_| mock.add(clickhouse::test::handlers::record_ddl()))
                    .collect();
                let t = Instant::now();
                rt.block_on(ch.write_batch("call-events", &batch))
                    .expect("write to the mock server");
                took += t.elapsed();
                drop(controls);
            }
            took
        })
    });
    g.finish();
}

criterion_group!(benches, flush_batch);
criterion_main!(benches);
