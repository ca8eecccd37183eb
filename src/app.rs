//! The `callmeter run` lifecycle: builds every part (telemetry, ClickHouse migrations,
//! shared state, wallets, usage gauges, the HTTP API, the configuration watcher, signals,
//! Stripe reporting, the consuming thread), runs them until a signal, and joins them.
//!
//! One [`CancellationToken`] stops everything; every task is spawned on one
//! [`TaskTracker`], which is joined at the end (bounded by [`TASKS_GRACE`]). Order at
//! shutdown: the first SIGTERM/SIGINT cancels the token; the consuming thread drains,
//! flushes and commits, and is joined; only then is Stripe reporting stopped (it runs one
//! last cycle, so it reports that final flush: this is why it watches its own token,
//! cancelled after the join); then the other tasks, which stop on the shared token, are
//! joined. The whole shutdown is bounded by `pipeline.shutdown_timeout` (a watchdog exits
//! with status 1 past it); a final flush that fails makes the exit status 1. A second
//! signal exits at once (status 130). SIGHUP, or a change of the configuration file's modification time, reloads
//! plans, tenants and API tokens ([`reload`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::AuthTokens;
use crate::config::Config;
use crate::ingest::outbox::AlertSink;
use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;
use crate::telemetry::{self as t, Telemetry};

/// How long the tasks left after the final flush and the last Stripe cycle (API, gauges,
/// wallets, watcher, restores) may take to stop.
pub const TASKS_GRACE: Duration = Duration::from_secs(2);

