//! The `callmeter` command line (CONTRACT section 7): wiring and shutdown only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use callmeter::config::{Config, ConfigError};
use callmeter::sink::clickhouse::ClickHouse;
use callmeter::state::Shared;
use callmeter::telemetry::Telemetry;

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
    if let Err(e) = callmeter::telemetry::init_logging() {
        eprintln!("{e}");
        std::process::exit(2);
    }
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
        Command::Run { .. } => run(&rt, config, config_path),
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
    let producer = callmeter::source::kafka::bulk_producer(&config.settings.kafka)?;
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
    let producer = callmeter::source::kafka::bulk_producer(&config.settings.kafka)?;
    let topic = &config.settings.kafka.topic;
    let mut dups = 0u64;
    let messages = callmeter::loadgen::generate(&spec).map(|g| {
        dups += g.duplicate as u64;
        (g.tenant, g.payload)
    });
    let (n, took) = callmeter::source::kafka::publish_all(&producer, topic, messages, rate).await?;
    let secs = took.as_secs_f64();
    println!(
        "published {n} events ({dups} duplicates) for {} tenants to {topic} in {secs:.2} s ({:.0} events/s)",
        spec.tenants,
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn run(rt: &tokio::runtime::Runtime, config: Config, path: PathBuf) -> anyhow::Result<()> {
    let telemetry = Telemetry::install();
    metrics::gauge!(callmeter::telemetry::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    // Series the alerting rules use that the pipeline only touches on change or failure:
    // exported from the start, so that the first failure counts in increase() and a rule
    // can tell "not paused" from "unknown".
    metrics::gauge!(callmeter::telemetry::PAUSED).set(0.0);
    metrics::counter!(callmeter::telemetry::FLUSH_FAILURES).increment(0);
    let ch = ClickHouse::new(&config.settings.clickhouse);
    rt.block_on(async {
        let mut backoff = callmeter::sink::clickhouse::flush_backoff();
        loop {
            match ch.migrate().await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, url = %config.settings.clickhouse.url, "ClickHouse not reachable for migration; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    });
    let shared = Shared::new(config.catalog.clone());
    let shutdown = CancellationToken::new();
    let tokens = Arc::new(arc_swap::ArcSwap::from_pointee(
        config.settings.api.tokens.clone(),
    ));
    // Prepaid wallets: balances derived from the rollups, alerts to the alerts topic.
    let alert_producer = callmeter::source::kafka::producer(&config.settings.kafka)
        .context("creating the wallet alert producer")?;
    let wallets = Arc::new(callmeter::wallet::Wallets::new(
        shared.clone(),
        ch.clone(),
        Some(callmeter::wallet::AlertSink {
            producer: alert_producer,
            topic: config.settings.kafka.alerts_topic.clone(),
        }),
        config.settings.metrics.tenant_gauges_max,
    ));
    rt.spawn(wallets.clone().run(
        config.settings.pricing.wallet_refresh_interval,
        shutdown.clone(),
    ));
    let state = callmeter::api::ApiState {
        shared: shared.clone(),
        telemetry,
        ch: ch.clone(),
        tokens: tokens.clone(),
        wallets: Some(wallets),
    };
    rt.spawn(callmeter::gauges::run(
        shared.clone(),
        state.telemetry.clone(),
        config.settings.metrics.tenant_gauges_max,
        shutdown.clone(),
    ));
    let listen = config.settings.api.listen.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&listen))
        .with_context(|| format!("binding the API to {listen}"))?;
    tracing::info!(%listen, "HTTP API listening");
    let api_shutdown = shutdown.clone();
    rt.spawn(async move {
        let app = callmeter::api::router(state);
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
            .await;
    });
    // The config file is watched (modification time) and reloaded when it changes.
    let watch = config.settings.pricing.watch_interval;
    if !watch.is_zero() {
        let (path, shared, tokens, stop) = (
            path.clone(),
            shared.clone(),
            tokens.clone(),
            shutdown.clone(),
        );
        rt.spawn(async move {
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = mtime(&path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(watch) => {}
                }
                let now = mtime(&path);
                if now.is_some() && now != last {
                    last = now;
                    tracing::info!(path = %path.display(), "configuration file changed");
                    reload(&path, &shared, &tokens);
                }
            }
        });
    }
    // Signals: the first SIGTERM/SIGINT drains; a second exits at once. SIGHUP reloads.
    let sig_shutdown = shutdown.clone();
    let reload_shared = shared.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    reload(&path, &reload_shared, &tokens);
                    continue;
                }
            }
            if sig_shutdown.is_cancelled() {
                eprintln!("callmeter: second signal, exiting now");
                std::process::exit(130);
            }
            tracing::info!("signal received: draining");
            sig_shutdown.cancel();
        }
    });
    // Stripe reporting; stopped after the pipeline's final flush, which it then reports.
    let stripe_stop = CancellationToken::new();
    let stripe_deadline = config.settings.pipeline.shutdown_timeout;
    let stripe_task = callmeter::stripe::api_key(&config.settings.stripe)?.map(|key| {
        rt.spawn(callmeter::stripe::run(
            config.settings.stripe.clone(),
            key,
            ch.clone(),
            shared.clone(),
            stripe_stop.clone(),
        ))
    });
    let handle = rt.handle().clone();
    let pipeline_shutdown = shutdown.clone();
    let worker = std::thread::Builder::new()
        .name("callmeter-consumer".into())
        .spawn(move || callmeter::pipeline::run(config, shared, pipeline_shutdown, handle))
        .context("starting the consumer thread")?;
    let res = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    shutdown.cancel();
    if let Some(task) = stripe_task {
        stripe_stop.cancel();
        if rt
            .block_on(async move { tokio::time::timeout(stripe_deadline, task).await })
            .is_err()
        {
            tracing::warn!(
                "last Stripe reporting cycle did not finish in time; its reports stay pending and are sent at the next start"
            );
        }
    }
    res
}

/// Reloads meters' plans, tenants and API tokens (SIGHUP, or the file changed). A config
/// that does not validate, or that changes meter definitions (they need a restart), is
/// rejected with the reason logged and the old one kept. Other settings (Kafka,
/// ClickHouse, pipeline) take effect at the next start.
fn reload(path: &Path, shared: &Arc<Shared>, tokens: &Arc<arc_swap::ArcSwap<Vec<String>>>) {
    let loaded = Config::load(path).and_then(|c| {
        shared.catalog.load().reloadable_to(&c.catalog)?;
        Ok(c)
    });
    match loaded {
        Ok(c) => {
            shared.catalog.store(c.catalog.clone());
            tokens.store(Arc::new(c.settings.api.tokens.clone()));
            metrics::counter!(callmeter::telemetry::CONFIG_RELOADS, "result" => "ok").increment(1);
            tracing::info!(path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            metrics::counter!(callmeter::telemetry::CONFIG_RELOADS, "result" => "rejected")
                .increment(1);
            tracing::error!(error = %e, "configuration reload rejected; keeping the previous configuration");
        }
    }
}
