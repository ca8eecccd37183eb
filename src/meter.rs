//! Meters (CONTRACT section 2): which events feed a meter and by how much.
//!
//! A meter's running state is a *raw* sum: the exact sum of the per-event contributions
//! before division. [`MeterDef::value`] turns it into the meter value: with
//! `rounding = "none"` the exact `raw / divisor` rounded half-up to 6 decimal places; with
//! `"ceil"` each event was already rounded up to whole units, so the raw sum is the value.
//!
//! Arithmetic is checked: a contribution or a running total beyond `Decimal(38, 9)` (or one
//! [`Decimal`] cannot hold exactly) is a [`MeterError`], which becomes an `invalid_data`
//! [`Rejection`]; nothing here panics on input.

use std::sync::Arc;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::event::{Body, ErrorCode, Event, Rejection, raw_decimal, try_lookup};

/// Why a meter cannot take a value: the arithmetic would leave `Decimal(38, 9)` or lose
/// digits. Callers report it as `invalid_data` (see the `From` impl).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// `raw + contribution` is beyond what can be counted exactly.
    #[error(
        "meter `{meter}`: adding {contribution} to the running total {total} would take it beyond Decimal(38, 9)"
    )]
    TotalOverflow {
        meter: Arc<str>,
        total: Decimal,
        contribution: Decimal,
    },
    /// `value / divisor` (ceil meters) or `raw / divisor` does not fit.
    #[error("meter `{meter}`: {value} / divisor {divisor} is beyond Decimal(38, 9)")]
    DivisionOverflow {
        meter: Arc<str>,
        value: Decimal,
        divisor: Decimal,
    },
}

impl From<MeterError> for Rejection {
    fn from(e: MeterError) -> Self {
        Rejection::new(ErrorCode::InvalidData, e.to_string())
    }
}

/// `a + b` when the sum fits `Decimal(38, 9)` and [`Decimal`] holds it exactly: at most 9
/// fraction digits, and no digit rounded away (rust_decimal rounds rather than fail when a
/// sum needs more than its 28 to 29 significant digits).
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let sum = a.checked_add(b)?;
    let scale = a.scale().max(b.scale());
    (sum.scale() == scale && scale <= crate::event::MAX_FRACTION_DIGITS as u32).then_some(sum)
}

/// Index of a meter in [`crate::catalog::Catalog::meters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterId(pub u16);

/// The three built-in meters always have these ids.
pub const CALL_MINUTES: MeterId = MeterId(0);
pub const CALLS: MeterId = MeterId(1);
pub const REVENUE: MeterId = MeterId(2);
/// Prepaid wallet credit: the sum of `wallet.topped_up` amounts (see [`crate::wallet`]).
pub const WALLET_CREDIT: MeterId = MeterId(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Exact sum, shown rounded half-up to 6 decimal places.
    None,
    /// Each event rounded up to whole units.
    Ceil,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    CallMinutes,
    Calls,
    Revenue,
    WalletCredit,
}

/// A dotted path into an event's `data` (`revenue.amount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    pub fn parse(s: &str) -> Option<FieldPath> {
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return None;
        }
        Some(FieldPath(parts))
    }
    pub fn is(&self, name: &str) -> bool {
        self.0.len() == 1 && self.0[0] == name
    }
}

/// The right-hand side of a `where` equality filter.
#[derive(Debug, Clone, PartialEq)]
pub enum WhereValue {
    Str(String),
    Num(Decimal),
    Bool(bool),
}

/// A compiled meter definition.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterDef {
    pub name: Arc<str>,
    pub event_types: Vec<String>,
    pub aggregation: Aggregation,
    pub value: Option<FieldPath>,
    /// Exact decimal divisor (default 1).
    pub divisor: Decimal,
    pub rounding: Rounding,
    pub filters: Vec<(FieldPath, WhereValue)>,
    pub builtin: Option<Builtin>,
}

/// Rounds half-up (away from zero at .5) to `dp` places.
pub fn round_half_up(d: Decimal, dp: u32) -> Decimal {
    d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero)
}

