//! `GET /v1/tenants/{tenant}/entitlements/{name}`: whether a tenant may use more of a meter
//! now (the current period's limit, and a prepaid wallet's balance) or has a feature
//! (CONTRACT section 10); and `GET /v1/tenants/{tenant}/entitlements`: all of them, every
//! meter its plan prices and every feature of the catalog. Answered from memory (usage from
//! ClickHouse only when this instance does not hold the tenant's period).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::tenant_usage::priced_meters;
use super::{is_first_period, tenant_of};
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::features::{self, FeatureEntitlement, SUBSCRIPTION_CANCELED};
use crate::meter::MeterId;
use crate::pricing::{self, Tenant};
use crate::usage::{self, PeriodUsage};

/// A meter's or a feature's entitlement.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnyEntitlement {
    Meter(pricing::Entitlement),
    Feature(FeatureEntitlement),
}

/// Every entitlement of a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entitlements {
    /// By meter name: the meters the tenant's plan prices.
    pub meters: BTreeMap<String, pricing::Entitlement>,
    /// By feature name: every feature a plan or add-on of the configuration names.
    pub features: BTreeMap<String, FeatureEntitlement>,
}

/// The meter's entitlement now, given the period's usage.
async fn meter_entitlement(
    s: &ApiState,
    t: &Tenant,
    mid: MeterId,
    now: DateTime<Utc>,
    first: bool,
    pu: &PeriodUsage,
) -> pricing::Entitlement {
    let period = t.period_at(now);
    let terms = t.governing_terms(period, now);
    let used = pu.get(mid);
    let limit = terms.limit(mid, first);
    if t.canceled_before(now).is_some() {
        return pricing::Entitlement {
            allowed: false,
            reason: Some(SUBSCRIPTION_CANCELED.into()),
            remaining: limit.map(|l| l.saturating_sub(used).max(rust_decimal::Decimal::ZERO)),
        };
    }
    let plan = terms.plan;
    let balance = match (&s.wallets, &plan.wallet) {
        (Some(w), Some(_)) => w.balance_now(t),
        _ => None,
    };
    pricing::entitlement(plan, limit, mid, used, balance)
}

/// The feature entitlements of the tenant now.
fn feature_entitlements(
    s: &ApiState,
    t: &Tenant,
    now: DateTime<Utc>,
) -> BTreeMap<String, FeatureEntitlement> {
    let cat = s.shared.catalog();
    let terms = t.terms_at(now);
    let canceled = t.canceled_before(now).is_some();
    features::resolve(&cat.features, terms.plan, terms.addons)
        .into_iter()
        .map(|(k, v)| (k, features::entitlement(&terms.plan.id, v, canceled)))
        .collect()
}

/// Whether the tenant may use more of a meter now (no at a hard limit, when its prepaid
/// wallet is empty, or when its subscription is canceled), or whether it has a feature.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/entitlements/{name}",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("name" = String, Path, description = "A meter (e.g. `call_minutes`) or a feature (e.g. `call_recording`)")
    ),
    responses(
        (status = 200, description = "A meter's entitlement (`remaining`) or a feature's (`value`)", body = AnyEntitlement),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "Unknown tenant, or neither a meter nor a feature", body = ErrorBody),
        (status = 503, description = "ClickHouse needed and unreachable", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn entitlement(
    State(s): State<ApiState>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AnyEntitlement>, ApiError> {
    let t = tenant_of(&s, &tenant).await?;
    let cat = s.shared.catalog();
    let now = Utc::now();
    if let Some(mid) = cat.meter_id(&name) {
        let period = t.period_at(now);
        let first = is_first_period(&s, &t, period).await?;
        let pu = usage::period_usage(&s.shared, &s.ch, &cat, &t.id, period.start).await?;
        return Ok(Json(AnyEntitlement::Meter(
            meter_entitlement(&s, &t, mid, now, first, &pu).await,
        )));
    }
    match feature_entitlements(&s, &t, now).remove(&name) {
        Some(f) => Ok(Json(AnyEntitlement::Feature(f))),
        None => Err(ApiError::UnknownEntitlement(name)),
    }
}

/// Every entitlement of a tenant now: the meters its plan prices and every feature.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/entitlements",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The entitlements", body = Entitlements),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 503, description = "ClickHouse needed and unreachable", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn entitlements(
    State(s): State<ApiState>,
    Path(tenant): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    let t = tenant_of(&s, &tenant).await?;
    let cat = s.shared.catalog();
    let now = Utc::now();
    let period = t.period_at(now);
    let first = is_first_period(&s, &t, period).await?;
    let pu = usage::period_usage(&s.shared, &s.ch, &cat, &t.id, period.start).await?;
    let plan = t.governing_terms(period, now).plan.clone();
    let mut meters = BTreeMap::new();
    for mid in priced_meters(&plan) {
        let e = meter_entitlement(&s, &t, mid, now, first, &pu).await;
        meters.insert(cat.meter(mid).name.to_string(), e);
    }
    Ok(Json(Entitlements {
        meters,
        features: feature_entitlements(&s, &t, now),
    }))
}
