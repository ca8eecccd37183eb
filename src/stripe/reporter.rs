//! The reporting loop: every `stripe.report_interval`, compare the flushed totals of the
//! groups this instance leads with what the ledger says was reported, persist the new
//! reports as pending, send them, and record the outcome.
//!
//! One cycle:
//! 1. Ownership: the partitions this instance owns (`Shared::owned_partitions`). A group (tenant,
//!    meter, period) is reported by the owner of its lowest source partition, so instances
//!    split the work the way Kafka splits partitions.
//! 2. Resync (at start, when ownership changes and every 5 minutes): the units reported per
//!    group and the pending reports are reloaded from `stripe_reports`; otherwise only
//!    groups flushed since the last cycle (minus 5 minutes) are read from `usage_rollups`.
//! 3. [`super::batch::decide`] per group: new reports, unreportable units, carried-forward
//!    decreases, periods that have not started.
//! 4. New reports are written to `stripe_reports` as `pending` *before* anything is sent;
//!    unreportable units are written as such (and counted and logged).
//! 5. Pending reports of led groups are sent in batches with retries
//!    ([`super::retry`]); a request Stripe rejects as a whole is split until the rejected
//!    event is alone, so one bad event never blocks the others.
//! 6. Outcomes (`sent`, `rejected`) replace the pending rows.
//!
//! A crash between 4 and 6 leaves pending rows that the next owner resends with the same
//! identifiers (Stripe drops duplicates within 24 h). Two instances that both believe they
//! lead a group (during a rebalance) compute the same identifiers from the same data; if
//! they saw different totals, both reports are in the ledger, the group's reported units are
//! their sum, and the excess is carried forward against later usage.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use super::batch::{self, Decision, GroupKey, Report, Status, Target};
use super::client::{Client, ClientError};
use super::ledger::{self, LedgerError};
use super::retry::{self, Disposition};
use crate::config::StripeSettings;
use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;
use crate::telemetry as t;

/// Full resynchronisation with the ledger and all rollups at least this often.
const FULL_RESYNC: Duration = Duration::from_secs(300);
/// Incremental reads look this far behind the previous cycle (flush latency, clock skew).
const SINCE_MARGIN_SECS: i64 = 300;

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleStats {
    /// New reports persisted as pending.
    pub new_reports: usize,
    /// Events Stripe accepted.
    pub sent: usize,
    /// Events Stripe rejected for good.
    pub rejected: usize,
    /// Events left pending (Stripe unavailable).
    pub left_pending: usize,
    /// Units recorded as unreportable.
    pub unreportable_units: i64,
}

/// How one request ended after its retries.
enum Sent {
    Delivered,
    Rejected(String),
    GaveUp(String),
}

#[derive(Default)]
struct Delivery {
    sent: Vec<Report>,
    rejected: Vec<(Report, String)>,
    unsent: usize,
    stopped: Option<String>,
}

/// The reporter's state between cycles.
pub struct Reporter {
    /// meter -> (Stripe event name, multiplier).
    targets: BTreeMap<String, (String, Decimal)>,
    meter_names: Vec<String>,
    batch_size: usize,
    client: Client,
    ch: ClickHouse,
    shared: Arc<Shared>,
    /// `stripe.clock` minus the real clock at start (0 unless set).
    clock_offset: i64,
    /// Units reported per group (including pending reports).
    reported: HashMap<GroupKey, i64>,
    /// Persisted reports not known to be delivered, by identifier.
    pending: BTreeMap<String, Report>,
    /// Lead partition of every group seen.
    leads: HashMap<GroupKey, u32>,
    /// Groups with units that cannot be sent yet -> when they were flushed.
    waiting: HashMap<GroupKey, i64>,
    /// Groups whose total fell below what was reported -> units carried forward.
    carried: HashMap<GroupKey, i64>,
    /// Partitions owned at the last cycle.
    owned: BTreeSet<i32>,
    last_full: Option<Instant>,
    /// The catalog of the last full resync: a reload (a fixed `stripe_customer_id`, say)
    /// triggers another, so that reports refused for the old customer are made again.
    resynced_catalog: Option<Arc<crate::catalog::Catalog>>,
    /// Real Unix second at which the last successful cycle started.
    since: Option<i64>,
    layout_ok: bool,
}

