//! Period close: when a partition's event-time watermark passes a usage period's end plus
//! `pipeline.late_event_grace` (the same test that sends a late event to `period_closed`),
//! the period's rows on that partition can take no more events, and the processor makes
//! the tenant's statement ([`crate::statement`]) exactly once. Pure.
//!
//! Exactly once: closing is judged in [`Processor::snapshot`], against the watermark of the
//! checkpoint that snapshot writes, and the statements go into the same flush batch, written
//! before that checkpoint (their message is produced at the same time and awaited before the
//! batch is written, like alerts). So every period that is closed as of a stored checkpoint
//! has its stored statement; a crash before the checkpoint is stored restores an older one,
//! under which the period is still open, its rows are restored and the replay closes it
//! again: the same statement (a pure function of the rows), with the same id. Periods whose
//! statement is stored are remembered (restored from `usage_statements` with the rows), and
//! rows of a closed period are evicted only once its statement is made.
//!
//! A tenant's usage is summed over the partitions held here: producers key by tenant
//! (CONTRACT section 1), so that is one partition, and the statement is made when that
//! partition closes the period. A tenant spread over several partitions gets its statement
//! from the first of them to close the period.
//!
//! # Periods with only subscription events
//!
//! A statement is made for every tenant with at least one counted event in the period,
//! usage or subscription (CONTRACT section 10), so a period without rows gets one too when
//! a subscription event was counted in it. The period of a subscription event is the
//! tenant's usage period containing its `effective_at`: the change applies from then on
//! (section 10), its `period_closed` test judges that period (so it is never counted in a
//! period already closed), the stored record keeps `effective_at` (a restore finds the
//! period again), and by default `effective_at` is the event's `time`, the instant that
//! decides the billing period of any event (section 1). A `subscription.updated` sent in
//! October and effective on 1 December is a December event; a `subscription.canceled` is
//! an event of the period it cancels in.
//!
//! Such a period is watched per partition (`PartitionState::sub_periods`) from the counted
//! event until it closes, under the same rule as rows (end + grace behind the watermark),
//! and then stated like any period: [`Processor::make_statement`] prices it with the usage
//! in memory, none for a period without rows, so its lines are what the pricing gives for
//! zero usage (the base fee prorated by the subscription timeline, add-ons, and no usage
//! line whose amount is zero). Exactly once as for rows: the statement is in the flush that
//! writes the checkpoint under which the period is closed; a restore watches again the
//! periods of the stored subscription records still open under the stored checkpoint (the
//! records past it are applied again by the replay, which watches their periods again), and
//! watches the periods whose statement it found stored until they close, with that
//! statement marked made, so that a statement stored before a crash is not made again.
//! A watched period leaves the watch when it closes, and its "made" mark is dropped after
//! the next flush unless rows still hold the period, so a tenant with only subscription
//! events keeps nothing here once its statement is made (its subscription records stay:
//! they are its terms).

use std::sync::Arc;

use chrono::DateTime;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{PartitionState, Processor};
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::MeterUsage;
use crate::statement::{self, Statement};

/// Whether any partition watches (tenant, period start) (see the module docs); `None`
/// when no partition watches anything, so that callers can skip the look-ups.
pub(super) fn watcher(
    partitions: &FxHashMap<i32, PartitionState>,
) -> Option<impl Fn(&(u32, i64)) -> bool + '_> {
    partitions
        .values()
        .any(|ps| !ps.sub_periods.is_empty())
        .then_some(|k: &(u32, i64)| partitions.values().any(|ps| ps.sub_periods.contains_key(k)))
}

/// Whether a period closing at `close_secs` (end + grace) is closed under `watermark_us`.
#[inline]
pub(super) fn closed(close_secs: i64, watermark_us: i64) -> bool {
    watermark_us != i64::MIN && (close_secs as i128) * 1_000_000 < watermark_us as i128
}

impl Processor {
    /// Statements made since the last call, to be produced now.
    pub fn take_new_statements(&mut self) -> Vec<Statement> {
        std::mem::take(&mut self.new_statements)
    }

    /// Whether the statement of (tenant, period start) was made (here or before a restart).
    pub fn stated(&self, tenant: &str, period_start: i64) -> bool {
        self.tenants
            .id_of(tenant)
            .is_some_and(|t| self.stated.contains(&(t, period_start)))
    }

    /// Makes the statements of the periods that partition `p` closed and that have none:
    /// the periods of its rows, and the periods it watches for subscription events (see
    /// the module docs), which leave the watch as they close.
    pub(super) fn close_periods(&mut self, p: i32) {
        let grace = self.params.grace_secs;
        let Some(ps) = self.partitions.get_mut(&p) else {
            return;
        };
        if ps.position < ps.replay_until || !closed(ps.next_close, ps.watermark_us) {
            return;
        }
        let wm = ps.watermark_us;
        let mut closing: FxHashSet<(u32, i64, i64)> = FxHashSet::default();
        let mut next_close = i64::MAX;
        let stated = &self.stated;
        let left = &mut self.closed_sub_periods;
        ps.sub_periods.retain(|&(tenant, start), &mut end| {
            let close = end.saturating_add(grace);
            if !closed(close, wm) {
                next_close = next_close.min(close);
                return true;
            }
            if !stated.contains(&(tenant, start)) {
                closing.insert((tenant, start, end));
            }
            left.push((tenant, start));
            false
        });
        for r in self.shared.rows.iter() {
            let k = r.key();
            if k.partition != p || self.stated.contains(&(k.tenant, k.period_start)) {
                continue;
            }
            let close = r.period_end.saturating_add(grace);
            if closed(close, wm) {
                closing.insert((k.tenant, k.period_start, r.period_end));
            } else {
                next_close = next_close.min(close);
            }
        }
        if let Some(ps) = self.partitions.get_mut(&p) {
            ps.next_close = next_close;
        }
        let mut closing: Vec<(u32, i64, i64)> = closing.into_iter().collect();
        closing.sort_unstable();
        for (tidx, start, end) in closing {
            self.stated.insert((tidx, start));
            match self.make_statement(tidx, Period { start, end }) {
                Ok(s) => {
                    self.new_statements.push(s.clone());
                    self.pending_statements.push(s);
                }
                Err(e) => tracing::error!(
                    tenant = %self.tenants.name(tidx),
                    period_start = start,
                    error = %e,
                    "the statement of a closed period cannot be computed; none is sent"
                ),
            }
        }
    }

