//! The pure part of Stripe reporting: from a flushed total and what was already reported,
//! decide what to send, and build the request bodies. No I/O, no clock (the caller passes
//! `now`).
//!
//! - **Units.** The target of a (tenant, meter, usage period) is
//!   `floor(total x multiplier)` whole units, `total` being the exact flushed
//!   `sum(value) FROM usage_rollups FINAL`. A report carries the delta between the target and
//!   what was already reported (`before` -> `after`). A target below what was reported (a
//!   refund on the `revenue` meter, say) sends nothing: the decrease is carried forward and
//!   later increases first make up for it, so Stripe only ever receives positive integers
//!   (<https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api>).
//! - **Identifiers** are a hash of (tenant, meter, period start, customer, event name,
//!   before, after): a resend after a crash, or the same report made by two instances from
//!   the same data, carries the same identifier, and Stripe drops the duplicate (identifiers
//!   are unique over a rolling 24 h,
//!   <https://docs.stripe.com/api/v2/billing-meter-stream/event-stream/create>).
//! - **Timestamps** lie inside the usage period: `now` for the current period, the period's
//!   last second for a closed one. Stripe takes events from the past 35 days to 5 minutes
//!   ahead; a closed period whose last second is older than 35 days minus
//!   [`PAST_MARGIN_SECS`] is *unreportable* (surfaced by the caller, never dropped silently),
//!   and a period that has not started yet waits.

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sha2::{Digest, Sha256};

/// Events per meter event stream request (Stripe's limit).
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
/// Stripe accepts event timestamps up to 35 calendar days in the past ...
pub const PAST_WINDOW_SECS: i64 = 35 * 86_400;
/// ... and up to 5 minutes in the future.
pub const FUTURE_WINDOW_SECS: i64 = 300;
/// Safety margin on the 35-day bound: a report must survive retries and clock drift.
pub const PAST_MARGIN_SECS: i64 = 3_600;
/// Stripe rejects values with more than 15 significant digits; larger deltas are split.
pub const MAX_EVENT_VALUE: i64 = 999_999_999_999_999;

/// One reported series: a tenant's meter in one usage period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub tenant: String,
    pub meter: String,
    /// Unix seconds.
    pub period_start: i64,
}

/// The flushed usage of a group, read from `usage_rollups FINAL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub key: GroupKey,
    /// Unix seconds (exclusive).
    pub period_end: i64,
    /// Exact meter value (sum over source partitions).
    pub total: Decimal,
    /// The lowest source partition holding rows of the group: its owner reports the group.
    pub lead_partition: u32,
    /// Unix seconds of the newest flush of the group (`max(updated_at)`).
    pub flushed_at: i64,
}

/// What the ledger (`stripe_reports`) says about one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Persisted before sending; resent (same identifier) until Stripe answers.
    Pending,
    /// Stripe accepted it (or answered that it already had it).
    Sent,
    /// Stripe rejected it for good (the error code is stored with it).
    Rejected,
    /// Too old for Stripe's 35-day window; never sent.
    Unreportable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Rejected => "rejected",
            Status::Unreportable => "unreportable",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "sent" => Status::Sent,
            "rejected" => Status::Rejected,
            "unreportable" => Status::Unreportable,
            _ => return None,
        })
    }

    /// Version in the ledger: a final status replaces `pending`.
    pub fn version(self) -> u8 {
        match self {
            Status::Pending => 1,
            _ => 2,
        }
    }
}

/// One meter event: the units from `before` to `after` of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub key: GroupKey,
    pub period_end: i64,
    pub customer: String,
    pub event_name: String,
    /// Units reported before this event (cumulative, whole units after the multiplier).
    pub before: i64,
    /// Units reported after it.
    pub after: i64,
    /// Event time, Unix seconds.
    pub timestamp: i64,
    pub identifier: String,
    /// When the usage it reports was flushed (Unix seconds, for the lag metric).
    pub flushed_at: i64,
}

impl Report {
    /// The event's `value`: whole units, always positive.
    pub fn value(&self) -> i64 {
        self.after.saturating_sub(self.before)
    }
}

