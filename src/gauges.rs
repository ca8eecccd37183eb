//! Per-tenant usage gauges for Prometheus, with a cardinality cap. Exported only with
//! `metrics.tenant_gauges = true` (off by default: `/metrics` is unauthenticated).
//!
//! Every [`REFRESH`] a task reads the in-memory rollups of [`Shared`] and publishes, for
//! every tenant this instance holds rows for:
//!
//! - `callmeter_tenant_usage{tenant,meter}`: the meter value in the tenant's current usage
//!   period, for every meter the tenant's plan prices or that has usage;
//! - `callmeter_tenant_usage_ratio{tenant,meter}`: usage / limit, for meters with a finite,
//!   positive limit (plan `included` plus add-ons, plus a one-time allowance in the first
//!   period), the same number as `ratio` in the usage API;
//! - `callmeter_tenant_overage_capped{tenant,meter}`: 1 when the meter's overage charge has
//!   reached the plan's `overage_cap` this period, else 0 (meters with a cap only);
//! - `callmeter_tenant_gauges_suppressed`: 1 when the instance holds more tenants than
//!   `metrics.tenant_gauges_max`; the three per-tenant families are then not exported at all
//!   (a cardinality cap, not a top-N: a partial set would make "no series" ambiguous).
//!
//! The *current* period of a tenant is the one containing the instance's clock: the wall
//! clock, or, when every row in memory belongs to periods that ended before it (a replay of
//! old records, a backfill), the last instant those rows cover. Live, that is the period the
//! usage API shows; on a replay it is the latest period the replayed events reached.
//!
//! These families are rendered here rather than through the `metrics` recorder so that a
//! series disappears when it no longer applies (a revoked partition, a tenant whose rows
//! were evicted, the cap being exceeded): the recorder cannot forget a series.
//! [`compute`] and [`render`] are pure; [`run`] does the reading and publishing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::meter::MeterId;
use crate::pricing::overage_charge;
use crate::state::Shared;
use crate::telemetry::{
    TENANT_GAUGES_SUPPRESSED, TENANT_OVERAGE_CAPPED, TENANT_USAGE, TENANT_USAGE_RATIO, Telemetry,
};

/// How often the gauges are recomputed.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Section name under which the gauges are rendered into `/metrics`.
const SECTION: &str = "tenant_gauges";

/// One in-memory rollup row, as the gauges need it.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSample {
    pub tenant: Arc<str>,
    pub meter: MeterId,
    /// Unix seconds.
    pub period_start: i64,
    /// Unix seconds.
    pub period_end: i64,
    /// Raw sum (see [`crate::meter::MeterDef::value`]).
    pub raw: Decimal,
}

/// The gauges of one (tenant, meter).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantMeter {
    pub tenant: Arc<str>,
    pub meter: Arc<str>,
    pub usage: f64,
    /// `None` when the meter has no finite positive limit.
    pub ratio: Option<f64>,
    /// `None` when the meter has no overage cap (or no limit).
    pub capped: Option<bool>,
}

/// Everything rendered in one refresh.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Distinct tenants with rows in memory.
    pub tenants: usize,
    pub suppressed: bool,
    /// Sorted by tenant, then meter id.
    pub series: Vec<TenantMeter>,
}

/// Computes the gauges from the rows in memory.
///
/// `first_period(tenant)` is the earliest usage period start seen for the tenant (one-time
/// allowances); `now` the wall clock; `max` the cap on tenants (`metrics.tenant_gauges_max`).
pub fn compute(
    rows: &[RowSample],
    catalog: &Catalog,
    first_period: impl Fn(&str) -> Option<i64>,
    now: DateTime<Utc>,
    max: usize,
) -> Snapshot {
    // (tenant, meter, period_start) -> raw summed over partitions.
    let mut sums: BTreeMap<(&str, MeterId, i64), Decimal> = BTreeMap::new();
    let mut latest_end = i64::MIN;
    for r in rows {
        let sum = sums
            .entry((&*r.tenant, r.meter, r.period_start))
            .or_default();
        // Each row fits a Decimal; their sum over partitions may not: saturate (a gauge).
        *sum = sum
            .checked_add(r.raw)
            .unwrap_or(if r.raw.is_sign_negative() {
                Decimal::MIN
            } else {
                Decimal::MAX
            });
        latest_end = latest_end.max(r.period_end);
    }
    let mut tenants: Vec<&Arc<str>> = rows.iter().map(|r| &r.tenant).collect();
    tenants.sort();
    tenants.dedup();
    let mut snap = Snapshot {
        tenants: tenants.len(),
        suppressed: tenants.len() > max,
        series: Vec::new(),
    };
    if snap.suppressed {
        return snap;
    }
    let clock = match DateTime::from_timestamp(latest_end.saturating_sub(1), 0) {
        Some(end) if latest_end != i64::MIN => now.min(end),
        _ => now,
    };
    for name in tenants {
        let Some(tenant) = catalog.tenant(name) else {
            continue;
        };
        let period = tenant.period_at(clock);
        let plan = tenant.plan_for_period(period, now);
        let first = first_period(name).is_none_or(|f| f >= period.start);
        for (i, def) in catalog.meters.iter().enumerate() {
            let mid = MeterId(i as u16);
            let raw = sums.get(&(&**name, mid, period.start)).copied();
            let pm = plan.meters.get(&mid);
            if raw.is_none() && pm.is_none() {
                continue;
            }
            let usage = def.value(raw.unwrap_or_default());
            let limit = tenant
                .limit(plan, mid, first)
                .filter(|l| *l > Decimal::ZERO);
            let ratio = limit.map(|l| usage / l);
            let capped = match (pm.and_then(|p| p.overage_cap.map(|c| (p, c))), limit) {
                (Some((pm, cap)), Some(l)) => Some(overage_charge(pm, usage, l) >= cap),
                _ => None,
            };
            snap.series.push(TenantMeter {
                tenant: name.clone(),
                meter: def.name.clone(),
                usage: usage.to_f64().unwrap_or(f64::NAN),
                ratio: ratio.map(|r| r.to_f64().unwrap_or(f64::NAN)),
                capped,
            });
        }
    }
    snap
}

