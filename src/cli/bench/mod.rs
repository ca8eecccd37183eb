//! `callmeter bench`: end-to-end measurements with the project's own code against the
//! broker and ClickHouse of the configuration, printed as one table (see BENCHMARKS.md).
//!
//! Phases, each on fresh topics, consumer groups and databases (named `*-bench-<run>`):
//!
//! - **memory** (no servers): state bytes per (tenant, meter, period) row, per tenant and
//!   per dedup entry, from the process's resident set size before and after feeding a
//!   [`Processor`](crate::state::Processor) synthetic events; extrapolated to the dedup
//!   window of the configuration at `--dedup-rate` events per second.
//! - **throughput**: `--events` loadgen events are produced to a fresh topic; then (a) a
//!   plain consumer that does nothing but count reads them all, and (b) the pipeline of
//!   `callmeter run` ([`crate::ingest::run`], in-process, fresh group and database) reads
//!   them until ClickHouse holds every one. Rates are timed from each consumer's first
//!   message, so that group joining and partition restore are left out of both.
//! - **latency**: the pipeline runs on a fresh topic while events are produced at `--rate`;
//!   a consumer of the alerts topic takes the time from each crossing event's production
//!   (when it was handed to the producer) to its alert's arrival.
//! - **flush**: [`ClickHouse::write_batch`] of `--flush-rows` dirty rows to ClickHouse.
//!
//! One module per phase ([`memory`], [`throughput`], [`latency`], [`flush`]); [`setup`]
//! names and creates each phase's topics, group and database and runs the pipeline.

mod flush;
mod latency;
mod memory;
mod setup;
mod throughput;

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;

use crate::cli::loadgen;
use crate::config::Config;
use crate::sink::clickhouse::ClickHouse;

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
    /// Write every alert's latency to this CSV file (sent_ms,latency_ms,fired_ms,event_id).
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
pub(super) struct Table {
    lines: Vec<Line>,
}

impl Table {
    pub(super) fn add(
        &mut self,
        measure: impl Into<String>,
        value: impl Into<String>,
        target: &str,
    ) {
        let l = Line {
            measure: measure.into(),
            value: value.into(),
            target: target.into(),
        };
        println!("  {:<58} {:>22}  {}", l.measure, l.value, l.target);
        self.lines.push(l);
    }

    pub(super) fn print(&self) {
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

pub(super) fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// `1234567` -> `1,234,567`.
pub(super) fn thousands(v: f64) -> String {
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

pub(super) fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(super) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
            Phase::Memory => memory::memory(config, o, &mut table),
            Phase::Throughput => {
                throughput::throughput(rt, config, o, &run, &mut table, &mut databases)
            }
            Phase::Latency => latency::latency(rt, config, o, &run, &mut table, &mut databases),
            Phase::Flush => flush::flush(rt, config, o, &run, &mut table, &mut databases),
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
                    .query(&crate::sink::clickhouse::queries::drop_database(db))
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
}
