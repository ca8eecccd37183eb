//! `callmeter bench`: end-to-end measurements with the project's own code against the
//! broker and ClickHouse of the configuration, printed as one table (see BENCHMARKS.md).
//!
//! Phases, each on fresh topics, consumer groups and databases (named `*-bench-<run>`):
//!
//! - **memory** (no servers): state bytes per (tenant, meter, period) row, per tenant and
//!   per dedup entry, from the process's resident set size before and after feeding a
//!   [`Processor`] synthetic events; extrapolated to the dedup window of the configuration
//!   at `--dedup-rate` events per second.
//! - **throughput**: `--events` loadgen events are produced to a fresh topic; then (a) a
//!   plain consumer that does nothing but count reads them all, and (b) the pipeline of
//!   `callmeter run` ([`crate::ingest::run`], in-process, fresh group and database) reads
//!   them until ClickHouse holds every one. Rates are timed from each consumer's first
//!   message, so that group joining and partition restore are left out of both.
//! - **latency**: the pipeline runs on a fresh topic while events are produced at `--rate`;
//!   a consumer of the alerts topic takes the time from each crossing event's production
//!   (when it was handed to the producer) to its alert's arrival.
//! - **flush**: [`ClickHouse::write_batch`] of `--flush-rows` dirty rows to ClickHouse.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaSettings};
use crate::ingest::consumer as kafka;
use crate::loadgen::{self, LoadSpec};
use crate::sink::clickhouse::ClickHouse;
use crate::state::{InMessage, Outcome, Params, Processor, Restored, Shared};

/// Which measurements to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Phase {
    Memory,
    Throughput,
    Latency,
    Flush,
}

/// `callmeter bench` options (see `callmeter bench --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Phases to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,throughput,latency,flush"
    )]
    pub phases: Vec<Phase>,
    /// Events pre-produced for the raw-vs-pipeline comparison.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Tenants of the pre-produced events.
    #[arg(long, default_value_t = 10_000)]
    pub tenants: u32,
    /// Partitions of the bench topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Events per second produced during the alert-latency run.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u32,
    /// Length of the alert-latency run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub latency_duration: Duration,
    /// Alerts of events produced in this first part of the latency run are reported
    /// apart (connections and metadata warm up).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub latency_warmup: Duration,
    /// Tenants of the alert-latency run (default: 20 x rate, so that threshold
    /// crossings spread over the run).
    #[arg(long)]
    pub latency_tenants: Option<u32>,
    /// Tenant popularity skew of the alert-latency run (1 = uniform; see loadgen).
    #[arg(long, default_value_t = 2.0)]
    pub latency_skew: f64,
    /// Dirty rows written per timed flush.
    #[arg(long, default_value_t = 100_000)]
    pub flush_rows: usize,
    /// Timed flushes.
    #[arg(long, default_value_t = 5)]
    pub flush_repeats: usize,
    /// Tenants held in memory for the state-size measurement.
    #[arg(long, default_value_t = 100_000)]
    pub memory_tenants: u32,
    /// Arrival rate (events/s) at which the dedup window's memory is reported.
    #[arg(long, default_value_t = 20_000)]
    pub dedup_rate: u32,
    /// Dedup entries created to measure their size.
    #[arg(long, default_value_t = 2_000_000)]
    pub dedup_sample: u64,
    /// Keep the bench databases in ClickHouse (default: dropped at the end).
    #[arg(long)]
    pub keep: bool,
    /// Write every alert's latency to this CSV file (sent_ms,latency_ms,event_id).
    #[arg(long)]
    pub latency_csv: Option<std::path::PathBuf>,
}

/// One line of the result table.
struct Line {
    measure: String,
    value: String,
    target: String,
}

#[derive(Default)]
struct Table {
    lines: Vec<Line>,
}

impl Table {
    fn add(&mut self, measure: impl Into<String>, value: impl Into<String>, target: &str) {
        let l = Line {
            measure: measure.into(),
            value: value.into(),
            target: target.into(),
        };
        println!("  {:<58} {:>22}  {}", l.measure, l.value, l.target);
        self.lines.push(l);
    }

