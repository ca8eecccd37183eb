//! A Stripe-compatible test server for meter events: the test double that the integration
//! tests and the local demo report to (Stripe itself is unreachable from test machines, and
//! Stripe's own `stripe-mock` has no v2 endpoints). The pipeline never uses it on its own:
//! it only talks to whatever `stripe.api_base` / `stripe.meter_events_base` name. Run it
//! with the `stripe-test-server` binary or in-process with [`TestServer::spawn`].
//!
//! Faithful to Stripe's documented behaviour where callmeter depends on it
//! (<https://docs.stripe.com/api/v2/billing-meter-stream>,
//! <https://docs.stripe.com/api/billing/meter-event/create>):
//!
//! - `POST /v2/billing/meter_event_session` (`Authorization: Bearer <secret key>`) returns
//!   `{id, object, authentication_token, created, expires_at, livemode}`; the token lives
//!   `session_ttl` (Stripe: 15 minutes).
//! - `POST /v2/billing/meter_event_stream` (`Authorization: Bearer <token>`) takes
//!   `{"events": [...]}`, at most 100, and answers `200 {}`; an expired token gets
//!   `401 {"error": {"type": "temporary_session_expired", "code":
//!   "billing_meter_event_session_expired"}}`. Event validation is asynchronous as on
//!   Stripe: invalid events and duplicates are accepted by the request and dropped, and
//!   show up in the summary (Stripe reports them through `v1.billing.meter.error_report_triggered`).
//! - `POST /v1/billing/meter_events` (form, secret key) validates synchronously: errors are
//!   `400 {"error": {"type": "invalid_request_error", "code", "message"}}`, a repeated
//!   identifier is `400 duplicate_meter_event`.
//! - Identifiers are unique over a rolling 24 h (by the server's clock); `timestamp` must lie
//!   within the past 35 days and at most 5 minutes ahead (`timestamp_too_far_in_past`,
//!   `timestamp_in_future`); `value` must be an integer of at most 15 digits
//!   (`meter_event_invalid_value`, `meter_event_value_too_many_digits`); a payload without
//!   customer is `meter_event_no_customer_defined`; with an allow-list of customers, an
//!   unknown one is `meter_event_customer_not_found`; with an allow-list of event names, an
//!   unknown one is `no_meter`.
//!
//! Fault injection, per request to the three Stripe routes, with configurable rates:
//! `429` and `500` (`Stripe-Should-Retry: true`) before processing; *timeout*: processed,
//! then answered only after `timeout_delay` (the client has usually given up); *drop*:
//! processed, then the connection is cut mid-answer (these two are the cases where a client
//! cannot know whether Stripe recorded its events); *expire* (stream only): the session
//! token stops working early and the request gets `401 billing_meter_event_session_expired`.
//!
//! Inspection: `GET /_test/summary` ([`Summary`]: accepted value sums per (customer, event
//! name), every accepted identifier with its acceptance count, duplicates, rejections and
//! faults); `POST /_test/faults` (a JSON [`Faults`]) changes the fault rates.
//! The server's clock can start at another instant (`clock`) for replays of old data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const DEDUP_WINDOW_SECS: i64 = 24 * 3600;
const PAST_WINDOW_SECS: i64 = 35 * 86_400;
const FUTURE_WINDOW_SECS: i64 = 300;
const MAX_EVENTS: usize = 100;
const MAX_VALUE_DIGITS: usize = 15;

/// Fault rates (fractions of requests, 0..=1) and the delay of a "timeout".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answered `429 rate_limit_error` without processing.
    pub rate_429: f64,
    /// Answered `500 api_error` (with `Stripe-Should-Retry: true`) without processing.
    pub rate_500: f64,
    /// Processed, then answered after `timeout_delay`.
    pub rate_timeout: f64,
    /// Processed, then the connection is dropped before the answer completes.
    pub rate_drop: f64,
    /// Stream requests only: the session ends early (as after clock skew) and the request
    /// gets `401 billing_meter_event_session_expired`.
    pub rate_expire: f64,
    #[serde(with = "humantime_serde")]
    pub timeout_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_429: 0.0,
            rate_500: 0.0,
            rate_timeout: 0.0,
            rate_drop: 0.0,
            rate_expire: 0.0,
            timeout_delay: Duration::from_secs(35),
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lifetime of a meter event session token (Stripe: 15 minutes).
    pub session_ttl: Duration,
    /// The secret key clients must present; `None` accepts any non-empty key.
    pub api_key: Option<String>,
    pub faults: Faults,
    /// Seed of the fault injection and token generator.
    pub seed: u64,
    /// The server clock reads this at start (then runs on); `None`: the wall clock.
    pub clock: Option<DateTime<Utc>>,
    /// Known customers; `None` accepts any.
    pub customers: Option<BTreeSet<String>>,
    /// Known meter event names; `None` accepts any.
    pub event_names: Option<BTreeSet<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session_ttl: Duration::from_secs(15 * 60),
            api_key: None,
            faults: Faults::default(),
            seed: 1,
            clock: None,
            customers: None,
            event_names: None,
        }
    }
}

