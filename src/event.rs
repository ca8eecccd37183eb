//! CloudEvents 1.0 decoding and validation (CONTRACT section 1), pure and allocation-light:
//! strings are borrowed from the message payload where JSON escaping allows.
//!
//! [`decode`] turns payload bytes into an [`Event`] or a [`Rejection`] carrying the
//! dead-letter code. The subscription events' data (CONTRACT section 10) are decoded in
//! `subscription` (re-exported here). Tenant-dependent checks (unknown tenant, currency, clock skew, closed
//! period) happen later, in [`crate::state`], because they need the catalog and the clock.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod schema;
mod subscription;

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

fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidData, msg)
}

#[derive(Deserialize)]
struct RawCall<'a> {
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    duration_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    direction: Option<&'a RawValue>,
    #[serde(borrow)]
    handled_by: Option<&'a RawValue>,
    #[serde(borrow)]
    revenue: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawMoney<'a> {
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
}

fn str_field<'a>(v: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, Rejection> {
    let v = v.ok_or_else(|| invalid(format!("missing field `{name}`")))?;
    let s: Cow<'a, str> = match serde_json::from_str::<Cow<'a, str>>(v.get()) {
        Ok(s) => s,
        Err(_) => return Err(invalid(format!("field `{name}` must be a string"))),
    };
    Ok(s)
}

fn opt_str_field<'a>(
    v: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match v {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => str_field(Some(r), name).map(Some),
    }
}

/// The most fraction digits a counted number may have: `Decimal(38, 9)`.
pub const MAX_FRACTION_DIGITS: usize = 9;
/// The most integer digits a counted number may have: `Decimal(38, 9)`.
pub const MAX_INTEGER_DIGITS: usize = 29;
/// The most fraction digits of a decimal amount in an event (CONTRACT section 1).
pub const MAX_AMOUNT_FRACTION_DIGITS: usize = 6;

/// Parses `-?digits(.digits)?` (no exponent, no sign but `-`) into an exact decimal with at
/// most `max_frac` fraction digits that fits `Decimal(38, 9)` and is held exactly by
/// [`Decimal`] (28 to 29 significant digits: up to 79228162514264337593543950335 in
/// magnitude). `-0` is zero. Errors are human text naming the value.
fn parse_exact(s: &str, max_frac: usize) -> Result<Decimal, String> {
    let shown = truncate(s);
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{shown}` is not a decimal number"));
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{shown}` is not a decimal number"));
        }
        if f.len() > max_frac {
            return Err(format!(
                "`{shown}` has more than {max_frac} fraction digits"
            ));
        }
    }
    let significant = int.trim_start_matches('0');
    if significant.len() > MAX_INTEGER_DIGITS {
        return Err(format!(
            "`{shown}` is too large: counted numbers must fit Decimal(38, 9), at most {MAX_INTEGER_DIGITS} integer digits"
        ));
    }
    // Leading zeros cost precision in the parser: parse the canonical text.
    let text: Cow<'_, str> = if significant.len() == int.len() {
        Cow::Borrowed(s)
    } else {
        let mut t = String::with_capacity(s.len());
        if s.starts_with('-') {
            t.push('-');
        }
        t.push_str(if significant.is_empty() {
            "0"
        } else {
            significant
        });
        if let Some(f) = frac {
            t.push('.');
            t.push_str(f);
        }
        Cow::Owned(t)
    };
    let too_large = || {
        format!(
            "`{shown}` is too large to be counted exactly (the largest magnitude is {})",
            Decimal::MAX
        )
    };
    let mut d = Decimal::from_str(&text).map_err(|_| too_large())?;
    // The parser rounds digits it cannot hold: only an exact value is counted.
    if d.scale() as usize != frac.map_or(0, str::len) {
        return Err(too_large());
    }
    if d.is_zero() {
        d.set_sign_positive(true);
    }
    Ok(d)
}

/// Parses a CONTRACT decimal: a JSON string `-?digits(.digits{1,6})?` that fits
/// `Decimal(38, 9)` exactly (see [`parse_exact`]).
pub fn parse_decimal_str(s: &str) -> Result<Decimal, String> {
    parse_exact(s, MAX_AMOUNT_FRACTION_DIGITS)
}

