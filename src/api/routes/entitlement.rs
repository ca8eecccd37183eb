//! `GET /v1/tenants/{tenant}/entitlements/{meter}`: whether a tenant may use more of a
//! meter now (the current period's limit, and a prepaid wallet's balance).

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;

use super::{is_first_period, tenant_of};
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::pricing;
use crate::usage;

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
pub async fn entitlement(
    State(s): State<ApiState>,
    Path((tenant, meter)): Path<(String, String)>,
) -> Result<Json<pricing::Entitlement>, ApiError> {
    let t = tenant_of(&s, &tenant).await?;
    let cat = s.shared.catalog();
    let Some(mid) = cat.meter_id(&meter) else {
        return Err(ApiError::UnknownMeter(meter));
    };
    let now = Utc::now();
    let period = t.period_at(now);
    let plan = t.plan_for_period(period, now).clone();
    let first = is_first_period(&s, &t, period).await?;
    let used = usage::period_usage(&s.shared, &s.ch, &cat, &t.id, period.start)
        .await?
        .get(mid);
    let limit = t.limit(&plan, mid, first);
    let balance = match (&s.wallets, &plan.wallet) {
        (Some(w), Some(_)) => w.balance_now(&t),
        _ => None,
    };
    Ok(Json(pricing::entitlement(&plan, limit, mid, used, balance)))
}
