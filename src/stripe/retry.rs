//! Which Stripe answers are retried, and how long to wait between attempts (pure).
//!
//! Following Stripe's guidance (<https://docs.stripe.com/error-low-level>) and its SDKs:
//! `Stripe-Should-Retry: true|false` decides when present; otherwise 409 (lock conflicts),
//! 429 (rate limited), 5xx and connection errors (including timeouts) are retried with
//! exponential backoff and jitter, other 4xx are permanent. Meter events are idempotent by
//! `identifier`, so a retry never counts twice; Stripe's answer to a replayed identifier
//! (`400 duplicate_meter_event`) means the event is already recorded.

use std::time::Duration;

/// The session token expired (v2 stream, 401): get a new one and resend at once.
pub const SESSION_EXPIRED: &str = "billing_meter_event_session_expired";
/// An identifier Stripe already holds: the event is recorded.
pub const DUPLICATE: &str = "duplicate_meter_event";
/// Session refreshes allowed per request before the expiry counts as a failed attempt.
pub const MAX_SESSION_REFRESHES: u32 = 3;

/// One attempt's answer, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Ok,
    /// A non-2xx answer: status, Stripe's error `code` (or `type`), message and headers.
    Http {
        status: u16,
        code: Option<String>,
        message: String,
        /// `Stripe-Should-Retry`.
        should_retry: Option<bool>,
        /// `Retry-After`, if given.
        retry_after: Option<Duration>,
    },
    /// No complete answer: connection refused or dropped, or the request timed out.
    Transport { timeout: bool, message: String },
}

impl Answer {
    /// The label of `callmeter_stripe_failures_total{status}`, `None` for a success.
    pub fn failure_label(&self) -> Option<String> {
        match self {
            Answer::Ok => None,
            Answer::Http { status, .. } => Some(status.to_string()),
            Answer::Transport { timeout: true, .. } => Some("timeout".into()),
            Answer::Transport { .. } => Some("connection".into()),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Accepted.
    Delivered,
    /// Stripe already holds the identifier: accepted before.
    AlreadyDelivered,
    /// Create a new meter event session and resend now.
    RefreshSession,
    /// Transient: back off and retry.
    Retry,
    /// Permanent rejection of the request's content, with Stripe's code.
    Reject(String),
    /// Retrying cannot help until an operator acts (bad API key, missing permission):
    /// stop this cycle and keep the events pending.
    Stop(String),
}

/// Classifies an answer.
pub fn classify(a: &Answer) -> Disposition {
    match a {
        Answer::Ok => Disposition::Delivered,
        Answer::Transport { .. } => Disposition::Retry,
        Answer::Http {
            status,
            code,
            message,
            should_retry,
            ..
        } => {
            let code_str = code.as_deref().unwrap_or("");
            if code_str == DUPLICATE {
                return Disposition::AlreadyDelivered;
            }
            if code_str == SESSION_EXPIRED {
                return Disposition::RefreshSession;
            }
            let auth = matches!(status, 401 | 403);
            let describe = || {
                if code_str.is_empty() {
                    format!("HTTP {status}: {message}")
                } else {
                    code_str.to_string()
                }
            };
            match should_retry {
                Some(true) => Disposition::Retry,
                Some(false) if auth => Disposition::Stop(describe()),
                Some(false) => Disposition::Reject(describe()),
                None if matches!(status, 409 | 429) || *status >= 500 => Disposition::Retry,
                None if auth => Disposition::Stop(describe()),
                None => Disposition::Reject(describe()),
            }
        }
    }
}

/// Delays between attempts of one request: jittered exponential backoff from 250 ms,
/// capped at 8 s (plus jitter), 7 retries (under a minute in all) before the request is
/// left for the next cycle.
pub fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(8))
        .with_jitter()
        .with_max_times(7)
        .build()
}

/// The wait before the next attempt: the backoff delay, or `Retry-After` if longer (capped
/// at a minute).
pub fn wait(backoff_delay: Duration, a: &Answer) -> Duration {
    match a {
        Answer::Http {
            retry_after: Some(r),
            ..
        } => backoff_delay.max((*r).min(Duration::from_secs(60))),
        _ => backoff_delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: Option<&str>, should_retry: Option<bool>) -> Answer {
        Answer::Http {
            status,
            code: code.map(str::to_string),
            message: "m".into(),
            should_retry,
            retry_after: None,
        }
    }

    #[test]
    fn transient_failures_are_retried() {
        for s in [409, 429, 500, 502, 503, 504] {
            assert_eq!(classify(&http(s, None, None)), Disposition::Retry, "{s}");
        }
        assert_eq!(
            classify(&Answer::Transport {
                timeout: true,
                message: "t".into()
            }),
            Disposition::Retry
        );
        assert_eq!(
            classify(&Answer::Transport {
                timeout: false,
                message: "reset".into()
            }),
            Disposition::Retry
        );
    }

    #[test]
    fn stripe_should_retry_decides_when_present() {
        assert_eq!(classify(&http(400, None, Some(true))), Disposition::Retry);
        assert_eq!(
            classify(&http(503, Some("x"), Some(false))),
            Disposition::Reject("x".into())
        );
        assert_eq!(
            classify(&http(429, None, Some(false))),
            Disposition::Reject("HTTP 429: m".into())
        );
    }

    #[test]
    fn permanent_and_special_codes() {
        assert_eq!(
            classify(&http(400, Some("meter_event_customer_not_found"), None)),
            Disposition::Reject("meter_event_customer_not_found".into())
        );
        assert_eq!(
            classify(&http(400, Some(DUPLICATE), None)),
            Disposition::AlreadyDelivered
        );
        assert_eq!(
            classify(&http(401, Some(SESSION_EXPIRED), None)),
            Disposition::RefreshSession
        );
        // Some SDKs see the expiry as a 400 of type temporary_session_expired.
        assert_eq!(
            classify(&http(400, Some(SESSION_EXPIRED), None)),
            Disposition::RefreshSession
        );
        assert_eq!(
            classify(&http(401, Some("api_key_invalid"), None)),
            Disposition::Stop("api_key_invalid".into())
        );
        assert_eq!(classify(&Answer::Ok), Disposition::Delivered);
    }

    #[test]
    fn backoff_grows_is_bounded_and_honours_retry_after() {
        let d: Vec<Duration> = backoff().collect();
        assert_eq!(d.len(), 7);
        assert!(d.iter().all(|x| *x <= Duration::from_secs(16)));
        assert!(d[0] < Duration::from_secs(1));
        let a = Answer::Http {
            status: 429,
            code: None,
            message: String::new(),
            should_retry: None,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(wait(Duration::from_millis(250), &a), Duration::from_secs(3));
        assert_eq!(
            wait(Duration::from_millis(250), &Answer::Ok),
            Duration::from_millis(250)
        );
        assert_eq!(a.failure_label().as_deref(), Some("429"));
        assert_eq!(Answer::Ok.failure_label(), None);
    }
}
