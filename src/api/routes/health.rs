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

/// Readiness: assigned partitions restored and consuming, and no problem in effect (a
/// permanent ClickHouse error is named in the body).
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "Ready", body = String),
        (status = 503, description = "Partitions not restored yet (or none assigned), or a problem such as a permanent ClickHouse error (named in the body)", body = String)
    )
)]
pub async fn readyz(State(s): State<ApiState>) -> Response {
    let problems = s.shared.health.problems();
    if !problems.is_empty() {
        let body = format!("not ready\n{}\n", problems.join("\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else if s.shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
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