    /// The statement of a tenant's period from the rows in memory (a meter without rows has
    /// no usage; a period without rows, no usage at all).
    fn make_statement(
        &self,
        tidx: u32,
        period: Period,
    ) -> Result<Statement, crate::pricing::PricingError> {
        let mut usage = Vec::new();
        for (i, def) in self.catalog.meters.iter().enumerate() {
            let meter = MeterId(i as u16);
            if let Some((raw, _)) = self.shared.tenant_raw(tidx, meter, period.start) {
                usage.push(MeterUsage {
                    meter,
                    name: def.name.to_string(),
                    usage: def.value(raw),
                });
            }
        }
        let first = self
            .tenants
            .first_period(tidx)
            .is_none_or(|f| f >= period.start);
        statement::build(
            self.tenants.tenant(tidx),
            period,
            &usage,
            first,
            self.params.grace_secs,
        )
    }

    /// Notes a row of a period on partition `p` (created or restored): the earliest close
    /// to watch for, and the earliest row end for eviction.
    #[inline]
    pub(super) fn note_close(&mut self, p: i32, period_end: i64) {
        let close = period_end.saturating_add(self.params.grace_secs);
        if let Some(ps) = self.partitions.get_mut(&p) {
            ps.next_close = ps.next_close.min(close);
            ps.oldest_row_end = ps.oldest_row_end.min(period_end);
        }
    }

    /// Watches the period of a subscription event counted on partition `p`: it gets its
    /// statement when it closes, rows or not (see the module docs).
    pub(super) fn watch_period(&mut self, p: i32, tidx: u32, period: Period) {
        if let Some(ps) = self.partitions.get_mut(&p) {
            ps.sub_periods.insert((tidx, period.start), period.end);
        }
        self.note_close(p, period.end);
    }

    /// On a restore of partition `p` (its subscription records already installed): watches
    /// the periods still open under the restored checkpoint of `records` ((tenant,
    /// `effective_at`) of the stored subscription records) and of `stated` (statements
    /// found stored, already marked made).
    pub(super) fn watch_restored_periods(
        &mut self,
        p: i32,
        records: &[(Arc<str>, i64)],
        stated: &[(String, i64)],
    ) {
        let Some(wm) = self.partitions.get(&p).map(|ps| ps.watermark_us) else {
            return;
        };
        let grace = self.params.grace_secs;
        let instants = records
            .iter()
            .map(|(t, at)| (&**t, *at))
            .chain(stated.iter().map(|(t, start)| (t.as_str(), *start)));
        let mut open: Vec<(u32, Period)> = Vec::new();
        for (name, at) in instants {
            let Some(tidx) = self.tenants.id_of(name) else {
                continue;
            };
            let at = DateTime::from_timestamp(at, 0).unwrap_or_default();
            let period = self.tenants.tenant(tidx).period_at(at);
            if !closed(period.end.saturating_add(grace), wm) {
                open.push((tidx, period));
            }
        }
        for (tidx, period) in open {
            self.watch_period(p, tidx, period);
        }
    }

    /// Forgets made statements of (tenant, period)s without rows in memory and not watched.
    pub(super) fn forget_statements(&mut self, live: &FxHashSet<(u32, i64)>) {
        let watched = watcher(&self.partitions);
        self.stated
            .retain(|k| live.contains(k) || watched.as_ref().is_some_and(|w| w(k)));
    }

    /// After a flush: forgets the "made" marks of the watched periods that closed, unless
    /// rows in memory or another partition's watch still hold the period. Nothing makes
    /// their statement again: a closed period takes no more events (so no rows and no
    /// watch), and a restore watches only periods open under the stored checkpoint.
    pub(super) fn forget_closed_sub_periods(&mut self) {
        let meters = self.catalog.meters.len();
        for key in std::mem::take(&mut self.closed_sub_periods) {
            let (tidx, start) = key;
            let held = (0..meters).any(|i| {
                self.shared
                    .tenant_raw(tidx, MeterId(i as u16), start)
                    .is_some()
            }) || watcher(&self.partitions).is_some_and(|w| w(&key));
            if !held {
                self.stated.remove(&key);
            }
        }
    }

    /// Periods watched for their statement on every partition (tests: memory is freed).
    #[cfg(test)]
    pub(super) fn watched_periods(&self) -> usize {
        self.partitions
            .values()
            .map(|ps| ps.sub_periods.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