impl MeterDef {
    /// `call_minutes`, `calls`, `revenue`, `wallet_credit`, at ids 0, 1, 2, 3.
    pub fn builtins() -> Vec<MeterDef> {
        vec![
            MeterDef {
                name: "call_minutes".into(),
                event_types: vec![crate::event::CALL_COMPLETED.into()],
                aggregation: Aggregation::Sum,
                value: FieldPath::parse("duration_ms"),
                divisor: Decimal::from(60_000),
                rounding: Rounding::None,
                filters: vec![],
                builtin: Some(Builtin::CallMinutes),
            },
            MeterDef {
                name: "calls".into(),
                event_types: vec![crate::event::CALL_COMPLETED.into()],
                aggregation: Aggregation::Count,
                value: None,
                divisor: Decimal::ONE,
                rounding: Rounding::None,
                filters: vec![],
                builtin: Some(Builtin::Calls),
            },
            MeterDef {
                name: "revenue".into(),
                event_types: vec![
                    crate::event::CALL_COMPLETED.into(),
                    crate::event::REVENUE_RECORDED.into(),
                ],
                aggregation: Aggregation::Sum,
                value: FieldPath::parse("amount"),
                divisor: Decimal::ONE,
                rounding: Rounding::None,
                filters: vec![],
                builtin: Some(Builtin::Revenue),
            },
            MeterDef {
                name: "wallet_credit".into(),
                event_types: vec![crate::event::WALLET_TOPPED_UP.into()],
                aggregation: Aggregation::Sum,
                value: FieldPath::parse("amount"),
                divisor: Decimal::ONE,
                rounding: Rounding::None,
                filters: vec![],
                builtin: Some(Builtin::WalletCredit),
            },
        ]
    }

    /// The event's contribution to the raw sum, or `None` when the event does not feed this
    /// meter (a filter does not match, or a call carries no revenue).
    ///
    /// Errors (`invalid_data`): the value field is missing or not a number.
    pub fn contribution(&self, ev: &Event<'_>) -> Result<Option<Decimal>, Rejection> {
        if let Some(b) = self.builtin {
            return Ok(match (b, &ev.body) {
                (Builtin::CallMinutes, Body::Call(c)) => Some(Decimal::from(c.duration_ms)),
                (Builtin::Calls, Body::Call(_)) => Some(Decimal::ONE),
                (Builtin::Revenue, Body::Call(c)) => c.revenue.as_ref().map(|r| r.amount),
                (Builtin::Revenue, Body::Revenue(r)) => Some(r.amount.amount),
                (Builtin::WalletCredit, Body::WalletTopUp(w)) => Some(w.amount.amount),
                _ => None,
            });
        }
        for (path, want) in &self.filters {
            let matched = matches_filter(ev, path, want).map_err(|m| {
                Rejection::new(
                    ErrorCode::InvalidData,
                    format!("meter `{}`: {m}", self.name),
                )
            })?;
            if !matched {
                return Ok(None);
            }
        }
        let v = match self.aggregation {
            Aggregation::Count => return Ok(Some(Decimal::ONE)),
            Aggregation::Sum => {
                let Some(path) = self.value.as_ref() else {
                    // The configuration gives every sum meter a value field.
                    return Ok(None);
                };
                field_decimal(ev, path).map_err(|m| {
                    Rejection::new(
                        ErrorCode::InvalidData,
                        format!("meter `{}`: {m}", self.name),
                    )
                })?
            }
        };
        Ok(Some(match self.rounding {
            Rounding::None => v,
            Rounding::Ceil => self.divide(v)?.ceil(),
        }))
    }

    fn divide(&self, value: Decimal) -> Result<Decimal, MeterError> {
        if self.divisor == Decimal::ONE {
            return Ok(value);
        }
        value
            .checked_div(self.divisor)
            .ok_or_else(|| MeterError::DivisionOverflow {
                meter: self.name.clone(),
                value,
                divisor: self.divisor,
            })
    }

    /// The running total after adding `contribution` to `raw`, checked: the total fits
    /// `Decimal(38, 9)` exactly ([`exact_add`]) and has a meter value ([`Self::try_value`]),
    /// so [`Self::value`] of any total this admits is exact.
    pub fn try_add(&self, raw: Decimal, contribution: Decimal) -> Result<Decimal, MeterError> {
        let overflow = || MeterError::TotalOverflow {
            meter: self.name.clone(),
            total: raw,
            contribution,
        };
        let total = exact_add(raw, contribution).ok_or_else(overflow)?;
        // Only a divisor below 1 can take the quotient out of range.
        if self.divisor.abs() < Decimal::ONE {
            self.try_value(total).map_err(|_| overflow())?;
        }
        Ok(total)
    }

    /// The meter value of a raw sum (see the module docs); an error only when
    /// `raw / divisor` does not fit (a divisor below 1 on a huge total).
    pub fn try_value(&self, raw: Decimal) -> Result<Decimal, MeterError> {
        Ok(match (self.aggregation, self.rounding) {
            (Aggregation::Count, _) | (_, Rounding::Ceil) => raw,
            (Aggregation::Sum, Rounding::None) => round_half_up(self.divide(raw)?, 6),
        }
        .normalize())
    }

