//! The tenant portal (CONTRACT sections 6 and 10): signed, short-lived portal tokens
//! ([`token`]), the usage page ([`page`]) with its daily series ([`daily`]), and the two
//! JSON routes a portal token opens.
//!
//! Routes:
//! - `POST /v1/portal/tokens` (behind the `/v1` bearer layer; an admin token, else 403):
//!   `{"tenant_id", "ttl": "1h"}` (ttl default 1h, at most 24h, else 400) ->
//!   `{"token", "expires_at" (RFC 3339, UTC), "url"}`. `url` is the page's path and query
//!   (`/portal/?token=...`), relative to this API's address: the API does not know the
//!   name it is reached by behind a proxy. Unknown tenant: 404.
//! - `GET /portal/?token=...[&at=RFC 3339]`: the page (HTML); 401 for a missing, forged
//!   or expired token; 404 when its tenant no longer exists; 503 when the usage needs
//!   ClickHouse and cannot have it. Daily usage or statements that cannot be read leave
//!   their section saying so; the rest of the page is served.
//! - `GET /v1/portal/usage[?at=]` and `GET /v1/portal/statements[?limit=]` with
//!   `Authorization: Bearer <portal token>`: the same answers as the tenant routes, for the
//!   token's tenant. A portal token is not an API token: anywhere else it gets 401.
//!
//! With an empty `api.portal_secret` the portal is off: all four answer 503 saying so.
//!
//! Tokens never reach the logs: no layer of this router logs request URIs, and neither
//! does anything here (the browser test runs the server at `debug` with `axum`, `hyper`
//! and `tower` at `trace` and checks its log). Every portal answer carries
//! `Cache-Control: no-store` and `Referrer-Policy: no-referrer` (the page URL holds the
//! token; the upgrade link must not send it on).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::routes::statements::{LimitQuery, StatementsBody};
use super::routes::tenant_of;
use super::routes::tenant_usage::{AtQuery, USAGE_SOURCE_HEADER, parse_at, usage_body};
use crate::config::Settings;
use crate::pricing::Tenant;

pub mod daily;
pub mod page;
pub mod token;

/// The portal's settings (from `[api]` and `[clickhouse]`).
#[derive(Clone, Default)]
pub struct Portal {
    /// `api.portal_secret`; empty: the portal is off.
    pub secret: Arc<[u8]>,
    /// `api.portal_upgrade_url`.
    pub upgrade_url: Option<Arc<str>>,
    /// `clickhouse.raw_events`: whether daily usage can be read.
    pub raw_events: bool,
}

impl Portal {
    pub fn from_settings(s: &Settings) -> Portal {
        Portal {
            secret: s.api.portal_secret.as_bytes().into(),
            upgrade_url: s.api.portal_upgrade_url.as_deref().map(Arc::from),
            raw_events: s.clickhouse.raw_events,
        }
    }

    fn is_on(&self) -> bool {
        !self.secret.is_empty()
    }
}

/// The body of `POST /v1/portal/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The tenant the token opens.
    #[schema(example = "acme")]
    pub tenant_id: String,
    /// Lifetime, e.g. `"15m"`, `"1h"` (default), at most `"24h"`.
    #[schema(example = "1h")]
    pub ttl: Option<String>,
}

/// A signed portal token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// `cmp1.<payload>.<HMAC-SHA256>`, base64url.
    pub token: String,
    /// RFC 3339, UTC.
    #[schema(example = "2026-12-02T10:00:00Z")]
    pub expires_at: String,
    /// The page's path and query, relative to the API's address.
    #[schema(example = "/portal/?token=cmp1.eyJ0IjoiYWNtZSIsImV4cCI6MTc5NjIwMDAwMH0.sig")]
    pub url: String,
}

