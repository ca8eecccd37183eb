//! The `callmeter` command line (CONTRACT section 7): the clap definitions and the dispatch
//! to `callmeter::app` (`run`'s lifecycle) and `callmeter::cli` (every other subcommand).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use callmeter::config::{Config, ConfigError};

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
    /// state memory, flush time. See BENCHMARKS.md. Built with the cargo feature `bench`.
    #[cfg(feature = "bench")]
    Bench {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        options: callmeter::cli::bench::Options,
    },
}

impl Command {
    /// The `--config` every subcommand takes.
    fn config(&self) -> &Path {
        match self {
            Command::Run { config }
            | Command::Migrate { config }
            | Command::CheckConfig { config }
            | Command::Replay { config, .. }
            | Command::Report { config }
            | Command::Reconcile { config, .. }
            | Command::Loadgen { config, .. } => config,
            #[cfg(feature = "bench")]
            Command::Bench { config, .. } => config,
        }
    }
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
    let config_path = cli.command.config().to_path_buf();
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
        #[cfg(feature = "bench")]
        Command::Bench { options, .. } => callmeter::cli::bench::run(&rt, &config, &options),
        Command::Run { .. } => callmeter::app::run(&rt, config, config_path),
        Command::Migrate { .. } => rt.block_on(callmeter::cli::migrate(&config)),
        Command::CheckConfig { .. } => {
            callmeter::cli::check_config::run(&config);
            Ok(())
        }
        Command::Replay { dataset, rate, .. } => {
            rt.block_on(callmeter::cli::replay::run(&config, &dataset, rate))
        }
        Command::Reconcile { period, .. } => {
            rt.block_on(callmeter::cli::reconcile::run(&config, &period))
        }
        Command::Report { .. } => rt.block_on(callmeter::cli::report::run(&config)),
        Command::Loadgen {
            events,
            tenants,
            rate,
            seed,
            duplicates,
            disorder,
            currency,
            ..
        } => rt.block_on(callmeter::cli::loadgen::run(
            &config,
            callmeter::cli::loadgen::LoadSpec {
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
