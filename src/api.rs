//! HTTP API (CONTRACT section 6): health, readiness, Prometheus metrics, and per-tenant usage
//! and entitlements behind bearer tokens.
//!
//! Usage comes from memory when this instance owns the tenant's partition and holds the
//! period, otherwise from ClickHouse (`usage_rollups FINAL`).

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

use crate::meter::{MeterId, round_half_up};
use crate::period::Period;
use crate::pricing::{self, ChargeInput, Charges, MeterUsage, Tenant};
use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;
use crate::telemetry::Telemetry;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub telemetry: Telemetry,
    pub ch: ClickHouse,
    pub tokens: Arc<arc_swap::ArcSwap<Vec<String>>>,
    pub wallets: Option<Arc<crate::wallet::Wallets>>,
}

/// The router of CONTRACT section 6.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route(
            "/v1/tenants/{tenant}/entitlements/{meter}",
            get(entitlement),
        )
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.telemetry.render(),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
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

/// Usage of one meter in the answer.
#[derive(Debug, Serialize, PartialEq)]
pub struct MeterUsageBody {
    pub meter: String,
    pub usage: String,
    pub limit: Option<String>,
    pub remaining: Option<String>,
    pub ratio: Option<String>,
    pub alerts: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PeriodBody {
    pub start: String,
    pub end: String,
    pub timezone: String,
}

/// The usage answer of CONTRACT section 6.
#[derive(Debug, Serialize, PartialEq)]
pub struct UsageBody {
    pub tenant_id: String,
    pub plan: String,
    pub currency: String,
    pub period: PeriodBody,
    pub meters: Vec<MeterUsageBody>,
    pub charges: Charges,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet: Option<WalletBody>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WalletBody {
    pub balance: String,
    pub currency: String,
}

fn dec_str(d: Decimal) -> String {
    d.normalize().to_string()
}

fn local(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Resolves a tenant: configured, or seen on the default plan.
fn tenant_of(s: &ApiState, id: &str) -> Option<Arc<Tenant>> {
    let cat = s.shared.catalog.load();
    if let Some(t) = cat.tenants.get(id) {
        return Some(t.clone());
    }
    if s.shared.tenants.get(id).is_some() {
        return cat.tenant(id);
    }
    None
}

/// Usage (meter value), event count and fired alert kinds of every meter in a period.
async fn period_usage(
    s: &ApiState,
    tenant: &Tenant,
    period: Period,
) -> Result<Vec<(MeterId, Decimal, Vec<String>)>, String> {
    let cat = s.shared.catalog.load();
    let tidx = s.shared.tenants.get(&tenant.id);
    let in_memory = tidx.is_some_and(|t| s.shared.tenant_partitions.contains_key(&t));
    let mut out = Vec::new();
    let mut stored_alerts: Option<HashMap<String, Vec<String>>> = None;
    for (i, def) in cat.meters.iter().enumerate() {
        let mid = MeterId(i as u16);
        let mem = tidx.and_then(|t| s.shared.tenant_raw(t, mid, period.start));
        let usage = match (mem, in_memory) {
            (Some((raw, _)), _) => def.value(raw),
            (None, true) if s.shared.ready() => Decimal::ZERO,
            _ => {
                s.ch.usage(&tenant.id, &def.name, period.start)
                    .await
                    .map_err(|e| e.to_string())?
                    .0
            }
        };
        let alerts = match tidx.and_then(|t| s.shared.alerts.get(&(t, mid, period.start))) {
            Some(a) => a.iter().map(|k| k.to_string()).collect(),
            None if in_memory => vec![],
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
        out.push((mid, usage, alerts));
    }
    Ok(out)
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
            "SELECT meter, kind FROM {} FINAL WHERE tenant_id = ? AND toUInt32(period_start) = ? ORDER BY fired_at, kind",
            s.ch.table("usage_alerts")
        ))
        .bind(tenant)
        .bind(period.start.max(0) as u32)
        .fetch_all()
        .await
        .map_err(|e| e.to_string())?;
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (meter, kind) in rows {
        m.entry(meter).or_default().push(kind);
    }
    Ok(m)
}

#[derive(Debug, serde::Deserialize)]
struct AtQuery {
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

/// Builds the usage answer for `tenant` at `at`.
pub async fn usage_body(
    s: &ApiState,
    tenant: &Tenant,
    at: DateTime<Utc>,
) -> Result<UsageBody, String> {
    let cat = s.shared.catalog.load();
    let period = tenant.period_at(at);
    let now = Utc::now();
    let plan = tenant.plan_for_period(period, now.max(at)).clone();
    let first = s
        .shared
        .first_periods
        .get(&tenant.id.to_string())
        .is_none_or(|f| *f >= period.start);
    let usages = period_usage(s, tenant, period).await?;
    let mut meters = Vec::new();
    let mut mu = Vec::new();
    // Plan meters first (in plan order), then the others.
    let mut order: Vec<&(MeterId, Decimal, Vec<String>)> = usages
        .iter()
        .filter(|(m, _, _)| plan.meters.contains_key(m))
        .collect();
    order.extend(
        usages
            .iter()
            .filter(|(m, _, _)| !plan.meters.contains_key(m)),
    );
    for (mid, usage, alerts) in order {
        let def = cat.meter(*mid);
        let limit = tenant.limit(&plan, *mid, first);
        let (remaining, ratio) = match limit {
            Some(l) if l > Decimal::ZERO => (
                Some(dec_str((l - usage).max(Decimal::ZERO))),
                Some(dec_str(round_half_up(*usage / l, 6))),
            ),
            Some(l) => (Some(dec_str((l - usage).max(Decimal::ZERO))), None),
            None => (None, None),
        };
        meters.push(MeterUsageBody {
            meter: def.name.to_string(),
            usage: dec_str(*usage),
            limit: limit.map(dec_str),
            remaining,
            ratio,
            alerts: alerts.clone(),
        });
        mu.push(MeterUsage {
            meter: *mid,
            name: def.name.to_string(),
            usage: *usage,
        });
    }
    let charges = pricing::charges(&ChargeInput {
        tenant,
        period,
        usage: &mu,
        first_period: first,
        now: now.max(at),
    });
    let wallet = match (&s.wallets, &plan.wallet) {
        (Some(w), Some(_)) => w.balance(&tenant.id).map(|b| WalletBody {
            balance: pricing::money_str::format(b),
            currency: plan.currency.clone(),
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
    })
}

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
    let Some(t) = tenant_of(&s, &tenant) else {
        return error(StatusCode::NOT_FOUND, format!("unknown tenant `{tenant}`"));
    };
    match usage_body(&s, &t, at).await {
        Ok(b) => Json(b).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("usage unavailable: {e}"),
        ),
    }
}

async fn entitlement(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, meter)): Path<(String, String)>,
) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let Some(t) = tenant_of(&s, &tenant) else {
        return error(StatusCode::NOT_FOUND, format!("unknown tenant `{tenant}`"));
    };
    let cat = s.shared.catalog.load();
    let Some(mid) = cat.meter_id(&meter) else {
        return error(StatusCode::NOT_FOUND, format!("unknown meter `{meter}`"));
    };
    let now = Utc::now();
    let period = t.period_at(now);
    let plan = t.plan_for_period(period, now).clone();
    let first = s
        .shared
        .first_periods
        .get(&t.id.to_string())
        .is_none_or(|f| *f >= period.start);
    let usage = match period_usage(&s, &t, period).await {
        Ok(u) => u
            .into_iter()
            .find(|(m, _, _)| *m == mid)
            .map(|(_, v, _)| v)
            .unwrap_or_default(),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("usage unavailable: {e}"),
            );
        }
    };
    let limit = t.limit(&plan, mid, first);
    let balance = s.wallets.as_ref().and_then(|w| w.balance(&t.id));
    Json(pricing::entitlement(&plan, limit, mid, usage, balance)).into_response()
}
