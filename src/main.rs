//! The `callmeter` command line (CONTRACT section 7); `run`'s lifecycle is [`callmeter::app`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use callmeter::config::{Config, ConfigError};
use callmeter::sink::clickhouse::ClickHouse;

#[derive(Parser)]
#[command(
    name = "callmeter",
    version,
    about = "Metering pipeline for voice platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline; SIGTERM/SIGINT drain, flush, commit and exit 0.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create the ClickHouse database and tables that are missing.
    Migrate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the configuration and print plans and tenants.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish the real call records of a data set directory as call events.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        dataset: PathBuf,
        /// Events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Print per tenant and usage period the calls, minutes, alerts and charges stored in
    /// ClickHouse.
    Report {
        #[arg(long)]
        config: PathBuf,
    },
    /// Recompute a usage period's totals from the raw events in `call_events` and report any
    /// difference from the rollups (exit status 1 if there is one).
    Reconcile {
        #[arg(long)]
        config: PathBuf,
        /// `YYYY-MM` (the period anchored in that month) or an RFC 3339 instant.
        #[arg(long)]
        period: String,
    },
    /// Publish synthetic call events, deterministic for a seed.
    Loadgen {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        events: u64,
        #[arg(long)]
        tenants: u32,
        #[arg(long)]
        rate: Option<u32>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of messages that repeat an earlier event.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Fraction of events whose time is moved back by up to a minute.
        #[arg(long, default_value_t = 0.0)]
        disorder: f64,
        /// Revenue currency of the generated calls.
        #[arg(long, default_value = "USD")]
        currency: String,
    },
    /// Measure end to end against the configured broker and ClickHouse (fresh topics,
    /// groups and databases): raw consumption vs the pipeline, alert latency under load,
    /// state memory, flush time. See BENCHMARKS.md.
    Bench {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        options: callmeter::benchrun::Options,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load(path)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::Migrate { config }
        | Command::CheckConfig { config }
        | Command::Replay { config, .. }
        | Command::Report { config }
        | Command::Reconcile { config, .. }
        | Command::Loadgen { config, .. }
        | Command::Bench { config, .. } => config.clone(),
    };
    let config = match load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callmeter: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Run { .. } = &cli.command
        && let Err(e) = callmeter::stripe::api_key(&config.settings.stripe)
    {
        eprintln!("callmeter: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callmeter: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Bench { options, .. } => callmeter::benchrun::run(&rt, &config, &options),
        Command::Run { .. } => callmeter::app::run(&rt, config, config_path),
        Command::Migrate { .. } => rt.block_on(migrate(&config)),
        Command::CheckConfig { .. } => {
            print!("{}", callmeter::config::describe(&config));
            Ok(())
        }
        Command::Replay { dataset, rate, .. } => rt.block_on(replay(&config, &dataset, rate)),
        Command::Reconcile { period, .. } => rt.block_on(reconcile(&config, &period)),
        Command::Report { .. } => rt.block_on(async {
            let ch = ClickHouse::new(&config.settings.clickhouse);
            let lines = callmeter::report::lines(&config, &ch)
                .await
                .with_context(|| {
                    format!("reading ClickHouse at {}", config.settings.clickhouse.url)
                })?;
            print!("{}", callmeter::report::format(&config, &lines));
            Ok(())
        }),
        Command::Loadgen {
            events,
            tenants,
            rate,
            seed,
            duplicates,
            disorder,
            currency,
            ..
        } => rt.block_on(loadgen(
            &config,
            callmeter::loadgen::LoadSpec {
                events,
                tenants,
                seed,
                duplicate_rate: duplicates,
                disorder_rate: disorder,
                currency,
                ..Default::default()
            },
            rate,
        )),
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callmeter: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let applied = ch
        .migrate()
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.settings.clickhouse.url))?;
    for f in applied {
        println!("ok {f}");
    }
    Ok(())
}

async fn reconcile(config: &Config, period: &str) -> anyhow::Result<()> {
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let lines = callmeter::reconcile::reconcile(config, &ch, period).await?;
    println!(
        "{:<24} {:<16} {:<22} {:>20} {:>20}  status",
        "tenant", "meter", "period start (UTC)", "raw events", "rollups"
    );
    let mut bad = 0;
    for l in &lines {
        if !l.matches() {
            bad += 1;
        }
        println!(
            "{:<24} {:<16} {:<22} {:>20} {:>20}  {}",
            l.tenant,
            l.meter,
            l.period.start_utc().format("%Y-%m-%dT%H:%M:%SZ"),
            l.raw_events,
            l.rollups,
            if l.matches() { "ok" } else { "MISMATCH" }
        );
    }
    println!("{} lines, {} mismatches", lines.len(), bad);
    if bad > 0 {
        anyhow::bail!("{bad} totals differ between raw events and rollups");
    }
    Ok(())
}

async fn replay(config: &Config, dataset: &Path, rate: Option<u32>) -> anyhow::Result<()> {
    let (events, stats) = callmeter::replay::load_dataset(dataset)
        .with_context(|| format!("reading data set {}", dataset.display()))?;
    println!(
        "data set {}: {} files, {} rows, {} events, {} phantom, {} junk type, {} unparsable",
        dataset.display(),
        stats.files.len(),
        stats.rows,
        stats.events,
        stats.phantom,
        stats.junk_type,
        stats.unparsable
    );
    for (f, line, reason) in &stats.errors {
        println!("  unparsable: {f}:{line}: {reason}");
    }
    let producer = callmeter::ingest::consumer::bulk_producer(&config.settings.kafka)?;
    let took =
        callmeter::replay::publish(&producer, &config.settings.kafka.topic, &events, rate).await?;
    println!(
        "published {} events to {} in {:.2} s ({:.0} events/s)",
        events.len(),
        config.settings.kafka.topic,
        took.as_secs_f64(),
        events.len() as f64 / took.as_secs_f64().max(1e-9)
    );
    for (t, n) in &stats.per_tenant {
        println!("  {t}: {n}");
    }
    Ok(())
}

async fn loadgen(
    config: &Config,
    spec: callmeter::loadgen::LoadSpec,
    rate: Option<u32>,
) -> anyhow::Result<()> {
    let producer = callmeter::ingest::consumer::bulk_producer(&config.settings.kafka)?;
    let topic = &config.settings.kafka.topic;
    let mut dups = 0u64;
    let messages = callmeter::loadgen::generate(&spec).map(|g| {
        dups += g.duplicate as u64;
        (g.tenant, g.payload)
    });
    let (n, took) =
        callmeter::ingest::consumer::publish_all(&producer, topic, messages, rate).await?;
    let secs = took.as_secs_f64();
    println!(
        "published {n} events ({dups} duplicates) for {} tenants to {topic} in {secs:.2} s ({:.0} events/s)",
        spec.tenants,
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}
