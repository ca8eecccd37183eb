//! The processor's side of subscription events (CONTRACT section 10): a
//! `subscription.updated` or `subscription.canceled` is validated against the catalog and
//! the tenant ([`crate::subscription::resolve`]), deduplicated and watermarked like any
//! event, and applied in partition order with the tenant's usage: the tenant in effect is
//! rebuilt and published to [`super::Shared`], the alert triggers of the tenant are
//! recomputed against the new limits, and the record waits for the next flush, which writes
//! it before the partition checkpoint (so no offset is committed past an unstored change).
//!
//! Replay: a restore loads the records at or below the checkpoint position only (see
//! `ClickHouse::restore`), so every record past it is applied again when its event is read
//! again, exactly as the first time; its rows are the same (same key, same version). The
//! records it loads are applied at once (readers see the tenant as counted), but a message
//! replayed below the checkpoint, this module's events as the usage, is judged against the
//! tenant as it was at the message's offset: without the records of that message and the
//! later ones (`Tenants::at_offset`), so that it passes or fails as when first read.

use chrono::DateTime;

use super::{InMessage, Outcome, Processor, RawEventRecord};
use crate::alerts;
use crate::event::{Body, ErrorCode, Event, Rejection};
use crate::subscription::{self, Change, Origin, SubscriptionRecord};

impl Processor {
    /// Validation, dedup and application of a subscription event. `Ok(None)` for a
    /// replayed event.
    pub(super) fn evaluate_subscription(
        &mut self,
        m: &InMessage<'_>,
        ev: &Event<'_>,
        arrival_ms: i64,
        replay: bool,
    ) -> Result<Option<Outcome>, Rejection> {
        let change = match &ev.body {
            Body::SubscriptionUpdated(u) => Change::Updated(u),
            Body::SubscriptionCanceled(c) => Change::Canceled(c),
            _ => {
                return Err(Rejection::new(
                    ErrorCode::InvalidEvent,
                    "not a subscription event",
                ));
            }
        };
        if ev.time.timestamp_millis() > arrival_ms.saturating_add(self.params.skew_ms) {
            return Err(Rejection::new(
                ErrorCode::FutureEvent,
                format!(
                    "time {} is more than pipeline.max_clock_skew ahead of the clock",
                    ev.time.to_rfc3339()
                ),
            ));
        }
        let catalog = self.catalog.clone();
        let tidx = self.tenant_idx(&ev.subject);
        // The tenant this event is checked against: the one in effect, or when it is
        // replayed below the checkpoint, the one in effect at its offset (restored records
        // of this event and later ones left out).
        let earlier = match tidx {
            Some(t) if replay => self.tenants.at_offset(t, m.partition, m.offset, &catalog),
            _ => None,
        };
        let (current, base) = match earlier {
            None => (
                tidx.filter(|t| self.tenants.is_known(*t))
                    .map(|t| self.tenants.tenant(t).clone()),
                tidx.map(|t| self.tenants.tenant(t).clone()),
            ),
            Some(e) => (e.tenant.clone().filter(|_| e.known), e.tenant),
        };
        let rec = subscription::resolve(
            &catalog,
            current.as_deref(),
            change,
            Origin {
                tenant: &ev.subject,
                event_id: &ev.id,
                partition: m.partition,
                offset: m.offset,
            },
        )?;
        // The tenant with this record applied (a new tenant: created by it).
        let preview = subscription::merge(
            &catalog,
            &ev.subject,
            base.as_ref().filter(|t| t.configured || current.is_some()),
            std::slice::from_ref(&rec),
        );
        let period = match (&current, &preview) {
            (Some(t), _) | (None, Some(t)) => t.period_at(rec.effective()),
            (None, None) => {
                return Err(Rejection::new(
                    ErrorCode::InvalidData,
                    "the subscription names no plan that can create the tenant",
                ));
            }
        };

        let key = super::dedup_key(&mut self.key_buf, &ev.subject, &ev.source, &ev.id);
        let ps = self.partitions.get_mut(&m.partition).expect("owned");
        if ps.dedup.seen(key, arrival_ms, self.params.dedup_window_ms) {
            return if replay {
                Ok(None)
            } else {
                Ok(Some(Outcome::Duplicate))
            };
        }
        ps.dedup.insert(key, arrival_ms);
        ps.max_ts_ms = ps.max_ts_ms.max(arrival_ms);
        let wm_before = ps.watermark_us;
        ps.watermark_us = ps.watermark_us.max(ev.time.timestamp_micros());
        if replay {
            return Ok(None);
        }
        if (period.end + self.params.grace_secs).saturating_mul(1_000_000) < wm_before {
            return Err(Rejection::new(
                ErrorCode::PeriodClosed,
                format!(
                    "effective_at {} is in usage period {}..{}, closed: its end plus pipeline.late_event_grace is behind the partition watermark {}",
                    rec.effective().to_rfc3339(),
                    alerts::rfc3339(period.start),
                    alerts::rfc3339(period.end),
                    DateTime::from_timestamp_micros(wm_before)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ),
            ));
        }
        let tidx = match (tidx, preview) {
            (Some(t), _) => t,
            (None, Some(created)) => {
                self.tenants
                    .idx_or_create(&ev.subject, created, &catalog, &self.shared.tenants)
            }
            (None, None) => unreachable!("checked above"),
        };
        self.apply_subscription(tidx, std::iter::once(rec.clone()));
        // A counted event of the period containing `effective_at`: the period gets its
        // statement when it closes, even without usage (see `closing`).
        self.watch_period(m.partition, tidx, period);
        self.pending_subs.push(rec);
        if self.params.raw_events {
            self.raw_events.push(RawEventRecord {
                tenant: self.tenants.name(tidx).clone(),
                event_id: ev.id.to_string(),
                source: ev.source.to_string(),
                ty: ev.ty.to_string(),
                time_us: ev.time.timestamp_micros(),
                data: ev.data.to_string(),
                partition: m.partition,
                offset: m.offset,
            });
        }
        Ok(Some(Outcome::Counted))
    }