    fn print(&self) {
        let w0 = self
            .lines
            .iter()
            .map(|l| l.measure.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let w1 = self
            .lines
            .iter()
            .map(|l| l.value.len())
            .max()
            .unwrap_or(5)
            .max(5);
        println!();
        println!("| {:<w0$} | {:>w1$} | target |", "measure", "value");
        println!("|{}|{}:|--------|", "-".repeat(w0 + 2), "-".repeat(w1 + 1));
        for l in &self.lines {
            println!("| {:<w0$} | {:>w1$} | {} |", l.measure, l.value, l.target);
        }
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// `1234567` -> `1,234,567`.
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Resident set size of this process in bytes (Linux), if known.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A `call.completed` like loadgen's, without revenue (two rows per tenant and period:
/// `call_minutes` and `calls`).
fn call_payload(tenant: &str, id: &str, time: &str, duration_ms: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"bench/eu-1","type":"call.completed","subject":"{tenant}","time":"{time}","datacontenttype":"application/json","data":{{"call_id":"{id}","duration_ms":{duration_ms},"direction":"inbound","handled_by":"ai"}}}}"#
    )
}

/// Feeds synthetic calls to a processor on partition 0.
struct Synth {
    proc: Processor,
    offset: i64,
    ts_ms: i64,
}

impl Synth {
    fn new(config: &Config) -> Synth {
        let shared = Shared::new(config.catalog.clone());
        let mut params = Params::from_settings(&config.settings);
        // Measure the window's natural size; the cap is applied in the report.
        params.max_dedup_entries = usize::MAX;
        let mut proc = Processor::new(shared, params);
        proc.assign(0);
        proc.install(Restored {
            partition: 0,
            ..Default::default()
        });
        Synth {
            proc,
            offset: 0,
            ts_ms: Utc::now().timestamp_millis() - 60_000,
        }
    }

    /// One call per tenant `0..tenants`, `per_tenant` times, at event time `time`.
    fn calls(&mut self, tag: &str, tenants: u32, per_tenant: u64, time: DateTime<Utc>) -> u64 {
        let time = time.to_rfc3339_opts(SecondsFormat::Millis, true);
        let now = Utc::now();
        let mut counted = 0;
        for round in 0..per_tenant {
            for t in 0..tenants {
                let tenant = loadgen::tenant_id("t", t);
                let id = format!("{tag}-{round}-{t}");
                // A few seconds each: no tenant nears a limit, so no alerts pile up.
                let p = call_payload(&tenant, &id, &time, 1_000 + (t as u64 % 10) * 1_000);
                let m = InMessage {
                    partition: 0,
                    offset: self.offset,
                    payload: Some(p.as_bytes()),
                    // Within the window: nothing ages out during the measurement.
                    timestamp_ms: Some(self.ts_ms),
                };
                self.offset += 1;
                if self.proc.process(&m, now) == Outcome::Counted {
                    counted += 1;
                }
            }
            self.proc.take_new_alerts();
        }
        counted
    }
}

