//! `GET /v1/tenants/{tenant}/statements`: a tenant's closed periods' statements, newest
//! first (CONTRACT section 10), read from ClickHouse `usage_statements`; `?limit=N`
//! (default 12, at most [`MAX_LIMIT`]). Each statement has the shape of the
//! `usage-statements` message: `{"statement_id", "tenant_id", "plan", "currency",
//! "period_start", "period_end", "lines": [{"kind", "meter", "item", "quantity",
//! "amount"}], "total", "closed_at"}`; times RFC 3339 in the tenant's time zone, `meter`
//! and `item` null when the line has none, amounts with 2 decimals. The answer is the JSON
//! array of those.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tenant_of;
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::pricing::{Tenant, money_str};
use crate::sink::clickhouse::StoredStatement;

/// Statements answered when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 12;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 120;

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
    /// RFC 3339 in the tenant's time zone.
    pub period_start: String,
    /// Exclusive end, RFC 3339 in the tenant's time zone.
    pub period_end: String,
    pub lines: Vec<StatementLineBody>,
    /// 2 decimals.
    pub total: String,
    /// RFC 3339 in the tenant's time zone.
    pub closed_at: String,
}

fn body(t: &Tenant, s: StoredStatement) -> StatementBody {
    let time = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap_or_default()
            .with_timezone(&t.tz)
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    };
    let some = |v: String| (!v.is_empty()).then_some(v);
    StatementBody {
        statement_id: s.statement_id,
        tenant_id: s.tenant_id,
        plan: s.plan,
        currency: s.currency,
        period_start: time(s.period_start),
        period_end: time(s.period_end),
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
        closed_at: time(s.closed_at),
    }
}

/// The statements answer for `tenant`: its newest `limit` statements.
///
/// Errors: ClickHouse cannot be read ([`ApiError::Statements`]).
pub async fn statements_body(
    s: &ApiState,
    tenant: &Tenant,
    limit: usize,
) -> Result<Vec<StatementBody>, ApiError> {
    let stored =
        s.ch.list_statements(&tenant.id, limit)
            .await
            .map_err(ApiError::Statements)?;
    Ok(stored.into_iter().map(|st| body(tenant, st)).collect())
}

/// The query of the statements routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many statements, newest first (1..=120, default 12).
    pub limit: Option<String>,
}

/// `limit` checked: 1..=[`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
///
/// Errors: [`ApiError::BadRequest`].
pub fn parse_limit(q: &LimitQuery) -> Result<usize, ApiError> {
    match &q.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

/// A tenant's closed periods' statements, newest first.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/statements",
    params(("tenant" = String, Path, description = "Tenant id"), LimitQuery),
    responses(
        (status = 200, description = "Statements, newest first", body = [StatementBody]),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
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
) -> Result<Json<Vec<StatementBody>>, ApiError> {
    let limit = parse_limit(&q)?;
    let t = tenant_of(&s, &tenant).await?;
    Ok(Json(statements_body(&s, &t, limit).await?))
}
