//! `GET /v1/tenants/{tenant}/usage`: a tenant's usage, limits, alerts and charges for a
//! usage period ([`UsageBody`], CONTRACT section 6), and the body types of that answer.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{is_first_period, tenant_of};
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::features::FeatureValue;
use crate::meter::{MeterId, REVENUE, WALLET_CREDIT, round_half_up};
use crate::period::Period;
use crate::pricing::{self, ChargeInput, Charges, MeterUsage, Plan, Tenant};
use crate::sink::clickhouse::{dt, queries};
use crate::usage;

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
    /// Every feature of the configuration with the tenant's value in the period: the
    /// governing plan's, raised by the add-ons held (CONTRACT section 10); a boolean or a
    /// whole number.
    #[schema(value_type = BTreeMap<String, serde_json::Value>, example = json!({"call_recording": true, "modules": 12}))]
    pub features: BTreeMap<String, FeatureValue>,
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

/// The alert kinds stored for the tenant's period, per meter name, in firing order.
///
/// Errors: [`ApiError::Alerts`] when ClickHouse cannot be read.
async fn stored_alert_kinds(
    s: &ApiState,
    tenant: &str,
    period: Period,
) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let rows: Vec<(String, String)> =
        s.ch.client()
            .query(&queries::tenant_period_alerts(s.ch.database()))
            .bind(tenant)
            .bind(dt(period.start))
            .fetch_all()
            .await
            .map_err(ApiError::Alerts)?;
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
pub(crate) fn priced_meters(plan: &Plan) -> Vec<MeterId> {
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

/// Builds the usage answer for `tenant` for the period containing `at`.
///
/// Errors: ClickHouse is needed (the period is not in memory) and cannot be read
/// ([`ApiError::Usage`], [`ApiError::Alerts`]).
pub async fn usage_body(
    s: &ApiState,
    tenant: &Tenant,
    at: DateTime<Utc>,
) -> Result<UsageBody, ApiError> {
    let cat = s.shared.catalog();
    let period = tenant.period_at(at);
    let now = Utc::now().max(at);
    let terms = tenant.governing_terms(period, now);
    let none = BTreeMap::new();
    let plan = terms.plan.clone();
    let first = is_first_period(s, tenant, period).await?;
    let pu = usage::period_usage(&s.shared, &s.ch, &cat, &tenant.id, period.start).await?;
    let tidx = s.shared.tenants().get(&tenant.id);
    let mut stored_alerts: Option<HashMap<String, Vec<String>>> = None;
    let mut meters = Vec::new();
    for mid in priced_meters(&plan) {
        let def = cat.meter(mid);
        let used = pu.get(mid);
        let limit = terms.limit(mid, first);
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
        features: crate::features::resolve(
            &cat.features,
            &plan,
            if terms.canceled { &none } else { terms.addons },
        ),
        from_memory: pu.from_memory,
    })
}

/// Response header naming where usage came from: `memory` or `clickhouse`.
pub const USAGE_SOURCE_HEADER: &str = "x-callmeter-usage-source";

/// The query of the usage route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// An instant (RFC 3339 with offset) in the period to answer for; default: now.
    #[param(example = "2026-10-20T12:00:00+02:00")]
    pub at: Option<String>,
}

/// `at` as an instant; now when absent.
///
/// Errors: [`ApiError::BadAt`].
pub fn parse_at(q: &AtQuery) -> Result<DateTime<Utc>, ApiError> {
    match &q.at {
        None => Ok(Utc::now()),
        Some(a) => DateTime::parse_from_rfc3339(a)
            .map(|t| t.with_timezone(&Utc))
            .map_err(ApiError::BadAt),
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
pub async fn usage(
    State(s): State<ApiState>,
    Path(tenant): Path<String>,
    Query(q): Query<AtQuery>,
) -> Result<Response, ApiError> {
    let at = parse_at(&q)?;
    let t = tenant_of(&s, &tenant).await?;
    let b = usage_body(&s, &t, at).await?;
    let source = if b.from_memory {
        "memory"
    } else {
        "clickhouse"
    };
    Ok(([(USAGE_SOURCE_HEADER, source)], Json(b)).into_response())
}