impl Reporter {
    pub fn new(
        settings: &StripeSettings,
        api_key: String,
        ch: ClickHouse,
        shared: Arc<Shared>,
    ) -> Result<Reporter, ClientError> {
        let clock_offset = match settings
            .clock
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        {
            Some(c) => {
                tracing::warn!(clock = %c, "stripe.clock is set: reporting as if the clock had read this at start (test and demo only)");
                c.timestamp() - Utc::now().timestamp()
            }
            None => 0,
        };
        Ok(Reporter {
            targets: settings
                .meters
                .iter()
                .map(|(m, s)| (m.clone(), (s.event_name.clone(), s.multiplier.0)))
                .collect(),
            meter_names: settings.meters.keys().cloned().collect(),
            batch_size: settings.batch_size,
            client: Client::new(settings, api_key)?,
            ch,
            shared,
            clock_offset,
            reported: HashMap::new(),
            pending: BTreeMap::new(),
            leads: HashMap::new(),
            waiting: HashMap::new(),
            carried: HashMap::new(),
            owned: BTreeSet::new(),
            last_full: None,
            resynced_catalog: None,
            since: None,
            layout_ok: false,
        })
    }

    /// The reporting clock (Unix seconds): the wall clock, shifted by `stripe.clock`.
    pub fn now(&self) -> i64 {
        Utc::now().timestamp() + self.clock_offset
    }

    fn leads(&self, key: &GroupKey, owned: &BTreeSet<i32>) -> bool {
        self.leads
            .get(key)
            .is_some_and(|p| owned.contains(&(*p as i32)))
    }