/// Runs the pipeline with everything around it until a signal; returns once it has
/// drained, flushed, committed and joined its tasks.
///
/// Errors: a Kafka client cannot be created, the API cannot bind, the Stripe key is
/// missing, the consuming thread cannot start or panicked, or the pipeline failed.
pub fn run(rt: &tokio::runtime::Runtime, config: Config, path: PathBuf) -> anyhow::Result<()> {
    let telemetry = Telemetry::install();
    metrics::gauge!(t::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Series the alerting rules use that the pipeline only touches on change or failure:
    // exported from the start, so that the first failure counts in increase() and a rule
    // can tell "not paused" from "unknown".
    metrics::gauge!(t::PAUSED).set(0.0);
    metrics::counter!(t::FLUSH_FAILURES).increment(0);
    let ch = ClickHouse::new(&config.settings.clickhouse);
    rt.block_on(migrate(&ch, &config));
    let shared = Shared::new(config.catalog.clone());
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let handle = rt.handle();
    let tokens = AuthTokens {
        read: Arc::new(ArcSwap::from_pointee(config.settings.api.tokens.clone())),
        admin: Arc::new(ArcSwap::from_pointee(
            config.settings.api.admin_tokens.clone(),
        )),
    };
    // The subscription route produces to the events topic.
    let events = crate::api::routes::subscription::EventsProducer {
        producer: crate::ingest::consumer::producer(&config.settings.kafka)
            .context("creating the subscription event producer")?,
        topic: config.settings.kafka.topic.as_str().into(),
    };
    // Prepaid wallets: balances derived from the rollups, alerts to the alerts topic.
    let alert_sink =
        AlertSink::new(&config.settings.kafka).context("creating the wallet alert producer")?;
    let wallets = Arc::new(crate::wallet::Wallets::new(
        shared.clone(),
        ch.clone(),
        Some(alert_sink),
        config.settings.metrics.tenant_gauge_cap(),
    ));
    tasks.spawn_on(
        wallets.clone().run(
            config.settings.pricing.wallet_refresh_interval,
            shutdown.clone(),
        ),
        handle,
    );
    let state = crate::api::ApiState {
        shared: shared.clone(),
        telemetry,
        ch: ch.clone(),
        tokens: tokens.read.clone(),
        admin_tokens: tokens.admin.clone(),
        events: Some(events),
        portal: crate::api::portal::Portal::from_settings(&config.settings),
        wallets: Some(wallets),
    };
    if config.settings.metrics.tenant_gauges {
        tasks.spawn_on(
            crate::gauges::run(
                shared.clone(),
                state.telemetry.clone(),
                config.settings.metrics.tenant_gauges_max,
                shutdown.clone(),
            ),
            handle,
        );
    }
    let listen = config.settings.api.listen.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&listen))
        .with_context(|| format!("binding the API to {listen}"))?;
    tracing::info!(%listen, "HTTP API listening");
    let api_shutdown = shutdown.clone();
    tasks.spawn_on(
        async move {
            let app = crate::api::router(state);
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
                .await;
        },
        handle,
    );
    let watch = config.settings.pricing.watch_interval;
    if !watch.is_zero() {
        let w = watch_config(
            path.clone(),
            watch,
            shared.clone(),
            tokens.clone(),
            shutdown.clone(),
        );
        tasks.spawn_on(w, handle);
    }
    let signals = tasks.spawn_on(
        signals(path, shared.clone(), tokens, shutdown.clone()),
        handle,
    );
    // Stripe reporting; stopped after the pipeline's final flush, which it then reports.
    let stripe_stop = CancellationToken::new();
    let stripe_deadline = config.settings.pipeline.shutdown_timeout;
    let stripe_task = crate::stripe::api_key(&config.settings.stripe)?.map(|key| {
        tasks.spawn_on(
            crate::stripe::run(
                config.settings.stripe.clone(),
                key,
                ch.clone(),
                shared.clone(),
                stripe_stop.clone(),
            ),
            handle,
        )
    });
    // The whole shutdown is bounded by pipeline.shutdown_timeout from the moment the token
    // is cancelled: the final flush takes its share (`ingest::final_flush_budget`), Stripe
    // and the remaining tasks what is left; a watchdog exits with status 1 if anything
    // still hangs a second after the bound.
    let shutdown_timeout = config.settings.pipeline.shutdown_timeout;
    let cancelled_at = Arc::new(std::sync::OnceLock::new());
    {
        let (token, at) = (shutdown.clone(), cancelled_at.clone());
        handle.spawn(async move {
            token.cancelled().await;
            let t0 = *at.get_or_init(std::time::Instant::now);
            tokio::time::sleep_until((t0 + shutdown_timeout + Duration::from_secs(1)).into()).await;
            tracing::error!(
                ?shutdown_timeout,
                "shutdown did not finish within pipeline.shutdown_timeout; exiting"
            );
            std::process::exit(1);
        });
    }
    let (stop, rt_handle, ingest_tasks) = (shutdown.clone(), handle.clone(), tasks.clone());
    exit_on_consumer_panic();
    let worker = std::thread::Builder::new()
        .name(CONSUMER_THREAD.into())
        .spawn(move || consume(config, shared, stop, rt_handle, ingest_tasks))
        .context("starting the consumer thread")?;
    let res = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))
        .and_then(|r| r);
    shutdown.cancel();
    let deadline = *cancelled_at.get_or_init(std::time::Instant::now) + shutdown_timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    if let Err(e) = &res {
        tracing::error!(error = %e, "pipeline stopped with an error");
    }
    if let Some(task) = stripe_task {
        stripe_stop.cancel();
        let abort = task.abort_handle();
        let stripe_deadline = stripe_deadline.min(left());
        if rt
            .block_on(async move { tokio::time::timeout(stripe_deadline, task).await })
            .is_err()
        {
            abort.abort();
            tracing::warn!(
                "last Stripe reporting cycle did not finish in time; its reports stay pending and are sent at the next start"
            );
        }
    }
    // The signal listener lives until here, so that a second signal during the drain exits.
    signals.abort();
    tasks.close();
    if rt
        .block_on(async { tokio::time::timeout(TASKS_GRACE.min(left()), tasks.wait()).await })
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks did not stop in time; dropped with the runtime"
        );
    }
    res
}

/// Name of the consuming thread (the panic hook recognises it).
const CONSUMER_THREAD: &str = "callmeter-consumer";

