//! `GET /v1/tenants/{tenant}/statements`: a tenant's closed periods' statements, newest
//! first (CONTRACT section 10), read from ClickHouse `usage_statements`
//! ([`crate::sink::clickhouse::ClickHouse::list_statements`]); `?limit=N` (default 12, 1
//! to 100, else 400). The answer is `{"tenant_id", "statements": [...]}`, each statement in
//! the shape of the `usage-statements` message: `{"statement_id", "tenant_id", "plan",
//! "currency", "period_start", "period_end", "lines": [{"kind", "meter", "item",
//! "quantity", "amount"}], "total", "closed_at"}`; times RFC 3339 in UTC, `meter` and
//! `item` null when the line has none, amounts with 2 decimals. The portal's
//! `/v1/portal/statements` answers through [`statements`] itself.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tenant_of;
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::pricing::money_str;
use crate::sink::clickhouse::StoredStatement;
use crate::sink::clickhouse::statements::MAX_LIST;

/// How many statements the route answers without `?limit=`.
pub const DEFAULT_LIMIT: u32 = 12;

/// One line of a statement.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct StatementLineBody {
    #[schema(example = "overage")]
    pub kind: String,
    #[schema(example = "call_minutes")]
    pub meter: Option<String>,
    pub item: Option<String>,
    /// Decimal string.
    #[schema(example = "4163.5")]
    pub quantity: String,
    /// 2 decimals.
    #[schema(example = "915.97")]
    pub amount: String,
}

/// A closed period's statement.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct StatementBody {
    pub statement_id: String,
    pub tenant_id: String,
    pub plan: String,
    pub currency: String,
    /// RFC 3339, UTC.
    #[schema(example = "2026-10-31T23:00:00Z")]
    pub period_start: String,
    /// Exclusive end, RFC 3339, UTC.
    #[schema(example = "2026-11-30T23:00:00Z")]
    pub period_end: String,
    pub lines: Vec<StatementLineBody>,
    /// 2 decimals.
    pub total: String,
    /// RFC 3339, UTC.
    pub closed_at: String,
}

/// The statements answer.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct StatementsBody {
    #[schema(example = "acme")]
    pub tenant_id: String,
    /// Newest first.
    pub statements: Vec<StatementBody>,
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn body(s: StoredStatement) -> StatementBody {
    let some = |v: String| (!v.is_empty()).then_some(v);
    StatementBody {
        statement_id: s.statement_id,
        tenant_id: s.tenant_id,
        plan: s.plan,
        currency: s.currency,
        period_start: rfc3339(s.period_start),
        period_end: rfc3339(s.period_end),
        lines: s
            .lines
            .into_iter()
            .map(|l| StatementLineBody {
                kind: l.kind,
                meter: some(l.meter),
                item: some(l.item),
                quantity: l.quantity.normalize().to_string(),
                amount: money_str::format(l.amount),
            })
            .collect(),
        total: money_str::format(s.total),
        closed_at: rfc3339(s.closed_at),
    }
}

/// The query of the statements routes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many statements, newest first: 1 to 100, default 12.
    #[param(value_type = Option<u32>, example = 12)]
    pub limit: Option<String>,
}

/// The limit asked for.
///
/// Errors: [`ApiError::BadRequest`] unless a whole number from 1 to [`MAX_LIST`].
pub fn parse_limit(q: &LimitQuery) -> Result<u32, ApiError> {
    let Some(given) = &q.limit else {
        return Ok(DEFAULT_LIMIT);
    };
    match given.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a whole number from 1 to {MAX_LIST}"
        ))),
    }
}

/// The statements of a tenant's closed usage periods, newest first.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/statements",
    params(("tenant" = String, Path, description = "Tenant id (the events' `subject`)"), LimitQuery),
    responses(
        (status = 200, description = "Statements, newest first", body = StatementsBody),
        (status = 400, description = "`limit` is not 1 to 100", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 503, description = "ClickHouse unreachable", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn statements(
    State(s): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<StatementsBody>, ApiError> {
    let limit = parse_limit(&q)?;
    let t = tenant_of(&s, &tenant).await?;
    let list =
        s.ch.list_statements(&t.id, limit)
            .await
            .map_err(ApiError::Statements)?;
    Ok(Json(StatementsBody {
        tenant_id: t.id.to_string(),
        statements: list.into_iter().map(body).collect(),
    }))
}