fn decimal_field(v: Option<&RawValue>, name: &str) -> Result<Decimal, Rejection> {
    let v = v.ok_or_else(|| invalid(format!("missing field `{name}`")))?;
    let s: Cow<'_, str> = serde_json::from_str(v.get()).map_err(|_| {
        invalid(format!(
            "field `{name}` must be a decimal string such as \"12.50\", got {}",
            truncate(v.get())
        ))
    })?;
    parse_decimal_str(&s).map_err(|e| invalid(format!("field `{name}`: {e}")))
}

fn currency_field<'a>(v: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, Rejection> {
    let c = str_field(v, name)?;
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "field `{name}` must be an ISO 4217 code of 3 upper-case letters, got \"{c}\""
        )));
    }
    Ok(c)
}

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

fn object<'a, T: Deserialize<'a>>(data: &'a RawValue, what: &str) -> Result<T, Rejection> {
    serde_json::from_str(data.get()).map_err(|e| invalid(format!("{what}: {e}")))
}

fn decode_money<'a>(v: &'a RawValue, prefix: &str) -> Result<Money<'a>, Rejection> {
    if !v.get().trim_start().starts_with('{') {
        return Err(invalid(format!("`{prefix}` must be an object")));
    }
    let m: RawMoney<'a> = object(v, prefix)?;
    Ok(Money {
        amount: decimal_field(m.amount, &format!("{prefix}.amount"))?,
        currency: currency_field(m.currency, &format!("{prefix}.currency"))?,
    })
}

fn decode_call(data: &RawValue) -> Result<CallCompleted<'_>, Rejection> {
    let raw: RawCall<'_> = object(data, "call.completed data")?;
    let call_id = str_field(raw.call_id, "call_id")?;
    if call_id.is_empty() {
        return Err(invalid("field `call_id` must not be empty"));
    }
    let d = raw
        .duration_ms
        .ok_or_else(|| invalid("missing field `duration_ms`"))?;
    let duration_ms = match d.get().parse::<u64>() {
        Ok(v) if v <= MAX_DURATION_MS => v,
        Ok(v) => {
            return Err(invalid(format!(
                "field `duration_ms` must be 0..={MAX_DURATION_MS}, got {v}"
            )));
        }
        Err(_) => {
            return Err(invalid(format!(
                "field `duration_ms` must be an integer 0..={MAX_DURATION_MS}, got {}",
                truncate(d.get())
            )));
        }
    };
    let direction = match &*str_field(raw.direction, "direction")? {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => {
            return Err(invalid(format!(
                "field `direction` must be \"inbound\" or \"outbound\", got \"{}\"",
                truncate(other)
            )));
        }
    };
    let handled_by = match opt_str_field(raw.handled_by, "handled_by")?.as_deref() {
        None | Some("ai") => HandledBy::Ai,
        Some("human") => HandledBy::Human,
        Some(other) => {
            return Err(invalid(format!(
                "field `handled_by` must be \"ai\" or \"human\", got \"{}\"",
                truncate(other)
            )));
        }
    };
    let revenue = match raw.revenue {
        None => None,
        Some(r) if r.get() == "null" => None,
        Some(r) => {
            let m = decode_money(r, "revenue")?;
            if m.amount < Decimal::ZERO {
                return Err(invalid(
                    "field `revenue.amount` must not be negative on a call (send a revenue.recorded refund)",
                ));
            }
            Some(m)
        }
    };
    Ok(CallCompleted {
        call_id,
        duration_ms,
        direction,
        handled_by,
        revenue,
    })
}

#[derive(Deserialize)]
struct RawRevenue<'a> {
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    payment_reference: Option<&'a RawValue>,
}

fn decode_revenue(data: &RawValue) -> Result<RevenueRecorded<'_>, Rejection> {
    let raw: RawRevenue<'_> = object(data, "revenue.recorded data")?;
    Ok(RevenueRecorded {
        amount: Money {
            amount: decimal_field(raw.amount, "amount")?,
            currency: currency_field(raw.currency, "currency")?,
        },
        order_id: opt_str_field(raw.order_id, "order_id")?,
        call_id: opt_str_field(raw.call_id, "call_id")?,
    })
}