/// Where a group's usage goes on Stripe.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub customer: &'a str,
    pub event_name: &'a str,
    /// Value sent = whole units of (meter value x multiplier).
    pub multiplier: Decimal,
}

/// What to do with a group this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything is reported.
    UpToDate,
    /// The target fell below what was reported by `over` units: nothing to send until later
    /// increases make up for it.
    CarryForward { over: i64 },
    /// Send these events (one, or several when the delta exceeds [`MAX_EVENT_VALUE`]).
    Send(Vec<Report>),
    /// The period is too old for Stripe: record these units as unreportable.
    Unreportable(Report),
    /// The period has not started yet (events may run 5 minutes ahead): wait.
    NotYet,
    /// The target does not fit in 64 bits (a misconfigured multiplier).
    Overflow,
}

/// `floor(total x multiplier)`, or `None` if it does not fit in an `i64`.
pub fn target_units(total: Decimal, multiplier: Decimal) -> Option<i64> {
    total.checked_mul(multiplier)?.floor().to_i64()
}

/// Deterministic identifier of the event covering `before..after` of a group (43 chars;
/// Stripe allows 100).
pub fn identifier(
    key: &GroupKey,
    customer: &str,
    event_name: &str,
    before: i64,
    after: i64,
) -> String {
    let mut h = Sha256::new();
    for part in [
        key.tenant.as_bytes(),
        key.meter.as_bytes(),
        &key.period_start.to_be_bytes(),
        customer.as_bytes(),
        event_name.as_bytes(),
        &before.to_be_bytes(),
        &after.to_be_bytes(),
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    format!("cm_{}", &hex::encode(h.finalize())[..40])
}

/// Where in time an event for the period `[start, end)` goes, seen at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At this Unix second.
    At(i64),
    /// The period starts after `now`.
    NotYet,
    /// The period's last second is out of Stripe's window (with the margin).
    TooOld,
}

/// The timestamp of a report: `now` clamped into the period.
pub fn placement(period_start: i64, period_end: i64, now: i64) -> Placement {
    let last = (period_end - 1).max(period_start);
    let ts = now.clamp(period_start, last);
    if ts > now {
        Placement::NotYet
    } else if ts < now - PAST_WINDOW_SECS + PAST_MARGIN_SECS {
        Placement::TooOld
    } else {
        Placement::At(ts)
    }
}

/// True if Stripe still takes an event at `ts` when sent at `now` (the exact documented
/// window, without margin).
pub fn in_window(ts: i64, now: i64) -> bool {
    ts >= now - PAST_WINDOW_SECS && ts <= now + FUTURE_WINDOW_SECS
}

/// Decides what to report for `usage`, given the units already reported.
pub fn decide(usage: &Usage, reported: i64, target: &Target<'_>, now: i64) -> Decision {
    let Some(units) = target_units(usage.total, target.multiplier) else {
        return Decision::Overflow;
    };
    if units == reported {
        return Decision::UpToDate;
    }
    if units < reported {
        return Decision::CarryForward {
            over: reported.saturating_sub(units),
        };
    }
    let report = |before: i64, after: i64, timestamp: i64| Report {
        key: usage.key.clone(),
        period_end: usage.period_end,
        customer: target.customer.to_string(),
        event_name: target.event_name.to_string(),
        before,
        after,
        timestamp,
        identifier: identifier(
            &usage.key,
            target.customer,
            target.event_name,
            before,
            after,
        ),
        flushed_at: usage.flushed_at,
    };
    match placement(usage.key.period_start, usage.period_end, now) {
        Placement::NotYet => Decision::NotYet,
        Placement::TooOld => Decision::Unreportable(report(
            reported,
            units,
            (usage.period_end - 1).max(usage.key.period_start),
        )),
        Placement::At(ts) => {
            let mut out = Vec::new();
            let mut before = reported;
            while before < units {
                let after =
                    before.saturating_add(units.saturating_sub(before).min(MAX_EVENT_VALUE));
                out.push(report(before, after, ts));
                before = after;
            }
            Decision::Send(out)
        }
    }
}

