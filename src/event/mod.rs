//! CloudEvents 1.0 decoding and validation (CONTRACT section 1), pure and allocation-light:
//! strings are borrowed from the message payload where JSON escaping allows.
//!
//! [`decode`] turns payload bytes into an [`Event`] or a [`Rejection`] carrying the
//! dead-letter code. The subscription events' data (CONTRACT section 10) are decoded in
//! `subscription` (re-exported here). Tenant-dependent checks (unknown tenant, currency, clock skew, closed
//! period) happen later, in [`crate::state`], because they need the catalog and the clock.
//!
//! Layout: the envelope, the event types and [`decode`] here; the built-in types' `data` in
//! `data`, exact decimals in `decimal`, field look-ups for configured meters in `lookup`,
//! and the one-pass decoder of the common case in [`fast`].

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

mod data;
mod decimal;
mod fast;
mod lookup;
pub mod schema;
mod subscription;

use data::{decode_call, decode_revenue, decode_topup};
pub use decimal::{
    MAX_AMOUNT_FRACTION_DIGITS, MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS, parse_decimal_str,
    raw_decimal,
};
pub use lookup::{lookup, try_lookup};
pub use subscription::{
    CycleName, SUBSCRIPTION_CANCELED, SUBSCRIPTION_UPDATED, SubscriptionCanceled,
    SubscriptionUpdated, is_subscription_type, validate_updated, whole_second,
};

/// Dead-letter reason codes (header `callmeter.error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidEvent,
    UnsupportedType,
    InvalidData,
    UnknownTenant,
    CurrencyMismatch,
    FutureEvent,
    PeriodClosed,
    UnknownPlan,
    NoSubscription,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidEvent,
        ErrorCode::UnsupportedType,
        ErrorCode::InvalidData,
        ErrorCode::UnknownTenant,
        ErrorCode::CurrencyMismatch,
        ErrorCode::FutureEvent,
        ErrorCode::PeriodClosed,
        ErrorCode::UnknownPlan,
        ErrorCode::NoSubscription,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::UnsupportedType => "unsupported_type",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::UnknownTenant => "unknown_tenant",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::FutureEvent => "future_event",
            ErrorCode::PeriodClosed => "period_closed",
            ErrorCode::UnknownPlan => "unknown_plan",
            ErrorCode::NoSubscription => "no_subscription",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event cannot be counted: the dead-letter code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

pub const CALL_COMPLETED: &str = "call.completed";
pub const REVENUE_RECORDED: &str = "revenue.recorded";
pub const WALLET_TOPPED_UP: &str = "wallet.topped_up";

/// Maximum `duration_ms` of a call: 24 h.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// `call.completed` data.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(title = "call.completed data")]
pub struct CallCompleted<'a> {
    /// The call's id at the voice platform.
    #[schemars(length(min = 1))]
    pub call_id: Cow<'a, str>,
    /// Duration in milliseconds, 0..=86400000.
    #[schemars(range(max = 86_400_000))]
    pub duration_ms: u64,
    pub direction: Direction,
    /// Who handled the call; default `ai`.
    #[schemars(default = "HandledBy::default_ai")]
    pub handled_by: HandledBy,
    /// An order taken on the call (not negative).
    pub revenue: Option<Money<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandledBy {
    Ai,
    Human,
}

impl HandledBy {
    fn default_ai() -> HandledBy {
        HandledBy::Ai
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HandledBy::Ai => "ai",
            HandledBy::Human => "human",
        }
    }
}

/// An amount with its ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
pub struct Money<'a> {
    /// A decimal string, at most 6 fraction digits.
    #[schemars(with = "String", regex(pattern = r"^-?[0-9]{1,29}(\.[0-9]{1,6})?$"))]
    pub amount: Decimal,
    /// ISO 4217: 3 upper-case letters.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: Cow<'a, str>,
}

