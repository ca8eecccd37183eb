//! HTTP API (CONTRACT section 6): health, readiness, Prometheus metrics, and per-tenant usage
//! and entitlements behind bearer tokens. The OpenAPI document of these routes is
//! [`ApiDoc`], kept in `schemas/openapi.json` (a test checks that the file matches the code).
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
//! - The entitlement is for the current period.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::meter::{MeterId, REVENUE, WALLET_CREDIT, round_half_up};
use crate::period::Period;
use crate::pricing::{self, ChargeInput, Charges, MeterUsage, Plan, Tenant};
use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;
use crate::telemetry::Telemetry;
use crate::usage;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub telemetry: Telemetry,
    pub ch: ClickHouse,
    /// Bearer tokens for `/v1/*` (swapped on configuration reload).
    pub tokens: Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// Wallet balances, when the wallet service runs.
    pub wallets: Option<Arc<crate::wallet::Wallets>>,
}

/// The router of CONTRACT section 6.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route(
            "/v1/tenants/{tenant}/entitlements/{meter}",
            get(entitlement),
        )
        .with_state(state)
}

/// The OpenAPI document of the HTTP API (`schemas/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "callmeter",
        description = "Live usage, charges and entitlements of a callmeter instance (CONTRACT section 6). Decimals are JSON strings; money has 2 decimals."
    ),
    paths(healthz, readyz, metrics, usage, entitlement),
    components(schemas(
        UsageBody,
        PeriodBody,
        MeterUsageBody,
        WalletBody,
        Charges,
        pricing::ChargeLine,
        pricing::Entitlement,
        ErrorBody
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("One of `[api] tokens` (or CALLMETER_API__TOKENS)."))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as pretty JSON, with a final newline.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process runs", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: assigned partitions restored and consuming.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", body = String),
        (status = 503, description = "Partitions not restored yet (or none assigned)", body = String)
    )
)]
async fn readyz(State(s): State<ApiState>) -> Response {
    if s.shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Prometheus metrics, names prefixed `callmeter_`.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.telemetry.render(),
    )
        .into_response()
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

fn authorized(s: &ApiState, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = v.strip_prefix("Bearer ").map(str::trim) else {
        return false;
    };
    let tokens = s.tokens.load();
    !token.is_empty()
        && tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Usage of one meter in the period.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct MeterUsageBody {
    /// Meter name.
    #[schema(example = "call_minutes")]
    pub meter: String,
    /// Meter value (decimal string, at most 6 fraction digits).
    #[schema(example = "96.5")]
    pub usage: String,
    /// The tenant's limit (included + add-ons; + one-time allowance in its first period);
    /// null for unlimited and rate-only meters.
    #[schema(example = "320")]
    pub limit: Option<String>,
    /// `limit - usage`, never negative; null without a limit.
    #[schema(example = "223.5")]
    pub remaining: Option<String>,
    /// `usage / limit` half-up to 6 places; null without a positive limit.
    #[schema(example = "0.301563")]
    pub ratio: Option<String>,
    /// Alert kinds fired in the period (`80%`, `100%`, `overage`, `overage_cap`,
    /// `wallet_low`, `wallet_empty`), in firing order.
    pub alerts: Vec<String>,
}

/// A usage period in the tenant's time zone.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct PeriodBody {
    /// RFC 3339 with the tenant's offset at that instant.
    #[schema(example = "2026-11-15T00:00:00+01:00")]
    pub start: String,
    /// Exclusive end, RFC 3339 with the tenant's offset at that instant.
    #[schema(example = "2026-12-15T00:00:00+01:00")]
    pub end: String,
    /// IANA time zone name.
    #[schema(example = "Europe/Paris")]
    pub timezone: String,
}

/// The usage answer of CONTRACT section 6.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct UsageBody {
    #[schema(example = "acme")]
    pub tenant_id: String,
    /// The plan governing the period (after plan changes known at the time of the request).
    #[schema(example = "starter")]
    pub plan: String,
    /// ISO 4217 code of every amount.
    #[schema(example = "USD")]
    pub currency: String,
    pub period: PeriodBody,
    pub meters: Vec<MeterUsageBody>,
    pub charges: Charges,
    /// Present when the plan has a wallet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet: Option<WalletBody>,
    /// Where the usage came from (the `x-callmeter-usage-source` header: `memory` or
    /// `clickhouse`), not part of the body.
    #[serde(skip)]
    pub from_memory: bool,
}

/// A tenant's wallet (seed 001).
#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct WalletBody {
    /// Current balance: top-ups + monthly grants - usage charges, 2 decimals.
    #[schema(example = "41.50")]
    pub balance: String,
    #[schema(example = "USD")]
    pub currency: String,
    /// Whether usage is refused once the balance is zero or below.
    pub prepaid: bool,
}

fn dec_str(d: Decimal) -> String {
    d.normalize().to_string()
}

