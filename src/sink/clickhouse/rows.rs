//! The RowBinary encoding of the crate's ClickHouse rows, the one copy: decimals, times and
//! the row types of the pipeline's tables. Pure.
//!
//! Rows are encoded as RowBinary without schema validation, which ClickHouse 18.16 needs
//! (it lacks `RowBinaryWithNamesAndTypes`): `Decimal(38, 9)` as a little-endian i128 of
//! units of 1e-9 ([`dec9`], [`from_dec9`]), `DateTime('UTC')` as u32 seconds ([`dt`])
//! (<https://clickhouse.com/docs/en/interfaces/formats#rowbinary>).

use clickhouse::Row;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::SinkError;
use crate::alerts::Alert;
use crate::statement::Statement;

/// Decimal -> units of 1e-9 (Decimal(38, 9) in RowBinary), exact for every value with at
/// most 9 fraction digits (more are rounded half-up to 9): the mantissa times
/// `10^(9 - scale)`, in i128. (`Decimal::rescale(9)` cannot reach scale 9 above about
/// 7.9e19, its 96-bit mantissa being too small, and silently keeps a lower scale.) Every
/// `Decimal` fits: at most 7.9e28 x 10^9 < 2^127.
pub fn dec9(d: Decimal) -> i128 {
    let d = if d.scale() > 9 {
        crate::meter::round_half_up(d, 9)
    } else {
        d
    };
    10i128
        .checked_pow(9 - d.scale())
        .and_then(|f| d.mantissa().checked_mul(f))
        // Unreachable (see above); saturate rather than panic.
        .unwrap_or(if d.is_sign_negative() {
            i128::MIN
        } else {
            i128::MAX
        })
}

/// Units of 1e-9 -> Decimal, exact: trailing zero digits are dropped from the mantissa
/// while it is too large for `Decimal`'s 96 bits (1e20 is 1e29 units).
///
/// Errors: [`SinkError::Data`] when the value does not fit a `Decimal`.
pub fn from_dec9(v: i128) -> Result<Decimal, SinkError> {
    let (mut m, mut scale) = (v, 9u32);
    while scale > 0 && m % 10 == 0 && m.unsigned_abs() > MAX_MANTISSA {
        m /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(m, scale)
        .map(|d| d.normalize())
        .map_err(|e| SinkError::Data(format!("decimal {v}e-9: {e}")))
}

/// The largest mantissa a `Decimal` holds (2^96 - 1).
const MAX_MANTISSA: u128 = (1u128 << 96) - 1;

/// Unix seconds -> `DateTime('UTC')` (u32 seconds), clamped to its range.
pub fn dt(secs: i64) -> u32 {
    secs.clamp(0, u32::MAX as i64) as u32
}

/// Now as `DateTime('UTC')`.
pub fn now_secs() -> u32 {
    dt(chrono::Utc::now().timestamp())
}

/// An event of `call_events` as the CloudEvent text it was decoded from (the envelope
/// rebuilt, `data` as stored), for decoding again with the meter definitions
/// (`callmeter reconcile`, the portal's daily usage).
pub fn stored_event_json(
    tenant: &str,
    source: &str,
    id: &str,
    ty: &str,
    time_us: i64,
    data: &str,
) -> String {
    let time = chrono::DateTime::from_timestamp_micros(time_us).unwrap_or_default();
    let json = serde_json::json!({
        "specversion": "1.0", "id": id, "source": source, "type": ty, "subject": tenant,
        "time": time.to_rfc3339(),
    });
    let mut text = json.to_string();
    text.pop();
    text.push_str(",\"data\":");
    text.push_str(data);
    text.push('}');
    text
}

/// RFC 3339 -> Unix seconds; 0 when it does not parse.
fn parse_rfc3339_secs(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// A row of `subscriptions` (CONTRACT section 10).
#[derive(Debug, Row, Serialize, Deserialize)]
pub struct SubscriptionRow {
    pub tenant_id: String,
    pub plan: String,
    pub addons: String,
    pub billing_cycle: String,
    pub effective_at: u32,
    pub canceled: u8,
    pub event_id: String,
    pub source_partition: u32,
    pub through_offset: i64,
    pub updated_at: u32,
}

/// A row of `subscription_details`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct SubscriptionDetailRow {
    pub tenant_id: String,
    pub effective_at: u32,
    pub event_id: String,
    pub timezone: String,
    pub anchor_day: u8,
    pub stripe_customer_id: String,
    pub source_partition: u32,
    pub through_offset: i64,
    pub updated_at: u32,
}

/// A row of `usage_rollups`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub struct RollupRow {
    pub tenant_id: String,
    pub meter: String,
    pub period_start: u32,
    pub period_end: u32,
    pub value: i128,
    pub event_count: u64,
    pub source_topic: String,
    pub source_partition: u32,
    pub through_offset: i64,
    pub updated_at: u32,
}

/// A row of `rollup_state`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct StateRow {
    pub(super) source_topic: String,
    pub(super) source_partition: u32,
    pub(super) tenant_id: String,
    pub(super) meter: String,
    pub(super) period_start: u32,
    pub(super) period_end: u32,
    pub(super) raw: i128,
    pub(super) event_count: u64,
    pub(super) through_offset: i64,
    pub(super) updated_at: u32,
}

/// A row of `partition_checkpoints`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct CheckpointRow {
    pub(super) source_topic: String,
    pub(super) source_partition: u32,
    pub(super) position: i64,
    pub(super) watermark_us: i64,
    pub(super) max_ts_ms: i64,
    pub(super) updated_at: u32,
}