/// Backoff before a new consumer after a retryable fatal error (UNRELEASED_INSTANCE_ID: the
/// previous incarnation's session must expire first).
const FATAL_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Makes a panic on the consuming thread end the process with status
/// [`crate::ingest::PANIC_EXIT`] (after the usual panic message): never a process that
/// answers `/healthz` and `/readyz` while nothing is consumed. Unwinding is not waited for
/// (dropping the Kafka consumer from a panicking thread can block in its rebalance
/// callbacks); the supervisor restarts the process and the restore rebuilds exact state.
fn exit_on_consumer_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if std::thread::current().name() == Some(CONSUMER_THREAD) {
            tracing::error!(panic = %info, "panic on the consuming thread: exiting");
            std::process::exit(crate::ingest::PANIC_EXIT);
        }
    }));
}

/// Runs the consuming side; after a retryable fatal consumer error, a new consumer joins
/// after [`FATAL_RETRY_BACKOFF`]; any other fatal error ends the process non-zero.
fn consume(
    config: Config,
    shared: Arc<Shared>,
    stop: CancellationToken,
    rt: tokio::runtime::Handle,
    tasks: TaskTracker,
) -> anyhow::Result<()> {
    loop {
        let res = crate::ingest::run(
            config.clone(),
            shared.clone(),
            stop.clone(),
            rt.clone(),
            tasks.clone(),
        );
        match res {
            Err(e)
                if e.downcast_ref::<crate::ingest::FatalConsumerError>()
                    .is_some_and(|f| f.is_retryable())
                    && !stop.is_cancelled() =>
            {
                tracing::warn!(error = %e, backoff = ?FATAL_RETRY_BACKOFF, "recreating the Kafka consumer after a fatal error");
                let deadline = std::time::Instant::now() + FATAL_RETRY_BACKOFF;
                while std::time::Instant::now() < deadline && !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            r => return r,
        }
    }
}

/// Creates the ClickHouse database and missing tables, retrying until ClickHouse answers.
async fn migrate(ch: &ClickHouse, config: &Config) {
    let mut backoff = crate::sink::clickhouse::flush_backoff();
    loop {
        match ch.migrate().await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, url = %config.settings.clickhouse.url, "ClickHouse not reachable for migration; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

/// The API tokens in effect (reloadable): read and admin.
type Tokens = AuthTokens;

/// Watches the config file's modification time every `every` and reloads when it changes,
/// until `stop`.
async fn watch_config(
    path: PathBuf,
    every: Duration,
    shared: Arc<Shared>,
    tokens: Tokens,
    stop: CancellationToken,
) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = mtime(&path);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = mtime(&path);
        if now.is_some() && now != last {
            last = now;
            tracing::info!(path = %path.display(), "configuration file changed");
            reload(&path, &shared, &tokens);
        }
    }
}

/// Signals: the first SIGTERM/SIGINT cancels `shutdown` (drain); a second exits at once.
/// SIGHUP reloads the configuration.
async fn signals(path: PathBuf, shared: Arc<Shared>, tokens: Tokens, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                reload(&path, &shared, &tokens);
                continue;
            }
        }
        if shutdown.is_cancelled() {
            eprintln!("callmeter: second signal, exiting now");
            std::process::exit(130);
        }
        tracing::info!("signal received: draining");
        shutdown.cancel();
    }
}

/// Reloads meters' plans, tenants and API tokens, read and admin (SIGHUP, or the file
/// changed); the portal secret takes effect at the next start. A config
/// that does not validate, or that changes meter definitions (they need a restart), is
/// rejected with the reason logged and the old one kept. Other settings (Kafka,
/// ClickHouse, pipeline) take effect at the next start.
pub fn reload(path: &Path, shared: &Shared, tokens: &AuthTokens) {
    let loaded = Config::load(path).and_then(|c| {
        shared.catalog().reloadable_to(&c.catalog)?;
        Ok(c)
    });
    match loaded {
        Ok(c) => {
            shared.set_catalog(c.catalog.clone());
            tokens.read.store(Arc::new(c.settings.api.tokens.clone()));
            tokens
                .admin
                .store(Arc::new(c.settings.api.admin_tokens.clone()));
            metrics::counter!(t::CONFIG_RELOADS, "result" => "ok").increment(1);
            tracing::info!(path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            metrics::counter!(t::CONFIG_RELOADS, "result" => "rejected").increment(1);
            tracing::error!(error = %e, "configuration reload rejected; keeping the previous configuration");
        }
    }
}