    /// One reporting cycle. `last`: the pipeline has stopped and released its partitions;
    /// report for the partitions owned at the previous cycle.
    pub async fn cycle(&mut self, last: bool) -> Result<CycleStats, LedgerError> {
        if self.meter_names.is_empty() {
            return Ok(CycleStats::default());
        }
        if !self.layout_ok {
            ledger::check_layout(&self.ch).await?;
            self.layout_ok = true;
        }
        let real_start = Utc::now().timestamp();
        let now = real_start + self.clock_offset;
        let current: BTreeSet<i32> = self.shared.owned_partitions().into_iter().collect();
        let owned = if current.is_empty() && last {
            self.owned.clone()
        } else {
            current
        };
        if owned.is_empty() {
            metrics::gauge!(t::STRIPE_REPORT_LAG).set(0.0);
            return Ok(CycleStats::default());
        }
        let catalog_now = self.shared.catalog();
        let full = self.since.is_none()
            || owned != self.owned
            || self.last_full.is_none_or(|t| t.elapsed() >= FULL_RESYNC)
            || self
                .resynced_catalog
                .as_ref()
                .is_none_or(|c| !Arc::ptr_eq(c, &catalog_now));
        if full {
            let reported = ledger::reported(&self.ch, |tenant| {
                catalog_now
                    .tenants
                    .get(tenant)
                    .and_then(|t| t.stripe_customer_id.clone())
            })
            .await?;
            let pending = ledger::pending(&self.ch).await?;
            self.reported = reported;
            self.pending = pending
                .into_iter()
                .map(|r| (r.identifier.clone(), r))
                .collect();
            self.leads.clear();
            self.waiting.clear();
            self.carried.clear();
        }
        let since = if full {
            None
        } else {
            self.since.map(|s| s - SINCE_MARGIN_SECS)
        };
        let usage = ledger::usage(&self.ch, &self.meter_names, since).await?;
        let catalog = self.shared.catalog();
        let mut fresh: Vec<Report> = Vec::new();
        let mut too_old: Vec<Report> = Vec::new();
        for u in &usage {
            self.leads.insert(u.key.clone(), u.lead_partition);
            self.carried.remove(&u.key);
            self.waiting.remove(&u.key);
            if !owned.contains(&(u.lead_partition as i32)) {
                continue;
            }
            let Some((event_name, multiplier)) = self.targets.get(&u.key.meter) else {
                continue;
            };
            let Some(customer) = catalog
                .tenants
                .get(&u.key.tenant)
                .and_then(|t| t.stripe_customer_id.clone())
            else {
                continue;
            };
            let reported = self.reported.get(&u.key).copied().unwrap_or(0);
            let target = Target {
                customer: &customer,
                event_name,
                multiplier: *multiplier,
            };
            match batch::decide(u, reported, &target, now) {
                Decision::UpToDate => {}
                Decision::CarryForward { over } => {
                    self.carried.insert(u.key.clone(), over);
                }
                Decision::Send(rs) => fresh.extend(rs),
                Decision::Unreportable(r) => too_old.push(r),
                Decision::NotYet => {
                    self.waiting.insert(u.key.clone(), u.flushed_at);
                }
                Decision::Overflow => {
                    tracing::error!(tenant = %u.key.tenant, meter = %u.key.meter, total = %u.total, %multiplier,
                        "usage x multiplier does not fit in 64 bits; not reported (check stripe.meters.*.multiplier)");
                    self.waiting.insert(u.key.clone(), u.flushed_at);
                }
            }
        }
        // Pending reports that waited past Stripe's window cannot be sent any more.
        let expired: Vec<Report> = self
            .pending
            .values()
            .filter(|r| self.leads(&r.key, &owned) && !batch::in_window(r.timestamp, now))
            .cloned()
            .collect();

        // Persist before sending: a crash from here on resends the same identifiers.
        let mut intents: Vec<(&Report, Status, &str)> = Vec::new();
        intents.extend(fresh.iter().map(|r| (r, Status::Pending, "")));
        intents.extend(too_old.iter().map(|r| (r, Status::Unreportable, "")));
        intents.extend(
            expired
                .iter()
                .map(|r| (r, Status::Unreportable, "expired_while_pending")),
        );
        if !intents.is_empty() {
            ledger::record(&self.ch, &intents).await?;
        }
        drop(intents);
        let mut stats = CycleStats {
            new_reports: fresh.len(),
            ..Default::default()
        };
        for r in too_old.iter().chain(&expired) {
            if self.pending.remove(&r.identifier).is_none() {
                {
                    let e = self.reported.entry(r.key.clone()).or_default();
                    *e = e.saturating_add(r.value());
                }
            }
            stats.unreportable_units = stats.unreportable_units.saturating_add(r.value());
            metrics::counter!(t::STRIPE_UNREPORTABLE, "meter" => r.key.meter.clone())
                .increment(r.value() as u64);
            tracing::warn!(tenant = %r.key.tenant, meter = %r.key.meter, period_start = %batch::rfc3339(r.key.period_start),
                period_end = %batch::rfc3339(r.period_end), units = r.value(), customer = %r.customer,
                "usage older than Stripe's 35-day window cannot be reported; recorded as unreportable in stripe_reports");
        }
        for r in fresh {
            {
                let e = self.reported.entry(r.key.clone()).or_default();
                *e = e.saturating_add(r.value());
            }
            self.pending.insert(r.identifier.clone(), r);
        }
        self.since = Some(real_start);
        if full {
            self.last_full = Some(Instant::now());
            self.resynced_catalog = Some(catalog_now);
        }
        self.owned = owned.clone();

        let mut to_send: Vec<Report> = self
            .pending
            .values()
            .filter(|r| self.leads(&r.key, &owned))
            .cloned()
            .collect();
        to_send.sort_by(|a, b| (&a.key, a.before).cmp(&(&b.key, b.before)));
        let d = self.deliver(to_send).await;
        let mut outcomes: Vec<(&Report, Status, &str)> = Vec::new();
        outcomes.extend(d.sent.iter().map(|r| (r, Status::Sent, "")));
        outcomes.extend(
            d.rejected
                .iter()
                .map(|(r, c)| (r, Status::Rejected, c.as_str())),
        );
        if !outcomes.is_empty()
            && let Err(e) = ledger::record(&self.ch, &outcomes).await
        {
            tracing::warn!(error = %e, "could not record Stripe outcomes; the reports stay pending in stripe_reports and a resend is deduplicated by Stripe");
        }
        metrics::counter!(t::STRIPE_EVENTS_SENT).increment(d.sent.len() as u64);
        for r in &d.sent {
            self.pending.remove(&r.identifier);
        }
        for (r, code) in &d.rejected {
            self.pending.remove(&r.identifier);
            metrics::counter!(t::STRIPE_REJECTED, "code" => code.clone()).increment(1);
            tracing::error!(tenant = %r.key.tenant, meter = %r.key.meter, period_start = %batch::rfc3339(r.key.period_start),
                units = r.value(), customer = %r.customer, identifier = %r.identifier, %code,
                "Stripe rejected a meter event; recorded as rejected in stripe_reports (not retried)");
        }
        if let Some(why) = &d.stopped {
            tracing::warn!(reason = %why, pending = d.unsent, "Stripe reporting paused until the next cycle; pending events will be resent");
        }
        stats.sent = d.sent.len();
        stats.rejected = d.rejected.len();
        stats.left_pending = d.unsent;
        self.publish_gauges(&owned);
        Ok(stats)
    }