/// Accepted usage of one (customer, event name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub stripe_customer_id: String,
    pub event_name: String,
    /// Sum of accepted values (an integer, as a string).
    pub value: String,
    pub events: u64,
}

/// What the server received (`GET /_test/summary`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub accepted: Vec<Accepted>,
    /// Every accepted identifier and how many times it was accepted (more than once only if
    /// it came back after the 24 h dedup window).
    pub identifiers: BTreeMap<String, u32>,
    /// Events dropped (v2) or refused (v1) because their identifier was already accepted.
    pub duplicates: u64,
    /// Events rejected, by error code.
    pub rejected: BTreeMap<String, u64>,
    /// Injected faults by kind (`429`, `500`, `timeout`, `drop`, `expire`).
    pub faults: BTreeMap<String, u64>,
    /// Requests by route (`v2_session`, `v2_stream`, `v1`).
    pub requests: BTreeMap<String, u64>,
    /// Stream requests refused because the session token had expired (or was expired by
    /// fault injection).
    pub expired_sessions: u64,
    /// Largest number of events in one accepted stream request.
    pub max_events_per_request: usize,
}

impl Summary {
    /// Accepted value of (customer, event name), 0 if none.
    pub fn value(&self, customer: &str, event_name: &str) -> i128 {
        self.accepted
            .iter()
            .find(|a| a.stripe_customer_id == customer && a.event_name == event_name)
            .and_then(|a| a.value.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    TooMany,
    ServerError,
    Timeout,
    Drop,
    Expire,
}

struct Inner {
    cfg: Config,
    /// Server clock minus the wall clock (seconds).
    offset: i64,
    state: Mutex<St>,
}

struct St {
    rng: ChaCha8Rng,
    faults: Faults,
    sessions: HashMap<String, Instant>,
    /// identifier -> server time of acceptance.
    seen: HashMap<String, i64>,
    accepted: BTreeMap<(String, String), (i128, u64)>,
    summary: Summary,
    next_id: u64,
}

/// The test server (cheap to clone; clones share state).
#[derive(Clone)]
pub struct TestServer {
    inner: Arc<Inner>,
}

/// One incoming meter event, either API.
struct Incoming {
    event_name: String,
    customer: Option<String>,
    value: Option<String>,
    identifier: Option<String>,
    /// Unix seconds, `Err` if unparsable.
    timestamp: Option<Result<i64, ()>>,
}

impl TestServer {
    pub fn new(cfg: Config) -> TestServer {
        let offset = cfg
            .clock
            .map(|c| c.timestamp() - Utc::now().timestamp())
            .unwrap_or(0);
        let st = St {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            faults: cfg.faults.clone(),
            sessions: HashMap::new(),
            seen: HashMap::new(),
            accepted: BTreeMap::new(),
            summary: Summary::default(),
            next_id: 0,
        };
        TestServer {
            inner: Arc::new(Inner {
                cfg,
                offset,
                state: Mutex::new(st),
            }),
        }
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/billing/meter_event_session", post(session))
            .route("/v2/billing/meter_event_stream", post(stream))
            .route("/v1/billing/meter_events", post(v1_event))
            .route("/_test/summary", get(summary))
            .route("/_test/faults", post(set_faults))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// Serves on a free loopback port in the background; returns the base URL
    /// (`http://127.0.0.1:PORT`). The server stops when `shutdown` is cancelled.
    pub async fn spawn(&self, shutdown: CancellationToken) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.serve(listener, shutdown).await {
                tracing::error!(error = %e, "Stripe test server stopped");
            }
        });
        Ok(url)
    }

    /// What was received so far.
    pub fn summary(&self) -> Summary {
        let st = self.inner.state.lock().expect("test server lock");
        let mut s = st.summary.clone();
        s.accepted = st
            .accepted
            .iter()
            .map(|((c, e), (v, n))| Accepted {
                stripe_customer_id: c.clone(),
                event_name: e.clone(),
                value: v.to_string(),
                events: *n,
            })
            .collect();
        s
    }

