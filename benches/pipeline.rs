//! Decode + validate + dedup + aggregate of realistic CloudEvents through the real
//! [`callmeter::state::Processor`], side by side with the ceiling: serde_json decoding with
//! borrowed strings plus a hash map update.
//!
//! `cargo bench --bench pipeline` (see BENCHMARKS.md). Throughput is in events per second on
//! one core: the consuming loop is single-threaded per instance.

use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustc_hash::FxHashMap;
use serde::Deserialize;

mod support;
use support::{Feeder, bench_mode, loadgen_payloads, size};

/// Messages per timed iteration.
const CHUNK: usize = 1_000;

/// The baseline's view of an event: borrowed strings, the fields the pipeline reads.
#[derive(Deserialize)]
struct BaseEvent<'a> {
    specversion: &'a str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    subject: &'a str,
    time: &'a str,
    #[serde(borrow)]
    data: BaseData<'a>,
}

#[derive(Deserialize)]
struct BaseData<'a> {
    call_id: &'a str,
    duration_ms: u64,
    direction: &'a str,
    handled_by: Option<&'a str>,
}

/// Decode with serde_json (borrowed strings) and add the duration to the tenant's entry of
/// an FxHashMap: no validation, no dedup, no periods, no decimals.
fn baseline<'a>(pool: &'a [Vec<u8>], map: &mut FxHashMap<&'a str, (u64, u64)>) {
    for p in pool {
        let ev: BaseEvent<'a> = serde_json::from_slice(p).expect("valid event");
        std::hint::black_box((
            ev.specversion,
            ev.id,
            ev.source,
            ev.ty,
            ev.time,
            ev.data.call_id,
            ev.data.direction,
            ev.data.handled_by,
        ));
        let e = map.entry(ev.subject).or_default();
        e.0 += ev.data.duration_ms;
        e.1 += 1;
    }
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(CHUNK as u64));
    if bench_mode() {
        g.measurement_time(Duration::from_secs(8));
    }
    // Every pass over the pool makes new events (fresh ids), so the pool can be small.
    let pool_size = size(100_000, 2_000);
    let flush_every = size(1_000_000, 1_000) as u64;

    // The ceiling: serde_json + FxHashMap, 10,000 tenants.
    {
        let tenants = size(10_000, 100) as u32;
        let pool = loadgen_payloads(pool_size, tenants, Utc::now() - chrono::Duration::hours(1));
        let mut next = 0;
        let mut map = FxHashMap::default();
        g.bench_function(BenchmarkId::new("baseline_serde_fxhashmap", tenants), |b| {
            b.iter(|| {
                baseline(&pool[next..next + CHUNK], &mut map);
                next = (next + CHUNK) % pool.len();
            })
        });
    }

    // The real path by number of tenants, 1,000,000 dedup entries held.
    let tenant_counts: &[u32] = if bench_mode() {
        &[1_000, 10_000, 100_000]
    } else {
        &[100]
    };
    for &tenants in tenant_counts {
        let entries = size(1_000_000, 5_000);
        run_processor(
            &mut g,
            "processor",
            tenants,
            tenants,
            pool_size,
            entries,
            flush_every,
        );
    }

    // The cost-growth table's large cases (BENCHMARKS.md), a minute or more each to warm
    // up: `PIPELINE_BENCH_LARGE=1 cargo bench --bench pipeline -- large`.
    if bench_mode() && std::env::var_os("PIPELINE_BENCH_LARGE").is_some() {
        run_processor(
            &mut g,
            "large_tenants",
            1_000_000,
            1_000_000,
            // Every tenant in the pool.
            1_000_000,
            1_000_000,
            flush_every,
        );
        run_processor(
            &mut g,
            "large_dedup_entries",
            10_000,
            50_000_000,
            pool_size,
            50_000_000,
            flush_every,
        );
    }

    // The real path by dedup entries held (window x arrival rate), 10,000 tenants.
    if bench_mode() {
        for entries in [100_000usize, 10_000_000] {
            run_processor(
                &mut g,
                "processor_dedup_entries",
                10_000,
                entries as u32,
                pool_size,
                entries,
                flush_every,
            );
        }
    }
    g.finish();
}

#[allow(clippy::too_many_arguments)]
fn run_processor(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    tenants: u32,
    param: u32,
    pool_size: usize,
    dedup_entries: usize,
    flush_every: u64,
) {
    // A flush (which evicts the dedup set) at least every tenth of the window, as the
    // flush interval is in production (5 s of a 1 h window).
    let flush_every = flush_every.min((dedup_entries as u64 / 10).max(1_000));
    let mut f = Feeder::new(tenants, pool_size, dedup_entries, flush_every);
    // Warm up to the steady state: every tenant seen, the dedup set full.
    f.run(dedup_entries.max(pool_size) * 11 / 10 + pool_size, CHUNK);
    assert_eq!(f.other, 0, "every benchmark message must be counted");
    let held = f.proc.dedup_entries();
    assert!(
        held >= dedup_entries * 9 / 10 && held <= dedup_entries * 13 / 10 + 1_000,
        "the dedup set holds {held} entries, not about {dedup_entries}"
    );
    g.bench_function(BenchmarkId::new(name, param), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                f.chunk(CHUNK);
                took += t.elapsed();
                f.roll();
            }
            took
        })
    });
    assert_eq!(f.other, 0, "every benchmark message must be counted");
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