/// `revenue.recorded` data.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(title = "revenue.recorded data")]
pub struct RevenueRecorded<'a> {
    /// The amount and currency, flattened into `data` (`amount` may be negative: a refund).
    #[schemars(flatten)]
    pub amount: Money<'a>,
    pub order_id: Option<Cow<'a, str>>,
    pub call_id: Option<Cow<'a, str>>,
}

/// `wallet.topped_up` data (prepaid credit).
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(title = "wallet.topped_up data")]
pub struct WalletTopUp<'a> {
    /// The amount (positive) and currency, flattened into `data`.
    #[schemars(flatten)]
    pub amount: Money<'a>,
    /// The payment processor's transaction id.
    #[schemars(length(min = 1))]
    pub payment_reference: Cow<'a, str>,
}

/// The typed `data` of an event.
#[derive(Debug, Clone)]
pub enum Body<'a> {
    Call(CallCompleted<'a>),
    Revenue(RevenueRecorded<'a>),
    WalletTopUp(WalletTopUp<'a>),
    /// `subscription.updated` (CONTRACT section 10).
    SubscriptionUpdated(Box<SubscriptionUpdated>),
    /// `subscription.canceled` (CONTRACT section 10).
    SubscriptionCanceled(SubscriptionCanceled),
    /// A type only configured meters read; fields are looked up on demand.
    Custom,
}

/// A decoded, envelope-valid CloudEvent.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub id: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub ty: Cow<'a, str>,
    pub subject: Cow<'a, str>,
    pub time: DateTime<Utc>,
    /// The raw JSON text of the `data` object (for configured meters' field look-ups).
    pub data: &'a str,
    pub body: Body<'a>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_base64: Option<&'a RawValue>,
}

/// Is `s` a valid tenant id: 1..128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn json_error(payload: &[u8], e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Rejection::new(ErrorCode::InvalidJson, format!("not parseable JSON: {e}"))
        }
        Category::Data => {
            // A type error can hide a syntax error further on: tell them apart.
            if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
                Rejection::new(ErrorCode::InvalidJson, format!("not parseable JSON: {e}"))
            } else {
                Rejection::new(ErrorCode::InvalidEvent, format!("not a CloudEvent: {e}"))
            }
        }
    }
}

fn required<'a>(
    v: Option<Cow<'a, str>>,
    name: &str,
    max: usize,
) -> Result<Cow<'a, str>, Rejection> {
    let v = v.ok_or_else(|| {
        Rejection::new(
            ErrorCode::InvalidEvent,
            format!("missing attribute `{name}`"),
        )
    })?;
    let n = v.chars().count();
    if n == 0 || n > max {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            format!("attribute `{name}` must be 1..{max} characters, got {n}"),
        ));
    }
    Ok(v)
}

/// Decodes and validates a CloudEvent in structured JSON mode.
///
/// `known_type` says whether a `type` is one the pipeline counts (built-in or used by a
/// configured meter). Errors: `invalid_json`, `invalid_event`, `unsupported_type`,
/// `invalid_data`.
///
/// A valid `call.completed` in the usual shape is decoded in one pass by [`fast`]; anything
/// else, including every event that is rejected, goes through the general decoder, so the
/// result is the same either way.
pub fn decode<'a>(
    payload: &'a [u8],
    known_type: impl Fn(&str) -> bool,
) -> Result<Event<'a>, Rejection> {
    if let Some(ev) = fast::call_completed(payload, &known_type) {
        return Ok(ev);
    }
    decode_general(payload, known_type)
}

/// Both decoders' answers, for the fuzz target and the property tests: the one-pass
/// decoder's (`None` when it leaves the payload to the general decoder) and the general
/// decoder's. [`decode`] is correct only if, whenever the first is `Some`, the second is `Ok`
/// with the same event.
#[doc(hidden)]
pub fn decode_paths<'a>(
    payload: &'a [u8],
    known_type: impl Fn(&str) -> bool,
) -> (Option<Event<'a>>, Result<Event<'a>, Rejection>) {
    (
        fast::call_completed(payload, &known_type),
        decode_general(payload, known_type),
    )
}

