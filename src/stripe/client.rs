//! The HTTP side of Stripe reporting: one attempt per call, rate limited, answers turned
//! into [`Answer`]s for [`super::retry::classify`].
//!
//! - v2 (default): `POST {api_base}/v2/billing/meter_event_session` with the secret key
//!   returns an `authentication_token` valid 15 minutes
//!   (<https://docs.stripe.com/api/v2/billing-meter-stream/meter-event-session/create>);
//!   `POST {meter_events_base}/v2/billing/meter_event_stream` with `Authorization: Bearer
//!   <token>`, `Stripe-Version` and `{"events": [...]}` (at most 100) answers `200 {}`
//!   (validation is asynchronous) or `401 billing_meter_event_session_expired`
//!   (<https://docs.stripe.com/api/v2/billing-meter-stream/event-stream/create>). The token
//!   is renewed a minute before it expires (by the session's own `created`/`expires_at`,
//!   so local clock skew does not matter) and whenever Stripe says it expired.
//! - v1: `POST {api_base}/v1/billing/meter_events`, one form-encoded event per request,
//!   validated synchronously (<https://docs.stripe.com/api/billing/meter-event/create>).
//!
//! Errors come as `{"error": {"type", "code", "message"}}`; the `code` (or, without one, the
//! `type`) is what [`super::retry`] classifies. Requests are spaced by a `governor` rate
//! limiter at `stripe.rate_limit` per second (session creation included).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::batch::{self, Report};
use super::retry::Answer;
use crate::config::StripeSettings;
use crate::telemetry as t;

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Which Stripe endpoint family sends events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Meter event stream: batches of up to 100, session tokens.
    V2,
    /// `/v1/billing/meter_events`: one event per request.
    V1,
}

struct Session {
    token: String,
    /// Renew at this instant.
    renew_at: Instant,
}

/// A Stripe meter events client.
pub struct Client {
    http: reqwest::Client,
    api: Api,
    api_base: String,
    meter_events_base: String,
    api_key: String,
    api_version: String,
    limiter: DefaultDirectRateLimiter,
    session: tokio::sync::Mutex<Option<Session>>,
}

