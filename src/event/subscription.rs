//! The `data` of the subscription events of CONTRACT section 10, decoded and validated
//! (pure): `subscription.updated` ([`SubscriptionUpdated`]) and `subscription.canceled`
//! ([`SubscriptionCanceled`]). Rejections are `invalid_data`; whether the plan and add-ons
//! exist, and whether the tenant may change its time zone, are judged later against the
//! catalog and the tenant ([`crate::subscription`]), as `unknown_plan` or `invalid_data`.
//!
//! These types are also what `schemas/events/subscription.*.schema.json` are generated
//! from (schemars), so producers can validate their events with the decoder's own rules.
//!
//! Decisions where CONTRACT section 10 is silent:
//! - `effective_at` is kept to the whole second (the `subscriptions` table stores
//!   `DateTime('UTC')`), its fraction dropped, so a restored change equals the live one.
//! - Unknown `data` fields are ignored, as for the other event types.
//! - `addons` maps each add-on to a whole number of units (`0..=4294967295`); an add-on at
//!   0 units is the same as not listed.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Rejection;
use super::data::{invalid, object};

/// `type` of a subscription change.
pub const SUBSCRIPTION_UPDATED: &str = "subscription.updated";
/// `type` of a cancellation.
pub const SUBSCRIPTION_CANCELED: &str = "subscription.canceled";

/// Whether `ty` is one of the subscription event types (always accepted, whatever the
/// meters).
pub fn is_subscription_type(ty: &str) -> bool {
    ty == SUBSCRIPTION_UPDATED || ty == SUBSCRIPTION_CANCELED
}

/// `billing_cycle` of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CycleName {
    Monthly,
    Yearly,
}

/// `subscription.updated` data: the tenant's subscription from `effective_at` on.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(title = "subscription.updated data")]
pub struct SubscriptionUpdated {
    /// A configured plan id (else the event is `unknown_plan`).
    #[schemars(length(min = 1, max = 256))]
    pub plan: String,
    /// Add-on id -> whole units held from `effective_at` on (default: none). Each must be an
    /// add-on of `plan` (else `unknown_plan`).
    #[serde(default)]
    pub addons: BTreeMap<String, u32>,
    /// `monthly` or `yearly`; default: the tenant's cycle before the change (`monthly` for
    /// a new tenant).
    #[serde(default)]
    pub billing_cycle: Option<CycleName>,
    /// The tenant's Stripe customer; default: unchanged.
    #[serde(default)]
    #[schemars(length(min = 1, max = 256))]
    pub stripe_customer_id: Option<String>,
    /// RFC 3339 with offset; default: the event's `time`. Kept to the whole second.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub effective_at: Option<DateTime<Utc>>,
    /// IANA time zone of the usage periods: required for a tenant not yet known; a known
    /// tenant may only repeat its own.
    #[serde(default)]
    #[schemars(length(min = 1, max = 64))]
    pub timezone: Option<String>,
    /// Day of month the usage periods start on (1..=31): required for a tenant not yet
    /// known; a known tenant may only repeat its own.
    #[serde(default)]
    #[schemars(range(min = 1, max = 31))]
    pub anchor_day: Option<u32>,
}

/// `subscription.canceled` data.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(title = "subscription.canceled data")]
pub struct SubscriptionCanceled {
    /// RFC 3339 with offset; default: the event's `time`. Usage events later than it are
    /// `no_subscription`. Kept to the whole second.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub effective_at: Option<DateTime<Utc>>,
}

/// `t` without its fraction of a second.
pub fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(1)).unwrap_or(t)
}

/// Decodes `subscription.updated` data; `time` is the event's (the default `effective_at`).
///
/// Errors: `invalid_data` (not an object of this shape, an empty plan, a bad time zone or
/// anchor day, fractional or negative add-on units).
pub fn decode_updated(
    data: &RawValue,
    time: DateTime<Utc>,
) -> Result<SubscriptionUpdated, Rejection> {
    let mut u: SubscriptionUpdated = object(data, "subscription.updated data")?;
    validate_updated(&mut u, time)?;
    Ok(u)
}