/// Prometheus text exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, help: &str, lines: Vec<(&TenantMeter, f64)>| {
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (tm, v) in lines {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",meter=\"{}\"}} {}",
                escape(&tm.tenant),
                escape(&tm.meter),
                number(v)
            );
        }
        out.push('\n');
    };
    family(
        &mut out,
        TENANT_USAGE,
        "Usage in the current period, by `tenant` and `meter` (capped by metrics.tenant_gauges_max).",
        s.series.iter().map(|t| (t, t.usage)).collect(),
    );
    family(
        &mut out,
        TENANT_USAGE_RATIO,
        "Usage / limit in the current period, by `tenant` and `meter`, for meters with a finite positive limit (capped by metrics.tenant_gauges_max).",
        s.series
            .iter()
            .filter_map(|t| t.ratio.map(|r| (t, r)))
            .collect(),
    );
    family(
        &mut out,
        TENANT_OVERAGE_CAPPED,
        "1 when the overage charge reached the plan's overage_cap this period, by `tenant` and `meter` (meters with a cap).",
        s.series
            .iter()
            .filter_map(|t| t.capped.map(|c| (t, if c { 1.0 } else { 0.0 })))
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP {TENANT_GAUGES_SUPPRESSED} 1 when per-tenant gauges are not exported because this instance holds more tenants than metrics.tenant_gauges_max."
    );
    let _ = writeln!(out, "# TYPE {TENANT_GAUGES_SUPPRESSED} gauge");
    let _ = writeln!(
        out,
        "{TENANT_GAUGES_SUPPRESSED} {}\n",
        if s.suppressed { 1 } else { 0 }
    );
    out
}

/// A sample value as Prometheus reads it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Label value escaping of the text format (backslash, double quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The rows of `shared` as samples, or `Err(tenants)` without copying rows when the
/// tenants held already exceed `max`.
fn sample(shared: &Shared, max: usize) -> Result<Vec<RowSample>, usize> {
    let mut tenants = std::collections::HashSet::new();
    for (k, _) in shared.rows() {
        tenants.insert(k.tenant);
        if tenants.len() > max {
            return Err(tenants.len());
        }
    }
    // Copy first, then resolve names: no registry lock is taken while a row shard is locked.
    let copied: Vec<_> = shared
        .rows()
        .map(|(k, r)| (k, r.period_end, r.raw))
        .collect();
    Ok(copied
        .into_iter()
        .map(|(k, period_end, raw)| RowSample {
            tenant: shared.tenants().name(k.tenant),
            meter: k.meter,
            period_start: k.period_start,
            period_end,
            raw,
        })
        .collect())
}

/// One refresh: reads `shared`, renders, publishes into `/metrics`.
pub fn refresh(shared: &Shared, telemetry: &Telemetry, max: usize) -> Snapshot {
    let snap = match sample(shared, max) {
        Ok(rows) => compute(
            &rows,
            &shared.catalog(),
            |t| shared.first_period(t),
            Utc::now(),
            max,
        ),
        Err(tenants) => Snapshot {
            tenants,
            suppressed: true,
            series: Vec::new(),
        },
    };
    telemetry.set_section(SECTION, render(&snap));
    snap
}