    /// Applies records to a tenant: rebuilds and publishes the tenant in effect, and makes
    /// its alert triggers follow the new limits.
    pub(super) fn apply_subscription(
        &mut self,
        tidx: u32,
        records: impl IntoIterator<Item = SubscriptionRecord>,
    ) {
        let t = self.tenants.apply_records(tidx, records, &self.catalog);
        let name = self.tenants.name(tidx).clone();
        self.shared.set_subscribed(&name, Some(t));
        for (k, (_, next)) in self.alert_state.iter_mut() {
            if k.0 == tidx {
                *next = None;
            }
        }
        self.alert_epoch = self.alert_epoch.wrapping_add(1);
    }

    /// Installs restored records (in partition order), creating the tenants they created.
    pub(super) fn install_subscriptions(&mut self, records: Vec<SubscriptionRecord>) {
        let mut by_tenant: Vec<(std::sync::Arc<str>, Vec<SubscriptionRecord>)> = Vec::new();
        for r in records {
            match by_tenant.iter_mut().find(|(t, _)| *t == r.tenant) {
                Some((_, v)) => v.push(r),
                None => by_tenant.push((r.tenant.clone(), vec![r])),
            }
        }
        let catalog = self.catalog.clone();
        for (name, recs) in by_tenant {
            let tidx = match self.tenant_idx(&name) {
                Some(t) => t,
                None => {
                    let Some(created) = subscription::merge(&catalog, &name, None, &recs) else {
                        tracing::warn!(tenant = %name, "stored subscriptions create no tenant (plans no longer configured?): ignored");
                        continue;
                    };
                    self.tenants
                        .idx_or_create(&name, created, &catalog, &self.shared.tenants)
                }
            };
            self.apply_subscription(tidx, recs);
        }
    }

    /// Forgets the records of a revoked partition.
    pub(super) fn revoke_subscriptions(&mut self, partition: i32) {
        self.pending_subs.retain(|r| r.partition != partition);
        for (name, t) in self
            .tenants
            .drop_partition_records(partition, &self.catalog)
        {
            self.shared.set_subscribed(&name, t);
        }
    }
}
