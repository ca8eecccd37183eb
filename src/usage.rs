//! Reading a tenant's usage for the HTTP API and the wallet service: from memory when this
//! instance holds the tenant's rows for the period, otherwise from ClickHouse
//! (`usage_rollups FINAL`, the CONTRACT section 5 query). Both give the contract's usage:
//! the sum over source partitions of each rollup row's value.
//!
//! Memory is authoritative for a (tenant, period) as soon as it holds one row of it: a
//! tenant's events all arrive on one partition (producers key by tenant, CONTRACT section 1)
//! and a partition's rows of a period are restored, updated and evicted together.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::config::Catalog;
use crate::meter::MeterId;
use crate::sink::clickhouse::{ClickHouse, SinkError, dt, from_dec9, queries};
use crate::state::{RowKey, Shared};

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// ClickHouse was needed (the period is not in memory) and could not be read; retryable.
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
}

/// Usage of every meter of a tenant in one period (meters without usage are absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodUsage {
    /// Meter -> value (CONTRACT section 2), in meter units.
    pub values: BTreeMap<MeterId, Decimal>,
    /// Whether the answer came from memory (else from ClickHouse).
    pub from_memory: bool,
}

impl PeriodUsage {
    /// The value of `meter`, zero when it has none.
    pub fn get(&self, meter: MeterId) -> Decimal {
        self.values.get(&meter).copied().unwrap_or_default()
    }
}