    /// The meter value of a raw sum (see the module docs). Exact for every total
    /// [`Self::try_add`] admits; never panics: a quotient beyond range saturates at
    /// `Decimal::MAX` / `Decimal::MIN` (use [`Self::try_value`] to see the error).
    pub fn value(&self, raw: Decimal) -> Decimal {
        self.try_value(raw).unwrap_or(
            if raw.is_sign_negative() != self.divisor.is_sign_negative() {
                Decimal::MIN
            } else {
                Decimal::MAX
            },
        )
    }
}

/// Typed look-ups for `call.completed` (so defaults such as `handled_by = "ai"` apply), raw
/// JSON look-ups otherwise.
fn field_decimal(ev: &Event<'_>, path: &FieldPath) -> Result<Decimal, String> {
    if let Body::Call(c) = &ev.body {
        if path.is("duration_ms") {
            return Ok(Decimal::from(c.duration_ms));
        }
        if path.0 == ["revenue", "amount"] {
            return Ok(c.revenue.as_ref().map(|r| r.amount).unwrap_or_default());
        }
    }
    let name = || path.0.join(".");
    let raw = try_lookup(ev.data, &path.0)
        .map_err(|e| format!("field `{}`: {e}", name()))?
        .ok_or_else(|| format!("missing field `{}`", name()))?;
    raw_decimal(raw).map_err(|e| format!("field `{}`: {e}", name()))
}

