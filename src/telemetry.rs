//! Metric names in one place, described at start-up, and the Prometheus recorder; the log
//! subscriber ([`init_logging`]).
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,rdkafka=warn`), as text with
//! ANSI colours only when stderr is a terminal, or as one JSON object per line with
//! `CALLMETER_LOG_FORMAT=json` (for log collectors). An unknown format is [`LogFormatError`].
//!
//! Counters end in `_total`, units are in the names (`_seconds`, `_bytes`), every name starts
//! with `callmeter_`. The `/metrics` route renders [`Telemetry::render`].

use std::io::IsTerminal;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_CONSUMED: &str = "callmeter_events_consumed_total";
pub const EVENTS_COUNTED: &str = "callmeter_events_counted_total";
pub const EVENTS_REJECTED: &str = "callmeter_events_rejected_total";
pub const EVENTS_DUPLICATE: &str = "callmeter_events_duplicate_total";
pub const EVENTS_REPLAYED: &str = "callmeter_events_replayed_total";
pub const EVENTS_ALREADY_COUNTED: &str = "callmeter_events_already_counted_total";
pub const DLQ_PRODUCED: &str = "callmeter_dlq_messages_total";
pub const OUTBOX_UNDELIVERED: &str = "callmeter_outbox_undelivered";
pub const CONSUMER_LAG: &str = "callmeter_consumer_lag";
pub const PARTITION_POSITION: &str = "callmeter_partition_position";
pub const PARTITION_START_BLOCKED: &str = "callmeter_partition_start_blocked";
pub const PARTITIONS_OWNED: &str = "callmeter_partitions_owned";
pub const READY: &str = "callmeter_ready";
pub const PAUSED: &str = "callmeter_consumption_paused";
pub const FLUSH_DURATION: &str = "callmeter_flush_duration_seconds";
pub const FLUSH_ROWS: &str = "callmeter_flush_rows_total";
pub const FLUSHES: &str = "callmeter_flushes_total";
pub const FLUSH_FAILURES: &str = "callmeter_flush_failures_total";
pub const LAST_FLUSH: &str = "callmeter_last_successful_flush_timestamp_seconds";
pub const DIRTY_ROWS: &str = "callmeter_dirty_rows";
pub const STATE_ROWS: &str = "callmeter_state_rows";
pub const DEDUP_ENTRIES: &str = "callmeter_dedup_entries";
pub const DEDUP_OVER_CAP: &str = "callmeter_dedup_over_cap";
pub const MEMORY_USED: &str = "callmeter_memory_used_bytes";
pub const MEMORY_BUDGET: &str = "callmeter_memory_budget_bytes";
pub const MEMORY_OVER: &str = "callmeter_memory_over_budget";
pub const MEMORY_UNHOLDABLE: &str = "callmeter_memory_unholdable";
pub const COMMITS: &str = "callmeter_offset_commits_total";
pub const COMMIT_FAILURES: &str = "callmeter_offset_commit_failures_total";
pub const RESTORE_DURATION: &str = "callmeter_restore_duration_seconds";
pub const RESTORES: &str = "callmeter_partition_restores_total";
pub const ALERTS: &str = "callmeter_alerts_total";
pub const STATEMENTS: &str = "callmeter_statements_total";
pub const ALERT_LATENCY: &str = "callmeter_alert_produce_latency_seconds";
pub const TENANT_USAGE_RATIO: &str = "callmeter_tenant_usage_ratio";
pub const TENANT_USAGE: &str = "callmeter_tenant_usage";
pub const TENANT_OVERAGE_CAPPED: &str = "callmeter_tenant_overage_capped";
pub const TENANT_GAUGES_SUPPRESSED: &str = "callmeter_tenant_gauges_suppressed";
pub const WALLET_BALANCE: &str = "callmeter_wallet_balance";
pub const STRIPE_EVENTS_SENT: &str = "callmeter_stripe_events_sent_total";
pub const STRIPE_BATCHES: &str = "callmeter_stripe_batches_total";
pub const STRIPE_FAILURES: &str = "callmeter_stripe_failures_total";
pub const STRIPE_REJECTED: &str = "callmeter_stripe_events_rejected_total";
pub const STRIPE_UNREPORTABLE: &str = "callmeter_stripe_unreportable_units_total";
pub const STRIPE_REPORT_LAG: &str = "callmeter_stripe_report_lag_seconds";
pub const STRIPE_LAST_SUCCESS: &str = "callmeter_stripe_last_success_timestamp_seconds";
pub const STRIPE_CARRIED_FORWARD: &str = "callmeter_stripe_carried_forward_units";
pub const CONFIG_RELOADS: &str = "callmeter_config_reloads_total";
pub const BUILD_INFO: &str = "callmeter_build_info";

/// Exposition text rendered outside the recorder, by section name: families whose series
/// must disappear when they no longer apply (the recorder cannot forget a series), such as
/// the per-tenant gauges of [`crate::gauges`].
static SECTIONS: std::sync::RwLock<std::collections::BTreeMap<&'static str, String>> =
    std::sync::RwLock::new(std::collections::BTreeMap::new());

/// The installed recorder.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
}

impl Telemetry {
    /// Installs the global Prometheus recorder (once per process) and describes every metric.
    pub fn install() -> Telemetry {
        static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0,
                        ],
                    )
                    .expect("valid buckets")
                    .build_recorder();
                let handle = recorder.handle();
                let _ = metrics::set_global_recorder(recorder);
                describe();
                handle
            })
            .clone();
        Telemetry { handle }
    }

    /// Prometheus text exposition format: the recorder's metrics, then every section.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        for text in SECTIONS.read().unwrap_or_else(|e| e.into_inner()).values() {
            out.push_str(text);
        }
        out
    }

    /// Replaces the section `name` of the exposition with `text` (complete metric families
    /// in the text format, names not used through the recorder).
    pub fn set_section(&self, name: &'static str, text: String) {
        SECTIONS
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, text);
    }
}

fn describe() {
    describe_counter!(EVENTS_CONSUMED, "Messages read from the events topic.");
    describe_counter!(EVENTS_COUNTED, "Events applied to usage rollups.");
    describe_counter!(
        EVENTS_REJECTED,
        "Events sent to the dead-letter topic, by `reason` (the callmeter.error code)."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events dropped as duplicates of (subject, source, id) within the dedup window."
    );
    describe_counter!(
        EVENTS_REPLAYED,
        "Messages re-read after a restore to rebuild the dedup set and watermark."
    );
    describe_counter!(
        EVENTS_ALREADY_COUNTED,
        "Messages re-read after a restart whose events were already stored."
    );
    describe_counter!(
        DLQ_PRODUCED,
        "Messages delivered to the dead-letter topic (counted once acknowledged)."
    );
    describe_gauge!(
        OUTBOX_UNDELIVERED,
        "Dead-letter messages and alerts produced but not yet acknowledged by the broker."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages between the partition's high watermark and the pipeline's position, by `partition`."
    );
    describe_gauge!(PARTITION_POSITION, "Next offset to read, by `partition`.");
    describe_gauge!(
        PARTITION_START_BLOCKED,
        "1 while an owned `partition` cannot start: its checkpoint lies beyond or below the topic's offsets."
    );
    describe_gauge!(PARTITIONS_OWNED, "Partitions assigned to this instance.");
    describe_gauge!(
        READY,
        "1 when all assigned partitions are restored and consuming."
    );
    describe_gauge!(
        PAUSED,
        "1 while consumption is paused because too many rows wait for ClickHouse."
    );
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Duration of successful flushes to ClickHouse."
    );
    describe_counter!(FLUSH_ROWS, "Rollup rows written to ClickHouse.");
    describe_counter!(FLUSHES, "Successful flushes.");
    describe_counter!(FLUSH_FAILURES, "Failed flush attempts (each is retried).");
    describe_gauge!(
        LAST_FLUSH,
        Unit::Seconds,
        "Unix time of the last successful flush."
    );
    describe_gauge!(DIRTY_ROWS, "Rollup rows changed since the last flush.");
    describe_gauge!(STATE_ROWS, "Rollup rows held in memory.");
    describe_gauge!(DEDUP_ENTRIES, "Event identities held for deduplication.");
    describe_gauge!(
        DEDUP_OVER_CAP,
        "Event identities above pipeline.max_dedup_entries kept because they are still inside the dedup window (never dropped)."
    );
    describe_gauge!(
        MEMORY_USED,
        "Estimated bytes of rows, dedup entries, raw events and undelivered messages (pipeline.max_memory)."
    );
    describe_gauge!(MEMORY_BUDGET, "pipeline.max_memory in bytes.");
    describe_gauge!(
        MEMORY_OVER,
        "1 while consumption is paused because the memory estimate is over pipeline.max_memory."
    );
    describe_gauge!(
        MEMORY_UNHOLDABLE,
        "1 while rollup rows and dedup entries inside the window alone fill 90 % of pipeline.max_memory: no pause could free them, so consumption goes on above the budget."
    );
    describe_counter!(COMMITS, "Offset commits after successful flushes.");
    describe_counter!(
        COMMIT_FAILURES,
        "Offset commits that failed (retried at the next flush)."
    );
    describe_histogram!(
        RESTORE_DURATION,
        Unit::Seconds,
        "Time to restore an assigned partition from ClickHouse."
    );
    describe_counter!(RESTORES, "Partitions restored after assignment.");
    describe_counter!(ALERTS, "Usage alerts fired, by `kind`.");
    describe_counter!(
        STATEMENTS,
        "Period-close usage statements produced (a statement made again after a crash counts again)."
    );
    describe_histogram!(
        ALERT_LATENCY,
        Unit::Seconds,
        "From the crossing event's Kafka timestamp to the alert's delivery to the alerts topic."
    );
    describe_gauge!(
        TENANT_USAGE_RATIO,
        "Usage / limit in the current period, by `tenant` and `meter` (capped by metrics.tenant_gauges_max)."
    );
    describe_gauge!(
        TENANT_USAGE,
        "Usage in the current period, by `tenant` and `meter`."
    );
    describe_gauge!(
        TENANT_OVERAGE_CAPPED,
        "1 when the tenant's overage charge reached its cap this period, by `tenant` and `meter`."
    );
    describe_gauge!(
        TENANT_GAUGES_SUPPRESSED,
        "1 when per-tenant gauges are not exported because there are more tenants than metrics.tenant_gauges_max."
    );
    describe_gauge!(
        WALLET_BALANCE,
        "Prepaid wallet balance, by `tenant` and `currency`."
    );
    describe_counter!(STRIPE_EVENTS_SENT, "Meter events accepted by Stripe.");
    describe_counter!(STRIPE_BATCHES, "Requests sent to Stripe, by `api`.");
    describe_counter!(STRIPE_FAILURES, "Failed Stripe requests, by `status`.");
    describe_counter!(
        STRIPE_REJECTED,
        "Meter events Stripe permanently rejected, by `code`."
    );
    describe_counter!(
        STRIPE_UNREPORTABLE,
        "Units that can no longer be reported (usage period older than Stripe's 35-day window), by `meter`."
    );
    describe_gauge!(
        STRIPE_REPORT_LAG,
        Unit::Seconds,
        "Age of the oldest flushed usage not yet reported to Stripe."
    );
    describe_gauge!(
        STRIPE_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful Stripe request."
    );
    describe_gauge!(
        STRIPE_CARRIED_FORWARD,
        "Units reported to Stripe above the current total (decreases such as refunds, carried forward against later increases), by `meter`."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads, by `result` (ok, rejected)."
    );
    describe_gauge!(BUILD_INFO, "Always 1, with the `version` label.");
}

/// `CALLMETER_LOG_FORMAT` names no known format.
#[derive(Debug, thiserror::Error)]
#[error("CALLMETER_LOG_FORMAT must be text or json, not {0:?}")]
pub struct LogFormatError(pub String);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours when stderr is a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

impl LogFormat {
    /// Parses a `CALLMETER_LOG_FORMAT` value (unset or empty: text).
    pub fn parse(value: Option<&str>) -> Result<LogFormat, LogFormatError> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(LogFormatError(other.to_string())),
        }
    }
}

/// Installs the global log subscriber (stderr, `RUST_LOG`, `CALLMETER_LOG_FORMAT`).
pub fn init_logging() -> Result<(), LogFormatError> {
    let format = LogFormat::parse(std::env::var("CALLMETER_LOG_FORMAT").ok().as_deref())?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod log_format_tests {
    use super::*;

    #[test]
    fn log_format_values() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("")).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("text")).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("json")).unwrap(), LogFormat::Json);
        let e = LogFormat::parse(Some("xml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CALLMETER_LOG_FORMAT must be text or json, not \"xml\""
        );
    }
}