fn memory(config: &Config, o: &Options, table: &mut Table) -> anyhow::Result<()> {
    println!(
        "memory: {} tenants, {} dedup entries sampled",
        o.memory_tenants, o.dedup_sample
    );
    let Some(rss0) = rss_bytes() else {
        table.add("memory", "n/a (no /proc/self/status)", "");
        return Ok(());
    };
    let mut s = Synth::new(config);
    let now = Utc::now();
    let t = o.memory_tenants;
    // 1. Every tenant, one call in an earlier usage period: tenants + 2 rows each + dedup.
    let n1 = s.calls("m1", t, 1, now - ChronoDuration::days(40));
    let rss1 = rss_bytes().unwrap_or(rss0);
    let rows1 = s.proc.shared().row_count();
    // 2. Every tenant, one call in the current period: 2 new rows each + dedup, no tenants.
    let n2 = s.calls("m2", t, 1, now - ChronoDuration::hours(1));
    let rss2 = rss_bytes().unwrap_or(rss1);
    let rows2 = s.proc.shared().row_count();
    // 3. More calls of the same tenants and period: only dedup entries grow.
    let per_tenant = o.dedup_sample.div_ceil(t.max(1) as u64);
    let before = s.proc.dedup_entries();
    let n3 = s.calls("m3", t, per_tenant, now - ChronoDuration::minutes(30));
    let rss3 = rss_bytes().unwrap_or(rss2);
    let entries = (s.proc.dedup_entries() - before) as f64;
    if n1 != t as u64 || n2 != t as u64 || n3 != per_tenant * t as u64 {
        bail!(
            "memory phase: events were not counted ({n1}, {n2}, {n3}); the configuration must price tenants t00000.. (pricing.default_plan)"
        );
    }
    let per_entry = (rss3.saturating_sub(rss2)) as f64 / entries.max(1.0);
    let new_rows = (rows2 - rows1) as f64;
    let per_row = ((rss2.saturating_sub(rss1)) as f64 - n2 as f64 * per_entry) / new_rows;
    let per_tenant_b =
        ((rss1.saturating_sub(rss0)) as f64 - n1 as f64 * per_entry - rows1 as f64 * per_row)
            / t as f64;
    table.add(
        "memory: bytes per (tenant, meter, period) row",
        format!("{per_row:.0} B"),
        "",
    );
    table.add(
        format!("memory: bytes per tenant (besides rows), {t} tenants"),
        format!("{per_tenant_b:.0} B"),
        "",
    );
    table.add(
        format!(
            "memory: bytes per dedup entry ({} entries)",
            thousands(entries)
        ),
        format!("{per_entry:.0} B"),
        "",
    );
    table.add(
        format!("memory: state of {t} tenants, 2 rows each"),
        mib(t as f64 * (per_tenant_b + 2.0 * per_row)),
        "",
    );
    // The window as the pipeline holds it: dedup window plus the replay margin.
    let p = s.proc.params();
    let held_ms = p.dedup_window_ms + p.replay_margin_ms();
    let need = o.dedup_rate as f64 * held_ms as f64 / 1000.0;
    let cap = config.settings.pipeline.max_dedup_entries as f64;
    table.add(
        format!(
            "memory: dedup, {} window (+{} replay margin) at {}/s",
            humantime::format_duration(config.settings.pipeline.dedup_window),
            humantime::format_duration(Duration::from_millis(p.replay_margin_ms() as u64)),
            thousands(o.dedup_rate as f64)
        ),
        format!("{} entries", thousands(need)),
        "",
    );
    table.add(
        "memory: dedup at that window and rate",
        mib(need * per_entry),
        "",
    );
    if need > cap {
        table.add(
            format!(
                "memory: capped by pipeline.max_dedup_entries = {}",
                thousands(cap)
            ),
            mib(cap * per_entry),
            &format!(
                "window shrinks to {:.0} min at this rate",
                cap / o.dedup_rate as f64 / 60.0
            ),
        );
    }
    drop(s);
    Ok(())
}

fn client_config(ks: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ks.brokers);
    for (k, v) in &ks.properties {
        c.set(k, &v.0);
    }
    c
}

async fn create_topics(ks: &KafkaSettings, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(ks)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(1)).set("retention.ms", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

/// A plain consumer with the pipeline's client settings and a fresh group.
fn plain_consumer(ks: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ks.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    for (k, v) in &ks.properties {
        c.set(k, &v.0);
    }
    Ok(c.create()?)
}

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

/// `callmeter run`'s pipeline on its own thread.
struct Running {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(rt: &tokio::runtime::Runtime, config: Config) -> anyhow::Result<Running> {
        let shared = Shared::new(config.catalog.clone());
        let shutdown = CancellationToken::new();
        let (s, stop, handle) = (shared.clone(), shutdown.clone(), rt.handle().clone());
        let thread = std::thread::Builder::new()
            .name("callmeter-consumer".into())
            .spawn(move || crate::ingest::run(config, s, stop, handle, Default::default()))
            .context("starting the consumer thread")?;
        Ok(Running {
            shared,
            shutdown,
            thread,
        })
    }

    fn consumed(&self) -> u64 {
        self.shared.consumed()
    }

    fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }
}

/// Names of one phase's resources.
struct Names {
    topic: String,
    alerts: String,
    dlq: String,
    group: String,
    database: String,
}