/// Whether the event passes one `where` filter. A key repeated on the filter's path is an
/// error (which value would be compared?).
fn matches_filter(ev: &Event<'_>, path: &FieldPath, want: &WhereValue) -> Result<bool, String> {
    if let Body::Call(c) = &ev.body {
        let typed = if path.is("handled_by") {
            Some(c.handled_by.as_str())
        } else if path.is("direction") {
            Some(c.direction.as_str())
        } else {
            None
        };
        if let Some(s) = typed {
            return Ok(matches!(want, WhereValue::Str(w) if w == s));
        }
    }
    let raw = try_lookup(ev.data, &path.0)
        .map_err(|e| format!("`where` field `{}`: {e}", path.0.join(".")))?;
    let Some(raw) = raw else {
        return Ok(false);
    };
    Ok(match want {
        WhereValue::Str(w) => serde_json::from_str::<String>(raw.get()).is_ok_and(|s| &s == w),
        WhereValue::Bool(b) => serde_json::from_str::<bool>(raw.get()).is_ok_and(|v| v == *b),
        WhereValue::Num(n) => raw_decimal(raw).is_ok_and(|v| v == *n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn catalog(extra: &str) -> std::sync::Arc<crate::catalog::Catalog> {
        Config::from_toml_str(extra).unwrap().catalog
    }

    fn event(ty: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e1","source":"s","type":"{ty}","subject":"acme","time":"2026-11-20T10:00:00Z","data":{data}}}"#
        )
    }

    fn contributions(
        cat: &crate::catalog::Catalog,
        payload: &str,
    ) -> Vec<(String, Option<Decimal>)> {
        let ev = crate::event::decode(payload.as_bytes(), |t| cat.by_event_type.contains_key(t))
            .unwrap();
        cat.by_event_type[&*ev.ty]
            .iter()
            .map(|id| {
                let m = cat.meter(*id);
                (m.name.to_string(), m.contribution(&ev).unwrap())
            })
            .collect()
    }

    #[test]
    fn builtin_meters() {
        let cat = catalog("");
        let c = contributions(
            &cat,
            &event(
                "call.completed",
                r#"{"call_id":"c","duration_ms":90500,"direction":"inbound","revenue":{"amount":"10.5","currency":"EUR"}}"#,
            ),
        );
        assert_eq!(
            c,
            vec![
                ("call_minutes".into(), Some(Decimal::from(90500))),
                ("calls".into(), Some(Decimal::ONE)),
                ("revenue".into(), Some(Decimal::new(105, 1))),
            ]
        );
        let m = cat.meter(CALL_MINUTES);
        // 90.5 s = 1.508333... min, shown half-up to 6 places.
        assert_eq!(m.value(Decimal::from(90500)).to_string(), "1.508333");
        assert_eq!(m.value(Decimal::from(100)).to_string(), "0.001667");
        assert_eq!(m.value(Decimal::from(60000 * 3)).to_string(), "3");
        let c = contributions(
            &cat,
            &event(
                "call.completed",
                r#"{"call_id":"c","duration_ms":1,"direction":"inbound"}"#,
            ),
        );
        assert_eq!(c[2], ("revenue".into(), None));
    }

    #[test]
    fn configured_meter_with_filter_and_ceil() {
        let cat = catalog(
            r#"
[meters.ai_minutes]
event_type = "call.completed"
aggregation = "sum"
value = "duration_ms"
divisor = 60000
rounding = "ceil"
where = { handled_by = "ai" }
[meters.human_calls]
event_type = "call.completed"
aggregation = "count"
where = { handled_by = "human" }
[meters.sms]
event_type = "sms.sent"
value = "segments"
"#,
        );
        // No handled_by: defaults to ai.
        let c = contributions(
            &cat,
            &event(
                "call.completed",
                r#"{"call_id":"c","duration_ms":60001,"direction":"inbound"}"#,
            ),
        );
        assert_eq!(c[3], ("ai_minutes".into(), Some(Decimal::from(2))));
        assert_eq!(c[4], ("human_calls".into(), None));
        let w = contributions(
            &cat,
            &event(
                "wallet.topped_up",
                r#"{"amount":"25.50","currency":"USD","payment_reference":"flw_1"}"#,
            ),
        );
        assert_eq!(
            w,
            vec![("wallet_credit".into(), Some(Decimal::new(2550, 2)))]
        );
        let c = contributions(
            &cat,
            &event(
                "call.completed",
                r#"{"call_id":"c","duration_ms":60000,"direction":"inbound","handled_by":"human"}"#,
            ),
        );
        assert_eq!(c[3], ("ai_minutes".into(), None));
        assert_eq!(c[4], ("human_calls".into(), Some(Decimal::ONE)));
        let c = contributions(&cat, &event("sms.sent", r#"{"segments":3}"#));
        assert_eq!(c, vec![("sms".into(), Some(Decimal::from(3)))]);
        let ev_text = event("sms.sent", r#"{"other":3}"#);
        let ev = crate::event::decode(ev_text.as_bytes(), |_| true).unwrap();
        let sms = cat.meter(cat.meter_id("sms").unwrap());
        let err = sms.contribution(&ev).unwrap_err();
        assert_eq!(err.code, crate::event::ErrorCode::InvalidData);
    }

    #[test]
    fn totals_are_checked() {
        let big = Decimal::from_str_exact("50000000000000000000000000000").unwrap();
        assert_eq!(exact_add(big, big), None);
        // rust_decimal would round 5e28 + 0.5 to 5e28: not exact, so refused.
        assert_eq!(exact_add(big, Decimal::new(5, 1)), None);
        assert_eq!(exact_add(big, Decimal::ONE), Some(big + Decimal::ONE));
        assert_eq!(
            exact_add(Decimal::new(15, 1), Decimal::new(25, 2)),
            Some(Decimal::new(175, 2))
        );
        let cat = catalog(
            r#"
[meters.units]
event_type = "u"
value = "n"
[meters.milli]
event_type = "u"
value = "n"
divisor = "0.001"
[meters.milli_ceil]
event_type = "u"
value = "n"
divisor = "0.001"
rounding = "ceil"
"#,
        );
        let units = cat.meter(cat.meter_id("units").unwrap());
        let err = units.try_add(big, big).unwrap_err();
        assert!(err.to_string().contains("meter `units`"), "{err}");
        let r: Rejection = err.into();
        assert_eq!(r.code, crate::event::ErrorCode::InvalidData);
        // A divisor below 1: the total's value must fit too.
        let milli = cat.meter(cat.meter_id("milli").unwrap());
        assert!(milli.try_add(Decimal::ZERO, big).is_err());
        assert_eq!(milli.value(big), Decimal::MAX);
        assert!(milli.try_value(big).is_err());
        assert_eq!(
            milli.try_add(Decimal::ONE, Decimal::ONE),
            Ok(Decimal::from(2))
        );
        let p = event("u", "{\"n\":50000000000000000000000000000}");
        let ev = crate::event::decode(p.as_bytes(), |_| true).unwrap();
        let ceil = cat.meter(cat.meter_id("milli_ceil").unwrap());
        let err = ceil.contribution(&ev).unwrap_err();
        assert_eq!(err.code, crate::event::ErrorCode::InvalidData);
        assert!(err.message.contains("divisor"), "{err}");
        let p = event("u", "{\"n\":1,\"n\":2}");
        let ev = crate::event::decode(p.as_bytes(), |_| true).unwrap();
        let err = units.contribution(&ev).unwrap_err();
        assert!(err.message.contains("more than once"), "{err}");
    }

    #[test]
    fn exact_sum_then_round() {
        let cat = catalog("");
        let m = cat.meter(CALL_MINUTES);
        // 3 calls of 10 ms: per-event rounding would give 0.000167 x 3 = 0.000501;
        // the exact sum gives 30/60000 = 0.0005.
        assert_eq!(m.value(Decimal::from(30)).to_string(), "0.0005");
    }
}