/// A row of `usage_alerts`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub alert_id: String,
    pub tenant_id: String,
    pub meter: String,
    pub kind: String,
    pub period_start: u32,
    pub period_end: u32,
    pub usage: i128,
    pub usage_limit: i128,
    pub plan: String,
    pub event_id: String,
    pub fired_at: u32,
}

/// A row of `call_events`.
#[derive(Debug, Row, Serialize, Deserialize)]
pub(super) struct RawEventRow {
    pub(super) tenant_id: String,
    pub(super) source: String,
    pub(super) event_id: String,
    #[serde(rename = "type")]
    pub(super) ty: String,
    pub(super) time: u32,
    pub(super) time_us: i64,
    pub(super) data: String,
    pub(super) source_topic: String,
    pub(super) source_partition: u32,
    pub(super) source_offset: i64,
    pub(super) ingested_at: u32,
}

/// A row of `usage_statements`: one line of a statement.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct StatementRow {
    pub statement_id: String,
    pub tenant_id: String,
    pub plan: String,
    pub currency: String,
    pub period_start: u32,
    pub period_end: u32,
    pub line_kind: String,
    pub meter: String,
    pub item: String,
    pub quantity: i128,
    pub amount: i128,
    pub total: i128,
    pub closed_at: u32,
}

impl StatementRow {
    /// The rows of a statement: one per line, or for a statement without lines one row
    /// with `line_kind` = '' and zero quantity and amount. A missing meter or item is ''.
    pub fn from_statement(s: &Statement) -> Vec<StatementRow> {
        let row = |kind: &str, meter: &str, item: &str, quantity, amount| StatementRow {
            statement_id: s.statement_id.clone(),
            tenant_id: s.tenant_id.clone(),
            plan: s.plan.clone(),
            currency: s.currency.clone(),
            period_start: dt(s.period.start),
            period_end: dt(s.period.end),
            line_kind: kind.to_string(),
            meter: meter.to_string(),
            item: item.to_string(),
            quantity: dec9(quantity),
            amount: dec9(amount),
            total: dec9(s.total),
            closed_at: dt(s.closed_at),
        };
        if s.lines.is_empty() {
            return vec![row("", "", "", Decimal::ZERO, Decimal::ZERO)];
        }
        s.lines
            .iter()
            .map(|l| {
                row(
                    &l.kind,
                    l.meter.as_deref().unwrap_or(""),
                    l.item.as_deref().unwrap_or(""),
                    l.quantity,
                    l.amount,
                )
            })
            .collect()
    }
}

impl AlertRow {
    pub fn from_alert(a: &Alert) -> AlertRow {
        let dec = |s: &str| s.parse::<Decimal>().map(dec9).unwrap_or(0);
        AlertRow {
            alert_id: a.alert_id.clone(),
            tenant_id: a.tenant_id.clone(),
            meter: a.meter.clone(),
            kind: a.kind.clone(),
            period_start: dt(parse_rfc3339_secs(&a.period_start)),
            period_end: dt(parse_rfc3339_secs(&a.period_end)),
            usage: dec(&a.usage),
            usage_limit: a.limit.as_deref().map(dec).unwrap_or(0),
            plan: a.plan.clone(),
            event_id: a.event_id.clone(),
            fired_at: dt(parse_rfc3339_secs(&a.fired_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_encoding_round_trips() {
        for s in ["0", "1.5", "-20.000001", "123456789012345678.123456789"] {
            let d: Decimal = s.parse().unwrap();
            assert_eq!(from_dec9(dec9(d)).unwrap(), d.normalize(), "{s}");
        }
        assert_eq!(dec9(Decimal::new(15, 1)), 1_500_000_000);
    }

    #[test]
    fn decimal_encoding_is_exact_at_the_edges() {
        let e9 = 1_000_000_000i128;
        let cases: [(&str, i128); 6] = [
            ("100000000000000000000", 100_000_000_000_000_000_000 * e9),
            ("-100000000000000000000", -100_000_000_000_000_000_000 * e9),
            (
                "79000000000000000000000000000",
                79_000_000_000_000_000_000_000_000_000 * e9,
            ),
            ("0.000000001", 1),
            ("-0.000000001", -1),
            (
                "79228162514264337593543950335",
                79_228_162_514_264_337_593_543_950_335 * e9,
            ),
        ];
        for (s, units) in cases {
            let d: Decimal = s.parse().unwrap();
            assert_eq!(dec9(d), units, "{s}");
            assert_eq!(from_dec9(units).unwrap(), d.normalize(), "{s}");
        }
        // 1e20 was stored as 0 by rescale(9).
        let d: Decimal = "100000000000000000000".parse().unwrap();
        assert_ne!(dec9(d), 0);
        // More than 9 fraction digits: rounded half-up to 9.
        assert_eq!(dec9("0.0000000015".parse().unwrap()), 2);
        // The largest Decimal(38, 9) value that a Decimal holds round-trips; one beyond
        // Decimal's range is an error, not a wrong value.
        assert!(from_dec9(i128::MAX / 2 + 1).is_err());
    }

    #[test]
    fn times_clamp_to_the_datetime_range() {
        assert_eq!(dt(-5), 0);
        assert_eq!(dt(1_700_000_000), 1_700_000_000);
        assert_eq!(dt(i64::MAX), u32::MAX);
        assert_eq!(parse_rfc3339_secs("1970-01-01T00:01:00Z"), 60);
        assert_eq!(parse_rfc3339_secs("nope"), 0);
    }
}
