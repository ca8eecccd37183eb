//! The throughput phase: `--events` loadgen events on a fresh topic, read (a) by a plain
//! consumer that only counts and (b) by the pipeline until ClickHouse holds every one.

use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::Consumer;

use super::setup::{Running, plain_consumer, set_up, stored_calls};
use super::{Options, Table, rate, thousands};
use crate::cli::loadgen::{self, LoadSpec};
use crate::config::{Config, KafkaSettings};
use crate::ingest::consumer as kafka;

/// Reads `n` messages, doing nothing with them; the time from the first to the last.
fn raw_consume(
    ks: &KafkaSettings,
    group: &str,
    n: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let c = plain_consumer(ks, group)?;
    c.subscribe(&[&ks.topic])?;
    let deadline = Instant::now() + timeout;
    let mut first: Option<Instant> = None;
    let mut count = 0u64;
    let mut bytes = 0usize;
    while count < n {
        if Instant::now() > deadline {
            bail!("raw consumer read {count} of {n} messages in {timeout:?}");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                bytes += m.payload_len();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "raw consumer error"),
            None => {}
        }
    }
    std::hint::black_box(bytes);
    Ok(first.map(|f| f.elapsed()).unwrap_or_default())
}

pub(super) fn throughput(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    table: &mut Table,
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (names, c, ch) = set_up(rt, config, run, "throughput", Some(o.partitions), databases)?;
    let ks = &c.settings.kafka;
    println!(
        "throughput: producing {} events for {} tenants to {} ({} partitions)",
        o.events, o.tenants, names.topic, o.partitions
    );
    let spec = LoadSpec {
        events: o.events,
        tenants: o.tenants,
        seed: 11,
        ..Default::default()
    };
    let (n, took) = rt.block_on(async {
        let producer = kafka::bulk_producer(ks)?;
        let messages = loadgen::generate(&spec).map(|g| (g.tenant, g.payload));
        anyhow::Ok(kafka::publish_all(&producer, &names.topic, messages, None).await?)
    })?;
    table.add(
        "produce (bulk producer, lz4, loadgen payloads)",
        format!("{} ev/s", thousands(rate(n, took))),
        "",
    );
    let timeout = Duration::from_secs(120 + o.events / 2_000);

    println!("throughput: (a) plain consumer reading {n} events");
    let raw = raw_consume(ks, &format!("{}-raw", names.group), n, timeout)?;
    let raw_rate = rate(n, raw);
    table.add(
        "(a) raw consumption (plain consumer, no processing)",
        format!("{} ev/s", thousands(raw_rate)),
        "",
    );

    println!("throughput: (b) the pipeline reading {n} events until ClickHouse holds them");
    let p = Running::start(rt, c.clone())?;
    let started = Instant::now();
    let deadline = started + timeout;
    let first = loop {
        if p.consumed() > 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            p.stop()?;
            bail!("the pipeline consumed nothing in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    println!(
        "throughput: first event {:.1} s after start (group join and restore)",
        started.elapsed().as_secs_f64()
    );
    let consumed = loop {
        if p.consumed() >= n {
            break first.elapsed();
        }
        if Instant::now() > deadline {
            let got = p.consumed();
            p.stop()?;
            bail!("the pipeline consumed {got} of {n} events in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stored = rt.block_on(async {
        loop {
            let got = stored_calls(&ch, &names.topic).await.unwrap_or(0);
            if got >= n {
                return Ok(first.elapsed());
            }
            if Instant::now() > deadline {
                bail!("ClickHouse holds {got} of {n} events after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    p.stop()?;
    let stored = stored?;
    let pipe_rate = rate(n, consumed);
    table.add(
        "(b) pipeline: consumed and aggregated",
        format!("{} ev/s", thousands(pipe_rate)),
        "",
    );
    table.add(
        "(b) pipeline: consumed and flushed to ClickHouse",
        format!("{} ev/s", thousands(rate(n, stored))),
        "",
    );
    let ratio = pipe_rate / raw_rate;
    table.add(
        "ratio (b consumed) / (a)",
        format!("{ratio:.2}"),
        if ratio >= 0.8 {
            ">= 0.8: met"
        } else {
            ">= 0.8: NOT met"
        },
    );
    let ratio_stored = rate(n, stored) / raw_rate;
    table.add(
        "ratio (b flushed) / (a)",
        format!("{ratio_stored:.2}"),
        if ratio_stored >= 0.8 {
            ">= 0.8: met"
        } else {
            ">= 0.8: NOT met"
        },
    );
    Ok(())
}
