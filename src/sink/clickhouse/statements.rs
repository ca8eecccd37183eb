//! Reading stored statements back from `usage_statements` (`FINAL`): the lines of a
//! statement become one [`Statement`] again, in the order the statement was made
//! ([`crate::statement::line_order`]); the placeholder row of a statement without lines
//! (`line_kind` = '') gives a statement without lines.

use super::rows::{StatementRow, from_dec9};
use super::{ClickHouse, SinkError, queries};
use crate::period::Period;
use crate::statement::{Statement, StatementLine, line_order};

/// The most statements one [`ClickHouse::list_statements`] call returns.
pub const MAX_LIST: u32 = 100;

/// Groups stored lines into statements, keeping the order in which each statement first
/// appears.
///
/// Errors: [`SinkError::Data`] for a decimal out of range.
pub fn group(rows: Vec<StatementRow>) -> Result<Vec<Statement>, SinkError> {
    let mut out: Vec<Statement> = Vec::new();
    for r in rows {
        let at = match out.iter().rposition(|s| s.statement_id == r.statement_id) {
            Some(i) => i,
            None => {
                out.push(Statement {
                    statement_id: r.statement_id.clone(),
                    tenant_id: r.tenant_id.clone(),
                    plan: r.plan.clone(),
                    currency: r.currency.clone(),
                    period: Period {
                        start: r.period_start as i64,
                        end: r.period_end as i64,
                    },
                    lines: Vec::new(),
                    total: from_dec9(r.total)?,
                    closed_at: r.closed_at as i64,
                });
                out.len() - 1
            }
        };
        if r.line_kind.is_empty() {
            continue;
        }
        let opt = |s: String| (!s.is_empty()).then_some(s);
        out[at].lines.push(StatementLine {
            kind: r.line_kind,
            meter: opt(r.meter),
            item: opt(r.item),
            quantity: from_dec9(r.quantity)?,
            amount: from_dec9(r.amount)?,
        });
    }
    for s in &mut out {
        s.lines.sort_by(line_order);
    }
    Ok(out)
}

impl ClickHouse {
    /// The tenant's newest `limit` statements (at most [`MAX_LIST`]), newest first.
    ///
    /// Errors: ClickHouse unreachable or failing, or a stored decimal out of range.
    pub async fn list_statements(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<Statement>, SinkError> {
        let rows: Vec<StatementRow> = self
            .0
            .client
            .query(&queries::list_statements(&self.0.db))
            .bind(tenant)
            .bind(tenant)
            .bind(limit.min(MAX_LIST))
            .fetch_all()
            .await?;
        let mut out = group(rows)?;
        out.sort_by_key(|s| std::cmp::Reverse(s.period.start));
        Ok(out)
    }

    /// Every stored statement, by tenant and then period (oldest first).
    ///
    /// Errors: ClickHouse unreachable or failing, or a stored decimal out of range.
    pub async fn all_statements(&self) -> Result<Vec<Statement>, SinkError> {
        let rows: Vec<StatementRow> = self
            .0
            .client
            .query(&queries::report_statements(&self.0.db))
            .fetch_all()
            .await?;
        let mut out = group(rows)?;
        out.sort_by(|a, b| (&a.tenant_id, a.period.start).cmp(&(&b.tenant_id, b.period.start)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::statement_id;

    fn d(s: &str) -> rust_decimal::Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn stored_rows_read_back_as_the_same_statements() {
        let line =
            |kind: &str, meter: Option<&str>, item: Option<&str>, q: &str, a: &str| StatementLine {
                kind: kind.into(),
                meter: meter.map(str::to_string),
                item: item.map(str::to_string),
                quantity: d(q),
                amount: d(a),
            };
        let full = Statement {
            statement_id: statement_id("t", 100),
            tenant_id: "t".into(),
            plan: "starter".into(),
            currency: "USD".into(),
            period: Period {
                start: 100,
                end: 200,
            },
            lines: vec![
                line("base_fee", None, None, "1", "79"),
                line("overage", Some("call_minutes"), None, "180.5", "39.71"),
                line("addon", Some("call_minutes"), Some("extra"), "2", "30"),
            ],
            total: d("148.71"),
            closed_at: 300,
        };
        let empty = Statement {
            statement_id: statement_id("t", 200),
            period: Period {
                start: 200,
                end: 300,
            },
            lines: vec![],
            total: d("0"),
            closed_at: 400,
            ..full.clone()
        };
        assert_eq!(StatementRow::from_statement(&empty).len(), 1);
        // Rows come back in any order within a statement.
        let mut rows: Vec<StatementRow> = StatementRow::from_statement(&full)
            .into_iter()
            .rev()
            .collect();
        rows.extend(StatementRow::from_statement(&empty));
        let back = group(rows).unwrap();
        assert_eq!(back, vec![full.clone(), empty]);
        assert_eq!(back[0].body(), full.body());
    }
}
