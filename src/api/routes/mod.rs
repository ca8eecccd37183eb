//! The handlers of the HTTP API, one file per concern: [`health`] (liveness, readiness,
//! metrics), [`tenant_usage`] (the usage answer), [`entitlement`] (meters and features),
//! [`statements`] and [`subscription`] (the write route); and the look-ups the tenant routes
//! share. `/v1/*` handlers run behind the bearer-auth layer
//! ([`super::auth`]) and fail with [`ApiError`].

use std::sync::Arc;

use super::ApiState;
use super::error::ApiError;
use crate::period::Period;
use crate::pricing::Tenant;
use crate::usage;

pub mod entitlement;
pub mod health;
pub mod statements;
pub mod subscription;
pub mod tenant_usage;

/// Resolves a tenant: changed or created by subscription events (applied here, or stored in
/// ClickHouse when this instance does not hold the tenant), configured, or on the default
/// plan and seen (here or in ClickHouse).
///
/// Errors: [`ApiError::UnknownTenant`]; [`ApiError::TenantLookup`] when ClickHouse was needed
/// and could not be read.
pub(crate) async fn tenant_of(s: &ApiState, id: &str) -> Result<Arc<Tenant>, ApiError> {
    if let Some(t) = s.shared.subscribed_tenant(id) {
        return Ok(t);
    }
    let cat = s.shared.catalog();
    // Not held here: its partition's owner may have applied subscription events, which
    // ClickHouse has once flushed. Unreadable: the configuration answers (logged).
    let held = s
        .shared
        .tenants()
        .get(id)
        .and_then(|t| s.shared.tenant_partitions(t))
        .is_some();
    if !held && crate::event::valid_subject(id) {
        match usage::stored_tenant(&s.ch, &cat, id).await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant = id, error = %e, "stored subscriptions unreadable; answering from the configuration");
            }
        }
    }
    if let Some(t) = cat.tenants.get(id) {
        return Ok(t.clone());
    }
    let unknown = || ApiError::UnknownTenant(id.to_string());
    if cat.default_plan.is_none() || !crate::event::valid_subject(id) {
        return Err(unknown());
    }
    if s.shared.tenants().get(id).is_some() {
        return cat.tenant(id).ok_or_else(unknown);
    }
    match usage::stored_first_period(&s.ch, id).await {
        Ok(Some(_)) => cat.tenant(id).ok_or_else(unknown),
        Ok(None) => Err(unknown()),
        Err(e) => Err(ApiError::TenantLookup(e)),
    }
}

/// Whether `period` is the tenant's first usage period (one-time allowances): no usage
/// before it.
async fn is_first_period(s: &ApiState, tenant: &Tenant, period: Period) -> Result<bool, ApiError> {
    let first = usage::first_period(&s.shared, &s.ch, &tenant.id).await?;
    Ok(first.is_none_or(|f| f >= period.start))
}