/// The general decoder: serde_json into the envelope, then the typed `data`.
fn decode_general<'a>(
    payload: &'a [u8],
    known_type: impl Fn(&str) -> bool,
) -> Result<Event<'a>, Rejection> {
    if payload.is_empty() {
        return Err(Rejection::new(ErrorCode::InvalidJson, "empty payload"));
    }
    // CONTRACT section 1: UTF-8. serde_json does not check strings it skips (unknown
    // attributes), so check the whole payload.
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(Rejection::new(
            ErrorCode::InvalidJson,
            format!("not UTF-8: {e}"),
        ));
    }
    let env: Envelope<'a> = match serde_json::from_slice(payload) {
        Ok(e) => e,
        Err(e) => return Err(json_error(payload, e)),
    };
    match env.specversion.as_deref() {
        Some("1.0") => {}
        Some(v) => {
            return Err(Rejection::new(
                ErrorCode::InvalidEvent,
                format!("specversion must be \"1.0\", got \"{v}\""),
            ));
        }
        None => {
            return Err(Rejection::new(
                ErrorCode::InvalidEvent,
                "missing attribute `specversion`",
            ));
        }
    }
    let id = required(env.id, "id", 128)?;
    let source = required(env.source, "source", 256)?;
    let ty = required(env.ty, "type", 256)?;
    let subject = env.subject.ok_or_else(|| {
        Rejection::new(
            ErrorCode::InvalidEvent,
            "missing attribute `subject` (the tenant id)",
        )
    })?;
    if !valid_subject(&subject) {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            "attribute `subject` (the tenant id) must be 1..128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let time = env
        .time
        .ok_or_else(|| Rejection::new(ErrorCode::InvalidEvent, "missing attribute `time`"))?;
    let time = DateTime::parse_from_rfc3339(&time)
        .map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidEvent,
                format!("attribute `time` is not RFC 3339 with an offset: {e}"),
            )
        })?
        .with_timezone(&Utc);
    if let Some(ct) = env.datacontenttype.as_deref()
        && !ct.contains("json")
    {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            format!("datacontenttype `{ct}` is not JSON"),
        ));
    }
    if env.data_base64.is_some() {
        return Err(Rejection::new(
            ErrorCode::InvalidEvent,
            "data_base64 is not supported: send `data` as a JSON object",
        ));
    }
    if !known_type(&ty) && !is_subscription_type(&ty) {
        return Err(Rejection::new(
            ErrorCode::UnsupportedType,
            format!("no meter uses events of type `{ty}`"),
        ));
    }
    let data = env
        .data
        .ok_or_else(|| Rejection::new(ErrorCode::InvalidData, "missing `data` object"))?;
    if !data.get().trim_start().starts_with('{') {
        return Err(Rejection::new(
            ErrorCode::InvalidData,
            "`data` must be a JSON object",
        ));
    }
    let body = match &*ty {
        CALL_COMPLETED => Body::Call(decode_call(data)?),
        REVENUE_RECORDED => Body::Revenue(decode_revenue(data)?),
        WALLET_TOPPED_UP => Body::WalletTopUp(decode_topup(data)?),
        SUBSCRIPTION_UPDATED => {
            Body::SubscriptionUpdated(Box::new(subscription::decode_updated(data, time)?))
        }
        SUBSCRIPTION_CANCELED => {
            Body::SubscriptionCanceled(subscription::decode_canceled(data, time)?)
        }
        _ => Body::Custom,
    };
    Ok(Event {
        id,
        source,
        ty,
        subject,
        time,
        data: data.get(),
        body,
    })
}

/// `s` cut to 40 bytes (at a character boundary) for messages.
fn truncate(s: &str) -> String {
    if s.len() <= 40 {
        s.to_string()
    } else {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests;