fn decode_topup(data: &RawValue) -> Result<WalletTopUp<'_>, Rejection> {
    let raw: RawRevenue<'_> = object(data, "wallet.topped_up data")?;
    let amount = decimal_field(raw.amount, "amount")?;
    if amount <= Decimal::ZERO {
        return Err(invalid("field `amount` of a top-up must be positive"));
    }
    let payment_reference = str_field(raw.payment_reference, "payment_reference")?;
    if payment_reference.is_empty() {
        return Err(invalid("field `payment_reference` must not be empty"));
    }
    Ok(WalletTopUp {
        amount: Money {
            amount,
            currency: currency_field(raw.currency, "currency")?,
        },
        payment_reference,
    })
}

/// The members of a JSON object in order, duplicates kept (a map would keep one silently).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push(kv);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Looks up a (dotted) field in a JSON object (its raw text), returning its raw JSON text.
/// `None` when a segment is missing or not inside an object, or when a key on the path is
/// repeated (see [`try_lookup`] to tell these apart).
pub fn lookup<'a>(data: &'a str, path: &[String]) -> Option<&'a RawValue> {
    try_lookup(data, path).ok().flatten()
}

/// Like [`lookup`], but a key repeated on the path (`{"n":1,"n":2}`: which one counts?) is an
/// error naming it.
pub fn try_lookup<'a>(data: &'a str, path: &[String]) -> Result<Option<&'a RawValue>, String> {
    let mut text = data;
    let mut found = None;
    for seg in path {
        let Ok(Members(members)) = serde_json::from_str::<Members<'a>>(text) else {
            return Ok(None);
        };
        let mut hits = members.iter().filter(|(k, _)| k == seg);
        let Some((_, v)) = hits.next() else {
            return Ok(None);
        };
        if hits.next().is_some() {
            return Err(format!("key `{}` appears more than once", truncate(seg)));
        }
        text = v.get();
        found = Some(*v);
    }
    Ok(found)
}

/// A JSON value as an exact decimal: a number literal (no exponent, at most 9 fraction
/// digits) or a decimal string (at most 6 fraction digits), fitting `Decimal(38, 9)`.
pub fn raw_decimal(v: &RawValue) -> Result<Decimal, String> {
    let t = v.get().trim();
    if t.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(t).map_err(|e| e.to_string())?;
        return parse_decimal_str(&s);
    }
    if t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
        && t.contains(['e', 'E'])
    {
        return Err(format!(
            "`{}` uses an exponent; send a decimal",
            truncate(t)
        ));
    }
    let number = t
        .strip_prefix('-')
        .unwrap_or(t)
        .starts_with(|c: char| c.is_ascii_digit());
    if !number {
        return Err(format!("`{}` is not a number", truncate(t)));
    }
    parse_exact(t, MAX_FRACTION_DIGITS)
}

/// One-pass decoding of the common case: a valid `call.completed` whose attributes and data
/// fields are the known ones, each once, with strings that need no unescaping.
///
/// It returns `None` for anything else (unknown or repeated keys, escapes, other types,
/// every invalid value) and [`decode`] then runs the general decoder, which accepts or
/// rejects with the usual code and message. So this path only decides *how fast* a valid
/// event is decoded, never *whether* it is valid; the tests check that both paths agree.
mod fast {
    use std::borrow::Cow;

    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;

    use super::{
        Body, CALL_COMPLETED, CallCompleted, Direction, Event, HandledBy, MAX_DURATION_MS, Money,
        parse_decimal_str, valid_subject,
    };