    /// Changes the fault rates.
    pub fn set_faults(&self, f: Faults) {
        self.inner.state.lock().expect("test server lock").faults = f;
    }

    /// The server clock (Unix seconds).
    pub fn now(&self) -> i64 {
        Utc::now().timestamp() + self.inner.offset
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.inner.state.lock().expect("test server lock")
    }

    /// Counts the request and draws its fault.
    fn begin(&self, route: &str) -> Option<Fault> {
        let mut st = self.lock();
        *st.summary.requests.entry(route.into()).or_default() += 1;
        let f = st.faults.clone();
        let x: f64 = st.rng.random();
        let mut edge = 0.0;
        let mut pick = None;
        for (rate, fault) in [
            (f.rate_429, Fault::TooMany),
            (f.rate_500, Fault::ServerError),
            (f.rate_timeout, Fault::Timeout),
            (f.rate_drop, Fault::Drop),
            (f.rate_expire, Fault::Expire),
        ] {
            edge += rate.max(0.0);
            if x < edge {
                pick = Some(fault);
                break;
            }
        }
        if pick == Some(Fault::Expire) && route != "v2_stream" {
            pick = None;
        }
        if let Some(p) = pick {
            let label = match p {
                Fault::TooMany => "429",
                Fault::ServerError => "500",
                Fault::Timeout => "timeout",
                Fault::Drop => "drop",
                Fault::Expire => "expire",
            };
            *st.summary.faults.entry(label.into()).or_default() += 1;
        }
        pick
    }

    /// The answer of a request that was processed, after its fault (if any).
    async fn finish(&self, fault: Option<Fault>, resp: Response) -> Response {
        match fault {
            Some(Fault::Timeout) => {
                let d = self.lock().faults.timeout_delay;
                tokio::time::sleep(d).await;
                resp
            }
            Some(Fault::Drop) => dropped(),
            _ => resp,
        }
    }

    /// The 401 answer if the request lacks the secret key.
    fn deny(&self, headers: &HeaderMap) -> Option<Response> {
        match (bearer(headers), &self.inner.cfg.api_key) {
            (Some(k), Some(want)) if k == *want => None,
            (Some(k), None) if !k.is_empty() => None,
            _ => Some(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "api_key_invalid",
                "Invalid API Key provided.",
            )),
        }
    }

    /// Stripe's checks of one event; `Err(code)` if invalid.
    fn validate(&self, ev: &Incoming, now: i64) -> Result<(i128, i64), &'static str> {
        let cfg = &self.inner.cfg;
        if ev.event_name.is_empty()
            || cfg
                .event_names
                .as_ref()
                .is_some_and(|n| !n.contains(&ev.event_name))
        {
            return Err("no_meter");
        }
        let customer = ev.customer.as_deref().unwrap_or("");
        if customer.is_empty() {
            return Err("meter_event_no_customer_defined");
        }
        if cfg
            .customers
            .as_ref()
            .is_some_and(|c| !c.contains(customer))
        {
            return Err("meter_event_customer_not_found");
        }
        let raw = ev.value.as_deref().unwrap_or("");
        let value: i128 = raw.parse().map_err(|_| "meter_event_invalid_value")?;
        if raw.trim_start_matches('-').len() > MAX_VALUE_DIGITS {
            return Err("meter_event_value_too_many_digits");
        }
        let ts = match ev.timestamp {
            None => now,
            Some(Ok(t)) => t,
            Some(Err(())) => return Err("timestamp_invalid"),
        };
        if ts < now - PAST_WINDOW_SECS {
            return Err("timestamp_too_far_in_past");
        }
        if ts > now + FUTURE_WINDOW_SECS {
            return Err("timestamp_in_future");
        }
        Ok((value, ts))
    }

    /// Validates, deduplicates and records one event.
    fn ingest(&self, ev: Incoming) -> Result<(String, i64), &'static str> {
        let now = self.now();
        let checked = self.validate(&ev, now);
        let mut st = self.lock();
        let (value, ts) = match checked {
            Ok(v) => v,
            Err(code) => {
                *st.summary.rejected.entry(code.into()).or_default() += 1;
                return Err(code);
            }
        };
        let id = match ev.identifier.filter(|i| !i.is_empty()) {
            Some(i) => i,
            None => {
                st.next_id += 1;
                format!("generated_{}", st.next_id)
            }
        };
        if st
            .seen
            .get(&id)
            .is_some_and(|at| now - at < DEDUP_WINDOW_SECS)
        {
            st.summary.duplicates += 1;
            return Err("duplicate_meter_event");
        }
        st.seen.insert(id.clone(), now);
        *st.summary.identifiers.entry(id.clone()).or_default() += 1;
        let e = st
            .accepted
            .entry((ev.customer.unwrap_or_default(), ev.event_name))
            .or_default();
        e.0 += value;
        e.1 += 1;
        Ok((id, ts))
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|s| s.trim().to_string())
}

