//! `GET /v1/tenants/{tenant}/statements`: the tenant's closed periods' statements, newest
//! first (CONTRACT section 10), read from ClickHouse `usage_statements`
//! ([`crate::sink::clickhouse::ClickHouse::list_statements`]). `?limit=N`: how many
//! (default 12, 1 to 100; anything else is 400).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::tenant_of;
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::sink::clickhouse::statements::MAX_LIST;
use crate::statement::StatementBody;

/// How many statements the route answers without `?limit=`.
pub const DEFAULT_LIMIT: u32 = 12;

/// The statements answer.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct StatementsBody {
    #[schema(example = "acme")]
    pub tenant_id: String,
    /// Newest first.
    pub statements: Vec<StatementBody>,
}

/// The query of the statements route.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many statements, newest first: 1 to 100, default 12.
    #[param(value_type = Option<u32>, example = 12)]
    pub limit: Option<String>,
}

/// The limit asked for.
///
/// Errors: [`ApiError::BadLimit`] unless a whole number from 1 to [`MAX_LIST`].
pub fn parse_limit(q: &LimitQuery) -> Result<u32, ApiError> {
    let Some(given) = &q.limit else {
        return Ok(DEFAULT_LIMIT);
    };
    match given.parse::<u32>() {
        Ok(n) if (1..=MAX_LIST).contains(&n) => Ok(n),
        _ => Err(ApiError::BadLimit {
            given: given.clone(),
            max: MAX_LIST,
        }),
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
        statements: list.iter().map(|st| st.body()).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(s: Option<&str>) -> Result<u32, String> {
        parse_limit(&LimitQuery {
            limit: s.map(str::to_string),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn limits_default_to_12_and_stay_within_1_to_100() {
        assert_eq!(limit(None), Ok(12));
        assert_eq!(limit(Some("1")), Ok(1));
        assert_eq!(limit(Some("100")), Ok(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert_eq!(
                limit(Some(bad)),
                Err(format!(
                    "`limit` must be a whole number from 1 to 100, not `{bad}`"
                )),
                "{bad}"
            );
        }
    }
}