    struct Cursor<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Cursor<'a> {
        fn bytes(&self) -> &'a [u8] {
            self.text.as_bytes()
        }

        /// Skips JSON whitespace and returns the next byte.
        fn peek(&mut self) -> Option<u8> {
            let b = self.bytes();
            while let Some(c) = b.get(self.at) {
                if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                    return Some(*c);
                }
                self.at += 1;
            }
            None
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.at += 1)
        }

        /// A string without escapes or control characters, borrowed.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.at;
            let b = self.bytes();
            loop {
                match *b.get(self.at)? {
                    b'"' => break,
                    b'\\' | 0..=0x1f => return None,
                    _ => self.at += 1,
                }
            }
            let s = &self.text[start..self.at];
            self.at += 1;
            Some(s)
        }

        /// A non-negative integer literal (`0` or no leading zero), as text.
        fn integer(&mut self) -> Option<&'a str> {
            self.peek()?;
            let start = self.at;
            let b = self.bytes();
            while b.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            let digits = &self.text[start..self.at];
            if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
                return None;
            }
            Some(digits)
        }

        fn null(&mut self) -> Option<()> {
            self.peek()?;
            if self.text[self.at..].starts_with("null") {
                self.at += 4;
                Some(())
            } else {
                None
            }
        }

        /// After a member: `true` if another follows, `false` at the closing brace.
        fn next_member(&mut self) -> Option<bool> {
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    Some(true)
                }
                b'}' => {
                    self.at += 1;
                    Some(false)
                }
                _ => None,
            }
        }
    }

    /// Sets a field seen once; a repeated key gives up.
    fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
        if slot.is_some() {
            return None;
        }
        *slot = Some(v);
        Some(())
    }

    /// `Some(None)` for `null`, `Some(Some(s))` for a string.
    fn string_or_null<'a>(c: &mut Cursor<'a>) -> Option<Option<&'a str>> {
        if c.peek()? == b'n' {
            c.null()?;
            Some(None)
        } else {
            c.string().map(Some)
        }
    }

    #[derive(Default)]
    struct Data<'a> {
        call_id: Option<&'a str>,
        duration_ms: Option<&'a str>,
        direction: Option<&'a str>,
        handled_by: Option<Option<&'a str>>,
        /// `Some(None)`: `null`; `Some(Some((amount, currency)))`: an object.
        revenue: Option<Option<(&'a str, &'a str)>>,
    }

    fn revenue<'a>(c: &mut Cursor<'a>) -> Option<Option<(&'a str, &'a str)>> {
        if c.peek()? == b'n' {
            c.null()?;
            return Some(None);
        }
        c.eat(b'{')?;
        let (mut amount, mut currency) = (None, None);
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            match key {
                "amount" => once(&mut amount, c.string()?)?,
                "currency" => once(&mut currency, c.string()?)?,
                _ => return None,
            }
            if !c.next_member()? {
                break;
            }
        }
        Some(Some((amount?, currency?)))
    }

    /// The `data` object; returns its fields and raw text.
    fn data<'a>(c: &mut Cursor<'a>) -> Option<(Data<'a>, &'a str)> {
        c.eat(b'{')?;
        let start = c.at - 1;
        let mut d = Data::default();
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            match key {
                "call_id" => once(&mut d.call_id, c.string()?)?,
                "duration_ms" => once(&mut d.duration_ms, c.integer()?)?,
                "direction" => once(&mut d.direction, c.string()?)?,
                "handled_by" => once(&mut d.handled_by, string_or_null(c)?)?,
                "revenue" => once(&mut d.revenue, revenue(c)?)?,
                _ => return None,
            }
            if !c.next_member()? {
                break;
            }
        }
        Some((d, &c.text[start..c.at]))
    }

    fn chars_within(s: &str, max: usize) -> bool {
        !s.is_empty() && (s.len() <= max || s.chars().count() <= max)
    }

    /// See the module docs.
    pub(super) fn call_completed<'a>(
        payload: &'a [u8],
        known_type: &impl Fn(&str) -> bool,
    ) -> Option<Event<'a>> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut c = Cursor { text, at: 0 };
        c.eat(b'{')?;
        let (mut specversion, mut id, mut source, mut ty, mut subject, mut time, mut dct) =
            (None, None, None, None, None, None, None);
        let mut data_field = None;
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            match key {
                "specversion" => once(&mut specversion, c.string()?)?,
                "id" => once(&mut id, c.string()?)?,
                "source" => once(&mut source, c.string()?)?,
                "type" => once(&mut ty, c.string()?)?,
                "subject" => once(&mut subject, c.string()?)?,
                "time" => once(&mut time, c.string()?)?,
                "datacontenttype" => once(&mut dct, c.string()?)?,
                "data" => once(&mut data_field, data(&mut c)?)?,
                _ => return None,
            }
            if !c.next_member()? {
                break;
            }
        }
        if c.peek().is_some() {
            return None;
        }
        // The general decoder's checks, in any order: all must pass.
        let (id, source, ty, subject) = (id?, source?, ty?, subject?);
        if specversion? != "1.0"
            || !chars_within(id, 128)
            || !chars_within(source, 256)
            || ty != CALL_COMPLETED
            || !valid_subject(subject)
            || dct.is_some_and(|ct| !ct.contains("json"))
            || !known_type(ty)
        {
            return None;
        }
        let time = DateTime::parse_from_rfc3339(time?)
            .ok()?
            .with_timezone(&Utc);
        let (d, raw) = data_field?;
        let call_id = d.call_id.filter(|s| !s.is_empty())?;
        let duration_ms = d
            .duration_ms?
            .parse::<u64>()
            .ok()
            .filter(|v| *v <= MAX_DURATION_MS)?;
        let direction = match d.direction? {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => return None,
        };
        let handled_by = match d.handled_by.flatten() {
            None | Some("ai") => HandledBy::Ai,
            Some("human") => HandledBy::Human,
            Some(_) => return None,
        };
        let revenue = match d.revenue.flatten() {
            None => None,
            Some((amount, currency)) => {
                let amount = parse_decimal_str(amount).ok()?;
                if amount < Decimal::ZERO
                    || currency.len() != 3
                    || !currency.bytes().all(|b| b.is_ascii_uppercase())
                {
                    return None;
                }
                Some(Money {
                    amount,
                    currency: Cow::Borrowed(currency),
                })
            }
        };
        Some(Event {
            id: Cow::Borrowed(id),
            source: Cow::Borrowed(source),
            ty: Cow::Borrowed(ty),
            subject: Cow::Borrowed(subject),
            time,
            data: raw,
            body: Body::Call(CallCompleted {
                call_id: Cow::Borrowed(call_id),
                duration_ms,
                direction,
                handled_by,
                revenue,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e1","source":"voice/eu-1","type":"call.completed","subject":"acme","time":"2026-11-20T10:00:00+01:00","data":{data}}}"#
        )
    }

    fn code(payload: &str) -> ErrorCode {
        decode(payload.as_bytes(), |t| {
            [CALL_COMPLETED, REVENUE_RECORDED, WALLET_TOPPED_UP].contains(&t)
        })
        .expect_err("should be rejected")
        .code
    }

    fn ok(payload: &str) -> Event<'_> {
        decode(payload.as_bytes(), |t| {
            [
                CALL_COMPLETED,
                REVENUE_RECORDED,
                WALLET_TOPPED_UP,
                "custom.thing",
            ]
            .contains(&t)
        })
        .unwrap()
    }

    #[test]
    fn decodes_a_call() {
        let p = call(r#"{"call_id":"c1","duration_ms":90000,"direction":"inbound"}"#);
        let e = ok(&p);
        assert_eq!(e.subject, "acme");
        assert_eq!(e.time.to_rfc3339(), "2026-11-20T09:00:00+00:00");
        match e.body {
            Body::Call(c) => {
                assert_eq!(c.duration_ms, 90000);
                assert_eq!(c.handled_by, HandledBy::Ai);
                assert_eq!(c.direction, Direction::Inbound);
                assert!(c.revenue.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_call_revenue_and_escaped_strings() {
        let p = r#"{"specversion":"1.0","id":"e\u00e91","source":"s","type":"call.completed","subject":"acme","time":"2026-11-20T10:00:00Z","ext":1,"data":{"call_id":"c\n1","duration_ms":0,"direction":"outbound","handled_by":"human","revenue":{"amount":"12.50","currency":"EUR"}}}"#;
        let e = ok(p);
        assert_eq!(e.id, "e\u{e9}1");
        let Body::Call(c) = e.body else { panic!() };
        assert_eq!(c.revenue.unwrap().amount, Decimal::new(1250, 2));
        assert_eq!(c.handled_by, HandledBy::Human);
    }

    #[test]
    fn rejects_with_the_right_codes() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("{\"specversion\":\"1.0\""), ErrorCode::InvalidJson);
        assert_eq!(code(""), ErrorCode::InvalidJson);
        assert_eq!(code("{\"id\": 5, oops"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidEvent);
        assert_eq!(code("{\"id\": 5}"), ErrorCode::InvalidEvent);
        let p = call(r#"{"call_id":"c1","duration_ms":1,"direction":"inbound"}"#);
        assert_eq!(
            code(&p.replace("\"1.0\"", "\"0.3\"")),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("\"id\":\"e1\",", "")),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("\"id\":\"e1\"", "\"id\":\"\"")),
            ErrorCode::InvalidEvent
        );
        let long = "x".repeat(129);
        assert_eq!(
            code(&p.replace("\"e1\"", &format!("\"{long}\""))),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("\"acme\"", "\"ac me\"")),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("2026-11-20T10:00:00+01:00", "2026-11-20 10:00")),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("2026-11-20T10:00:00+01:00", "2026-11-20T10:00:00")),
            ErrorCode::InvalidEvent
        );
        assert_eq!(
            code(&p.replace("call.completed", "call.started")),
            ErrorCode::UnsupportedType
        );
    }

    #[test]
    fn rejects_bad_call_data() {
        for data in [
            r#"{"duration_ms":1,"direction":"inbound"}"#,
            r#"{"call_id":"c","direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":-5,"direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":86400001,"direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":1e30,"direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":1.5,"direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":"100","direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"sideways"}"#,
            r#"{"call_id":"c","duration_ms":100}"#,
            r#"{"call_id":5,"duration_ms":100,"direction":"inbound"}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","handled_by":"robot"}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":{"amount":12.5,"currency":"EUR"}}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":{"amount":"12.5x","currency":"EUR"}}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":{"amount":"1.1234567","currency":"EUR"}}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":{"amount":"1","currency":"eur"}}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":{"amount":"-1","currency":"EUR"}}"#,
            r#"{"call_id":"c","duration_ms":100,"direction":"inbound","revenue":"12"}"#,
            r#"[1]"#,
            r#""str""#,
        ] {
            assert_eq!(code(&call(data)), ErrorCode::InvalidData, "{data}");
        }
        let no_data = call("{}").replace(",\"data\":{}", "");
        assert_eq!(code(&no_data), ErrorCode::InvalidData);
    }

    #[test]
    fn revenue_and_topup() {
        let p = r#"{"specversion":"1.0","id":"r1","source":"s","type":"revenue.recorded","subject":"acme","time":"2026-11-20T10:00:00Z","data":{"amount":"-20.000001","currency":"EUR","order_id":"o1"}}"#;
        let Body::Revenue(r) = ok(p).body else {
            panic!()
        };
        assert_eq!(r.amount.amount, Decimal::new(-20000001, 6));
        let bad = p.replace("-20.000001", "1,5");
        assert_eq!(code(&bad), ErrorCode::InvalidData);
        let t = r#"{"specversion":"1.0","id":"w1","source":"s","type":"wallet.topped_up","subject":"acme","time":"2026-11-20T10:00:00Z","data":{"amount":"50.00","currency":"USD","payment_reference":"flw_123"}}"#;
        let Body::WalletTopUp(w) = ok(t).body else {
            panic!()
        };
        assert_eq!(w.payment_reference, "flw_123");
        assert_eq!(code(&t.replace("50.00", "-5")), ErrorCode::InvalidData);
        assert_eq!(
            code(&t.replace(",\"payment_reference\":\"flw_123\"", "")),
            ErrorCode::InvalidData
        );
    }

    #[test]
    fn decimal_strings() {
        assert_eq!(parse_decimal_str("0").unwrap(), Decimal::ZERO);
        assert_eq!(parse_decimal_str("-0.000001").unwrap(), Decimal::new(-1, 6));
        for bad in [
            "", "-", "1.", ".5", "+1", "1e3", "1.2.3", " 1", "1,0", "0x10", "NaN",
        ] {
            assert!(parse_decimal_str(bad).is_err(), "{bad}");
        }
        assert!(parse_decimal_str(&"9".repeat(40)).is_err());
    }

    #[test]
    fn decimal_bounds_are_decimal_38_9_held_exactly() {
        let ok = |s: &str| parse_decimal_str(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("12345678901234567890123.456789").scale(), 6);
        assert_eq!(ok("79228162514264337593543950335"), Decimal::MAX);
        assert_eq!(ok("-79228162514264337593543950335"), Decimal::MIN);
        assert_eq!(ok(&format!("{}1.5", "0".repeat(60))), Decimal::new(15, 1));
        // -0 is zero (no negative zero reaches a total or a message).
        assert!(!ok("-0").is_sign_negative());
        assert!(!ok("-0.000").is_sign_negative());
        for (bad, why) in [
            ("79228162514264337593543950336", "too large"),
            ("99999999999999999999999999999", "too large"),
            ("100000000000000000000000000000", "Decimal(38, 9)"),
            // 30 significant digits: rust_decimal would round the last one away.
            ("12345678901234567890123456.7891", "too large"),
            ("1.1234567", "fraction digits"),
        ] {
            let e = parse_decimal_str(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = "9".repeat(10_000);
        assert!(parse_decimal_str(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn number_literals_in_data() {
        let raw = |t: &str| {
            let v: &RawValue = serde_json::from_str(t).unwrap();
            raw_decimal(v)
        };
        assert_eq!(raw("0.000000001").unwrap(), Decimal::new(1, 9));
        assert_eq!(
            raw("50000000000000000000000000000").unwrap(),
            Decimal::from_str("5e28").unwrap()
        );
        assert!(!raw("-0").unwrap().is_sign_negative());
        assert!(raw("\"1.5\"").is_ok());
        for (bad, why) in [
            ("1e400", "exponent"),
            ("5e28", "exponent"),
            ("1E-30", "exponent"),
            ("0.0000000001", "fraction digits"),
            ("18446744073709551616000000000000", "too large"),
            ("true", "not a number"),
            ("null", "not a number"),
            ("{\"a\":1}", "not a number"),
            ("[1]", "not a number"),
            ("\"1.0000001\"", "fraction digits"),
        ] {
            let e = raw(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicate_keys_and_invalid_utf8() {
        let data = r#"{"n":1,"a":{"b":2,"b":3},"n":4}"#;
        assert!(try_lookup(data, &["n".into()]).unwrap_err().contains("`n`"));
        assert!(try_lookup(data, &["a".into(), "b".into()]).is_err());
        assert!(lookup(data, &["n".into()]).is_none());
        assert!(try_lookup(data, &["zz".into()]).unwrap().is_none());
        assert!(try_lookup("[1]", &["n".into()]).unwrap().is_none());
        // Repeated attributes and call fields are rejected by both decoders.
        let p = call(r#"{"call_id":"c","duration_ms":1,"duration_ms":2,"direction":"inbound"}"#);
        assert_eq!(code(&p), ErrorCode::InvalidData);
        let p = call(r#"{"call_id":"c","duration_ms":1,"direction":"inbound"}"#);
        assert_eq!(
            code(&p.replace("\"source\"", "\"subject\":\"x\",\"source\"")),
            ErrorCode::InvalidEvent
        );
        // Invalid UTF-8 in an attribute serde_json would skip unchecked.
        let mut bytes = p
            .replace("\"source\"", "\"ext\":\"zz\",\"source\"")
            .into_bytes();
        let at = bytes.windows(2).position(|w| w == b"zz").unwrap();
        bytes[at] = 0xc3;
        bytes[at + 1] = 0x28;
        let r = decode(&bytes, |_| true).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidJson, "{r}");
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow() {
        let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        // Beyond serde_json's recursion limit: rejected (the code depends on where).
        let c = code(&deep);
        assert!(
            matches!(c, ErrorCode::InvalidJson | ErrorCode::InvalidEvent),
            "{c}"
        );
        let p = call(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
        let c = code(&p);
        assert!(
            matches!(
                c,
                ErrorCode::InvalidJson | ErrorCode::InvalidEvent | ErrorCode::InvalidData
            ),
            "{c}"
        );
        let p = r#"{"specversion":"1.0","id":"x","source":"s","type":"custom.thing","subject":"acme","time":"2026-11-20T10:00:00Z","data":{"a":1}}"#
            .replace("1}}", &format!("{}1{}}}}}", "[".repeat(120), "]".repeat(120)));
        let e = ok(&p);
        assert!(lookup(e.data, &["a".into(), "b".into()]).is_none());
    }

    const KNOWN: [&str; 3] = [CALL_COMPLETED, REVENUE_RECORDED, WALLET_TOPPED_UP];

    /// The one-pass decoder accepts only what the general decoder accepts, with the same
    /// result.
    fn agrees(payload: &[u8]) -> bool {
        let known = |t: &str| KNOWN.contains(&t);
        let general = decode_general(payload, known);
        match fast::call_completed(payload, &known) {
            Some(f) => {
                let g = general.unwrap_or_else(|r| {
                    panic!(
                        "fast path accepted what the general decoder rejects ({r}): {}",
                        String::from_utf8_lossy(payload)
                    )
                });
                assert_eq!(format!("{f:?}"), format!("{g:?}"));
                true
            }
            None => false,
        }
    }

    #[test]
    fn fast_path_takes_the_usual_events_and_agrees() {
        let spec = crate::cli::loadgen::LoadSpec {
            events: 2_000,
            tenants: 50,
            ..Default::default()
        };
        for g in crate::cli::loadgen::generate(&spec) {
            assert!(agrees(g.payload.as_bytes()), "{}", g.payload);
        }
        for p in [
            call(r#"{"call_id":"c1","duration_ms":90000,"direction":"inbound"}"#),
            call(
                r#"{"call_id":"c1","duration_ms":0,"direction":"outbound","handled_by":null,"revenue":null}"#,
            ),
            call(
                r#" { "revenue" : { "currency" : "EUR" , "amount" : "0.000001" } , "direction":"inbound","duration_ms":86400000,"call_id":"é"}"#,
            ),
            format!(
                " \n{}\t ",
                call(
                    r#"{"call_id":"c","duration_ms":1,"direction":"inbound","handled_by":"human"}"#
                )
            ),
        ] {
            assert!(agrees(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn fast_path_leaves_the_rest_to_the_general_decoder() {
        let ok = call(r#"{"call_id":"c1","duration_ms":90000,"direction":"inbound"}"#);
        for p in [
            // Valid, but not the usual shape: escapes, extension attributes, extra data.
            ok.replace("\"e1\"", "\"e\\u00e91\""),
            ok.replace("\"source\"", "\"ext\":1,\"source\""),
            ok.replace("\"inbound\"", "\"inbound\",\"agent\":\"x\""),
            // Invalid in every way the general decoder knows.
            ok.replace("\"1.0\"", "\"0.3\""),
            ok.replace("\"id\":\"e1\",", "\"id\":\"e1\",\"id\":\"e2\","),
            ok.replace("\"acme\"", "\"ac me\""),
            ok.replace("90000", "090000"),
            ok.replace("90000", "90000.0"),
            ok.replace("90000", "86400001"),
            ok.replace("90000", "99999999999999999999999"),
            ok.replace("inbound", "sideways"),
            ok.replace("2026-11-20T10:00:00+01:00", "2026-11-20T10:00:00"),
            ok.replace("\"call_id\":\"c1\"", "\"call_id\":\"\""),
            ok.replace("call.completed", "call.started"),
            ok.replace("}}", "}} x"),
            ok.replace("}}", "}"),
            format!("{ok}{ok}"),
            call(
                r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"-1","currency":"EUR"}}"#,
            ),
            call(
                r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"1","currency":"eur"}}"#,
            ),
            call(
                r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{"amount":"1.1234567","currency":"EUR"}}"#,
            ),
            call(r#"{"call_id":"c","duration_ms":1,"direction":"inbound","revenue":{}}"#),
            call("{}"),
            String::new(),
        ] {
            assert!(!agrees(p.as_bytes()), "{p}");
        }
        let mut bad_utf8 = ok.clone().into_bytes();
        let i = bad_utf8.iter().position(|b| *b == b'c').unwrap();
        bad_utf8[i] = 0xff;
        assert!(!agrees(&bad_utf8));
    }

    proptest::proptest! {
        #[test]
        fn fast_path_never_accepts_what_the_general_decoder_rejects(
            edits in proptest::collection::vec((0usize..400, 0u8..=255, 0u8..3), 1..4),
            revenue in proptest::bool::ANY,
        ) {
            let data = if revenue {
                r#"{"call_id":"c1","duration_ms":90000,"direction":"inbound","handled_by":"ai","revenue":{"amount":"12.50","currency":"EUR"}}"#
            } else {
                r#"{"call_id":"c1","duration_ms":90000,"direction":"inbound","handled_by":"human"}"#
            };
            let mut p = call(data).into_bytes();
            for (at, byte, op) in edits {
                let at = at % (p.len() + 1);
                match op {
                    0 if at < p.len() => p[at] = byte,
                    1 => p.insert(at, byte),
                    _ if at < p.len() => {
                        p.remove(at);
                    }
                    _ => {}
                }
            }
            agrees(&p);
        }
    }

    #[test]
    fn field_lookup() {
        let p = r#"{"specversion":"1.0","id":"x","source":"s","type":"custom.thing","subject":"acme","time":"2026-11-20T10:00:00Z","data":{"a":{"b":"1.5"},"n":3}}"#;
        let e = ok(p);
        let v = lookup(e.data, &["a".into(), "b".into()]).unwrap();
        assert_eq!(raw_decimal(v).unwrap(), Decimal::new(15, 1));
        let n = lookup(e.data, &["n".into()]).unwrap();
        assert_eq!(raw_decimal(n).unwrap(), Decimal::from(3));
        assert!(lookup(e.data, &["zz".into()]).is_none());
    }
}
