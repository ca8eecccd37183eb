//! Usage reporting to Stripe meters, exactly once, so that Stripe's invoices match
//! callmeter's totals to the unit.
//!
//! For every tenant with a `stripe_customer_id` and every meter under `[stripe.meters]`,
//! the reporter sends the *flushed* total of each usage period (`usage_rollups FINAL`) to
//! the Stripe meter named by `event_name`, as deltas in whole units of
//! `meter value x multiplier`. Parts:
//!
//! - [`batch`] (pure): targets, deltas, carry-forward of decreases, deterministic
//!   identifiers, timestamps inside the usage period and Stripe's 35-day / 5-minute window,
//!   batches of at most 100, request bodies.
//! - [`client`] (I/O): the v2 meter event stream with its 15-minute session tokens (default),
//!   or the v1 `meter_events` endpoint (`stripe.api = "v1"`); rate limited at
//!   `stripe.rate_limit` requests per second.
//! - [`retry`] (pure): which answers are retried (409, 429, 5xx, connection errors, as
//!   `Stripe-Should-Retry` says), with jittered exponential backoff.
//! - [`ledger`] (I/O): usage from ClickHouse and the `stripe_reports` ledger.
//! - [`reporter`]: the loop, ownership across instances, metrics.
//! - `test_server` (cargo feature `testkit`): a Stripe-compatible test double for tests and
//!   the demo (never used by the pipeline itself).
//!
//! Exactly once: a report is written to `stripe_reports` as pending before it is sent, with
//! an identifier derived from what it covers; a crash resends it with the same identifier
//! and Stripe drops the duplicate (identifiers are unique over a rolling 24 h). Usage that can
//! no longer be reported (its period ended more than 35 days ago) is counted in
//! `callmeter_stripe_unreportable_units_total` and logged, never dropped silently.
//!
//! Stripe references: meter events <https://docs.stripe.com/api/billing/meter-event/create>,
//! meter event streams <https://docs.stripe.com/api/v2/billing-meter-stream>, recording
//! usage <https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api>,
//! errors and retries <https://docs.stripe.com/error-low-level>.

pub mod batch;
pub mod client;
pub mod ledger;
pub mod reporter;
pub mod retry;
#[cfg(feature = "testkit")]
pub mod test_server;

pub use reporter::{Reporter, run};

use crate::config::{ConfigError, StripeSettings};

/// The environment variable holding the Stripe secret key.
pub const API_KEY_ENV: &str = "STRIPE_API_KEY";

/// The secret key when reporting is enabled: `Ok(None)` when disabled, an error naming
/// [`API_KEY_ENV`] when enabled without it.
pub fn api_key(settings: &StripeSettings) -> Result<Option<String>, ConfigError> {
    if !settings.enabled {
        return Ok(None);
    }
    match std::env::var(API_KEY_ENV) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        _ => Err(ConfigError::new(
            API_KEY_ENV,
            "must hold the Stripe secret key when stripe.enabled = true",
        )),
    }
}
