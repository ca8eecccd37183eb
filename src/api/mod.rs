//! HTTP API (CONTRACT section 6): health, readiness, Prometheus metrics, and per-tenant usage
//! and entitlements behind bearer tokens. The OpenAPI document of these routes is
//! [`ApiDoc`], kept in `schemas/openapi.json` (a test checks that the file matches the code).
//!
//! Rooms: this file holds the state and the router; [`routes`] the handlers (health, usage,
//! entitlement, statements), [`portal`] the tenant portal (tokens, the page, its JSON
//! routes), [`auth`] the bearer-auth layer in front of `/v1/*`, [`error`] the error
//! answers ([`ApiError`]), [`openapi`] the document.
//!
//! Usage comes from memory when this instance holds the tenant's rows for the period, else
//! from ClickHouse (`usage_rollups FINAL`; see [`crate::usage`]), so a past period (`?at=`)
//! is answered after a restart too. Plans and tenants are read from the catalog in
//! [`Shared`], so a reloaded configuration is served at once.
//!
//! Decisions where CONTRACT section 6 is silent:
//! - A tenant exists when it is configured, or (with a `pricing.default_plan`) when it has
//!   sent events (held here or stored in ClickHouse); otherwise 404. Unknown meter: 404.
//!   Bad `at`: 400. ClickHouse needed but unreachable: 503.
//! - `meters` lists the meters the period's plan prices (its meters, the meters of its
//!   add-ons, `revenue` under a revenue share, `wallet_credit` with a wallet), in that order.
//! - `usage` is a decimal string as stored (half-up to 6 places); `limit` and `remaining` are
//!   null without a finite limit; `ratio` (usage / limit, half-up to 6 places) is null too
//!   when the limit is 0. `alerts` lists the kinds fired in the period, in firing order.
//! - With a wallet on the plan, the answer adds `"wallet": {"balance", "currency",
//!   "prepaid"}` (the current balance, whatever the period asked).
//! - The entitlement is for the current period. `/entitlements/{name}` answers for a meter
//!   (`remaining`) or a feature (`value`, CONTRACT section 10); a tenant whose subscription
//!   is canceled is refused every meter and feature with reason `subscription canceled`.
//! - Tenants changed or created by subscription events are read from [`Shared::tenant`]
//!   (this instance holds their partition); the usage answer adds `features` (the
//!   governing plan's, raised by the add-ons held).
//! - `PUT /v1/tenants/{tenant}/subscription` needs an admin token (401 without a token,
//!   403 with a read token), checks the body as the pipeline would (400 for a body that is
//!   not valid `subscription.updated` data, 422 for an unknown plan or add-on or a change
//!   the tenant cannot make), produces the event keyed by the tenant and answers 202 once
//!   the broker acknowledged it (503 if it did not).
//! - Statements (`/v1/tenants/{tenant}/statements`) come from ClickHouse only: `{"tenant_id",
//!   "statements": [...]}`, newest first, each in the shape of the statements topic's
//!   messages; `?limit=` outside 1..=100 is 400.

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};

use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;
use crate::telemetry::Telemetry;

pub mod auth;
pub mod error;
pub mod openapi;
pub mod portal;
pub mod routes;

pub use error::{ApiError, ErrorBody};
pub use openapi::{ApiDoc, openapi_json};
pub use routes::tenant_usage::{
    MeterUsageBody, PeriodBody, USAGE_SOURCE_HEADER, UsageBody, WalletBody, usage_body,
};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub telemetry: Telemetry,
    pub ch: ClickHouse,
    /// Bearer tokens for `/v1/*` (swapped on configuration reload).
    pub tokens: auth::Tokens,
    /// Tokens that may also write (`api.admin_tokens`; swapped on reload).
    pub admin_tokens: auth::Tokens,
    /// Where `PUT /v1/tenants/{tenant}/subscription` produces its events (`None`: the
    /// route answers 503).
    pub events: Option<routes::subscription::EventsProducer>,
    /// The tenant portal's secret and settings.
    pub portal: portal::Portal,
    /// Wallet balances, when the wallet service runs.
    pub wallets: Option<Arc<crate::wallet::Wallets>>,
}

/// The router of CONTRACT section 6: `/v1/*` behind the bearer-auth layer (a route layer, so
/// an unknown path stays 404), except the two portal routes, which take a portal token
/// instead; the portal page at `/portal/`.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/tenants/{tenant}/usage",
            get(routes::tenant_usage::usage),
        )
        .route(
            "/v1/tenants/{tenant}/entitlements/{name}",
            get(routes::entitlement::entitlement),
        )
        .route(
            "/v1/tenants/{tenant}/entitlements",
            get(routes::entitlement::entitlements),
        )
        .route(
            "/v1/tenants/{tenant}/statements",
            get(routes::statements::statements),
        )
        .route(
            "/v1/tenants/{tenant}/subscription",
            put(routes::subscription::put_subscription),
        )
        .route("/v1/portal/tokens", post(portal::create_token))
        .route_layer(from_fn_with_state(
            auth::AuthTokens {
                read: state.tokens.clone(),
                admin: state.admin_tokens.clone(),
            },
            auth::require_bearer,
        ));
    Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/v1/portal/usage", get(portal::usage))
        .route("/v1/portal/statements", get(portal::statements))
        .route("/portal/", get(portal::page))
        .route("/portal", get(portal::page))
        .merge(v1)
        .with_state(state)
}

#[cfg(test)]
mod tests;