    fn publish_gauges(&self, owned: &BTreeSet<i32>) {
        let real_now = Utc::now().timestamp();
        let oldest = self
            .pending
            .values()
            .filter(|r| self.leads(&r.key, owned))
            .map(|r| r.flushed_at)
            .chain(self.waiting.values().copied())
            .min();
        metrics::gauge!(t::STRIPE_REPORT_LAG)
            .set(oldest.map(|f| (real_now - f).max(0)).unwrap_or(0) as f64);
        let mut carried: BTreeMap<&str, i64> =
            self.targets.keys().map(|m| (m.as_str(), 0)).collect();
        for (k, v) in &self.carried {
            if let Some(c) = carried.get_mut(k.meter.as_str()) {
                *c = c.saturating_add(*v);
            }
        }
        for (m, v) in carried {
            metrics::gauge!(t::STRIPE_CARRIED_FORWARD, "meter" => m.to_string()).set(v as f64);
        }
    }

    /// Sends `reports` in requests of up to `batch_size` events (v1: one each).
    async fn deliver(&self, reports: Vec<Report>) -> Delivery {
        let per = self.client.events_per_request(self.batch_size);
        let mut work: VecDeque<Vec<Report>> = batch::batches(&reports, per)
            .map(<[Report]>::to_vec)
            .collect();
        let mut d = Delivery::default();
        while let Some(mut chunk) = work.pop_front() {
            match self.send_with_retries(&chunk).await {
                Sent::Delivered => d.sent.append(&mut chunk),
                Sent::Rejected(_) if chunk.len() > 1 => {
                    // Isolate the rejected event(s); the others go through.
                    let right = chunk.split_off(chunk.len() / 2);
                    work.push_front(right);
                    work.push_front(chunk);
                }
                Sent::Rejected(code) => {
                    if let Some(r) = chunk.pop() {
                        d.rejected.push((r, code));
                    }
                }
                Sent::GaveUp(why) => {
                    d.unsent = chunk.len() + work.iter().map(Vec::len).sum::<usize>();
                    d.stopped = Some(why);
                    break;
                }
            }
        }
        d
    }

    async fn send_with_retries(&self, chunk: &[Report]) -> Sent {
        let mut delays = retry::backoff();
        let mut refreshes = 0;
        loop {
            let answer = self.client.send(chunk).await;
            match retry::classify(&answer) {
                Disposition::Delivered | Disposition::AlreadyDelivered => return Sent::Delivered,
                Disposition::RefreshSession if refreshes < retry::MAX_SESSION_REFRESHES => {
                    refreshes += 1;
                    self.client.drop_session().await;
                }
                Disposition::Reject(code) => return Sent::Rejected(code),
                Disposition::Stop(why) => return Sent::GaveUp(why),
                Disposition::RefreshSession | Disposition::Retry => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(?answer, "Stripe request failed; retrying");
                        tokio::time::sleep(retry::wait(delay, &answer)).await;
                    }
                    None => {
                        return Sent::GaveUp(format!("still failing after retries: {answer:?}"));
                    }
                },
            }
        }
    }
}

