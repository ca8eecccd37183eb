//! The typed `data` of the built-in event types (CONTRACT section 1): `call.completed`,
//! `revenue.recorded` and `wallet.topped_up`, decoded from the raw `data` object by the
//! general decoder. Every failure is `invalid_data` with a message naming the field.

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    CallCompleted, Direction, ErrorCode, HandledBy, MAX_DURATION_MS, Money, Rejection,
    RevenueRecorded, WalletTopUp, parse_decimal_str, truncate,
};

pub(super) fn invalid(msg: impl Into<String>) -> Rejection {
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

pub(super) fn object<'a, T: Deserialize<'a>>(
    data: &'a RawValue,
    what: &str,
) -> Result<T, Rejection> {
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

pub(super) fn decode_call(data: &RawValue) -> Result<CallCompleted<'_>, Rejection> {
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

pub(super) fn decode_revenue(data: &RawValue) -> Result<RevenueRecorded<'_>, Rejection> {
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

pub(super) fn decode_topup(data: &RawValue) -> Result<WalletTopUp<'_>, Rejection> {
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