impl Names {
    fn new(config: &Config, run: &str, phase: &str) -> Names {
        let base = format!("callmeter-bench-{run}-{phase}");
        Names {
            topic: format!("{base}-events"),
            alerts: format!("{base}-alerts"),
            dlq: format!("{base}-dlq"),
            group: base.clone(),
            database: format!(
                "{}_bench_{run}_{phase}",
                config.settings.clickhouse.database
            ),
        }
    }

    fn config(&self, base: &Config) -> Config {
        let mut c = base.clone();
        let k = &mut c.settings.kafka;
        k.topic = self.topic.clone();
        k.alerts_topic = self.alerts.clone();
        k.dlq_topic = self.dlq.clone();
        k.group_id = self.group.clone();
        k.group_instance_id = Some(format!("{}-0", self.group));
        c.settings.clickhouse.database = self.database.clone();
        c
    }

    async fn create(&self, ks: &KafkaSettings, partitions: i32) -> anyhow::Result<()> {
        create_topics(
            ks,
            &[(&self.topic, partitions), (&self.alerts, 1), (&self.dlq, 1)],
        )
        .await
    }
}

async fn stored_calls(ch: &ClickHouse, topic: &str) -> anyhow::Result<u64> {
    let n: u64 = ch
        .client()
        .query(&format!(
            "SELECT sum(event_count) FROM {} FINAL WHERE meter = 'calls' AND source_topic = ?",
            ch.table("usage_rollups")
        ))
        .bind(topic)
        .fetch_one()
        .await?;
    Ok(n)
}

/// A phase's fresh names, its configuration and ClickHouse client: topics created (when
/// `partitions` is given) and the database migrated (and listed for dropping at the end).
fn set_up(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    run: &str,
    phase: &str,
    partitions: Option<i32>,
    databases: &mut Vec<String>,
) -> anyhow::Result<(Names, Config, ClickHouse)> {
    let names = Names::new(config, run, phase);
    let c = names.config(config);
    let ch = ClickHouse::new(&c.settings.clickhouse);
    rt.block_on(async {
        if let Some(p) = partitions {
            names.create(&c.settings.kafka, p).await?;
        }
        databases.push(names.database.clone());
        ch.migrate().await.context("migrating the bench database")
    })?;
    Ok((names, c, ch))
}

fn throughput(
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

/// Alert arrivals: (crossing event id, arrival since the run's base instant).
type Arrivals = Vec<(String, Duration)>;

fn alert_reader(
    ks: &KafkaSettings,
    group: &str,
    base: Instant,
    stop: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Arrivals>> {
    let c = {
        let mut cfg = client_config(ks);
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A latency-sensitive reader: do not let the broker hold fetches.
            .set("fetch.wait.max.ms", "10");
        let c: BaseConsumer = cfg.create()?;
        c.subscribe(&[&ks.alerts_topic])?;
        c
    };
    Ok(std::thread::spawn(move || {
        #[derive(serde::Deserialize)]
        struct A {
            event_id: String,
        }
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if !assigned.load(Ordering::Relaxed)
                && c.assignment().map(|a| a.count() > 0).unwrap_or(false)
            {
                assigned.store(true, Ordering::Relaxed);
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                let at = base.elapsed();
                if let Some(a) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<A>(p).ok())
                {
                    out.push((a.event_id, at));
                }
            }
        }
        out
    }))
}

/// Produces `spec` at `rate` with the latency-oriented producer (small linger), as a live
/// platform would; returns each event's hand-over instant (since `base`), the count and the
/// time it took.
fn produce_at_rate(
    rt: &tokio::runtime::Runtime,
    ks: &KafkaSettings,
    topic: &str,
    spec: &LoadSpec,
    rate: u32,
    base: Instant,
) -> anyhow::Result<(HashMap<String, Duration>, u64, Duration)> {
    let mut sent: HashMap<String, Duration> = HashMap::with_capacity(spec.events as usize);
    let (n, took) = rt.block_on(async {
        let producer = kafka::producer(ks)?;
        let messages = loadgen::generate(spec).map(|g| {
            sent.insert(g.id.clone(), base.elapsed());
            (g.tenant, g.payload)
        });
        anyhow::Ok(kafka::publish_all(&producer, topic, messages, Some(rate)).await?)
    })?;
    Ok((sent, n, took))
}

