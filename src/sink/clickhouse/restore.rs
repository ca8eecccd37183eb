//! Restore reads: what a partition needs on assignment (its checkpoint, the rows of periods
//! that can still take events, their alerts, each tenant's earliest period).

use std::collections::HashMap;

use super::rows::from_dec9;
use super::{ClickHouse, SinkError, queries};
use crate::state::{Checkpoint, Restored, StoredRow};

impl ClickHouse {
    /// Loads what a partition needs on assignment: its checkpoint, the rows of periods that
    /// can still take events (end + grace at or after the checkpoint watermark; all rows
    /// without a checkpoint), their alerts, and each tenant's earliest period. Bounded by
    /// four times `clickhouse.request_timeout` (it reads several tables).
    pub async fn restore(
        &self,
        topic: &str,
        partition: i32,
        grace_secs: i64,
    ) -> Result<Restored, SinkError> {
        let bound = self.timeout.saturating_mul(4);
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
            .client
            .query(&queries::restore_checkpoint(&self.db))
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
            .query(&queries::restore_state(&self.db))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let rollups: Vec<(String, String, u32, i64)> = self
            .client
            .query(&queries::restore_rollups(&self.db))
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
            .query(&queries::restore_alerts(&self.db))
            .bind(topic)
            .bind(partition as u32)
            .bind(min_end as u32)
            .fetch_all()
            .await?;
        let first: Vec<(String, u32)> = self
            .client
            .query(&queries::restore_first_periods(&self.db))
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
}
