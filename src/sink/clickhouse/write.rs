//! Batch writes: a flush batch in order, and alerts alone (the wallet service's).
//!
//! A flush writes, in order: alerts, raw events (optional), `subscription_details` and
//! `subscriptions`, `rollup_state`, `usage_rollups`, `usage_statements`,
//! `partition_checkpoints`. Each step is idempotent (replacing tables; a statement written
//! again is the same rows), so a failed flush is retried whole.

use super::queries::{
    CALL_EVENTS, PARTITION_CHECKPOINTS, ROLLUP_STATE, SUBSCRIPTION_DETAILS, SUBSCRIPTIONS,
    USAGE_ALERTS, USAGE_ROLLUPS, USAGE_STATEMENTS,
};
use super::rows::{
    AlertRow, CheckpointRow, RawEventRow, RollupRow, StateRow, StatementRow, SubscriptionDetailRow,
    SubscriptionRow, dec9, dt, now_secs,
};
use super::{ClickHouse, SinkError};
use crate::alerts::Alert;
use crate::state::FlushBatch;

impl ClickHouse {
    /// Writes a flush batch in order (see the module docs), bounded by
    /// `clickhouse.request_timeout`. Idempotent.
    pub async fn write_batch(&self, topic: &str, batch: &FlushBatch) -> Result<(), SinkError> {
        self.timed(self.write_batch_inner(topic, batch)).await
    }

    async fn write_batch_inner(&self, topic: &str, batch: &FlushBatch) -> Result<(), SinkError> {
        let now = now_secs();
        if !batch.alerts.is_empty() {
            self.insert_alerts_inner(&batch.alerts).await?;
        }
        if !batch.raw_events.is_empty() {
            let mut ins = self.0.client.insert::<RawEventRow>(CALL_EVENTS).await?;
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
        if !batch.subscriptions.is_empty() {
            let mut ins = self
                .0
                .client
                .insert::<SubscriptionDetailRow>(SUBSCRIPTION_DETAILS)
                .await?;
            for r in &batch.subscriptions {
                ins.write(&SubscriptionDetailRow {
                    tenant_id: r.tenant.to_string(),
                    effective_at: dt(r.effective_at),
                    event_id: r.event_id.clone(),
                    timezone: r.timezone.clone().unwrap_or_default(),
                    anchor_day: r.anchor_day.unwrap_or(0).min(255) as u8,
                    stripe_customer_id: r.stripe_customer_id.clone().unwrap_or_default(),
                    source_partition: r.partition as u32,
                    through_offset: r.through_offset,
                    updated_at: now,
                })
                .await?;
            }
            ins.end().await?;
            let mut ins = self
                .0
                .client
                .insert::<SubscriptionRow>(SUBSCRIPTIONS)
                .await?;
            for r in &batch.subscriptions {
                ins.write(&SubscriptionRow {
                    tenant_id: r.tenant.to_string(),
                    plan: r.plan.clone(),
                    addons: r.addons_json(),
                    billing_cycle: crate::subscription::cycle_str(r.billing_cycle).into(),
                    effective_at: dt(r.effective_at),
                    canceled: r.canceled as u8,
                    event_id: r.event_id.clone(),
                    source_partition: r.partition as u32,
                    through_offset: r.through_offset,
                    updated_at: now,
                })
                .await?;
            }
            ins.end().await?;
        }
        if !batch.rows.is_empty() {
            let mut ins = self.0.client.insert::<StateRow>(ROLLUP_STATE).await?;
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
            let mut ins = self.0.client.insert::<RollupRow>(USAGE_ROLLUPS).await?;
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
        if !batch.statements.is_empty() {
            self.insert_statements(&batch.statements).await?;
        }
        if !batch.checkpoints.is_empty() {
            let mut ins = self
                .0
                .client
                .insert::<CheckpointRow>(PARTITION_CHECKPOINTS)
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

    /// Inserts statements into `usage_statements` (one row per line).
    pub async fn insert_statements(
        &self,
        statements: &[crate::statement::Statement],
    ) -> Result<(), SinkError> {
        let mut ins = self
            .0
            .client
            .insert::<StatementRow>(USAGE_STATEMENTS)
            .await?;
        for s in statements {
            for r in StatementRow::from_statement(s) {
                ins.write(&r).await?;
            }
        }
        ins.end().await?;
        Ok(())
    }

    /// Inserts alerts into `usage_alerts`.
    pub async fn insert_alerts(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        self.timed(self.insert_alerts_inner(alerts)).await
    }

    async fn insert_alerts_inner(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        let mut ins = self.0.client.insert::<AlertRow>(USAGE_ALERTS).await?;
        for a in alerts {
            ins.write(&AlertRow::from_alert(a)).await?;
        }
        ins.end().await?;
        Ok(())
    }
}
