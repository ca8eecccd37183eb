//! ClickHouse: schema migration, flush batches, and partition restore.
//!
//! Rows are encoded as RowBinary without schema validation, which ClickHouse 18.16 needs
//! (it lacks `RowBinaryWithNamesAndTypes`): `Decimal(38, 9)` as a little-endian i128 of
//! units of 1e-9, `DateTime('UTC')` as u32 seconds
//! (<https://clickhouse.com/docs/en/interfaces/formats#rowbinary>).
//!
//! A flush writes, in order: alerts, raw events (optional), `rollup_state`, `usage_rollups`,
//! `partition_checkpoints`. Each step is idempotent (replacing tables), so a failed flush is
//! retried whole.

use std::collections::HashMap;
use std::time::Duration;

use clickhouse::{Client, Row};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::config::ClickHouseSettings;
use crate::state::{Checkpoint, FlushBatch, Restored, StoredRow};

/// The DDL files of `schemas/clickhouse/`, in order.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_usage_rollups.sql",
        include_str!("../../schemas/clickhouse/001_usage_rollups.sql"),
    ),
    (
        "002_usage_alerts.sql",
        include_str!("../../schemas/clickhouse/002_usage_alerts.sql"),
    ),
    (
        "003_rollup_state.sql",
        include_str!("../../schemas/clickhouse/003_rollup_state.sql"),
    ),
    (
        "004_partition_checkpoints.sql",
        include_str!("../../schemas/clickhouse/004_partition_checkpoints.sql"),
    ),
    (
        "005_call_events.sql",
        include_str!("../../schemas/clickhouse/005_call_events.sql"),
    ),
    (
        "006_stripe_reports.sql",
        include_str!("../../schemas/clickhouse/006_stripe_reports.sql"),
    ),
];

/// A ClickHouse failure. All are retryable from the pipeline's point of view (the server may
/// come back, a missing table may be migrated); the flag tells operators what to expect.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("ClickHouse request failed: {0}")]
    Request(#[from] clickhouse::error::Error),
    #[error("ClickHouse returned an out-of-range value: {0}")]
    Data(String),
}

impl SinkError {
    /// Network errors and timeouts are transient; others likely need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SinkError::Request(clickhouse::error::Error::Network(_))
                | SinkError::Request(clickhouse::error::Error::TimedOut)
        )
    }
}

/// Decimal -> units of 1e-9 (Decimal(38, 9) in RowBinary).
pub fn dec9(d: Decimal) -> i128 {
    let mut d = d;
    d.rescale(9);
    d.mantissa()
}

/// Units of 1e-9 -> Decimal.
pub fn from_dec9(v: i128) -> Result<Decimal, SinkError> {
    Decimal::try_from_i128_with_scale(v, 9)
        .map(|d| d.normalize())
        .map_err(|e| SinkError::Data(format!("decimal {v}e-9: {e}")))
}

fn dt(secs: i64) -> u32 {
    secs.clamp(0, u32::MAX as i64) as u32
}

fn now_secs() -> u32 {
    dt(chrono::Utc::now().timestamp())
}