/// The tenant's usage in the period starting at `period_start` (Unix seconds) from the rows
/// in memory, or `None` when memory holds no row of it.
pub fn memory_usage(
    shared: &Shared,
    cat: &Catalog,
    tenant: &str,
    period_start: i64,
) -> Option<BTreeMap<MeterId, Decimal>> {
    let tidx = shared.tenants().get(tenant)?;
    let parts = shared.tenant_partitions(tidx)?;
    let mut out = BTreeMap::new();
    for (i, def) in cat.meters.iter().enumerate() {
        let meter = MeterId(i as u16);
        for &partition in &parts {
            if let Some(r) = shared.row(&RowKey {
                tenant: tidx,
                meter,
                period_start,
                partition,
            }) {
                // Never panics: a sum beyond range saturates (each row's total is checked
                // when counted, so only rows of many partitions together can get there).
                let v = out.entry(meter).or_insert(Decimal::ZERO);
                *v = v.saturating_add(def.value(r.raw));
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The tenant's stored usage in the period starting at `period_start`, per meter.
///
/// Errors: ClickHouse unreachable or failing.
pub async fn stored_usage(
    ch: &ClickHouse,
    cat: &Catalog,
    tenant: &str,
    period_start: i64,
) -> Result<BTreeMap<MeterId, Decimal>, UsageError> {
    let rows: Vec<(String, i128)> = ch
        .client()
        .query(&queries::tenant_period_usage(ch.database()))
        .bind(tenant)
        .bind(dt(period_start))
        .fetch_all()
        .await
        .map_err(SinkError::from)?;
    let mut out = BTreeMap::new();
    for (meter, v) in rows {
        if let Some(m) = cat.meter_id(&meter) {
            out.insert(m, from_dec9(v)?);
        }
    }
    Ok(out)
}

/// The tenant's usage in the period starting at `period_start`: memory first, else
/// ClickHouse.
///
/// Errors: the period is not in memory and ClickHouse cannot be read.
pub async fn period_usage(
    shared: &Shared,
    ch: &ClickHouse,
    cat: &Catalog,
    tenant: &str,
    period_start: i64,
) -> Result<PeriodUsage, UsageError> {
    if let Some(values) = memory_usage(shared, cat, tenant, period_start) {
        return Ok(PeriodUsage {
            values,
            from_memory: true,
        });
    }
    Ok(PeriodUsage {
        values: stored_usage(ch, cat, tenant, period_start).await?,
        from_memory: false,
    })
}

/// What ClickHouse knows of a tenant: whether it has any rollup, and the start of its
/// earliest usage period (Unix seconds).
///
/// Errors: ClickHouse unreachable or failing.
pub async fn stored_first_period(ch: &ClickHouse, tenant: &str) -> Result<Option<i64>, UsageError> {
    let (n, first): (u64, u32) = ch
        .client()
        .query(&queries::tenant_first_period(ch.database()))
        .bind(tenant)
        .fetch_one()
        .await
        .map_err(SinkError::from)?;
    Ok((n > 0).then_some(first as i64))
}

/// The start of the tenant's first usage period (the period of its first event, which
/// holds its one-time allowances): known in memory when this instance holds the tenant's
/// partition, else read from ClickHouse. `None`: no usage yet.
///
/// Errors: not in memory and ClickHouse cannot be read.
pub async fn first_period(
    shared: &Shared,
    ch: &ClickHouse,
    tenant: &str,
) -> Result<Option<i64>, UsageError> {
    if let Some(f) = shared.first_period(tenant) {
        return Ok(Some(f));
    }
    stored_first_period(ch, tenant).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::{InMessage, Params, Processor, Restored};

    #[test]
    fn memory_usage_sums_rows_per_meter() {
        let c = Config::from_toml_str(
            "[pricing]\ndefault_plan = \"p\"\n[plans.p]\ncurrency = \"USD\"\n",
        )
        .unwrap();
        let shared = Shared::new(c.catalog.clone());
        let mut p = Processor::new(shared.clone(), Params::from_settings(&c.settings));
        for part in [0, 1] {
            p.assign(part);
            p.install(Restored {
                partition: part,
                ..Default::default()
            });
        }
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-25T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        // The same tenant on two partitions (producers that do not key by tenant).
        for (part, offset, id, ms) in [(0, 0, "a", 90_000), (1, 0, "b", 30_000), (0, 1, "c", 1)] {
            let ev = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"t","time":"2026-11-20T10:00:00Z","data":{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}}}"#
            );
            p.process(
                &InMessage {
                    partition: part,
                    offset,
                    payload: Some(ev.as_bytes()),
                    timestamp_ms: Some(now.timestamp_millis() - 1000),
                },
                now,
            );
        }
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .timestamp();
        let u = memory_usage(&shared, &c.catalog, "t", start).unwrap();
        // Per row: 90001 ms -> 1.500017 min, 30000 ms -> 0.5 min.
        assert_eq!(u[&crate::meter::CALL_MINUTES], "2.000017".parse().unwrap());
        assert_eq!(u[&crate::meter::CALLS], Decimal::from(3));
        assert!(memory_usage(&shared, &c.catalog, "t", start - 86400 * 31).is_none());
        assert!(memory_usage(&shared, &c.catalog, "nobody", start).is_none());
    }

    /// A reloaded catalog reaches the aggregation through `Processor::refresh_catalog`
    /// (which the consuming loop must call): alert limits then follow the new plan.
    #[test]
    fn refreshed_processor_alerts_on_reloaded_limits() {
        let text = "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\nincluded = \"100\"\n[tenants.t]\nplan = \"p\"\n";
        let c = Config::from_toml_str(text).unwrap();
        let shared = Shared::new(c.catalog.clone());
        let mut p = Processor::new(shared.clone(), Params::from_settings(&c.settings));
        p.assign(0);
        p.install(Restored {
            partition: 0,
            ..Default::default()
        });
        let now = chrono::Utc::now();
        let ev = |id: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"call.completed","subject":"t","time":"{}","data":{{"call_id":"{id}","duration_ms":600000,"direction":"inbound"}}}}"#,
                (now - chrono::Duration::seconds(5)).to_rfc3339()
            )
        };
        let feed = |p: &mut Processor, offset: i64, id: &str| {
            let e = ev(id);
            p.process(
                &InMessage {
                    partition: 0,
                    offset,
                    payload: Some(e.as_bytes()),
                    timestamp_ms: Some(now.timestamp_millis()),
                },
                now,
            );
            p.take_new_alerts()
                .into_iter()
                .map(|a| a.kind)
                .collect::<Vec<_>>()
        };
        // 10 of 100 minutes: nothing. Reload to 20 included: the next 10 minutes reach 100%.
        assert!(feed(&mut p, 0, "a").is_empty());
        let next = Config::from_toml_str(&text.replace("\"100\"", "\"20\"")).unwrap();
        shared.set_catalog(next.catalog);
        p.refresh_catalog();
        assert_eq!(feed(&mut p, 1, "b"), ["80%", "100%"]);
    }
}
