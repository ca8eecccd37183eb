//! Fuzz target: the CloudEvent decoder (both the one-pass fast path and the general
//! decoder) and every meter's contribution, on arbitrary bytes. It must never panic; every
//! rejection carries a decoder dead-letter code; the fast path accepts only what the general
//! decoder accepts, with the same result; an accepted event is valid UTF-8.
//!
//! It links the library (`callmeter = { path = ".." }`), so it follows the decoder wherever
//! its code moves.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;

use callmeter::event::{self, ErrorCode};
use callmeter::meter::{Aggregation, FieldPath, MeterDef, Rounding, WhereValue};

const TYPES: [&str; 4] = [
    event::CALL_COMPLETED,
    event::REVENUE_RECORDED,
    event::WALLET_TOPPED_UP,
    "usage.units",
];

fn meters() -> Vec<MeterDef> {
    let mut m = MeterDef::builtins();
    let custom = |name: &str, value: Option<&str>, divisor: Decimal, rounding, filters| MeterDef {
        name: Arc::from(name),
        event_types: vec!["usage.units".into(), event::CALL_COMPLETED.into()],
        aggregation: if value.is_some() {
            Aggregation::Sum
        } else {
            Aggregation::Count
        },
        value: value.and_then(FieldPath::parse),
        divisor,
        rounding,
        filters,
        builtin: None,
    };
    m.push(custom(
        "units",
        Some("units"),
        Decimal::ONE,
        Rounding::None,
        vec![],
    ));
    m.push(custom(
        "milli_units",
        Some("units"),
        Decimal::new(1, 3),
        Rounding::Ceil,
        vec![],
    ));
    m.push(custom(
        "nested",
        Some("a.b"),
        Decimal::from(60_000),
        Rounding::None,
        vec![(
            FieldPath::parse("kind").expect("path"),
            WhereValue::Str("x".into()),
        )],
    ));
    m.push(custom(
        "flags",
        None,
        Decimal::ONE,
        Rounding::None,
        vec![
            (
                FieldPath::parse("flag").expect("path"),
                WhereValue::Bool(true),
            ),
            (
                FieldPath::parse("n").expect("path"),
                WhereValue::Num(Decimal::from(3)),
            ),
        ],
    ));
    m
}

fuzz_target!(|data: &[u8]| {
    let known = |t: &str| TYPES.contains(&t);
    // The fast path accepts only what the general decoder accepts, with the same result.
    let (fast, general) = event::decode_paths(data, known);
    if let Some(f) = fast {
        match &general {
            Ok(g) => assert_eq!(format!("{f:?}"), format!("{g:?}")),
            Err(r) => panic!("fast path accepted what the general decoder rejects: {r}"),
        }
    }
    let first = event::decode(data, known);
    // Deterministic: a second decode gives the same answer.
    let second = event::decode(data, known);
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    let ev = match first {
        Ok(ev) => ev,
        Err(r) => {
            assert!(
                matches!(
                    r.code,
                    ErrorCode::InvalidJson
                        | ErrorCode::InvalidEvent
                        | ErrorCode::UnsupportedType
                        | ErrorCode::InvalidData
                ),
                "decoder gave {}",
                r.code
            );
            assert!(!r.message.is_empty());
            return;
        }
    };
    assert!(std::str::from_utf8(data).is_ok(), "accepted invalid UTF-8");
    for m in meters() {
        if !m.event_types.iter().any(|t| *t == ev.ty) {
            continue;
        }
        match m.contribution(&ev) {
            Ok(Some(c)) => {
                // The bounds: at most 9 fraction digits; a total of two stays checked.
                assert!(c.scale() <= 9, "{c:?}");
                let _ = m.try_add(c, c);
                let _ = m.value(c);
                let _ = m.try_value(Decimal::MAX);
            }
            Ok(None) => {}
            Err(r) => assert_eq!(r.code, ErrorCode::InvalidData, "{r}"),
        }
    }
});
