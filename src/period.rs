//! Monthly usage periods (CONTRACT section 3): from the anchor day at 00:00 in the tenant's
//! IANA time zone to the same point a month later. When a month has no such day (anchor 31 in
//! April), the period starts on that month's last day. Boundaries are UTC instants; DST is
//! honoured (a period that contains a DST change is an hour shorter or longer). When local
//! midnight does not exist (a zone that springs forward at 00:00), the period starts at the
//! first instant after the gap; when it is ambiguous, at the earlier instant.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A usage period `[start, end)` as UTC unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    pub start: i64,
    pub end: i64,
}

impl Period {
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
    pub fn start_utc(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.start, 0).expect("period start in range")
    }
    pub fn end_utc(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.end, 0).expect("period end in range")
    }
    /// Length in seconds.
    pub fn seconds(&self) -> i64 {
        self.end - self.start
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

/// The instant at which the period anchored in (`year`, `month`) starts.
pub fn anchor_instant(tz: Tz, anchor_day: u32, year: i32, month: u32) -> DateTime<Utc> {
    let day = anchor_day.clamp(1, 31).min(days_in_month(year, month));
    let midnight = NaiveDate::from_ymd_opt(year, month, day)
        .expect("valid date")
        .and_hms_opt(0, 0, 0)
        .expect("valid time");
    local_to_utc(tz, midnight)
}

fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            // In a DST gap: walk forward minute by minute to the first existing local time
            // (gaps are at most a few hours).
            let mut probe = local;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn prev_month(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

/// The usage period containing `t` for a tenant in `tz` anchored on `anchor_day` (1..=31).
pub fn period_containing(tz: Tz, anchor_day: u32, t: DateTime<Utc>) -> Period {
    let local = t.with_timezone(&tz);
    let (y, m) = (local.year(), local.month());
    let this = anchor_instant(tz, anchor_day, y, m);
    let (sy, sm) = if t >= this { (y, m) } else { prev_month(y, m) };
    let start = anchor_instant(tz, anchor_day, sy, sm);
    let (ey, em) = next_month(sy, sm);
    let end = anchor_instant(tz, anchor_day, ey, em);
    Period {
        start: start.timestamp(),
        end: end.timestamp(),
    }
}

/// Parses a period given on the command line or in the API: `2026-11` (the period anchored
/// in that month) or an RFC 3339 instant (the period containing it).
pub fn parse_period_spec(spec: &str, tz: Tz, anchor_day: u32) -> Option<Period> {
    if let Ok(t) = DateTime::parse_from_rfc3339(spec) {
        return Some(period_containing(tz, anchor_day, t.with_timezone(&Utc)));
    }
    let (y, m) = spec.split_once('-')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    // Years RFC 3339 can write; beyond them chrono's calendar ends (and `y + 1` overflows).
    if !(1..=12).contains(&m) || !(1..=9998).contains(&y) {
        return None;
    }
    let start = anchor_instant(tz, anchor_day, y, m);
    let (ey, em) = next_month(y, m);
    Some(Period {
        start: start.timestamp(),
        end: anchor_instant(tz, anchor_day, ey, em).timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn p(tz: &str, anchor: u32, t: &str) -> (DateTime<Utc>, DateTime<Utc>) {
        let p = period_containing(tz.parse().unwrap(), anchor, utc(t));
        (p.start_utc(), p.end_utc())
    }

    #[test]
    fn utc_calendar_month() {
        assert_eq!(
            p("UTC", 1, "2026-11-23T10:00:00Z"),
            (utc("2026-11-01T00:00:00Z"), utc("2026-12-01T00:00:00Z"))
        );
        // The boundary instant belongs to the new period.
        assert_eq!(
            p("UTC", 1, "2026-12-01T00:00:00Z").0,
            utc("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            p("UTC", 1, "2026-11-30T23:59:59Z").1,
            utc("2026-12-01T00:00:00Z")
        );
    }

    #[test]
    fn contract_example_paris_anchor_15() {
        assert_eq!(
            p("Europe/Paris", 15, "2026-11-23T10:00:00Z"),
            (
                utc("2026-11-15T00:00:00+01:00"),
                utc("2026-12-15T00:00:00+01:00")
            )
        );
        // Before the anchor day: the period that started last month.
        assert_eq!(
            p("Europe/Paris", 15, "2026-11-14T22:59:59Z").0,
            utc("2026-10-15T00:00:00+02:00")
        );
        assert_eq!(
            p("Europe/Paris", 15, "2026-11-14T23:00:00Z").0,
            utc("2026-11-15T00:00:00+01:00")
        );
    }

    #[test]
    fn dst_period_is_an_hour_longer_in_autumn() {
        let (s, e) = p("Europe/Paris", 1, "2026-10-15T12:00:00Z");
        assert_eq!(s, utc("2026-10-01T00:00:00+02:00"));
        assert_eq!(e, utc("2026-11-01T00:00:00+01:00"));
        assert_eq!((e - s).num_hours(), 31 * 24 + 1);
        let (s, e) = p("Europe/Paris", 1, "2026-03-15T12:00:00Z");
        assert_eq!((e - s).num_hours(), 31 * 24 - 1);
    }

    #[test]
    fn anchor_31_uses_last_day_of_short_months() {
        assert_eq!(
            p("UTC", 31, "2026-02-15T00:00:00Z"),
            (utc("2026-01-31T00:00:00Z"), utc("2026-02-28T00:00:00Z"))
        );
        assert_eq!(
            p("UTC", 31, "2026-03-01T00:00:00Z"),
            (utc("2026-02-28T00:00:00Z"), utc("2026-03-31T00:00:00Z"))
        );
        assert_eq!(
            p("UTC", 31, "2028-02-29T12:00:00Z"),
            (utc("2028-02-29T00:00:00Z"), utc("2028-03-31T00:00:00Z"))
        );
        assert_eq!(
            p("UTC", 30, "2026-04-30T00:00:00Z"),
            (utc("2026-04-30T00:00:00Z"), utc("2026-05-30T00:00:00Z"))
        );
    }

    #[test]
    fn year_boundary() {
        assert_eq!(
            p("UTC", 15, "2027-01-03T00:00:00Z"),
            (utc("2026-12-15T00:00:00Z"), utc("2027-01-15T00:00:00Z"))
        );
    }

    #[test]
    fn jerusalem_winter_offset() {
        // The real data set: January 1999 in Israel is UTC+2.
        assert_eq!(
            p("Asia/Jerusalem", 1, "1999-01-01T00:00:31+02:00"),
            (
                utc("1999-01-01T00:00:00+02:00"),
                utc("1999-02-01T00:00:00+02:00")
            )
        );
        assert_eq!(
            p("Asia/Jerusalem", 1, "1998-12-31T22:00:30Z").0,
            utc("1999-01-01T00:00:00+02:00")
        );
    }

    #[test]
    fn midnight_in_a_dst_gap_starts_after_the_gap() {
        // America/Santiago springs forward at 24:00 on the first Saturday of September:
        // 2026-09-06 00:00 local does not exist; clocks jump to 01:00 (-03:00).
        let tz: Tz = "America/Santiago".parse().unwrap();
        let start = anchor_instant(tz, 6, 2026, 9);
        assert_eq!(start, utc("2026-09-06T01:00:00-03:00"));
        let per = period_containing(tz, 6, utc("2026-09-10T00:00:00Z"));
        assert_eq!(per.start_utc(), start);
    }

    #[test]
    fn ambiguous_midnight_takes_the_earlier_instant() {
        // America/Havana falls back at 01:00 -> 00:00 on the first Sunday of November,
        // so 00:xx occurs twice on 2026-11-01.
        let tz: Tz = "America/Havana".parse().unwrap();
        let start = anchor_instant(tz, 1, 2026, 11);
        assert_eq!(start, utc("2026-11-01T00:00:00-04:00"));
    }

    #[test]
    fn period_specs() {
        let tz: Tz = "UTC".parse().unwrap();
        let per = parse_period_spec("1999-02", tz, 1).unwrap();
        assert_eq!(per.start_utc(), utc("1999-02-01T00:00:00Z"));
        assert_eq!(per.end_utc(), utc("1999-03-01T00:00:00Z"));
        assert!(parse_period_spec("1999-13", tz, 1).is_none());
        assert_eq!(
            parse_period_spec("1999-02-10T00:00:00Z", tz, 1).unwrap(),
            per
        );
    }
}