/// Checks and completes a decoded `subscription.updated` (the HTTP route runs this on its
/// body too): `effective_at` defaulted to `time` and cut to the second.
///
/// Errors: `invalid_data`, as [`decode_updated`].
pub fn validate_updated(u: &mut SubscriptionUpdated, time: DateTime<Utc>) -> Result<(), Rejection> {
    if u.plan.is_empty() || u.plan.len() > 256 {
        return Err(invalid("field `plan` must be 1..256 characters"));
    }
    if let Some(tz) = &u.timezone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        return Err(invalid(format!(
            "field `timezone` must be an IANA time zone name, got \"{}\"",
            super::truncate(tz)
        )));
    }
    if let Some(d) = u.anchor_day
        && !(1..=31).contains(&d)
    {
        return Err(invalid(format!(
            "field `anchor_day` must be 1..=31, got {d}"
        )));
    }
    if let Some(s) = &u.stripe_customer_id
        && (s.trim().is_empty() || s.len() > 256)
    {
        return Err(invalid(
            "field `stripe_customer_id` must be 1..256 characters",
        ));
    }
    if u.addons.keys().any(|a| a.is_empty() || a.len() > 256) {
        return Err(invalid("add-on ids in `addons` must be 1..256 characters"));
    }
    u.addons.retain(|_, n| *n > 0);
    u.effective_at = Some(whole_second(u.effective_at.unwrap_or(time)));
    Ok(())
}

/// Decodes `subscription.canceled` data; `time` is the event's (the default `effective_at`).
///
/// Errors: `invalid_data`.
pub fn decode_canceled(
    data: &RawValue,
    time: DateTime<Utc>,
) -> Result<SubscriptionCanceled, Rejection> {
    let mut c: SubscriptionCanceled = object(data, "subscription.canceled data")?;
    c.effective_at = Some(whole_second(c.effective_at.unwrap_or(time)));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, ErrorCode, decode};

    fn ev(ty: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"s1","source":"billing","type":"{ty}","subject":"acme","time":"2026-11-20T10:00:00.750Z","data":{data}}}"#
        )
    }

    #[test]
    fn updated_and_canceled_decode_with_defaults() {
        // Subscription types are accepted whatever the meters (`known_type` says no).
        let p = ev(
            SUBSCRIPTION_UPDATED,
            r#"{"plan":"pro","addons":{"rec":1,"none":0}}"#,
        );
        let e = decode(p.as_bytes(), |_| false).unwrap();
        let Body::SubscriptionUpdated(u) = e.body else {
            panic!("{:?}", e.body)
        };
        assert_eq!(u.plan, "pro");
        assert_eq!(u.addons, BTreeMap::from([("rec".to_string(), 1)]));
        assert_eq!(u.billing_cycle, None);
        assert_eq!(
            u.effective_at.unwrap().to_rfc3339(),
            "2026-11-20T10:00:00+00:00"
        );
        let p = ev(
            SUBSCRIPTION_CANCELED,
            r#"{"effective_at":"2026-11-25T00:00:00+01:00"}"#,
        );
        let e = decode(p.as_bytes(), |_| false).unwrap();
        let Body::SubscriptionCanceled(c) = e.body else {
            panic!()
        };
        assert_eq!(
            c.effective_at.unwrap().to_rfc3339(),
            "2026-11-24T23:00:00+00:00"
        );
    }

    #[test]
    fn bad_subscription_data_is_invalid_data() {
        for data in [
            r#"{"addons":{}}"#,
            r#"{"plan":""}"#,
            r#"{"plan":"p","addons":{"a":-1}}"#,
            r#"{"plan":"p","addons":{"a":1.5}}"#,
            r#"{"plan":"p","billing_cycle":"weekly"}"#,
            r#"{"plan":"p","effective_at":"yesterday"}"#,
            r#"{"plan":"p","timezone":"Mars/Olympus"}"#,
            r#"{"plan":"p","anchor_day":32}"#,
            r#"{"plan":"p","stripe_customer_id":" "}"#,
            r#"{"plan":7}"#,
        ] {
            let p = ev(SUBSCRIPTION_UPDATED, data);
            let e = decode(p.as_bytes(), |_| false).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidData, "{data}: {e}");
        }
        let p = ev(SUBSCRIPTION_CANCELED, r#"{"effective_at":5}"#);
        assert_eq!(
            decode(p.as_bytes(), |_| false).unwrap_err().code,
            ErrorCode::InvalidData
        );
    }
}
