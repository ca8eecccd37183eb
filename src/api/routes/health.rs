//! The unauthenticated routes: liveness, readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::ApiState;

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process runs", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: assigned partitions restored and consuming, every dead-letter message and
/// alert delivered, and no problem in effect (else 503 with one line per reason: the
/// outbox's topic, error and count; a partition that cannot start; a permanent ClickHouse
/// error).
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", body = String),
        (status = 503, description = "Partitions not restored yet (or none assigned), a partition cannot start, dead-letter messages or alerts undelivered, or a permanent ClickHouse error: one line per reason", body = String)
    )
)]
pub async fn readyz(State(s): State<ApiState>) -> Response {
    let readiness = s.shared.readiness();
    if readiness.is_ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = String::from("not ready\n");
    for (_, message) in readiness.problems {
        body.push_str(&message);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Prometheus metrics, names prefixed `callmeter_`.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.telemetry.render(),
    )
        .into_response()
}
