//! The error answers of the HTTP API: [`ApiError`], one variant per way a request fails,
//! each with its status code, answered as `{"error": "<message>"}` ([`ErrorBody`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::usage::UsageError;

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Why a request failed; the message is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no `Authorization: Bearer` header, or not one of the configured tokens.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: a write route with a token that may only read.
    #[error("this route needs one of api.admin_tokens")]
    Forbidden,
    /// 401: a portal route without a valid portal token (missing, forged, expired: not
    /// told apart).
    #[error("missing, forged or expired portal token")]
    PortalUnauthorized,
    /// 503: `api.portal_secret` is empty.
    #[error("the tenant portal is off: set api.portal_secret to turn it on")]
    PortalOff,
    /// 400: the request body or a header is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 400: `?at=` is not RFC 3339 with an offset.
    #[error("`at` must be RFC 3339 with an offset: {0}")]
    BadAt(#[source] chrono::ParseError),
    /// 404: neither configured nor (with a default plan) seen.
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    /// 404: no meter of that name.
    #[error("unknown meter `{0}`")]
    UnknownMeter(String),
    /// 404: neither a meter nor a feature of that name.
    #[error("unknown meter or feature `{0}`")]
    UnknownEntitlement(String),
    /// 422: the change names an unknown plan or add-on, or the tenant cannot make it.
    #[error("{0}")]
    Unprocessable(String),
    /// 503: the event could not be produced to the events topic.
    #[error("the event was not acknowledged by Kafka: {0}")]
    Produce(String),
    /// 503: whether the tenant exists needed ClickHouse, which could not be read.
    #[error("tenant lookup unavailable: {0}")]
    TenantLookup(#[source] UsageError),
    /// 503: the period's usage needed ClickHouse, which could not be read.
    #[error("usage unavailable: {0}")]
    Usage(#[from] UsageError),
    /// 503: the period's stored alerts could not be read from ClickHouse.
    #[error("usage unavailable: {0}")]
    Alerts(#[source] clickhouse::error::Error),
    /// 400: `?limit=` is not a whole number from 1 to the maximum.
    #[error("`limit` must be a whole number from 1 to {max}, not `{given}`")]
    BadLimit { given: String, max: u32 },
    /// 503: the stored statements could not be read from ClickHouse.
    #[error("statements unavailable: {0}")]
    Statements(#[source] crate::sink::clickhouse::SinkError),
}

impl ApiError {
    /// The status code of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::PortalUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::PortalOff => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadAt(_) | ApiError::BadRequest(_) | ApiError::BadLimit { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnknownTenant(_)
            | ApiError::UnknownMeter(_)
            | ApiError::UnknownEntitlement(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Produce(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TenantLookup(_)
            | ApiError::Usage(_)
            | ApiError::Alerts(_)
            | ApiError::Statements(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_statuses() {
        let e = ApiError::UnknownTenant("nobody".into());
        assert_eq!(e.to_string(), "unknown tenant `nobody`");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = ApiError::BadAt(chrono::DateTime::parse_from_rfc3339("yesterday").unwrap_err());
        assert!(
            e.to_string()
                .starts_with("`at` must be RFC 3339 with an offset: ")
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = ApiError::Usage(UsageError::ClickHouse(
            crate::sink::clickhouse::SinkError::Data("x".into()),
        ));
        assert_eq!(
            e.to_string(),
            "usage unavailable: ClickHouse returned an out-of-range value: x"
        );
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
    }
}