impl Client {
    /// A client for `settings`, authenticating with the secret `api_key`.
    pub fn new(settings: &StripeSettings, api_key: String) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("callmeter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let rate = NonZeroU32::new(settings.rate_limit).unwrap_or(NonZeroU32::MIN);
        Ok(Client {
            http,
            api: if settings.api == "v1" {
                Api::V1
            } else {
                Api::V2
            },
            api_base: settings.api_base.trim_end_matches('/').to_string(),
            meter_events_base: settings.meter_events_base.trim_end_matches('/').to_string(),
            api_key,
            api_version: settings.api_version.clone(),
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            session: tokio::sync::Mutex::new(None),
        })
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// Events per request: the configured batch size for v2, 1 for v1.
    pub fn events_per_request(&self, batch_size: usize) -> usize {
        match self.api {
            Api::V2 => batch_size.clamp(1, batch::MAX_EVENTS_PER_REQUEST),
            Api::V1 => 1,
        }
    }

    /// One attempt at sending `events` (v1: exactly one event).
    pub async fn send(&self, events: &[Report]) -> Answer {
        match self.api {
            Api::V2 => self.stream(events).await,
            Api::V1 => match events {
                [r] => self.meter_event_v1(r).await,
                _ => Answer::Http {
                    status: 400,
                    code: Some("callmeter_batch_size".into()),
                    message: "the v1 API takes one event per request".into(),
                    should_retry: Some(false),
                    retry_after: None,
                },
            },
        }
    }

    /// Forgets the session token (Stripe said it expired).
    pub async fn drop_session(&self) {
        *self.session.lock().await = None;
    }

    async fn stream(&self, events: &[Report]) -> Answer {
        let token = match self.token().await {
            Ok(t) => t,
            Err(a) => return a,
        };
        let req = self
            .http
            .post(format!(
                "{}/v2/billing/meter_event_stream",
                self.meter_events_base
            ))
            .bearer_auth(token)
            .header("Stripe-Version", &self.api_version)
            .json(&batch::v2_body(events));
        self.execute(req, "v2").await.0
    }

    async fn meter_event_v1(&self, r: &Report) -> Answer {
        let req = self
            .http
            .post(format!("{}/v1/billing/meter_events", self.api_base))
            .bearer_auth(&self.api_key)
            .header("Stripe-Version", &self.api_version)
            .form(&batch::v1_form(r));
        self.execute(req, "v1").await.0
    }

    /// The current session token, creating a session when there is none or it is about to
    /// expire. A failure to create one is returned as that request's answer.
    async fn token(&self) -> Result<String, Answer> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && Instant::now() < s.renew_at
        {
            return Ok(s.token.clone());
        }
        let req = self
            .http
            .post(format!("{}/v2/billing/meter_event_session", self.api_base))
            .bearer_auth(&self.api_key)
            .header("Stripe-Version", &self.api_version)
            .json(&serde_json::json!({}));
        let (answer, body) = self.execute(req, "v2_session").await;
        if answer != Answer::Ok {
            return Err(answer);
        }
        #[derive(serde::Deserialize)]
        struct SessionBody {
            authentication_token: String,
            created: Option<String>,
            expires_at: Option<String>,
        }
        let parsed: SessionBody = serde_json::from_str(&body).map_err(|e| Answer::Http {
            status: 502,
            code: None,
            message: format!("unreadable meter event session: {e}"),
            should_retry: None,
            retry_after: None,
        })?;
        let secs = |s: &Option<String>| {
            s.as_deref()
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.timestamp())
        };
        let ttl = match (secs(&parsed.created), secs(&parsed.expires_at)) {
            (Some(c), Some(e)) if e > c => Duration::from_secs((e - c) as u64),
            _ => Duration::from_secs(15 * 60),
        };
        let margin = (ttl / 5).min(Duration::from_secs(60));
        let token = parsed.authentication_token;
        *guard = Some(Session {
            token: token.clone(),
            renew_at: Instant::now() + ttl - margin,
        });
        tracing::debug!(ttl_secs = ttl.as_secs(), "new Stripe meter event session");
        Ok(token)
    }

    /// Sends one request (after the rate limiter) and reads the whole answer. Returns the
    /// answer and the body of a success.
    async fn execute(&self, req: reqwest::RequestBuilder, api: &'static str) -> (Answer, String) {
        self.limiter.until_ready().await;
        metrics::counter!(t::STRIPE_BATCHES, "api" => api).increment(1);
        let answer = match req.send().await {
            Err(e) => (transport(&e), String::new()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let should_retry = header("stripe-should-retry").map(|v| v == "true");
                let retry_after = header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                match resp.text().await {
                    // A dropped connection after the status line: as good as no answer.
                    Err(e) => (transport(&e), String::new()),
                    Ok(body) if (200..300).contains(&status) => (Answer::Ok, body),
                    Ok(body) => {
                        let (code, message) = error_fields(&body);
                        (
                            Answer::Http {
                                status,
                                code,
                                message,
                                should_retry,
                                retry_after,
                            },
                            String::new(),
                        )
                    }
                }
            }
        };
        match answer.0.failure_label() {
            None => metrics::gauge!(t::STRIPE_LAST_SUCCESS)
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0),
            Some(label) => {
                metrics::counter!(t::STRIPE_FAILURES, "status" => label).increment(1);
            }
        }
        answer
    }
}

fn transport(e: &reqwest::Error) -> Answer {
    Answer::Transport {
        timeout: e.is_timeout(),
        message: format!("{e}"),
    }
}

/// Stripe's error `code` (or its `type` when there is no code) and message.
pub fn error_fields(body: &str) -> (Option<String>, String) {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return (None, body.chars().take(200).collect()),
    };
    let e = &v["error"];
    let code = e["code"]
        .as_str()
        .or_else(|| e["type"].as_str())
        .map(str::to_string);
    let message = e["message"].as_str().unwrap_or_default().to_string();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_fields(
                r#"{"error":{"type":"temporary_session_expired","code":"billing_meter_event_session_expired","message":"expired"}}"#
            ),
            (
                Some("billing_meter_event_session_expired".into()),
                "expired".into()
            )
        );
        assert_eq!(
            error_fields(r#"{"error":{"type":"api_error","message":"boom"}}"#),
            (Some("api_error".into()), "boom".into())
        );
        assert_eq!(error_fields("<html>"), (None, "<html>".into()));
    }
}
