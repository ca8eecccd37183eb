//! Reading closed periods' statements back from `usage_statements` (CONTRACT section 10):
//! one row per charge line there, one [`StoredStatement`] with its lines here.
//!
//! Times are Unix seconds, amounts exact decimals (`Decimal(38, 9)` as stored); the HTTP
//! answer formats them ([`crate::api::routes::statements`]).

use rust_decimal::Decimal;

use super::{ClickHouse, SinkError, from_dec9, queries};

/// The most statements one [`ClickHouse::list_statements`] call returns.
pub const MAX_LIST: u32 = 100;

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// `base_fee`, `overage`, `usage`, `tiered`, `revenue_share`, `addon`.
    pub kind: String,
    /// The meter priced, `""` for none.
    pub meter: String,
    /// The add-on or tier named, `""` for none.
    pub item: String,
    pub quantity: Decimal,
    pub amount: Decimal,
}

/// A closed period's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatement {
    pub statement_id: String,
    pub tenant_id: String,
    pub plan: String,
    pub currency: String,
    /// Unix seconds.
    pub period_start: i64,
    /// Unix seconds, exclusive.
    pub period_end: i64,
    pub lines: Vec<StoredLine>,
    pub total: Decimal,
    /// Unix seconds.
    pub closed_at: i64,
}

/// A row of [`queries::list_statements`], in its column order.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Row {
    statement_id: String,
    plan: String,
    currency: String,
    period_start: u32,
    period_end: u32,
    line_kind: String,
    meter: String,
    item: String,
    quantity: i128,
    amount: i128,
    total: i128,
    closed_at: u32,
}

impl ClickHouse {
    /// A tenant's newest `limit` statements (at most [`MAX_LIST`]), newest first, each with
    /// its lines (ordered by kind, meter, item; a statement without charges is stored as one
    /// row with `line_kind` = '' and has no lines).
    ///
    /// Errors: ClickHouse cannot be read (a missing table included), or a stored decimal
    /// does not fit ([`SinkError`]).
    pub async fn list_statements(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<StoredStatement>, SinkError> {
        let rows: Vec<Row> = self
            .client()
            .query(&queries::list_statements(self.database()))
            .bind(tenant)
            .bind(tenant)
            .bind(limit.min(MAX_LIST))
            .fetch_all()
            .await?;
        let mut out: Vec<StoredStatement> = Vec::new();
        for r in rows {
            let start = i64::from(r.period_start);
            if out.last().is_none_or(|s| s.period_start != start) {
                out.push(StoredStatement {
                    statement_id: r.statement_id.clone(),
                    tenant_id: tenant.to_string(),
                    plan: r.plan.clone(),
                    currency: r.currency.clone(),
                    period_start: start,
                    period_end: i64::from(r.period_end),
                    lines: vec![],
                    total: from_dec9(r.total)?,
                    closed_at: i64::from(r.closed_at),
                });
            }
            if r.line_kind.is_empty() {
                continue;
            }
            let line = StoredLine {
                kind: r.line_kind,
                meter: r.meter,
                item: r.item,
                quantity: from_dec9(r.quantity)?,
                amount: from_dec9(r.amount)?,
            };
            if let Some(s) = out.last_mut() {
                s.lines.push(line);
            }
        }
        Ok(out)
    }
}