/// The floor: how long a plain consumer takes to receive events produced at `rate`
/// (message timestamp to receipt, in ms), on a topic of its own.
fn delivery_floor(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    spec: &LoadSpec,
    table: &mut Table,
) -> anyhow::Result<()> {
    let names = Names::new(config, run, "floor");
    let ks = names.config(config).settings.kafka;
    rt.block_on(names.create(&ks, o.partitions))?;
    let c = plain_consumer(&ks, &names.group)?;
    c.subscribe(&[&ks.topic])?;
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicBool::new(false));
    let (stop2, assigned2) = (stop.clone(), assigned.clone());
    let reader = std::thread::spawn(move || {
        // (message timestamp ms, latency ms)
        let mut out: Vec<(i64, i64)> = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            if !assigned2.load(Ordering::Relaxed)
                && c.assignment().map(|a| a.count() > 0).unwrap_or(false)
            {
                assigned2.store(true, Ordering::Relaxed);
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20))
                && let Some(ts) = m.timestamp().to_millis()
            {
                out.push((ts, Utc::now().timestamp_millis() - ts));
            }
        }
        out
    });
    let ok = wait_for("plain consumer assigned", Duration::from_secs(60), || {
        assigned.load(Ordering::Relaxed)
    });
    let produced =
        ok.and_then(|_| produce_at_rate(rt, &ks, &names.topic, spec, o.rate, Instant::now()));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let got = reader.join().unwrap_or_default();
    let (_, n, _) = produced?;
    let first = got.iter().map(|g| g.0).min().unwrap_or(0);
    let warm_ms = o.latency_warmup.as_millis() as i64;
    let mut lat: Vec<f64> = got
        .iter()
        .filter(|g| g.0 >= first + warm_ms)
        .map(|g| g.1 as f64)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    table.add(
        format!(
            "floor: events received by a plain consumer, at {}/s",
            thousands(o.rate as f64)
        ),
        format!("{} of {}", thousands(got.len() as f64), thousands(n as f64)),
        "",
    );
    table.add(
        "floor: produced -> received by a plain consumer, p50",
        format!("{:.0} ms", quantile(&lat, 0.5)),
        "",
    );
    table.add(
        "floor: produced -> received by a plain consumer, p99",
        format!("{:.0} ms", quantile(&lat, 0.99)),
        "",
    );
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Cumulative buckets `(le, count)` of a Prometheus histogram in exposition text.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The upper bound of the bucket holding quantile `q`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, n)| *n >= q * total).map(|b| b.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    table: &mut Table,
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (names, c, _) = set_up(rt, config, run, "latency", Some(o.partitions), databases)?;
    let ks = c.settings.kafka.clone();
    let events = o.rate as u64 * o.latency_duration.as_secs().max(1);
    let tenants = o.latency_tenants.unwrap_or(o.rate.saturating_mul(20));
    let spec = LoadSpec {
        events,
        tenants,
        tenant_skew: o.latency_skew,
        seed: 13,
        start: Utc::now() - ChronoDuration::hours(1),
        ..Default::default()
    };
    println!(
        "latency: a plain consumer, {} events at {}/s (the broker and client floor)",
        events, o.rate
    );
    delivery_floor(rt, config, o, run, &spec, table)?;
    println!(
        "latency: pipeline on {}, {} events at {}/s for {} tenants (skew {})",
        names.topic, events, o.rate, tenants, o.latency_skew
    );
    // The pipeline's own alert histogram (event timestamp -> alert acknowledged), as
    // `callmeter run` exports it.
    let telemetry = crate::telemetry::Telemetry::install();
    let p = Running::start(rt, c.clone())?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicBool::new(false));
    let reader = alert_reader(
        &ks,
        &format!("{}-alerts-reader", names.group),
        base,
        stop.clone(),
        assigned.clone(),
    )?;
    let ready = wait_for("pipeline ready", Duration::from_secs(120), || {
        p.shared.ready()
    })
    .and_then(|_| {
        wait_for("alerts reader assigned", Duration::from_secs(60), || {
            assigned.load(Ordering::Relaxed)
        })
    });
    if let Err(e) = ready {
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        p.stop()?;
        return Err(e);
    }
    let produced = produce_at_rate(rt, &ks, &names.topic, &spec, o.rate, base);
    let produced_end = Instant::now();
    let drained = produced
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|(_, n, _)| {
            wait_for("pipeline caught up", Duration::from_secs(120), || {
                p.consumed() >= *n
            })
        });
    let lag_after = produced_end.elapsed();
    // Alerts still in flight.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let arrivals = reader.join().unwrap_or_default();
    p.stop()?;
    let (sent, n, took) = produced?;
    drained?;
    let samples: Vec<(&str, Duration, f64)> = arrivals
        .iter()
        .filter_map(|(id, at)| {
            sent.get(id)
                .map(|s| (id.as_str(), *s, at.saturating_sub(*s).as_secs_f64() * 1e3))
        })
        .collect();
    if let Some(path) = &o.latency_csv {
        let mut csv = String::from("sent_ms,latency_ms,event_id\n");
        for (id, s, l) in &samples {
            csv.push_str(&format!("{:.3},{l:.3},{id}\n", s.as_secs_f64() * 1e3));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let first_sent = sent.values().min().copied().unwrap_or_default();
    let warm = |s: &Duration| *s < first_sent + o.latency_warmup;
    let warmup_max = samples
        .iter()
        .filter(|s| warm(&s.1))
        .map(|s| s.2)
        .fold(f64::NAN, f64::max);
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| !warm(&s.1))
        .map(|s| s.2)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    table.add(
        "latency run: produced",
        format!("{} ev/s", thousands(rate(n, took))),
        &format!("target {}/s", thousands(o.rate as f64)),
    );
    table.add(
        "latency run: pipeline caught up after the last event",
        format!("{:.0} ms", lag_after.as_secs_f64() * 1e3),
        "",
    );
    table.add(
        "latency run: alerts received",
        thousands(samples.len() as f64),
        "",
    );
    table.add(
        format!(
            "latency run: alerts measured (events after the first {})",
            humantime::format_duration(o.latency_warmup)
        ),
        thousands(lat.len() as f64),
        "",
    );
    let p50 = quantile(&lat, 0.5);
    let p99 = quantile(&lat, 0.99);
    table.add(
        format!(
            "alert latency p50 at {}/s (production -> alert consumed)",
            thousands(o.rate as f64)
        ),
        format!("{p50:.1} ms"),
        "",
    );
    table.add(
        format!("alert latency p99 at {}/s", thousands(o.rate as f64)),
        format!("{p99:.1} ms"),
        if p99 < 100.0 {
            "< 100 ms: met"
        } else {
            "< 100 ms: NOT met"
        },
    );
    table.add(
        format!("alert latency p90 at {}/s", thousands(o.rate as f64)),
        format!("{:.1} ms", quantile(&lat, 0.9)),
        "",
    );
    table.add(
        "alert latency max",
        format!("{:.1} ms", lat.last().copied().unwrap_or(f64::NAN)),
        "",
    );
    table.add(
        "alert latency max during the warm-up (left out above)",
        format!("{warmup_max:.1} ms"),
        "",
    );
    let buckets = histogram(&telemetry.render(), crate::telemetry::ALERT_LATENCY);
    for q in [0.5, 0.99] {
        table.add(
            format!(
                "pipeline histogram: event -> alert acknowledged, p{:.0} (all alerts)",
                q * 100.0
            ),
            bucket_quantile(&buckets, q)
                .map(|b| format!("<= {:.0} ms", b * 1e3))
                .unwrap_or_else(|| "n/a".into()),
            "",
        );
    }
    Ok(())
}

