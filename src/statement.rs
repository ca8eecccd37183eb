//! Period-close usage statements (CONTRACT section 10): what a tenant owes for a usage
//! period once the period is closed, built from the period's usage by the pricing function
//! of the usage answer ([`crate::pricing::try_charges`]), and the JSON shape of the message
//! on `kafka.statements_topic` and of the `GET /v1/tenants/{tenant}/statements` answer.
//! Pure: the processor decides when a period closes (`crate::state`), the ClickHouse sink
//! stores the rows (`usage_statements`).
//!
//! A statement is a pure function of the tenant's configuration, the period's usage and
//! `pipeline.late_event_grace`, so one made again after a crash is the same statement:
//!
//! - `statement_id` = the first 32 hex digits of SHA-256 over `callmeter.statement`, the
//!   tenant id and the period start (Unix seconds, decimal), each prefixed by its length as
//!   a big-endian u32 ([`statement_id`]);
//! - `closed_at` = period end + `late_event_grace`: the instant (event time) from which the
//!   period takes no more events, not the wall clock at which it was noticed;
//! - charges are priced as known at the period's end (plan changes up to then apply);
//! - lines are ordered by kind (`base_fee`, `overage`, `usage`, `tiered`, `revenue_share`,
//!   `addon`), then meter, then item, and lines with the same (kind, meter, item) are merged
//!   (their quantities and amounts summed), because that triple keys the stored rows.
//!
//! Money is written with 2 decimals (`"79.00"`), quantities as normalized decimal strings.

use std::cmp::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::period::Period;
use crate::pricing::{self, ChargeInput, MeterUsage, PricingError, Tenant};

/// One priced line of a statement (a charge line of CONTRACT section 3 with its quantity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// `base_fee`, `overage`, `usage`, `tiered`, `revenue_share`, `addon`.
    pub kind: String,
    pub meter: Option<String>,
    /// The add-on, or the plan of a prorated base fee.
    pub item: Option<String>,
    /// See [`crate::pricing::ChargeLine::quantity`].
    pub quantity: Decimal,
    /// Rounded to 2 decimals.
    pub amount: Decimal,
}

/// A closed period's statement. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub statement_id: String,
    pub tenant_id: String,
    /// The plan governing the period (at its end).
    pub plan: String,
    pub currency: String,
    pub period: Period,
    pub lines: Vec<StatementLine>,
    pub total: Decimal,
    pub closed_at: i64,
}