fn local(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Resolves a tenant: configured, or on the default plan and seen (here or in ClickHouse).
async fn tenant_of(s: &ApiState, id: &str) -> Result<Option<Arc<Tenant>>, String> {
    let cat = s.shared.catalog();
    if let Some(t) = cat.tenants.get(id) {
        return Ok(Some(t.clone()));
    }
    if cat.default_plan.is_none() || !crate::event::valid_subject(id) {
        return Ok(None);
    }
    if s.shared.tenants().get(id).is_some() {
        return Ok(cat.tenant(id));
    }
    match usage::stored_first_period(&s.ch, id).await {
        Ok(Some(_)) => Ok(cat.tenant(id)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Sort key of alert kinds: thresholds by percentage, then overage, cap, wallet kinds.
fn alert_rank(k: &str) -> (u32, Decimal) {
    match k {
        crate::alerts::OVERAGE => (1, Decimal::ZERO),
        crate::alerts::OVERAGE_CAP => (2, Decimal::ZERO),
        crate::alerts::WALLET_LOW => (3, Decimal::ZERO),
        crate::alerts::WALLET_EMPTY => (4, Decimal::ZERO),
        _ => (
            0,
            k.trim_end_matches('%')
                .parse::<Decimal>()
                .unwrap_or(Decimal::MAX),
        ),
    }
}

async fn stored_alert_kinds(
    s: &ApiState,
    tenant: &str,
    period: Period,
) -> Result<HashMap<String, Vec<String>>, String> {
    let rows: Vec<(String, String)> = s
        .ch
        .client()
        .query(&format!(
            "SELECT meter, kind FROM {} FINAL WHERE tenant_id = ? AND toUInt32(period_start) = ? ORDER BY fired_at",
            s.ch.table("usage_alerts")
        ))
        .bind(tenant)
        .bind(period.start.max(0) as u32)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (meter, kind) in rows {
        let v = m.entry(meter).or_default();
        if !v.contains(&kind) {
            v.push(kind);
        }
    }
    Ok(m)
}

/// The meters a plan prices, in answer order.
fn priced_meters(plan: &Plan) -> Vec<MeterId> {
    let mut out: Vec<MeterId> = plan.meters.keys().copied().collect();
    for a in plan.addons.values() {
        if let Some(m) = a.meter
            && !out.contains(&m)
        {
            out.push(m);
        }
    }
    if plan.revenue_share.is_some() && !out.contains(&REVENUE) {
        out.push(REVENUE);
    }
    if plan.wallet.is_some() && !out.contains(&WALLET_CREDIT) {
        out.push(WALLET_CREDIT);
    }
    out
}

/// Whether `period` is the tenant's first usage period (one-time allowances): no usage
/// before it.
async fn is_first_period(s: &ApiState, tenant: &Tenant, period: Period) -> Result<bool, String> {
    let first = usage::first_period(&s.shared, &s.ch, &tenant.id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(first.is_none_or(|f| f >= period.start))
}

/// Builds the usage answer for `tenant` for the period containing `at`.
///
/// Errors: ClickHouse is needed (the period is not in memory) and cannot be read.
pub async fn usage_body(
    s: &ApiState,
    tenant: &Tenant,
    at: DateTime<Utc>,
) -> Result<UsageBody, String> {
    let cat = s.shared.catalog();
    let period = tenant.period_at(at);
    let now = Utc::now().max(at);
    let plan = tenant.plan_for_period(period, now).clone();
    let first = is_first_period(s, tenant, period).await?;
    let pu = usage::period_usage(&s.shared, &s.ch, &cat, &tenant.id, period.start)
        .await
        .map_err(|e| e.to_string())?;
    let tidx = s.shared.tenants().get(&tenant.id);
    let mut stored_alerts: Option<HashMap<String, Vec<String>>> = None;
    let mut meters = Vec::new();
    for mid in priced_meters(&plan) {
        let def = cat.meter(mid);
        let used = pu.get(mid);
        let limit = tenant.limit(&plan, mid, first);
        let (remaining, ratio) = match limit {
            Some(l) if l > Decimal::ZERO => (
                Some(dec_str((l - used).max(Decimal::ZERO))),
                Some(dec_str(round_half_up(used / l, 6))),
            ),
            Some(l) => (Some(dec_str((l - used).max(Decimal::ZERO))), None),
            None => (None, None),
        };
        let mut alerts: Vec<String> = match tidx
            .filter(|_| pu.from_memory)
            .and_then(|t| s.shared.fired_alerts(&(t, mid, period.start)))
        {
            Some(a) => a.iter().map(|k| k.to_string()).collect(),
            None if pu.from_memory => vec![],
            None => {
                if stored_alerts.is_none() {
                    stored_alerts = Some(stored_alert_kinds(s, &tenant.id, period).await?);
                }
                stored_alerts
                    .as_ref()
                    .and_then(|m| m.get(&*def.name).cloned())
                    .unwrap_or_default()
            }
        };
        if mid == WALLET_CREDIT
            && let Some(w) = &s.wallets
        {
            for k in w.fired(&tenant.id, period.start) {
                if !alerts.contains(&k) {
                    alerts.push(k);
                }
            }
        }
        alerts.sort_by_key(|k| alert_rank(k));
        meters.push(MeterUsageBody {
            meter: def.name.to_string(),
            usage: dec_str(used),
            limit: limit.map(dec_str),
            remaining,
            ratio,
            alerts,
        });
    }
    let mu = MeterUsage::from_values(&cat, pu.values.iter());
    let charges = pricing::charges(&ChargeInput {
        tenant,
        period,
        usage: &mu,
        first_period: first,
        now,
    });
    let wallet = match (&s.wallets, &plan.wallet) {
        (Some(w), Some(policy)) => w.balance_now(tenant).map(|b| WalletBody {
            balance: pricing::money_str::format(b),
            currency: plan.currency.clone(),
            prepaid: policy.prepaid,
        }),
        _ => None,
    };
    Ok(UsageBody {
        tenant_id: tenant.id.to_string(),
        plan: plan.id.clone(),
        currency: plan.currency.clone(),
        period: PeriodBody {
            start: local(period.start_utc(), tenant.tz),
            end: local(period.end_utc(), tenant.tz),
            timezone: tenant.tz.name().to_string(),
        },
        meters,
        charges,
        wallet,
        from_memory: pu.from_memory,
    })
}

/// Response header naming where usage came from: `memory` or `clickhouse`.
pub const USAGE_SOURCE_HEADER: &str = "x-callmeter-usage-source";

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AtQuery {
    /// An instant (RFC 3339 with offset) in the period to answer for; default: now.
    #[param(example = "2026-10-20T12:00:00+02:00")]
    at: Option<String>,
}

fn parse_at(q: &AtQuery) -> Result<DateTime<Utc>, Box<Response>> {
    match &q.at {
        None => Ok(Utc::now()),
        Some(a) => DateTime::parse_from_rfc3339(a)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("`at` must be RFC 3339 with an offset: {e}"),
                ))
            }),
    }
}

/// A tenant's usage, limits, alerts and charges for its current usage period, or for the
/// period containing `at`.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/usage",
    params(("tenant" = String, Path, description = "Tenant id (the events' `subject`)"), AtQuery),
    responses(
        (status = 200, description = "Usage of the period", body = UsageBody,
            headers(("x-callmeter-usage-source" = String, description = "`memory` or `clickhouse`: where the usage was read"))),
        (status = 400, description = "`at` is not RFC 3339", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 503, description = "ClickHouse needed and unreachable", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn usage(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<AtQuery>,
) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let at = match parse_at(&q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let t = match tenant_of(&s, &tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("unknown tenant `{tenant}`")),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tenant lookup unavailable: {e}"),
            );
        }
    };
    match usage_body(&s, &t, at).await {
        Ok(b) => {
            let source = if b.from_memory {
                "memory"
            } else {
                "clickhouse"
            };
            ([(USAGE_SOURCE_HEADER, source)], Json(b)).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("usage unavailable: {e}"),
        ),
    }
}