fn flush(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    table: &mut Table,
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (names, c, ch) = set_up(rt, config, run, "flush", None, databases)?;
    let tenants = o.flush_rows.div_ceil(2) as u32;
    println!(
        "flush: {} dirty rows ({} tenants x 2 meters) to ClickHouse, {} times",
        tenants * 2,
        tenants,
        o.flush_repeats
    );
    let mut s = Synth::new(&c);
    s.calls("f", tenants, 1, Utc::now() - ChronoDuration::hours(1));
    let mut times = Vec::new();
    let mut snaps = Vec::new();
    for _ in 0..o.flush_repeats.max(1) {
        let t = Instant::now();
        let batch = s.proc.snapshot();
        snaps.push(t.elapsed().as_secs_f64() * 1e3);
        let rows = batch.rows.len();
        let t = Instant::now();
        rt.block_on(ch.write_batch(&names.topic, &batch))
            .context("writing the flush batch")?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        s.proc.unflushed(batch);
        if rows != tenants as usize * 2 {
            bail!("flush batch had {rows} rows");
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    snaps.sort_by(|a, b| a.total_cmp(b));
    table.add(
        format!("flush: snapshot of {} dirty rows (median)", tenants * 2),
        format!("{:.1} ms", quantile(&snaps, 0.5)),
        "",
    );
    table.add(
        format!(
            "flush: write_batch of {} rows to ClickHouse (median of {})",
            tenants * 2,
            times.len()
        ),
        format!("{:.0} ms", quantile(&times, 0.5)),
        &format!(
            "min {:.0} ms, max {:.0} ms",
            times[0],
            times[times.len() - 1]
        ),
    );
    Ok(())
}

/// Runs the selected phases and prints the table. Errors: a server is unreachable, a
/// phase times out, or the configuration does not price the generated tenants.
pub fn run(rt: &tokio::runtime::Runtime, config: &Config, o: &Options) -> anyhow::Result<()> {
    if config.catalog.tenant(&loadgen::tenant_id("t", 0)).is_none() {
        bail!(
            "the generated tenants (t00000, t00001, ...) need a plan: set pricing.default_plan (see examples/bench.toml)"
        );
    }
    let run = Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut table = Table::default();
    let mut databases = Vec::new();
    println!(
        "callmeter bench {run}: {} cores, broker {}, ClickHouse {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        config.settings.kafka.brokers,
        config.settings.clickhouse.url
    );
    let mut phases = o.phases.clone();
    phases.sort();
    phases.dedup();
    let mut result = Ok(());
    for ph in phases {
        let r = match ph {
            Phase::Memory => memory(config, o, &mut table),
            Phase::Throughput => throughput(rt, config, o, &run, &mut table, &mut databases),
            Phase::Latency => latency(rt, config, o, &run, &mut table, &mut databases),
            Phase::Flush => flush(rt, config, o, &run, &mut table, &mut databases),
        };
        if let Err(e) = r {
            result = Err(e.context(format!("{ph:?} phase")));
            break;
        }
    }
    if !o.keep && !databases.is_empty() {
        let ch = ClickHouse::new(&crate::config::ClickHouseSettings {
            database: "default".into(),
            ..config.settings.clickhouse.clone()
        });
        rt.block_on(async {
            for db in &databases {
                if let Err(e) = ch
                    .client()
                    .query(&format!("DROP DATABASE IF EXISTS {db}"))
                    .execute()
                    .await
                {
                    tracing::warn!(database = %db, error = %e, "dropping a bench database failed");
                }
            }
        });
    }
    table.print();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_quantiles() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1_000.0), "-1,000");
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn reads_a_prometheus_histogram() {
        let text = "\
# TYPE callmeter_alert_produce_latency_seconds histogram
callmeter_alert_produce_latency_seconds_bucket{le=\"0.05\"} 10
callmeter_alert_produce_latency_seconds_bucket{le=\"0.1\"} 90
callmeter_alert_produce_latency_seconds_bucket{le=\"+Inf\"} 100
callmeter_alert_produce_latency_seconds_sum 7.5
callmeter_alert_produce_latency_seconds_count 100
";
        let b = histogram(text, "callmeter_alert_produce_latency_seconds");
        assert_eq!(b.len(), 3);
        assert_eq!(bucket_quantile(&b, 0.5), Some(0.1));
        assert_eq!(bucket_quantile(&b, 0.99), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&histogram("", "x"), 0.5), None);
    }

    #[test]
    fn synthetic_calls_are_counted_without_alerts() {
        let c = Config::from_toml_str(include_str!("../examples/bench.toml")).unwrap();
        let mut s = Synth::new(&c);
        assert_eq!(
            s.calls("t", 50, 3, Utc::now() - ChronoDuration::hours(1)),
            150
        );
        assert_eq!(s.proc.shared().row_count(), 100);
        assert_eq!(s.proc.dedup_entries(), 150);
        assert!(s.proc.snapshot().alerts.is_empty());
    }
}