/// Refreshes the gauges every [`REFRESH`] until `shutdown` (spawned by `callmeter run`).
pub async fn run(
    shared: Arc<Shared>,
    telemetry: Telemetry,
    max: usize,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let t = telemetry.clone();
        // Iterating the rows takes DashMap shard locks: keep it off the async workers.
        let snap = match tokio::task::spawn_blocking(move || refresh(&s, &t, max)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "tenant gauges refresh failed");
                continue;
            }
        };
        if snap.suppressed && !warned {
            tracing::warn!(
                tenants = snap.tenants,
                max,
                "more tenants than metrics.tenant_gauges_max: per-tenant gauges are not exported"
            );
        }
        warned = snap.suppressed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[plans.lifestyle]
currency = "USD"
[plans.lifestyle.meters.call_minutes]
included = "120"
overage_rate = "0.10"
overage_cap = "20.00"

[plans.per_call]
currency = "USD"
[plans.per_call.meters.calls]
rate = "0.50"

[plans.unlimited]
currency = "USD"
[plans.unlimited.meters.call_minutes]
included = "unlimited"

[plans.addon]
currency = "USD"
[plans.addon.meters.call_minutes]
included = "100"
included_once = "50"
[plans.addon.addons.extra]
meter = "call_minutes"
included = "100"
price = "1"

[tenants.tt]
plan = "lifestyle"
timezone = "Asia/Jerusalem"

[tenants.pc]
plan = "per_call"

[tenants.un]
plan = "unlimited"

