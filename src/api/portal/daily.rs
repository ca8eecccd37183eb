//! Daily usage of a period for the portal's chart, from ClickHouse.
//!
//! `usage_rollups` holds one row per (tenant, meter, usage period, partition): no day
//! grain. What ClickHouse holds per event is `call_events` (`[clickhouse] raw_events =
//! true`): every counted event, with its time and data. Each of the tenant's stored events
//! of the period is decoded again with the configured meter definitions (as `callmeter
//! reconcile` does) and its contribution added to the day it falls on in the tenant's time
//! zone; a day's value is [`crate::meter::MeterDef::value`] of that day's raw sum (so
//! rounded per day: with `rounding = "none"` the days may differ from the period total in
//! the 6th decimal). Without raw events there is no daily series ([`DailyError::NoRawEvents`]);
//! a period with more than [`MAX_EVENTS`] stored events is cut there (`truncated`).

use chrono::{NaiveDate, TimeZone};
use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::Tenant;
use crate::sink::clickhouse::{ClickHouse, SinkError, dt, queries, stored_event_json};

/// The most stored events read for one chart.
pub const MAX_EVENTS: u64 = 200_000;

/// Why there is no daily series.
#[derive(Debug, thiserror::Error)]
pub enum DailyError {
    #[error("daily usage needs the raw events: set [clickhouse] raw_events = true")]
    NoRawEvents,
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
}

/// One meter's values per day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyMeter {
    pub meter: String,
    /// One value per day of [`Daily::days`].
    pub values: Vec<Decimal>,
}

/// Usage per local day of a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daily {
    /// Every local date the period covers, in order.
    pub days: Vec<NaiveDate>,
    pub meters: Vec<DailyMeter>,
    /// More than [`MAX_EVENTS`] events: the series stops early.
    pub truncated: bool,
}

/// The local dates of `period` in `tz` (its end is exclusive).
pub fn days_of(period: Period, tz: chrono_tz::Tz) -> Vec<NaiveDate> {
    let date = |secs: i64| {
        tz.timestamp_opt(secs, 0)
            .single()
            .map(|t| t.date_naive())
            .unwrap_or_default()
    };
    let (first, last) = (date(period.start), date(period.end - 1));
    first.iter_days().take_while(|d| *d <= last).collect()
}

/// A stored event, as read: `(source, event_id, type, time_us, data)`.
pub type RawEvent = (String, String, String, i64, String);

/// Adds each event's contribution to its day's raw sum, per meter of `meters`, and turns
/// the sums into values (pure).
pub fn bucket(
    cat: &Catalog,
    tenant: &Tenant,
    period: Period,
    meters: &[MeterId],
    events: &[RawEvent],
) -> (Vec<NaiveDate>, Vec<DailyMeter>) {
    let days = days_of(period, tenant.tz);
    let mut raw = vec![vec![Decimal::ZERO; days.len()]; meters.len()];
    for (source, id, ty, time_us, data) in events {
        let secs = time_us.div_euclid(1_000_000);
        if !period.contains(secs) {
            continue;
        }
        let Some(day) = tenant
            .tz
            .timestamp_opt(secs, 0)
            .single()
            .and_then(|t| days.iter().position(|d| *d == t.date_naive()))
        else {
            continue;
        };
        let text = stored_event_json(&tenant.id, source, id, ty, *time_us, data);
        let Ok(ev) = crate::event::decode(text.as_bytes(), |t| cat.by_event_type.contains_key(t))
        else {
            continue;
        };
        for mid in cat.by_event_type.get(&*ev.ty).into_iter().flatten() {
            let Some(i) = meters.iter().position(|m| m == mid) else {
                continue;
            };
            if let Ok(Some(c)) = cat.meter(*mid).contribution(&ev) {
                raw[i][day] = raw[i][day].saturating_add(c);
            }
        }
    }
    let out = meters
        .iter()
        .zip(raw)
        .map(|(mid, sums)| {
            let def = cat.meter(*mid);
            DailyMeter {
                meter: def.name.to_string(),
                values: sums.into_iter().map(|r| def.value(r)).collect(),
            }
        })
        .collect();
    (days, out)
}

/// The daily usage of `meters` for `tenant` in `period`, from `call_events`.
///
/// Errors: raw events are off ([`DailyError::NoRawEvents`]); ClickHouse cannot be read.
pub async fn daily_usage(
    ch: &ClickHouse,
    raw_events: bool,
    cat: &Catalog,
    tenant: &Tenant,
    period: Period,
    meters: &[MeterId],
) -> Result<Daily, DailyError> {
    if !raw_events {
        return Err(DailyError::NoRawEvents);
    }
    let mut events: Vec<RawEvent> = ch
        .client()
        .query(&queries::tenant_raw_events(ch.database()))
        .bind(&*tenant.id)
        .bind(dt(period.start))
        .bind(dt(period.end))
        .bind(MAX_EVENTS + 1)
        .fetch_all()
        .await
        .map_err(SinkError::from)?;
    let truncated = events.len() as u64 > MAX_EVENTS;
    events.truncate(MAX_EVENTS as usize);
    let (days, meters) = bucket(cat, tenant, period, meters, &events);
    Ok(Daily {
        days,
        meters,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn events_fall_on_their_local_day() {
        let c = Config::from_toml_str(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\nincluded = \"100\"\n\
             [tenants.t]\nplan = \"p\"\ntimezone = \"Asia/Jerusalem\"\n",
        )
        .unwrap();
        let cat = &c.catalog;
        let t = cat.tenant("t").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("1999-02-10T12:00:00+02:00")
            .unwrap()
            .to_utc();
        let period = t.period_at(at);
        let days = days_of(period, t.tz);
        assert_eq!(days.len(), 28);
        assert_eq!(days[0], NaiveDate::from_ymd_opt(1999, 2, 1).unwrap());
        let ev = |id: &str, local: &str, ms: u64| -> RawEvent {
            let us = chrono::DateTime::parse_from_rfc3339(local)
                .unwrap()
                .timestamp_micros();
            (
                "s".into(),
                id.into(),
                "call.completed".into(),
                us,
                format!(r#"{{"call_id":"{id}","duration_ms":{ms},"direction":"inbound"}}"#),
            )
        };
        let events = vec![
            // Days are local: 00:30 on Feb 1 in Israel is Jan 31 in UTC, yet Feb 1 here.
            ev("a", "1999-02-01T00:30:00+02:00", 60_000),
            ev("b", "1999-02-01T23:30:00+02:00", 120_000),
            ev("c", "1999-02-02T00:10:00+02:00", 30_000),
            ev("d", "1999-02-28T23:59:59+02:00", 90_000),
            // Outside the period: January, and March.
            ev("e", "1999-01-31T23:59:59+02:00", 60_000),
            ev("f", "1999-03-01T00:00:00+02:00", 60_000),
        ];
        let mids = [
            cat.meter_id("call_minutes").unwrap(),
            cat.meter_id("calls").unwrap(),
        ];
        let (d, m) = bucket(cat, &t, period, &mids, &events);
        assert_eq!(d, days);
        assert_eq!(m[0].meter, "call_minutes");
        assert_eq!(m[0].values[0], Decimal::from(3));
        assert_eq!(m[0].values[1], Decimal::new(5, 1));
        assert_eq!(m[0].values[27], Decimal::new(15, 1));
        assert_eq!(m[0].values.iter().sum::<Decimal>(), Decimal::from(5));
        assert_eq!(m[1].values[0], Decimal::from(2));
        assert_eq!(m[1].values.iter().sum::<Decimal>(), Decimal::from(4));
    }
}
