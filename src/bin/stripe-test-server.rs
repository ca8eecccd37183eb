//! `stripe-test-server`: the Stripe meter-events test double, for tests and the local demo
//! (see `callmeter::stripe::test_server` for what it implements). Never point production at
//! it.
//!
//! ```sh
//! stripe-test-server --listen 127.0.0.1:12111 --fault-429 0.05 --session-ttl 30s
//! curl http://127.0.0.1:12111/_test/summary
//! ```

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use callmeter::stripe::test_server::{Config, Faults, TestServer};

#[derive(Parser)]
#[command(
    name = "stripe-test-server",
    version,
    about = "Stripe-compatible meter events test server (test double; never production)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12111")]
    listen: String,
    /// Lifetime of meter event session tokens (Stripe: 15 minutes).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Secret key clients must present (default: any).
    #[arg(long)]
    api_key: Option<String>,
    /// Fraction of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    fault_429: f64,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    fault_500: f64,
    /// Fraction of requests processed but answered only after --timeout-delay.
    #[arg(long, default_value_t = 0.0)]
    fault_timeout: f64,
    /// Fraction of requests processed whose connection is then dropped.
    #[arg(long, default_value_t = 0.0)]
    fault_drop: f64,
    /// Fraction of stream requests whose session token expires early (401).
    #[arg(long, default_value_t = 0.0)]
    fault_expire: f64,
    /// How long a "timeout" fault holds the answer.
    #[arg(long, default_value = "35s", value_parser = humantime::parse_duration)]
    timeout_delay: Duration,
    /// The server clock reads this RFC 3339 instant at start (for replays of old data).
    #[arg(long)]
    clock: Option<String>,
    /// Known customers, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    customers: Option<Vec<String>>,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let clock = match args
        .clock
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Ok(c)) => Some(c.with_timezone(&chrono::Utc)),
        Some(Err(e)) => {
            eprintln!("stripe-test-server: --clock is not RFC 3339: {e}");
            return ExitCode::from(2);
        }
    };
    let server = TestServer::new(Config {
        session_ttl: args.session_ttl,
        api_key: args.api_key,
        faults: Faults {
            rate_429: args.fault_429,
            rate_500: args.fault_500,
            rate_timeout: args.fault_timeout,
            rate_drop: args.fault_drop,
            rate_expire: args.fault_expire,
            timeout_delay: args.timeout_delay,
        },
        seed: args.seed,
        clock,
        customers: args
            .customers
            .map(|c| c.into_iter().collect::<BTreeSet<_>>()),
        event_names: None,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stripe-test-server: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        println!(
            "stripe-test-server listening on http://{} (summary: GET /_test/summary)",
            listener.local_addr()?
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            stop.cancel();
        });
        server.serve(listener, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stripe-test-server: {e}");
            ExitCode::from(1)
        }
    }
}