/// Whether the tenant may use more of a meter now: no at a hard limit, or when its prepaid
/// wallet is empty.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/entitlements/{meter}",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("meter" = String, Path, description = "Meter name, e.g. `call_minutes`")
    ),
    responses(
        (status = 200, description = "The entitlement", body = pricing::Entitlement),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "Unknown tenant or meter", body = ErrorBody),
        (status = 503, description = "ClickHouse needed and unreachable", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn entitlement(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, meter)): Path<(String, String)>,
) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let t = match tenant_of(&s, &tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("unknown tenant `{tenant}`")),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tenant lookup unavailable: {e}"),
            );
        }
    };
    let cat = s.shared.catalog();
    let Some(mid) = cat.meter_id(&meter) else {
        return error(StatusCode::NOT_FOUND, format!("unknown meter `{meter}`"));
    };
    let now = Utc::now();
    let period = t.period_at(now);
    let plan = t.plan_for_period(period, now).clone();
    let first = match is_first_period(&s, &t, period).await {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("usage unavailable: {e}"),
            );
        }
    };
    let used = match usage::period_usage(&s.shared, &s.ch, &cat, &t.id, period.start).await {
        Ok(u) => u.get(mid),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("usage unavailable: {e}"),
            );
        }
    };
    let limit = t.limit(&plan, mid, first);
    let balance = match (&s.wallets, &plan.wallet) {
        (Some(w), Some(_)) => w.balance_now(&t),
        _ => None,
    };
    Json(pricing::entitlement(&plan, limit, mid, used, balance)).into_response()
}

#[cfg(test)]
mod tests;
