//! Restore reads: what a partition needs on assignment (its checkpoint, the rows of periods
//! that can still take events, their alerts and stored statements, each tenant's earliest
//! period).

use std::collections::HashMap;

use super::rows::from_dec9;
use super::{ClickHouse, SinkError, queries};
use crate::state::{Checkpoint, Restored, StoredRow};
use crate::subscription::{SubscriptionRecord, parse_cycle};

impl ClickHouse {
    /// Loads what a partition needs on assignment: its checkpoint, the rows of periods that
    /// can still take events (end + grace at or after the checkpoint watermark; all rows
    /// without a checkpoint), their alerts, the stored statements of those periods and of
    /// the same periods of the tenants with subscription records here, and each tenant's
    /// earliest period. Bounded by
    /// four times `clickhouse.request_timeout` (it reads several tables).
    pub async fn restore(
        &self,
        topic: &str,
        partition: i32,
        grace_secs: i64,
    ) -> Result<Restored, SinkError> {
        let bound = self.0.timeout.saturating_mul(4);
        tokio::time::timeout(bound, self.restore_inner(topic, partition, grace_secs))
            .await
            .unwrap_or(Err(SinkError::Timeout(bound)))
    }

    async fn restore_inner(
        &self,
        topic: &str,
        partition: i32,
        grace_secs: i64,
    ) -> Result<Restored, SinkError> {
        let ck = self
            .0
            .client
            .query(&queries::restore_checkpoint(&self.0.db))
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
            .0
            .client
            .query(&queries::restore_state(&self.0.db))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let rollups: Vec<(String, String, u32, i64)> = self
            .0
            .client
            .query(&queries::restore_rollups(&self.0.db))
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
            .0
            .client
            .query(&queries::restore_alerts(&self.0.db))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let stated: Vec<(String, u32)> = self
            .0
            .client
            .query(&queries::restore_stated(&self.0.db))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let sub_stated: Vec<(String, u32)> = self
            .0
            .client
            .query(&queries::restore_subscription_stated(&self.0.db))
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let first: Vec<(String, u32)> = self
            .0
            .client
            .query(&queries::restore_first_periods(&self.0.db))
            .bind(topic)
            .bind(partition as u32)
            .fetch_all()
            .await?;
        let subscriptions = self
            .restore_subscriptions(partition, ck.as_ref().map(|c| c.position).unwrap_or(0))
            .await?;
        Ok(Restored {
            partition,
            subscriptions,
            rows,
            alerts: alerts
                .into_iter()
                .map(|(t, m, p, k)| (t, m, p as i64, k))
                .collect(),
            replay_from: ck.as_ref().map(|c| c.position).unwrap_or(0),
            checkpoint: ck,
            committed: None,
            first_periods: first.into_iter().map(|(t, p)| (t, p as i64)).collect(),
            stated: stated
                .into_iter()
                .chain(sub_stated)
                .map(|(t, p)| (t, p as i64))
                .collect(),
        })
    }

    /// The partition's subscription records with `through_offset` at or below `position`
    /// (the checkpoint's): the ones past it are applied again when their events are read
    /// again, in their order with the usage around them.
    async fn restore_subscriptions(
        &self,
        partition: i32,
        position: i64,
    ) -> Result<Vec<SubscriptionRecord>, SinkError> {
        let subs: Vec<SubRow> = self
            .0
            .client
            .query(&queries::restore_subscriptions(&self.0.db))
            .bind(partition as u32)
            .bind(position)
            .fetch_all()
            .await?;
        if subs.is_empty() {
            return Ok(vec![]);
        }
        let details: Vec<DetailRow> = self
            .0
            .client
            .query(&queries::restore_subscription_details(&self.0.db))
            .bind(partition as u32)
            .bind(position)
            .fetch_all()
            .await?;
        assemble(subs, details)
    }

    /// A tenant's stored subscription records, in partition order (for readers that do not
    /// hold the tenant's partition).
    ///
    /// Errors: ClickHouse unreachable or failing, or a stored row that does not decode.
    pub async fn tenant_subscriptions(
        &self,
        tenant: &str,
    ) -> Result<Vec<SubscriptionRecord>, SinkError> {
        let subs: Vec<SubRow> = self
            .0
            .client
            .query(&queries::tenant_subscriptions(&self.0.db))
            .bind(tenant)
            .fetch_all()
            .await?;
        if subs.is_empty() {
            return Ok(vec![]);
        }
        let details: Vec<DetailRow> = self
            .0
            .client
            .query(&queries::tenant_subscription_details(&self.0.db))
            .bind(tenant)
            .fetch_all()
            .await?;
        assemble(subs, details)
    }
}

/// `queries::SUBSCRIPTION_COLUMNS`.
type SubRow = (String, String, String, String, u32, u8, String, u32, i64);
/// `queries::DETAIL_COLUMNS`.
type DetailRow = (String, String, u32, String, u8, String);

/// Records from their rows and details (joined on tenant, event id and effective_at).
fn assemble(
    subs: Vec<SubRow>,
    details: Vec<DetailRow>,
) -> Result<Vec<SubscriptionRecord>, SinkError> {
    let details: HashMap<(String, String, u32), (String, u8, String)> = details
        .into_iter()
        .map(|(t, e, at, tz, d, s)| ((t, e, at), (tz, d, s)))
        .collect();
    let mut out = Vec::with_capacity(subs.len());
    for (tenant, plan, addons, cycle, at, canceled, event_id, partition, through) in subs {
        let addons = serde_json::from_str(&addons).map_err(|e| {
            SinkError::Data(format!("subscriptions.addons of {tenant}/{event_id}: {e}"))
        })?;
        let d = details.get(&(tenant.clone(), event_id.clone(), at));
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        out.push(SubscriptionRecord {
            tenant: tenant.as_str().into(),
            plan,
            addons,
            billing_cycle: parse_cycle(&cycle),
            effective_at: at as i64,
            canceled: canceled != 0,
            event_id,
            partition: partition as i32,
            through_offset: through,
            timezone: d.and_then(|d| nonempty(&d.0)),
            anchor_day: d.and_then(|d| (d.1 > 0).then_some(d.1 as u32)),
            stripe_customer_id: d.and_then(|d| nonempty(&d.2)),
        });
    }
    Ok(out)
}