fn rfc3339(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn error(status: StatusCode, ty: &str, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"type": ty, "code": code, "message": message}})),
    )
        .into_response()
}

fn injected(f: Fault) -> Option<Response> {
    match f {
        Fault::TooMany => Some(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit",
            "Too many requests hit the API too quickly (injected).",
        )),
        Fault::ServerError => {
            let mut r = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "api_error",
                "An unknown error occurred (injected).",
            );
            r.headers_mut()
                .insert("stripe-should-retry", "true".parse().expect("header value"));
            Some(r)
        }
        Fault::Timeout | Fault::Drop | Fault::Expire => None,
    }
}

fn expired() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "temporary_session_expired",
        "billing_meter_event_session_expired",
        "The temporary session token has expired.",
    )
}

/// An answer whose body fails: the connection is cut before the answer completes.
fn dropped() -> Response {
    let body = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped (injected)"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("response")
}

async fn session(State(s): State<TestServer>, headers: HeaderMap) -> Response {
    let fault = s.begin("v2_session");
    if let Some(r) = fault.and_then(injected) {
        return r;
    }
    if let Some(r) = s.deny(&headers) {
        return r;
    }
    let now = s.now();
    let ttl = s.inner.cfg.session_ttl;
    let (id, token) = {
        let mut st = s.lock();
        st.next_id += 1;
        let token = format!("mets_test_{:032x}", st.rng.random::<u128>());
        st.sessions.insert(token.clone(), Instant::now() + ttl);
        (format!("mes_test_{}", st.next_id), token)
    };
    let body = serde_json::json!({
        "id": id,
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": rfc3339(now),
        "expires_at": rfc3339(now + ttl.as_secs() as i64),
        "livemode": false,
    });
    s.finish(fault, (StatusCode::OK, Json(body)).into_response())
        .await
}

async fn stream(State(s): State<TestServer>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = s.begin("v2_stream");
    if let Some(r) = fault.and_then(injected) {
        return r;
    }
    let token = bearer(&headers).unwrap_or_default();
    if fault == Some(Fault::Expire) {
        s.lock().sessions.remove(&token);
        s.lock().summary.expired_sessions += 1;
        return expired();
    }
    let valid = s.lock().sessions.get(&token).copied();
    match valid {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_session_token",
                "Unknown meter event session token.",
            );
        }
        Some(until) if Instant::now() >= until => {
            s.lock().summary.expired_sessions += 1;
            return expired();
        }
        Some(_) => {}
    }
    let bad = |m: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            m,
        )
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("Invalid JSON: {e}")),
    };
    let Some(events) = v["events"].as_array() else {
        return bad("`events` is required.");
    };
    if events.is_empty() || events.len() > MAX_EVENTS {
        return bad("`events` must hold 1 to 100 events.");
    }
    let mut incoming = Vec::with_capacity(events.len());
    for e in events {
        let (Some(name), Some(payload)) = (e["event_name"].as_str(), e["payload"].as_object())
        else {
            return bad("Each event needs `event_name` and a `payload` object.");
        };
        let text = |k: &str| payload.get(k).and_then(|x| x.as_str()).map(str::to_string);
        incoming.push(Incoming {
            event_name: name.to_string(),
            customer: text("stripe_customer_id"),
            value: text("value"),
            identifier: e["identifier"].as_str().map(str::to_string),
            timestamp: e["timestamp"].as_str().map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|d| d.timestamp())
                    .map_err(|_| ())
            }),
        });
    }
    {
        let mut st = s.lock();
        st.summary.max_events_per_request = st.summary.max_events_per_request.max(incoming.len());
    }
    // Validation is asynchronous on Stripe: bad events and duplicates are dropped after a
    // 200, and counted in the summary.
    for ev in incoming {
        let _ = s.ingest(ev);
    }
    s.finish(
        fault,
        (StatusCode::OK, Json(serde_json::json!({}))).into_response(),
    )
    .await
}

