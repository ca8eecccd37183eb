use std::str::FromStr;

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
            call(r#"{"call_id":"c","duration_ms":1,"direction":"inbound","handled_by":"human"}"#)
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