/// Runs the reporter until `stop` is cancelled, then runs one last cycle and returns.
/// Cancel `stop` after the pipeline's final flush, so that the last cycle reports it.
pub async fn run(
    settings: StripeSettings,
    api_key: String,
    ch: ClickHouse,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut reporter = match Reporter::new(&settings, api_key, ch, shared) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Stripe reporting disabled");
            return;
        }
    };
    if settings.meters.is_empty() {
        tracing::warn!("stripe.enabled = true but no [stripe.meters.<meter>]: nothing to report");
    }
    tracing::info!(api = %settings.api, interval = ?settings.report_interval, meters = ?reporter.meter_names, "Stripe reporting started");
    let mut tick = tokio::time::interval(settings.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        log_cycle(reporter.cycle(false).await);
    }
    log_cycle(reporter.cycle(true).await);
    tracing::info!("Stripe reporting stopped");
}

fn log_cycle(r: Result<CycleStats, LedgerError>) {
    match r {
        Ok(s) if s != CycleStats::default() => {
            tracing::info!(
                new = s.new_reports,
                sent = s.sent,
                rejected = s.rejected,
                pending = s.left_pending,
                unreportable_units = s.unreportable_units,
                "Stripe reporting cycle"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Stripe reporting cycle failed; retrying at the next one")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::sync::Mutex;

    /// A stream endpoint that refuses a whole request when one of its events has value 13,
    /// the way a synchronous validation would.
    async fn picky_server(seen: Arc<Mutex<Vec<usize>>>) -> String {
        let app = axum::Router::new()
            .route(
                "/v2/billing/meter_event_session",
                post(|| async {
                    Json(serde_json::json!({
                        "authentication_token": "tok",
                        "created": "2026-01-01T00:00:00Z",
                        "expires_at": "2026-01-01T00:15:00Z",
                    }))
                }),
            )
            .route(
                "/v2/billing/meter_event_stream",
                post(move |Json(v): Json<serde_json::Value>| {
                    let seen = seen.clone();
                    async move {
                        let events = v["events"].as_array().cloned().unwrap_or_default();
                        seen.lock().unwrap().push(events.len());
                        if events.iter().any(|e| e["payload"]["value"] == "13") {
                            return (
                                StatusCode::BAD_REQUEST,
                                Json(serde_json::json!({"error": {
                                    "type": "invalid_request_error",
                                    "code": "meter_event_invalid_value"}})),
                            );
                        }
                        (StatusCode::OK, Json(serde_json::json!({})))
                    }
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    #[tokio::test]
    async fn a_rejected_event_is_isolated_and_the_rest_delivered() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = picky_server(seen.clone()).await;
        let config = Config::from_toml_str("").unwrap();
        let mut settings = config.settings.stripe.clone();
        settings.api_base = url.clone();
        settings.meter_events_base = url;
        settings.rate_limit = 10_000;
        let reporter = Reporter::new(
            &settings,
            "sk_test".into(),
            ClickHouse::new(&config.settings.clickhouse),
            Shared::new(config.catalog.clone()),
        )
        .unwrap();
        let key = GroupKey {
            tenant: "t".into(),
            meter: "calls".into(),
            period_start: 0,
        };
        let reports: Vec<Report> = (0..250)
            .map(|i| {
                let (before, after) = if i == 137 { (0, 13) } else { (0, 1) };
                Report {
                    key: key.clone(),
                    period_end: 1,
                    customer: "cus_1".into(),
                    event_name: "calls".into(),
                    before,
                    after,
                    timestamp: 0,
                    identifier: format!("id{i}"),
                    flushed_at: 0,
                }
            })
            .collect();
        let d = reporter.deliver(reports).await;
        assert_eq!(d.sent.len(), 249);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].0.identifier, "id137");
        assert_eq!(d.rejected[0].1, "meter_event_invalid_value");
        assert!(d.stopped.is_none());
        let sizes = seen.lock().unwrap().clone();
        assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
        // 3 batches, then halving the rejected one down to the single bad event.
        assert!(sizes.len() <= 3 + 2 * 7, "{sizes:?}");
    }
}
