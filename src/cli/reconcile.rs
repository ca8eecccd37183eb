//! `callmeter reconcile --period P`: recomputes every tenant's meter totals for a usage period
//! from the raw events stored in `call_events` (`[clickhouse] raw_events = true`) and compares
//! them with `usage_rollups FINAL`.
//!
//! The raw events are decoded again with the same meter definitions, so a difference means
//! the rollups do not say what the stored events say. `call_events` collapses repeats of an
//! event identity for good, while the pipeline drops them only within the dedup window: an
//! identity resent after the window shows up as a difference, by design.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::config::Config;
use crate::period::{Period, parse_period_spec};
use crate::sink::clickhouse::{ClickHouse, SinkError, dt, from_dec9, queries};

/// One (tenant, meter) comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub tenant: String,
    pub meter: String,
    pub period: Period,
    /// Recomputed from raw events.
    pub raw_events: Decimal,
    /// Stored in `usage_rollups`.
    pub rollups: Decimal,
}

impl Line {
    pub fn matches(&self) -> bool {
        self.raw_events == self.rollups
    }
}

/// Errors of a reconciliation run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("`{0}` is not a period: use YYYY-MM or an RFC 3339 instant")]
    BadPeriod(String),
    #[error(
        "raw events are not stored: set [clickhouse] raw_events = true (and replay) to reconcile"
    )]
    NoRawEvents,
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
}

/// Compares raw-event totals with rollups for the period `spec` (`1999-01` or an instant),
/// resolved per tenant in its own time zone and anchor day.
pub async fn reconcile(
    config: &Config,
    ch: &ClickHouse,
    spec: &str,
) -> Result<Vec<Line>, ReconcileError> {
    if !config.settings.clickhouse.raw_events {
        return Err(ReconcileError::NoRawEvents);
    }
    let cat = &config.catalog;
    // A UTC window wide enough for every time zone and anchor.
    let utc = parse_period_spec(spec, chrono_tz::UTC, 1)
        .ok_or_else(|| ReconcileError::BadPeriod(spec.into()))?;
    let (lo, hi) = (utc.start - 16 * 86_400, utc.end + 16 * 86_400);
    let raw: Vec<(String, String, String, String, i64, String)> = ch
        .client()
        .query(&queries::reconcile_raw_events(ch.database()))
        .bind(dt(lo))
        .bind(dt(hi))
        .fetch_all()
        .await
        .map_err(SinkError::from)?;

    let mut sums: BTreeMap<(String, String, i64), Decimal> = BTreeMap::new();
    let mut periods: BTreeMap<String, Period> = BTreeMap::new();
    for (tenant, source, id, ty, time_us, data) in raw {
        let Some(t) = cat.tenant(&tenant) else {
            continue;
        };
        let period = *periods
            .entry(tenant.clone())
            .or_insert_with(|| parse_period_spec(spec, t.tz, t.anchor_day).unwrap_or(utc));
        let secs = time_us.div_euclid(1_000_000);
        if !period.contains(secs) {
            continue;
        }
        let text =
            crate::sink::clickhouse::stored_event_json(&tenant, &source, &id, &ty, time_us, &data);
        let Ok(ev) = crate::event::decode(text.as_bytes(), |t| cat.by_event_type.contains_key(t))
        else {
            continue;
        };
        for mid in cat.by_event_type.get(&*ev.ty).into_iter().flatten() {
            let def = cat.meter(*mid);
            if let Ok(Some(c)) = def.contribution(&ev) {
                *sums
                    .entry((tenant.clone(), def.name.to_string(), period.start))
                    .or_default() += c;
            }
        }
    }
    let stored: Vec<(String, String, u32, i128)> = ch
        .client()
        .query(&queries::reconcile_rollups(ch.database()))
        .bind(dt(lo))
        .bind(dt(hi))
        .fetch_all()
        .await
        .map_err(SinkError::from)?;
    let mut lines: BTreeMap<(String, String, i64), Line> = BTreeMap::new();
    for ((tenant, meter, start), raw) in sums {
        let Some(mid) = cat.meter_id(&meter) else {
            continue;
        };
        let period = periods[&tenant];
        lines.insert(
            (tenant.clone(), meter.clone(), start),
            Line {
                tenant,
                meter,
                period,
                raw_events: cat.meter(mid).value(raw),
                rollups: Decimal::ZERO,
            },
        );
    }
    for (tenant, meter, start, value) in stored {
        let Some(t) = cat.tenant(&tenant) else {
            continue;
        };
        let Some(period) = parse_period_spec(spec, t.tz, t.anchor_day) else {
            continue;
        };
        if period.start != start as i64 {
            continue;
        }
        let v = from_dec9(value)?;
        lines
            .entry((tenant.clone(), meter.clone(), period.start))
            .or_insert_with(|| Line {
                tenant,
                meter,
                period,
                raw_events: Decimal::ZERO,
                rollups: Decimal::ZERO,
            })
            .rollups = v;
    }
    Ok(lines.into_values().collect())
}

/// `callmeter reconcile`: prints one line per (tenant, meter) and fails when any differs.
pub async fn run(config: &Config, period: &str) -> anyhow::Result<()> {
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let lines = reconcile(config, &ch, period).await?;
    println!(
        "{:<24} {:<16} {:<22} {:>20} {:>20}  status",
        "tenant", "meter", "period start (UTC)", "raw events", "rollups"
    );
    let mut bad = 0;
    for l in &lines {
        if !l.matches() {
            bad += 1;
        }
        println!(
            "{:<24} {:<16} {:<22} {:>20} {:>20}  {}",
            l.tenant,
            l.meter,
            l.period.start_utc().format("%Y-%m-%dT%H:%M:%SZ"),
            l.raw_events,
            l.rollups,
            if l.matches() { "ok" } else { "MISMATCH" }
        );
    }
    println!("{} lines, {} mismatches", lines.len(), bad);
    if bad > 0 {
        anyhow::bail!("{bad} totals differ between raw events and rollups");
    }
    Ok(())
}