async fn v1_event(
    State(s): State<TestServer>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let fault = s.begin("v1");
    if let Some(r) = fault.and_then(injected) {
        return r;
    }
    if let Some(r) = s.deny(&headers) {
        return r;
    }
    let Some(event_name) = f.get("event_name").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_missing",
            "Missing required param: event_name.",
        );
    };
    let ev = Incoming {
        event_name,
        customer: f.get("payload[stripe_customer_id]").cloned(),
        value: f.get("payload[value]").cloned(),
        identifier: f.get("identifier").cloned(),
        timestamp: f
            .get("timestamp")
            .map(|t| t.trim().parse::<i64>().map_err(|_| ())),
    };
    let (name, customer, value) = (
        ev.event_name.clone(),
        ev.customer.clone().unwrap_or_default(),
        ev.value.clone().unwrap_or_default(),
    );
    let resp = match s.ingest(ev) {
        Ok((id, ts)) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "object": "billing.meter_event",
                "created": s.now(),
                "event_name": name,
                "identifier": id,
                "livemode": false,
                "payload": {"stripe_customer_id": customer, "value": value},
                "timestamp": ts,
            })),
        )
            .into_response(),
        Err("duplicate_meter_event") => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "duplicate_meter_event",
            "An event already exists with identifier.",
        ),
        Err(code) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            "The meter event is invalid.",
        ),
    };
    s.finish(fault, resp).await
}

async fn summary(State(s): State<TestServer>) -> Json<Summary> {
    Json(s.summary())
}

async fn set_faults(State(s): State<TestServer>, Json(f): Json<Faults>) -> StatusCode {
    s.set_faults(f);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, customer: &str, value: &str, ts: Option<i64>) -> Incoming {
        Incoming {
            event_name: "m".into(),
            customer: Some(customer.into()),
            value: Some(value.into()),
            identifier: Some(id.into()),
            timestamp: ts.map(Ok),
        }
    }

    #[test]
    fn dedups_identifiers_and_checks_the_window() {
        let s = TestServer::new(Config {
            customers: Some(BTreeSet::from(["cus_1".to_string()])),
            ..Config::default()
        });
        let now = s.now();
        assert!(s.ingest(ev("a", "cus_1", "5", Some(now))).is_ok());
        assert_eq!(
            s.ingest(ev("a", "cus_1", "5", Some(now))),
            Err("duplicate_meter_event")
        );
        assert_eq!(
            s.ingest(ev("b", "cus_1", "5", Some(now - PAST_WINDOW_SECS - 1))),
            Err("timestamp_too_far_in_past")
        );
        assert_eq!(
            s.ingest(ev("c", "cus_1", "5", Some(now + 301))),
            Err("timestamp_in_future")
        );
        assert!(s.ingest(ev("d", "cus_1", "7", Some(now + 299))).is_ok());
        assert_eq!(
            s.ingest(ev("e", "cus_2", "5", None)),
            Err("meter_event_customer_not_found")
        );
        assert_eq!(
            s.ingest(ev("f", "cus_1", "1.5", None)),
            Err("meter_event_invalid_value")
        );
        assert_eq!(
            s.ingest(ev("g", "cus_1", "1234567890123456", None)),
            Err("meter_event_value_too_many_digits")
        );
        let sum = s.summary();
        assert_eq!(sum.value("cus_1", "m"), 12);
        assert_eq!(sum.duplicates, 1);
        assert_eq!(sum.identifiers.len(), 2);
        assert_eq!(sum.rejected["timestamp_too_far_in_past"], 1);
    }

    #[test]
    fn faults_follow_their_rates() {
        let s = TestServer::new(Config {
            faults: Faults {
                rate_429: 0.25,
                rate_drop: 0.25,
                ..Faults::default()
            },
            ..Config::default()
        });
        let picks: Vec<Option<Fault>> = (0..2000).map(|_| s.begin("v1")).collect();
        let n = |f: Fault| picks.iter().filter(|p| **p == Some(f)).count();
        assert!(
            (400..600).contains(&n(Fault::TooMany)),
            "{}",
            n(Fault::TooMany)
        );
        assert!((400..600).contains(&n(Fault::Drop)));
        assert_eq!(n(Fault::ServerError), 0);
        assert_eq!(s.summary().requests["v1"], 2000);
    }
}
