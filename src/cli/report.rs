//! `callmeter report`: per tenant and usage period, what ClickHouse holds (calls, minutes,
//! alerts) and what it costs under the tenant's plan, read back from `usage_rollups FINAL`
//! and `usage_alerts FINAL`; then the statements of closed periods (`usage_statements
//! FINAL`), each line with its quantity and amount, and the statement's total.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Context;
use chrono::Utc;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::period::Period;
use crate::pricing::{self, ChargeInput, MeterUsage};
use crate::sink::clickhouse::{ClickHouse, SinkError, from_dec9, queries};
use crate::statement::Statement;

/// One (tenant, period) line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportLine {
    pub tenant: String,
    pub period: Period,
    /// Meter name -> value.
    pub usage: BTreeMap<String, Decimal>,
    pub alerts: Vec<String>,
    pub plan: String,
    pub currency: String,
    pub total: Option<Decimal>,
}

/// Reads the report lines from ClickHouse.
pub async fn lines(config: &Config, ch: &ClickHouse) -> Result<Vec<ReportLine>, SinkError> {
    let rows: Vec<(String, String, u32, u32, i128)> = ch
        .client()
        .query(&queries::report_usage(ch.database()))
        .fetch_all()
        .await?;
    let alerts: Vec<(String, u32, String)> = ch
        .client()
        .query(&queries::report_alerts(ch.database()))
        .fetch_all()
        .await?;
    let mut by: BTreeMap<(String, u32), ReportLine> = BTreeMap::new();
    for (tenant, meter, start, end, value) in rows {
        let l = by
            .entry((tenant.clone(), start))
            .or_insert_with(|| ReportLine {
                tenant,
                period: Period {
                    start: start as i64,
                    end: end as i64,
                },
                usage: BTreeMap::new(),
                alerts: vec![],
                plan: String::new(),
                currency: String::new(),
                total: None,
            });
        l.usage.insert(meter, from_dec9(value)?);
    }
    for (tenant, start, kind) in alerts {
        if let Some(l) = by.get_mut(&(tenant, start))
            && !l.alerts.contains(&kind)
        {
            l.alerts.push(kind);
        }
    }
    let rank = |k: &str| match k {
        "overage" => 1_000,
        "overage_cap" => 1_001,
        _ => k.trim_end_matches('%').parse::<u32>().unwrap_or(999),
    };
    for l in by.values_mut() {
        l.alerts.sort_by_key(|k| rank(k));
    }
    let cat = &config.catalog;
    let now = Utc::now();
    // Each tenant's first period holds its one-time allowances.
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    for (tenant, start) in by.keys() {
        first.entry(tenant.clone()).or_insert(*start as i64);
    }
    // The tenants in effect: configured, with their stored subscription events laid over.
    let mut tenants: BTreeMap<String, Option<std::sync::Arc<crate::pricing::Tenant>>> =
        BTreeMap::new();
    for (tenant, _) in by.keys() {
        if !tenants.contains_key(tenant) {
            let t = match crate::usage::stored_tenant(ch, cat, tenant).await {
                Ok(Some(t)) => Some(t),
                Ok(None) => cat.tenant(tenant),
                Err(crate::usage::UsageError::ClickHouse(e)) => return Err(e),
            };
            tenants.insert(tenant.clone(), t);
        }
    }
    for l in by.values_mut() {
        let Some(t) = tenants.get(&l.tenant).cloned().flatten() else {
            continue;
        };
        let plan = t.plan_for_period(l.period, now);
        l.plan = plan.id.clone();
        l.currency = plan.currency.clone();
        let usage: Vec<MeterUsage> = l
            .usage
            .iter()
            .filter_map(|(name, v)| {
                cat.meter_id(name).map(|m| MeterUsage {
                    meter: m,
                    name: name.clone(),
                    usage: *v,
                })
            })
            .collect();
        let c = pricing::charges(&ChargeInput {
            tenant: &t,
            period: l.period,
            usage: &usage,
            first_period: first.get(&l.tenant) == Some(&l.period.start),
            now,
        });
        l.total = Some(c.total);
    }
    Ok(by.into_values().collect())
}

/// Formats report lines as a table, periods shown in each tenant's time zone.
pub fn format(config: &Config, lines: &[ReportLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<20} {:>8} {:>14} {:<34} {:>14}",
        "tenant", "period", "plan", "calls", "minutes", "alerts (call_minutes)", "charges"
    );
    for l in lines {
        let tz = config
            .catalog
            .tenant(&l.tenant)
            .map(|t| t.tz)
            .unwrap_or(chrono_tz::UTC);
        let month = l
            .period
            .start_utc()
            .with_timezone(&tz)
            .format("%Y-%m")
            .to_string();
        let get = |m: &str| l.usage.get(m).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<20} {:>8} {:>14} {:<34} {:>14}",
            l.tenant,
            month,
            l.plan,
            get("calls").normalize(),
            get("call_minutes").round_dp(2),
            if l.alerts.is_empty() {
                "-".to_string()
            } else {
                l.alerts.join(",")
            },
            l.total
                .map(|t| format!("{} {}", l.currency, pricing::money_str::format(t)))
                .unwrap_or_default()
        );
    }
    out
}

/// Formats statements: per tenant and closed period, each line (kind, meter, item,
/// quantity, amount) and the total; periods shown in each tenant's time zone.
pub fn format_statements(config: &Config, statements: &[Statement]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "statements of closed periods ({})", statements.len());
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<20} {:<14} {:<14} {:<16} {:>14} {:>16}",
        "tenant", "period", "plan", "line", "meter", "item", "quantity", "amount"
    );
    for s in statements {
        let tz = config
            .catalog
            .tenant(&s.tenant_id)
            .map(|t| t.tz)
            .unwrap_or(chrono_tz::UTC);
        let month = s
            .period
            .start_utc()
            .with_timezone(&tz)
            .format("%Y-%m")
            .to_string();
        let money = |d: Decimal| format!("{} {}", s.currency, pricing::money_str::format(d));
        for l in &s.lines {
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:<20} {:<14} {:<14} {:<16} {:>14} {:>16}",
                s.tenant_id,
                month,
                s.plan,
                l.kind,
                l.meter.as_deref().unwrap_or("-"),
                l.item.as_deref().unwrap_or("-"),
                l.quantity.normalize().round_dp(6),
                money(l.amount)
            );
        }
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<20} {:<14} {:<14} {:<16} {:>14} {:>16}",
            s.tenant_id,
            month,
            s.plan,
            "total",
            "",
            "",
            "",
            money(s.total)
        );
    }
    out
}

/// `callmeter report`: reads ClickHouse and prints the report.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let context = || format!("reading ClickHouse at {}", config.settings.clickhouse.url);
    let lines = lines(config, &ch).await.with_context(context)?;
    print!("{}", format(config, &lines));
    let statements = ch.all_statements().await.with_context(context)?;
    println!();
    print!("{}", format_statements(config, &statements));
    Ok(())
}