fn parse_rfc3339_secs(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

#[derive(Debug, Row, Serialize, Deserialize)]
pub struct RollupRow {
    pub tenant_id: String,
    pub meter: String,
    pub period_start: u32,
    pub period_end: u32,
    pub value: i128,
    pub event_count: u64,
    pub source_topic: String,
    pub source_partition: u32,
    pub through_offset: i64,
    pub updated_at: u32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct StateRow {
    source_topic: String,
    source_partition: u32,
    tenant_id: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    raw: i128,
    event_count: u64,
    through_offset: i64,
    updated_at: u32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct CheckpointRow {
    source_topic: String,
    source_partition: u32,
    position: i64,
    watermark_us: i64,
    max_ts_ms: i64,
    updated_at: u32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub alert_id: String,
    pub tenant_id: String,
    pub meter: String,
    pub kind: String,
    pub period_start: u32,
    pub period_end: u32,
    pub usage: i128,
    pub usage_limit: i128,
    pub plan: String,
    pub event_id: String,
    pub fired_at: u32,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct RawEventRow {
    tenant_id: String,
    source: String,
    event_id: String,
    #[serde(rename = "type")]
    ty: String,
    time: u32,
    time_us: i64,
    data: String,
    source_topic: String,
    source_partition: u32,
    source_offset: i64,
    ingested_at: u32,
}

impl AlertRow {
    pub fn from_alert(a: &Alert) -> AlertRow {
        let dec = |s: &str| s.parse::<Decimal>().map(dec9).unwrap_or(0);
        AlertRow {
            alert_id: a.alert_id.clone(),
            tenant_id: a.tenant_id.clone(),
            meter: a.meter.clone(),
            kind: a.kind.clone(),
            period_start: dt(parse_rfc3339_secs(&a.period_start)),
            period_end: dt(parse_rfc3339_secs(&a.period_end)),
            usage: dec(&a.usage),
            usage_limit: a.limit.as_deref().map(dec).unwrap_or(0),
            plan: a.plan.clone(),
            event_id: a.event_id.clone(),
            fired_at: dt(parse_rfc3339_secs(&a.fired_at)),
        }
    }
}

/// The ClickHouse side of the pipeline.
#[derive(Clone)]
pub struct ClickHouse {
    /// Queries name tables fully; inserts use bare names against this client's database.
    client: Client,
    /// Without a default database (for `CREATE DATABASE`).
    admin: Client,
    db: String,
}

impl ClickHouse {
    pub fn new(s: &ClickHouseSettings) -> ClickHouse {
        let admin = Client::default()
            .with_url(&s.url)
            .with_user(&s.user)
            .with_password(&s.password)
            .with_validation(false);
        ClickHouse {
            client: admin.clone().with_database(&s.database),
            admin,
            db: s.database.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn database(&self) -> &str {
        &self.db
    }

    /// `db.table`.
    pub fn table(&self, t: &str) -> String {
        format!("{}.{}", self.db, t)
    }

    /// Creates the database and every table that is missing; changes nothing that exists.
    pub async fn migrate(&self) -> Result<Vec<String>, SinkError> {
        self.admin
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.db))
            .execute()
            .await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            for stmt in code.split(';') {
                if stmt.trim().is_empty() {
                    continue;
                }
                let body = stmt.replace("callmeter.", &format!("{}.", self.db));
                self.admin.query(&body).execute().await?;
            }
            applied.push(name.to_string());
        }
        Ok(applied)
    }

    /// Round-trip check.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.admin.query("SELECT 1").fetch_one::<u8>().await?;
        Ok(())
    }

    /// Writes a flush batch in order (see the module docs). Idempotent.
    pub async fn write_batch(&self, topic: &str, batch: &FlushBatch) -> Result<(), SinkError> {
        let now = now_secs();
        if !batch.alerts.is_empty() {
            self.insert_alerts(&batch.alerts).await?;
        }
        if !batch.raw_events.is_empty() {
            let mut ins = self.client.insert::<RawEventRow>("call_events").await?;
            for e in &batch.raw_events {
                ins.write(&RawEventRow {
                    tenant_id: e.tenant.to_string(),
                    source: e.source.clone(),
                    event_id: e.event_id.clone(),
                    ty: e.ty.clone(),
                    time: dt(e.time_us.div_euclid(1_000_000)),
                    time_us: e.time_us,
                    data: e.data.clone(),
                    source_topic: topic.to_string(),
                    source_partition: e.partition as u32,
                    source_offset: e.offset,
                    ingested_at: now,
                })
                .await?;
            }
            ins.end().await?;
        }
        if !batch.rows.is_empty() {
            let mut ins = self.client.insert::<StateRow>("rollup_state").await?;
            for r in &batch.rows {
                ins.write(&StateRow {
                    source_topic: topic.to_string(),
                    source_partition: r.partition as u32,
                    tenant_id: r.tenant.to_string(),
                    meter: r.meter.to_string(),
                    period_start: dt(r.period_start),
                    period_end: dt(r.period_end),
                    raw: dec9(r.raw),
                    event_count: r.events,
                    through_offset: r.through_offset,
                    updated_at: now,
                })
                .await?;
            }
            ins.end().await?;
            let mut ins = self.client.insert::<RollupRow>("usage_rollups").await?;
            for r in &batch.rows {
                ins.write(&RollupRow {
                    tenant_id: r.tenant.to_string(),
                    meter: r.meter.to_string(),
                    period_start: dt(r.period_start),
                    period_end: dt(r.period_end),
                    value: dec9(r.value),
                    event_count: r.events,
                    source_topic: topic.to_string(),
                    source_partition: r.partition as u32,
                    through_offset: r.through_offset,
                    updated_at: now,
                })
                .await?;
            }
            ins.end().await?;
        }
        if !batch.checkpoints.is_empty() {
            let mut ins = self
                .client
                .insert::<CheckpointRow>("partition_checkpoints")
                .await?;
            for c in &batch.checkpoints {
                ins.write(&CheckpointRow {
                    source_topic: topic.to_string(),
                    source_partition: c.partition as u32,
                    position: c.position,
                    watermark_us: c.watermark_us,
                    max_ts_ms: c.max_ts_ms,
                    updated_at: now,
                })
                .await?;
            }
            ins.end().await?;
        }
        Ok(())
    }

    /// Inserts alerts into `usage_alerts`.
    pub async fn insert_alerts(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        let mut ins = self.client.insert::<AlertRow>("usage_alerts").await?;
        for a in alerts {
            ins.write(&AlertRow::from_alert(a)).await?;
        }
        ins.end().await?;
        Ok(())
    }

    /// Loads what a partition needs on assignment: its checkpoint, the rows of periods that
    /// can still take events (end + grace at or after the checkpoint watermark; all rows
    /// without a checkpoint), their alerts, and each tenant's earliest period.
    pub async fn restore(
        &self,
        topic: &str,
        partition: i32,
        grace_secs: i64,
    ) -> Result<Restored, SinkError> {
        let ck = self
            .client
            .query(&format!(
                "SELECT position, watermark_us, max_ts_ms FROM {} FINAL \
                 WHERE source_topic = ? AND source_partition = ?",
                self.table("partition_checkpoints")
            ))
            .bind(topic)
            .bind(partition as u32)
            .fetch_all::<(i64, i64, i64)>()
            .await?
            .into_iter()
            .max_by_key(|c| c.0)
            .map(|(position, watermark_us, max_ts_ms)| Checkpoint {
                partition,
                position,
                watermark_us,
                max_ts_ms,
            });
        let min_end: i64 = match &ck {
            Some(c) if c.watermark_us != i64::MIN => {
                c.watermark_us.div_euclid(1_000_000) - grace_secs - 1
            }
            _ => 0,
        };
        let min_end = min_end.max(0);
        let state: Vec<(String, String, u32, u32, i128, u64, i64)> = self
            .client
            .query(&format!(
                "SELECT tenant_id, meter, toUInt32(period_start), toUInt32(period_end), raw, \
                 event_count, through_offset FROM {} FINAL \
                 WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?",
                self.table("rollup_state")
            ))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let rollups: Vec<(String, String, u32, i64)> = self
            .client
            .query(&format!(
                "SELECT tenant_id, meter, toUInt32(period_start), through_offset FROM {} FINAL \
                 WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?",
                self.table("usage_rollups")
            ))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let rollup_through: HashMap<(String, String, u32), i64> = rollups
            .into_iter()
            .map(|(t, m, p, o)| ((t, m, p), o))
            .collect();
        let mut rows = Vec::with_capacity(state.len());
        for (tenant, meter, ps, pe, raw, events, through) in state {
            let stored = rollup_through
                .get(&(tenant.clone(), meter.clone(), ps))
                .copied()
                .unwrap_or(i64::MIN);
            rows.push(StoredRow {
                raw: from_dec9(raw)?,
                rollup_stale: stored < through,
                tenant,
                meter,
                period_start: ps as i64,
                period_end: pe as i64,
                events,
                through_offset: through,
            });
        }
        let alerts: Vec<(String, String, u32, String)> = self
            .client
            .query(&format!(
                "SELECT tenant_id, meter, toUInt32(period_start), kind FROM {} FINAL \
                 WHERE (tenant_id, meter, period_start) IN \
                 (SELECT tenant_id, meter, period_start FROM {} \
                  WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?)",
                self.table("usage_alerts"),
                self.table("rollup_state")
            ))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let first: Vec<(String, u32)> = self
            .client
            .query(&format!(
                "SELECT tenant_id, toUInt32(min(period_start)) FROM {} \
                 WHERE source_topic = ? AND source_partition = ? GROUP BY tenant_id",
                self.table("rollup_state")
            ))
            .bind(topic)
            .bind(partition as u32)
            .fetch_all()
            .await?;
        Ok(Restored {
            partition,
            rows,
            alerts: alerts
                .into_iter()
                .map(|(t, m, p, k)| (t, m, p as i64, k))
                .collect(),
            replay_from: ck.as_ref().map(|c| c.position).unwrap_or(0),
            checkpoint: ck,
            committed: None,
            first_periods: first.into_iter().map(|(t, p)| (t, p as i64)).collect(),
        })
    }

    /// A tenant's stored usage of `meter` in the period starting at `period_start`
    /// (the contract query), with the event count.
    pub async fn usage(
        &self,
        tenant: &str,
        meter: &str,
        period_start: i64,
    ) -> Result<(Decimal, u64), SinkError> {
        let (v, n): (i128, u64) = self
            .client
            .query(&format!(
                "SELECT sum(value), sum(event_count) FROM {} FINAL \
                 WHERE tenant_id = ? AND meter = ? AND period_start = toDateTime(?, 'UTC')",
                self.table("usage_rollups")
            ))
            .bind(tenant)
            .bind(meter)
            .bind(dt(period_start))
            .fetch_one()
            .await?;
        Ok((from_dec9(v)?, n))
    }
}

/// Retry delays for flushes: jittered exponential backoff from 200 ms, capped at 30 s.
pub fn flush_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_encoding_round_trips() {
        for s in ["0", "1.5", "-20.000001", "123456789012345678.123456789"] {
            let d: Decimal = s.parse().unwrap();
            assert_eq!(from_dec9(dec9(d)).unwrap(), d.normalize(), "{s}");
        }
        assert_eq!(dec9(Decimal::new(15, 1)), 1_500_000_000);
    }

    #[test]
    fn migrations_name_only_the_callmeter_database() {
        for (name, sql) in MIGRATIONS {
            assert!(
                sql.contains("CREATE TABLE IF NOT EXISTS callmeter."),
                "{name}"
            );
            for banned in ["LowCardinality", "DateTime64", "JSON"] {
                let code: String = sql
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect();
                assert!(!code.contains(banned), "{name} uses {banned}");
            }
        }
    }
}