/// Signs a portal token for a tenant (admin token).
#[utoipa::path(
    post,
    path = "/v1/portal/tokens",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token", body = TokenResponse),
        (status = 400, description = "Bad body or ttl (above 24h)", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 503, description = "The portal is off (api.portal_secret is empty)", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !super::auth::is_admin(&s.admin_tokens, &headers) {
        return Err(ApiError::Forbidden);
    }
    if !s.portal.is_on() {
        return Err(ApiError::PortalOff);
    }
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let ttl = token::parse_ttl(req.ttl.as_deref().unwrap_or("1h"))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let t = tenant_of(&s, &req.tenant_id).await?;
    let (tok, exp) = token::sign(&s.portal.secret, &t.id, Utc::now().timestamp(), ttl)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let expires_at = chrono::DateTime::from_timestamp(exp, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let url = format!("/portal/?token={tok}");
    Ok(no_store(
        Json(TokenResponse {
            token: tok,
            expires_at,
            url,
        })
        .into_response(),
    ))
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The tenant of a valid portal token (`token`), resolved.
///
/// Errors: the portal is off (503); the token is missing, forged or expired (401); its
/// tenant is unknown now (404).
async fn portal_tenant(s: &ApiState, token: Option<&str>) -> Result<Arc<Tenant>, ApiError> {
    if !s.portal.is_on() {
        return Err(ApiError::PortalOff);
    }
    let claims = token.ok_or(ApiError::PortalUnauthorized).and_then(|t| {
        token::verify(&s.portal.secret, t, Utc::now().timestamp())
            .map_err(|_| ApiError::PortalUnauthorized)
    })?;
    tenant_of(s, &claims.tenant).await
}

/// The token's tenant's usage: the answer of `GET /v1/tenants/{tenant}/usage`.
#[utoipa::path(
    get,
    path = "/v1/portal/usage",
    params(AtQuery),
    responses(
        (status = 200, description = "Usage of the period", body = super::UsageBody),
        (status = 400, description = "`at` is not RFC 3339", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired portal token", body = ErrorBody),
        (status = 404, description = "The token's tenant is unknown", body = ErrorBody),
        (status = 503, description = "Portal off, or ClickHouse needed and unreachable", body = ErrorBody)
    ),
    security(("portal" = []))
)]
pub async fn usage(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<AtQuery>,
) -> Result<Response, ApiError> {
    let t = portal_tenant(&s, super::auth::bearer(&headers)).await?;
    let at = parse_at(&q)?;
    let b = usage_body(&s, &t, at).await?;
    let source = if b.from_memory {
        "memory"
    } else {
        "clickhouse"
    };
    Ok(no_store(
        ([(USAGE_SOURCE_HEADER, source)], Json(b)).into_response(),
    ))
}

/// The token's tenant's statements: the answer of `GET /v1/tenants/{tenant}/statements`.
#[utoipa::path(
    get,
    path = "/v1/portal/statements",
    params(LimitQuery),
    responses(
        (status = 200, description = "Statements, newest first", body = StatementsBody),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired portal token", body = ErrorBody),
        (status = 404, description = "The token's tenant is unknown", body = ErrorBody),
        (status = 503, description = "Portal off, or ClickHouse unreachable", body = ErrorBody)
    ),
    security(("portal" = []))
)]
pub async fn statements(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    let t = portal_tenant(&s, super::auth::bearer(&headers)).await?;
    let answer =
        super::routes::statements::statements(State(s), Path(t.id.to_string()), Query(q)).await?;
    Ok(no_store(answer.into_response()))
}

/// The query of the page.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub token: Option<String>,
    pub at: Option<String>,
}

/// An HTML answer with the portal's headers (CSP, no caching, no referrer, no sniffing).
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&page::content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    no_store(r)
}

fn refusal(e: &ApiError) -> Response {
    let title = match e.status() {
        StatusCode::UNAUTHORIZED => "This link is not valid",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Bad request",
        _ => "Usage is unavailable",
    };
    let msg = match e {
        ApiError::PortalUnauthorized => {
            "The link is missing its token, or the token is forged or has expired. Ask for a new link.".to_string()
        }
        other => other.to_string(),
    };
    html(e.status(), page::message_page(title, &msg))
}

/// `GET /portal/`: the usage page of the token's tenant.
pub async fn page(State(s): State<ApiState>, Query(q): Query<PageQuery>) -> Response {
    match page_body(&s, &q).await {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => refusal(&e),
    }
}

async fn page_body(s: &ApiState, q: &PageQuery) -> Result<String, ApiError> {
    let t = portal_tenant(s, q.token.as_deref()).await?;
    let at = parse_at(&AtQuery { at: q.at.clone() })?;
    let body = usage_body(s, &t, at).await?;
    let usage = serde_json::to_value(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let cat = s.shared.catalog();
    let period = t.period_at(at);
    let plan = t.plan_for_period(period, Utc::now().max(at)).clone();
    let hard_limits: Vec<String> = plan
        .meters
        .values()
        .filter(|m| m.hard_limit)
        .map(|m| m.name.to_string())
        .collect();
    let mids: Vec<_> = body
        .meters
        .iter()
        .filter_map(|m| cat.meter_id(&m.meter))
        .collect();
    let daily = daily::daily_usage(&s.ch, s.portal.raw_events, &cat, &t, period, &mids).await;
    let statements = super::routes::statements::statements(
        State(s.clone()),
        Path(t.id.to_string()),
        Query(LimitQuery::default()),
    )
    .await
    .map(|Json(b)| serde_json::to_value(b).unwrap_or_default());
    let generated_at = Utc::now()
        .with_timezone(&t.tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    Ok(page::render(&page::PageInput {
        usage: &usage,
        daily: daily.as_ref().map_err(|e| match e {
            daily::DailyError::NoRawEvents => "raw events are not stored".to_string(),
            daily::DailyError::ClickHouse(_) => "ClickHouse could not be read".to_string(),
        }),
        statements: statements
            .as_ref()
            .map_err(|_| "ClickHouse could not be read".to_string()),
        upgrade_url: s.portal.upgrade_url.as_deref(),
        hard_limits: &hard_limits,
        generated_at: &generated_at,
    }))
}

#[cfg(test)]
mod tests;