/// Requests of at most `size` events (clamped to 1..=100).
pub fn batches(reports: &[Report], size: usize) -> std::slice::Chunks<'_, Report> {
    reports.chunks(size.clamp(1, MAX_EVENTS_PER_REQUEST))
}

/// RFC 3339 UTC, whole seconds (`2024-06-01T12:00:00Z`).
pub fn rfc3339(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The body of `POST /v2/billing/meter_event_stream`.
pub fn v2_body(events: &[Report]) -> serde_json::Value {
    serde_json::json!({
        "events": events.iter().map(|r| serde_json::json!({
            "event_name": r.event_name,
            "identifier": r.identifier,
            "timestamp": rfc3339(r.timestamp),
            "payload": {
                "stripe_customer_id": r.customer,
                "value": r.value().to_string(),
            },
        })).collect::<Vec<_>>()
    })
}

/// The form of `POST /v1/billing/meter_events` (timestamp in Unix seconds).
pub fn v1_form(r: &Report) -> Vec<(&'static str, String)> {
    vec![
        ("event_name", r.event_name.clone()),
        ("payload[stripe_customer_id]", r.customer.clone()),
        ("payload[value]", r.value().to_string()),
        ("identifier", r.identifier.clone()),
        ("timestamp", r.timestamp.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;
    /// 2026-11-01T00:00:00Z .. 2026-12-01T00:00:00Z
    const PS: i64 = 1_793_491_200;
    const PE: i64 = PS + 30 * DAY;

    fn usage(total: &str, start: i64, end: i64) -> Usage {
        Usage {
            key: GroupKey {
                tenant: "acme".into(),
                meter: "call_minutes".into(),
                period_start: start,
            },
            period_end: end,
            total: total.parse().unwrap(),
            lead_partition: 0,
            flushed_at: start + 10,
        }
    }

    fn target(mult: &str) -> Target<'static> {
        Target {
            customer: "cus_1",
            event_name: "voice_minutes",
            multiplier: mult.parse().unwrap(),
        }
    }

    fn sent(d: Decision) -> Vec<Report> {
        match d {
            Decision::Send(v) => v,
            other => panic!("expected Send, got {other:?}"),
        }
    }

    #[test]
    fn first_report_sends_whole_units() {
        let now = PS + 5 * DAY;
        let r = sent(decide(&usage("96.5", PS, PE), 0, &target("1"), now));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].before, r[0].after, r[0].value()), (0, 96, 96));
        assert_eq!(r[0].timestamp, now);
        assert_eq!(r[0].customer, "cus_1");
        assert_eq!(r[0].event_name, "voice_minutes");
        // The half unit waits until it is whole.
        assert_eq!(
            decide(&usage("96.99", PS, PE), 96, &target("1"), now),
            Decision::UpToDate
        );
    }

    #[test]
    fn multiplier_applies_before_flooring() {
        let now = PS + DAY;
        // 12.345 EUR of revenue reported in cents.
        let r = sent(decide(&usage("12.345", PS, PE), 0, &target("100"), now));
        assert_eq!(r[0].value(), 1234);
        // Minutes reported in seconds.
        let r = sent(decide(&usage("1.5", PS, PE), 0, &target("60"), now));
        assert_eq!(r[0].value(), 90);
        assert_eq!(
            target_units("-0.5".parse().unwrap(), Decimal::ONE),
            Some(-1)
        );
        assert_eq!(
            decide(
                &usage("1", PS, PE),
                0,
                &target("100000000000000000000000"),
                now
            ),
            Decision::Overflow
        );
    }

    #[test]
    fn deltas_start_from_what_was_reported() {
        let now = PS + DAY;
        let r = sent(decide(&usage("250", PS, PE), 96, &target("1"), now));
        assert_eq!((r[0].before, r[0].after, r[0].value()), (96, 250, 154));
    }

    #[test]
    fn decreases_are_carried_forward_against_later_increases() {
        let now = PS + DAY;
        let t = target("100");
        // 100.00 reported, then a 30.00 refund: nothing is sent, 3000 units carried.
        assert_eq!(
            decide(&usage("70", PS, PE), 10_000, &t, now),
            Decision::CarryForward { over: 3000 }
        );
        // A later 20.00 increase is still below what was reported.
        assert_eq!(
            decide(&usage("90", PS, PE), 10_000, &t, now),
            Decision::CarryForward { over: 1000 }
        );
        // Past it, only the excess is sent.
        let r = sent(decide(&usage("120", PS, PE), 10_000, &t, now));
        assert_eq!((r[0].before, r[0].after), (10_000, 12_000));
        // A negative total never sends anything.
        assert_eq!(
            decide(&usage("-5", PS, PE), 0, &t, now),
            Decision::CarryForward { over: 500 }
        );
    }

    #[test]
    fn identifiers_are_deterministic_and_distinct() {
        let u = usage("10", PS, PE);
        let a = identifier(&u.key, "cus_1", "m", 0, 10);
        assert_eq!(a, identifier(&u.key, "cus_1", "m", 0, 10));
        assert!(a.starts_with("cm_") && a.len() == 43 && a.len() <= 100);
        let others = [
            identifier(&u.key, "cus_1", "m", 0, 11),
            identifier(&u.key, "cus_1", "m", 1, 10),
            identifier(&u.key, "cus_2", "m", 0, 10),
            identifier(&u.key, "cus_1", "n", 0, 10),
            identifier(
                &GroupKey {
                    period_start: PS + 1,
                    ..u.key.clone()
                },
                "cus_1",
                "m",
                0,
                10,
            ),
            identifier(
                &GroupKey {
                    tenant: "acm".into(),
                    meter: "ecall_minutes".into(),
                    ..u.key.clone()
                },
                "cus_1",
                "m",
                0,
                10,
            ),
        ];
        for o in &others {
            assert_ne!(&a, o);
        }
        // Two decisions from the same data make the same events (a resend, or two instances).
        let now = PS + DAY;
        assert_eq!(
            decide(&u, 3, &target("1"), now),
            decide(&u, 3, &target("1"), now)
        );
        let r = sent(decide(&u, 3, &target("1"), now));
        assert_eq!(
            r[0].identifier,
            identifier(&u.key, "cus_1", "voice_minutes", 3, 10)
        );
    }

    #[test]
    fn timestamps_lie_inside_the_period() {
        // Current period: now.
        assert_eq!(placement(PS, PE, PS + 3), Placement::At(PS + 3));
        // Closed period: its last second.
        assert_eq!(placement(PS, PE, PE + 2 * DAY), Placement::At(PE - 1));
        // A period that starts in a minute (events may run 5 minutes ahead): wait.
        assert_eq!(placement(PS, PE, PS - 60), Placement::NotYet);
        let r = sent(decide(&usage("5", PS, PE), 0, &target("1"), PE + DAY));
        assert_eq!(r[0].timestamp, PE - 1);
        assert_eq!(rfc3339(PS), "2026-11-01T00:00:00Z");
        assert_eq!(
            decide(&usage("5", PS, PE), 0, &target("1"), PS - 60),
            Decision::NotYet
        );
    }

    #[test]
    fn usage_older_than_35_days_is_unreportable() {
        // The period ended 34 days ago: still reported, at its last second.
        let now = PE + 34 * DAY;
        let r = sent(decide(&usage("7.9", PS, PE), 0, &target("1"), now));
        assert_eq!(r[0].timestamp, PE - 1);
        assert!(in_window(r[0].timestamp, now));
        // 35 days minus the margin: unreportable, with the units it would have carried.
        let now = PE - 1 + PAST_WINDOW_SECS - PAST_MARGIN_SECS + 1;
        match decide(&usage("7.9", PS, PE), 2, &target("1"), now) {
            Decision::Unreportable(r) => {
                assert_eq!((r.before, r.after, r.value()), (2, 7, 5));
                assert_eq!(r.timestamp, PE - 1);
            }
            other => panic!("{other:?}"),
        }
        // Nothing new: nothing to flag.
        assert_eq!(
            decide(&usage("7.9", PS, PE), 7, &target("1"), now),
            Decision::UpToDate
        );
        assert!(!in_window(PE - 1, PE - 1 + PAST_WINDOW_SECS + 1));
        assert!(in_window(PS + FUTURE_WINDOW_SECS, PS));
        assert!(!in_window(PS + FUTURE_WINDOW_SECS + 1, PS));
    }

    #[test]
    fn batches_hold_at_most_100_events() {
        let u = usage("250", PS, PE);
        let reports: Vec<Report> = (0..250)
            .map(|i| sent(decide(&u, i, &target("1"), PS + 1)).remove(0))
            .collect();
        let sizes: Vec<usize> = batches(&reports, 100).map(<[Report]>::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let sizes: Vec<usize> = batches(&reports, 500).map(<[Report]>::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(batches(&reports, 0).next().unwrap().len(), 1);
        assert_eq!(batches(&reports, 30).count(), 9);
    }

    #[test]
    fn huge_deltas_are_split_below_15_digits() {
        let u = usage("2500000000000000", PS, PE);
        let r = sent(decide(&u, 0, &target("1"), PS + 1));
        assert_eq!(r.len(), 3);
        assert!(
            r.iter()
                .all(|e| e.value() > 0 && e.value() <= MAX_EVENT_VALUE)
        );
        assert_eq!(
            r.iter().map(Report::value).sum::<i64>(),
            2_500_000_000_000_000
        );
        assert_eq!(r[1].before, r[0].after);
        assert_ne!(r[0].identifier, r[1].identifier);
    }

    #[test]
    fn wire_formats() {
        let r = sent(decide(&usage("25", PS, PE), 0, &target("1"), PS + 60)).remove(0);
        let body = v2_body(std::slice::from_ref(&r));
        assert_eq!(
            body,
            serde_json::json!({"events": [{
                "event_name": "voice_minutes",
                "identifier": r.identifier,
                "timestamp": "2026-11-01T00:01:00Z",
                "payload": {"stripe_customer_id": "cus_1", "value": "25"},
            }]})
        );
        let form = v1_form(&r);
        assert!(form.contains(&("payload[value]", "25".to_string())));
        assert!(form.contains(&("payload[stripe_customer_id]", "cus_1".to_string())));
        assert!(form.contains(&("timestamp", (PS + 60).to_string())));
        assert!(form.contains(&("identifier", r.identifier.clone())));
        assert!(form.contains(&("event_name", "voice_minutes".to_string())));
        for s in [
            Status::Pending,
            Status::Sent,
            Status::Rejected,
            Status::Unreportable,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert!(Status::Sent.version() > Status::Pending.version());
    }

    proptest! {
        /// Whatever the totals do (refunds included), reporting never goes backwards, never
        /// sends a non-positive value, and always equals the highest target seen so far:
        /// once the total is at its peak, Stripe holds exactly floor(total x multiplier).
        #[test]
        fn reported_units_track_the_running_peak(
            steps in proptest::collection::vec(-50_000i64..100_000, 1..40),
            mult in prop_oneof![Just("1"), Just("100"), Just("0.5")],
        ) {
            let mut total = Decimal::ZERO;
            let mut reported = 0i64;
            let mut sent_sum = 0i64;
            let mut peak = 0i64;
            let mut ids = std::collections::BTreeSet::new();
            for s in steps {
                total += Decimal::new(s, 3);
                let u = usage(&total.to_string(), PS, PE);
                let t = target(mult);
                let units = target_units(total, t.multiplier).unwrap();
                peak = peak.max(units);
                match decide(&u, reported, &t, PS + DAY) {
                    Decision::Send(rs) => {
                        for r in rs {
                            prop_assert!(r.value() > 0);
                            prop_assert_eq!(r.before, reported);
                            prop_assert!(ids.insert(r.identifier.clone()));
                            reported = r.after;
                            sent_sum += r.value();
                        }
                    }
                    Decision::UpToDate | Decision::CarryForward { .. } => {}
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert_eq!(reported, peak);
                prop_assert_eq!(sent_sum, peak);
            }
        }
    }
}
