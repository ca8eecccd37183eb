//! ClickHouse I/O of Stripe reporting: flushed usage from `usage_rollups FINAL`, and the
//! ledger of reports in `stripe_reports` (schema and semantics in
//! `schemas/clickhouse/006_stripe_reports.sql`).
//!
//! The ledger is read by grouping per identifier (`argMax(status, version)`), never with
//! `FINAL` plus a filter on a non-key column, so the answer does not depend on how a
//! ClickHouse version orders `FINAL` and `PREWHERE`.

use std::collections::HashMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::batch::{GroupKey, Report, Status, Usage};
use crate::sink::clickhouse::queries::{self, STRIPE_REPORTS};
use crate::sink::clickhouse::{ClickHouse, SinkError, dt, from_dec9, now_secs};

/// Columns `stripe_reports` must have (an older placeholder layout lacks `version`).
const REQUIRED_COLUMNS: &[&str] = &["identifier", "version", "flushed_at", "error_code"];

/// A ledger failure.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
    #[error(
        "table {0} has an older layout (no column `{1}`): it never held reports; drop it and run `callmeter migrate`"
    )]
    Layout(String, String),
}

impl From<clickhouse::error::Error> for LedgerError {
    fn from(e: clickhouse::error::Error) -> Self {
        LedgerError::ClickHouse(SinkError::Request(e))
    }
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct ReportRow {
    tenant_id: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    identifier: String,
    stripe_customer_id: String,
    event_name: String,
    reported_before: i64,
    reported_after: i64,
    value: i64,
    event_timestamp: u32,
    status: String,
    error_code: String,
    version: u8,
    flushed_at: u32,
    written_at: u32,
}

#[derive(Debug, Row, Deserialize)]
struct UsageRow {
    tenant_id: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    total: i128,
    lead: u32,
    flushed: u32,
}

#[derive(Debug, Row, Deserialize)]
struct TotalRow {
    tenant_id: String,
    meter: String,
    period_start: u32,
    customer: String,
    rejected: u8,
    reported: i64,
}

#[derive(Debug, Row, Deserialize)]
struct PendingRow {
    tenant_id: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    identifier: String,
    stripe_customer_id: String,
    event_name: String,
    reported_before: i64,
    reported_after: i64,
    event_timestamp: u32,
    flushed_at: u32,
}

/// Fails with [`LedgerError::Layout`] if `stripe_reports` predates this layout.
pub async fn check_layout(ch: &ClickHouse) -> Result<(), LedgerError> {
    let cols: Vec<String> = ch
        .client()
        .query(queries::STRIPE_REPORTS_COLUMNS)
        .bind(ch.database())
        .fetch_all()
        .await?;
    for c in REQUIRED_COLUMNS {
        if !cols.iter().any(|x| x == c) {
            return Err(LedgerError::Layout(ch.table(STRIPE_REPORTS), c.to_string()));
        }
    }
    Ok(())
}

/// Flushed usage per (tenant, meter, period) of `meters`: all groups, or (with `since`)
/// those with a rollup row flushed at or after that Unix second.
pub async fn usage(
    ch: &ClickHouse,
    meters: &[String],
    since: Option<i64>,
) -> Result<Vec<Usage>, LedgerError> {
    let mut q = ch
        .client()
        .query(&queries::stripe_usage(ch.database(), since.is_some()))
        .bind(meters);
    if let Some(s) = since {
        q = q.bind(dt(s));
    }
    let rows: Vec<UsageRow> = q.fetch_all().await?;
    rows.into_iter()
        .map(|r| {
            Ok(Usage {
                key: GroupKey {
                    tenant: r.tenant_id,
                    meter: r.meter,
                    period_start: r.period_start as i64,
                },
                period_end: r.period_end as i64,
                total: from_dec9(r.total)?,
                lead_partition: r.lead,
                flushed_at: r.flushed as i64,
            })
        })
        .collect()
}

/// Units reported per group: the sum of `value` over its distinct identifiers, whatever
/// their status (pending ones will be delivered; rejected and unreportable ones are not
/// retried), except reports Stripe rejected that were addressed to another customer than
/// the tenant's current one (`current_customer`): they were refused for a customer id the
/// configuration has since fixed, so their units are reported again to the right one.
pub async fn reported(
    ch: &ClickHouse,
    current_customer: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<GroupKey, i64>, LedgerError> {
    let rows: Vec<TotalRow> = ch
        .client()
        .query(&queries::stripe_reported(ch.database()))
        .fetch_all()
        .await?;
    let mut out: HashMap<GroupKey, i64> = HashMap::new();
    for r in rows {
        let refused_for_another_customer =
            r.rejected == 1 && current_customer(&r.tenant_id).is_some_and(|c| c != r.customer);
        let units = out
            .entry(GroupKey {
                tenant: r.tenant_id,
                meter: r.meter,
                period_start: r.period_start as i64,
            })
            .or_default();
        if !refused_for_another_customer {
            *units = units.saturating_add(r.reported);
        }
    }
    Ok(out)
}

/// Reports written as pending and not known to be delivered.
pub async fn pending(ch: &ClickHouse) -> Result<Vec<Report>, LedgerError> {
    let rows: Vec<PendingRow> = ch
        .client()
        .query(&queries::stripe_pending(ch.database()))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Report {
            key: GroupKey {
                tenant: r.tenant_id,
                meter: r.meter,
                period_start: r.period_start as i64,
            },
            period_end: r.period_end as i64,
            customer: r.stripe_customer_id,
            event_name: r.event_name,
            before: r.reported_before,
            after: r.reported_after,
            timestamp: r.event_timestamp as i64,
            identifier: r.identifier,
            flushed_at: r.flushed_at as i64,
        })
        .collect())
}

/// Writes ledger rows (one insert). `error_code` is empty unless rejected.
pub async fn record(ch: &ClickHouse, rows: &[(&Report, Status, &str)]) -> Result<(), LedgerError> {
    let now = now_secs();
    let mut ins = ch.client().insert::<ReportRow>(STRIPE_REPORTS).await?;
    for &(r, status, code) in rows {
        ins.write(&ReportRow {
            tenant_id: r.key.tenant.clone(),
            meter: r.key.meter.clone(),
            period_start: dt(r.key.period_start),
            period_end: dt(r.period_end),
            identifier: r.identifier.clone(),
            stripe_customer_id: r.customer.clone(),
            event_name: r.event_name.clone(),
            reported_before: r.before,
            reported_after: r.after,
            value: r.value(),
            event_timestamp: dt(r.timestamp),
            status: status.as_str().to_string(),
            error_code: code.to_string(),
            version: status.version(),
            flushed_at: dt(r.flushed_at),
            written_at: now,
        })
        .await?;
    }
    ins.end().await?;
    Ok(())
}