[tenants.ad]
plan = "addon"
addons = { extra = 2 }
"#;

    fn catalog() -> Arc<Catalog> {
        Config::from_toml_str(CONFIG).unwrap().catalog
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A row of `tenant`'s period containing `t`, holding `minutes` call minutes.
    fn minutes_row(cat: &Catalog, tenant: &str, t: &str, minutes: i64) -> RowSample {
        let p = cat.tenant(tenant).unwrap().period_at(at(t));
        RowSample {
            tenant: tenant.into(),
            meter: cat.meter_id("call_minutes").unwrap(),
            period_start: p.start,
            period_end: p.end,
            // call_minutes sums duration_ms; the value divides by 60000.
            raw: Decimal::from(minutes * 60_000),
        }
    }

    fn series<'a>(s: &'a Snapshot, tenant: &str, meter: &str) -> &'a TenantMeter {
        s.series
            .iter()
            .find(|t| &*t.tenant == tenant && &*t.meter == meter)
            .unwrap_or_else(|| panic!("no series for {tenant}/{meter}: {s:?}"))
    }

    const NOW: &str = "2026-11-20T12:00:00Z";

    #[test]
    fn ratio_and_cap_of_the_current_period() {
        let cat = catalog();
        // 300 minutes: ratio 2.5, overage 180 x 0.10 = 18.00 < cap 20.00.
        let rows = vec![minutes_row(&cat, "tt", NOW, 300)];
        let s = compute(&rows, &cat, |_| None, at(NOW), 10);
        assert!(!s.suppressed);
        let tm = series(&s, "tt", "call_minutes");
        assert_eq!(tm.usage, 300.0);
        assert_eq!(tm.ratio, Some(2.5));
        assert_eq!(tm.capped, Some(false));
        // 320 minutes: overage 200 x 0.10 = 20.00 reaches the cap.
        let rows = vec![minutes_row(&cat, "tt", NOW, 320)];
        let s = compute(&rows, &cat, |_| None, at(NOW), 10);
        assert_eq!(series(&s, "tt", "call_minutes").capped, Some(true));
    }

    #[test]
    fn usage_sums_partitions_and_ignores_other_periods() {
        let cat = catalog();
        let mut a = minutes_row(&cat, "tt", NOW, 30);
        a.raw = Decimal::from(30 * 60_000);
        let mut b = a.clone();
        b.raw = Decimal::from(60 * 60_000);
        // Last month's row: not the current period while the clock is in this one.
        let old = minutes_row(&cat, "tt", "2026-10-20T12:00:00Z", 1000);
        let s = compute(&[a, b, old], &cat, |_| None, at(NOW), 10);
        let tm = series(&s, "tt", "call_minutes");
        assert_eq!(tm.usage, 90.0);
        assert_eq!(tm.ratio, Some(0.75));
    }

    #[test]
    fn replayed_history_uses_the_latest_period_held() {
        let cat = catalog();
        // Rows of January and February 1999 only (a replay): the clock is the end of
        // February 1999, not today, so February's usage is the current one.
        let rows = vec![
            minutes_row(&cat, "tt", "1999-01-10T10:00:00Z", 500),
            minutes_row(&cat, "tt", "1999-02-10T10:00:00Z", 60),
        ];
        let s = compute(&rows, &cat, |_| None, at(NOW), 10);
        let tm = series(&s, "tt", "call_minutes");
        assert_eq!(tm.usage, 60.0);
        assert_eq!(tm.ratio, Some(0.5));
    }

    #[test]
    fn a_quiet_tenant_shows_zero_once_its_period_rolled_over() {
        let cat = catalog();
        // tt used 500 minutes last month; pc is active this month, so the clock is now.
        let pc = cat.tenant("pc").unwrap().period_at(at(NOW));
        let rows = vec![
            minutes_row(&cat, "tt", "2026-10-20T12:00:00Z", 500),
            RowSample {
                tenant: "pc".into(),
                meter: cat.meter_id("calls").unwrap(),
                period_start: pc.start,
                period_end: pc.end,
                raw: Decimal::from(7),
            },
        ];
        let s = compute(&rows, &cat, |_| None, at(NOW), 10);
        let tm = series(&s, "tt", "call_minutes");
        assert_eq!(
            (tm.usage, tm.ratio, tm.capped),
            (0.0, Some(0.0), Some(false))
        );
        // A rate-only meter has usage but no ratio and no cap.
        let calls = series(&s, "pc", "calls");
        assert_eq!((calls.usage, calls.ratio, calls.capped), (7.0, None, None));
    }

    #[test]
    fn unlimited_meters_have_no_ratio() {
        let cat = catalog();
        let s = compute(
            &[minutes_row(&cat, "un", NOW, 10_000)],
            &cat,
            |_| None,
            at(NOW),
            10,
        );
        let tm = series(&s, "un", "call_minutes");
        assert_eq!((tm.usage, tm.ratio, tm.capped), (10_000.0, None, None));
    }

    #[test]
    fn limit_includes_addons_and_the_one_time_allowance() {
        let cat = catalog();
        let row = minutes_row(&cat, "ad", NOW, 175);
        // First period: 100 + 50 once + 2 x 100 = 350.
        let s = compute(std::slice::from_ref(&row), &cat, |_| None, at(NOW), 10);
        assert_eq!(series(&s, "ad", "call_minutes").ratio, Some(0.5));
        // A later period: 100 + 2 x 100 = 300.
        let s = compute(&[row], &cat, |_| Some(0), at(NOW), 10);
        let r = series(&s, "ad", "call_minutes").ratio.unwrap();
        assert!((r - 175.0 / 300.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn above_the_cap_nothing_per_tenant_is_exported() {
        let cat = catalog();
        let rows = vec![
            minutes_row(&cat, "tt", NOW, 1),
            minutes_row(&cat, "un", NOW, 1),
            minutes_row(&cat, "ad", NOW, 1),
        ];
        let s = compute(&rows, &cat, |_| None, at(NOW), 2);
        assert!(s.suppressed);
        assert_eq!(s.tenants, 3);
        assert!(s.series.is_empty());
        let text = render(&s);
        assert!(
            text.contains("callmeter_tenant_gauges_suppressed 1\n"),
            "{text}"
        );
        assert!(!text.contains("callmeter_tenant_usage"), "{text}");
        // At the cap they are exported.
        let s = compute(&rows, &cat, |_| None, at(NOW), 3);
        assert!(!s.suppressed);
        // 0 turns them off.
        assert!(compute(&rows, &cat, |_| None, at(NOW), 0).suppressed);
    }

    #[test]
    fn unknown_tenants_without_a_default_plan_are_skipped() {
        let cat = catalog();
        let mut r = minutes_row(&cat, "tt", NOW, 1);
        r.tenant = "ghost".into();
        let s = compute(&[r], &cat, |_| None, at(NOW), 10);
        assert!(s.series.is_empty());
    }

    #[test]
    fn renders_the_text_format() {
        let s = Snapshot {
            tenants: 1,
            suppressed: false,
            series: vec![TenantMeter {
                tenant: "a\"b".into(),
                meter: "call_minutes".into(),
                usage: 96.5,
                ratio: Some(0.25),
                capped: Some(true),
            }],
        };
        let text = render(&s);
        assert!(
            text.contains(
                "callmeter_tenant_usage{tenant=\"a\\\"b\",meter=\"call_minutes\"} 96.5\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "callmeter_tenant_usage_ratio{tenant=\"a\\\"b\",meter=\"call_minutes\"} 0.25\n"
        ));
        assert!(text.contains(
            "callmeter_tenant_overage_capped{tenant=\"a\\\"b\",meter=\"call_minutes\"} 1\n"
        ));
        assert!(text.contains("# TYPE callmeter_tenant_usage_ratio gauge\n"));
        assert!(text.contains("callmeter_tenant_gauges_suppressed 0\n"));
        // Nothing held: only the suppressed gauge.
        let empty = render(&Snapshot::default());
        assert!(!empty.contains("callmeter_tenant_usage"));
        assert!(empty.contains("callmeter_tenant_gauges_suppressed 0\n"));
    }
}