/// The deterministic id of the statement of (tenant, period start): 32 hex digits (see the
/// module docs).
pub fn statement_id(tenant: &str, period_start: i64) -> String {
    let mut h = Sha256::new();
    for part in ["callmeter.statement", tenant, &period_start.to_string()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Order of line kinds in a statement.
fn kind_rank(kind: &str) -> u8 {
    match kind {
        "base_fee" => 0,
        "overage" => 1,
        "usage" => 2,
        "tiered" => 3,
        "revenue_share" => 4,
        "addon" => 5,
        _ => 6,
    }
}

/// The canonical order of statement lines (also the order lines are read back in).
pub fn line_order(a: &StatementLine, b: &StatementLine) -> Ordering {
    (kind_rank(&a.kind), &a.kind, &a.meter, &a.item).cmp(&(
        kind_rank(&b.kind),
        &b.kind,
        &b.meter,
        &b.item,
    ))
}

/// Sorts lines canonically and merges those with the same (kind, meter, item).
///
/// Errors: a merged quantity or amount beyond [`Decimal`]'s range.
pub fn canonical_lines(mut lines: Vec<StatementLine>) -> Result<Vec<StatementLine>, PricingError> {
    lines.sort_by(line_order);
    let mut out: Vec<StatementLine> = Vec::with_capacity(lines.len());
    for l in lines {
        if let Some(last) = out.last_mut()
            && last.kind == l.kind
            && last.meter == l.meter
            && last.item == l.item
        {
            let what = || PricingError::Overflow {
                what: format!("the merged {} line", l.kind),
            };
            last.quantity = last.quantity.checked_add(l.quantity).ok_or_else(what)?;
            last.amount = last.amount.checked_add(l.amount).ok_or_else(what)?;
            continue;
        }
        out.push(l);
    }
    Ok(out)
}

/// Builds the statement of `tenant`'s `period` from the period's usage, priced by
/// [`pricing::try_charges`] as known at the period's end; `first_period`: the period holds
/// the tenant's one-time allowances; `grace_secs`: `pipeline.late_event_grace`.
///
/// Errors: an amount beyond [`Decimal`]'s range (absurd usage or prices).
pub fn build(
    tenant: &Tenant,
    period: Period,
    usage: &[MeterUsage],
    first_period: bool,
    grace_secs: i64,
) -> Result<Statement, PricingError> {
    let at_end = DateTime::<Utc>::from_timestamp(period.end, 0).unwrap_or_default();
    let plan = tenant.plan_for_period(period, at_end).clone();
    let charges = pricing::try_charges(&ChargeInput {
        tenant,
        period,
        usage,
        first_period,
        now: at_end,
    })?;
    let lines = canonical_lines(
        charges
            .lines
            .into_iter()
            .map(|l| StatementLine {
                kind: l.kind.to_string(),
                meter: l.meter,
                item: l.item,
                quantity: l.quantity,
                amount: l.amount,
            })
            .collect(),
    )?;
    Ok(Statement {
        statement_id: statement_id(&tenant.id, period.start),
        tenant_id: tenant.id.to_string(),
        plan: plan.id.clone(),
        currency: plan.currency.clone(),
        period,
        lines,
        total: charges.total,
        closed_at: period.end.saturating_add(grace_secs),
    })
}

/// A statement line as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatementLineBody {
    #[schema(example = "overage")]
    pub kind: String,
    #[schema(example = "call_minutes")]
    pub meter: Option<String>,
    #[schema(example = json!(null))]
    pub item: Option<String>,
    /// Decimal string (see the usage answer's charge lines).
    #[schema(example = "180.5")]
    pub quantity: String,
    /// 2 decimals.
    #[schema(example = "39.71")]
    pub amount: String,
}

/// A statement as JSON: the message on the statements topic and an item of the statements
/// answer (CONTRACT section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatementBody {
    /// Deterministic per (tenant, period_start): 32 hex digits.
    #[schema(example = "5f2b0c3e9a1d4b7c8e6f0a2b4c6d8e0f")]
    pub statement_id: String,
    #[schema(example = "acme")]
    pub tenant_id: String,
    #[schema(example = "starter")]
    pub plan: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// RFC 3339, UTC.
    #[schema(example = "2026-10-31T23:00:00Z")]
    pub period_start: String,
    /// Exclusive, RFC 3339, UTC.
    #[schema(example = "2026-11-30T23:00:00Z")]
    pub period_end: String,
    pub lines: Vec<StatementLineBody>,
    /// The sum of the lines, 2 decimals.
    #[schema(example = "118.71")]
    pub total: String,
    /// Period end + `pipeline.late_event_grace`, RFC 3339, UTC.
    #[schema(example = "2026-12-02T23:00:00Z")]
    pub closed_at: String,
}

/// Unix seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z` when out of range).
fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Statement {
    /// The JSON shape.
    pub fn body(&self) -> StatementBody {
        StatementBody {
            statement_id: self.statement_id.clone(),
            tenant_id: self.tenant_id.clone(),
            plan: self.plan.clone(),
            currency: self.currency.clone(),
            period_start: rfc3339(self.period.start),
            period_end: rfc3339(self.period.end),
            lines: self
                .lines
                .iter()
                .map(|l| StatementLineBody {
                    kind: l.kind.clone(),
                    meter: l.meter.clone(),
                    item: l.item.clone(),
                    quantity: l.quantity.normalize().to_string(),
                    amount: pricing::money_str::format(l.amount),
                })
                .collect(),
            total: pricing::money_str::format(self.total),
            closed_at: rfc3339(self.closed_at),
        }
    }

    /// The message on the statements topic: (key = tenant id, JSON body).
    pub fn record(&self) -> (Vec<u8>, Vec<u8>) {
        let body = serde_json::to_vec(&self.body()).expect("statements serialize");
        (self.tenant_id.as_bytes().to_vec(), body)
    }
}

#[cfg(test)]
mod tests;
