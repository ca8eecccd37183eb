//! `PUT /v1/tenants/{tenant}/subscription` (CONTRACT sections 6 and 10): an admin changes a
//! tenant's subscription by producing a `subscription.updated` event to the events topic,
//! keyed by the tenant so that it is ordered with the tenant's usage. The body is the
//! event's `data`; the `Idempotency-Key` header, when given, is the event's `id` (so a
//! retried request is one event: the pipeline deduplicates it), else a random id; the
//! source is `callmeter-api`. The answer is 202 `{"event_id"}` once the broker acknowledged
//! the event; the pipeline applies it when it reads it.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{SecondsFormat, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiState;
use crate::api::auth::is_admin;
use crate::api::error::{ApiError, ErrorBody};
use crate::event::{ErrorCode, SUBSCRIPTION_UPDATED, SubscriptionUpdated, validate_updated};
use crate::subscription::{self, API_SOURCE, Change, Origin};

/// The producer of the events topic.
#[derive(Clone)]
pub struct EventsProducer {
    pub producer: FutureProducer,
    pub topic: std::sync::Arc<str>,
}

/// The answer: the id of the event produced.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionAccepted {
    /// The event's `id` (the `Idempotency-Key`, when given).
    #[schema(example = "upgrade-acme-2026-11")]
    pub event_id: String,
}

/// The header whose value becomes the event id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn event_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(format!("api-{:032x}", rand::random::<u128>())),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be text".into()))?
                .trim();
            let n = k.chars().count();
            if n == 0 || n > 128 {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1..128 characters, got {n}"
                )));
            }
            Ok(k.to_string())
        }
    }
}

/// Changes a tenant's subscription: produces a `subscription.updated` event with the body
/// as its `data`.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/subscription",
    params(
        ("tenant" = String, Path, description = "Tenant id (the events' `subject`); a tenant not yet known is created (then `timezone` and `anchor_day` are required)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..128 characters: the event's `id`, so that a retried request is counted once")
    ),
    request_body(content = serde_json::Value, description = "The `subscription.updated` data: `plan`, `addons`, `billing_cycle`, `stripe_customer_id`, `effective_at`, `timezone`, `anchor_day` (schemas/events/subscription.updated.schema.json)", content_type = "application/json"),
    responses(
        (status = 202, description = "The event is on the events topic", body = SubscriptionAccepted),
        (status = 400, description = "Not valid `subscription.updated` data, or a bad tenant id or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
        (status = 403, description = "A read token: writes need one of `api.admin_tokens`", body = ErrorBody),
        (status = 422, description = "Unknown plan or add-on, or a change the tenant cannot make (time zone, currency, legacy plan)", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge the event", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn put_subscription(
    State(s): State<ApiState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SubscriptionAccepted>), ApiError> {
    if !is_admin(&s.admin_tokens, &headers) {
        return Err(ApiError::Forbidden);
    }
    if !crate::event::valid_subject(&tenant) {
        return Err(ApiError::BadRequest(
            "tenant ids are 1..128 characters of [A-Za-z0-9._:-]".into(),
        ));
    }
    let id = event_id(&headers)?;
    let data: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    if !data.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object (subscription.updated data)".into(),
        ));
    }
    let now = Utc::now();
    let mut u: SubscriptionUpdated = serde_json::from_value(data.clone())
        .map_err(|e| ApiError::BadRequest(format!("subscription.updated data: {e}")))?;
    validate_updated(&mut u, now).map_err(|r| ApiError::BadRequest(r.message))?;
    // Judge it as the pipeline will, with the tenant in effect (configured, or created by
    // an earlier event: held here or stored in ClickHouse; not merely on the default plan).
    let current = super::tenant_of(&s, &tenant)
        .await
        .ok()
        .filter(|t| t.configured);
    let cat = s.shared.catalog();
    if let Err(r) = subscription::resolve(
        &cat,
        current.as_deref(),
        Change::Updated(&u),
        Origin {
            tenant: &tenant,
            event_id: &id,
            partition: 0,
            offset: 0,
        },
    ) {
        return Err(match r.code {
            ErrorCode::UnknownPlan | ErrorCode::InvalidData => ApiError::Unprocessable(r.message),
            _ => ApiError::BadRequest(r.message),
        });
    }
    let Some(events) = &s.events else {
        return Err(ApiError::Produce("no producer configured".into()));
    };
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": API_SOURCE,
        "type": SUBSCRIPTION_UPDATED,
        "subject": tenant,
        "time": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": data,
    });
    let payload = serde_json::to_vec(&event).map_err(|e| ApiError::Produce(e.to_string()))?;
    events
        .producer
        .send(
            FutureRecord::to(&events.topic)
                .key(tenant.as_bytes())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| ApiError::Produce(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SubscriptionAccepted { event_id: id }),
    ))
}
