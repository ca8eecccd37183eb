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

use rustc_hash::FxHashSet;

use super::Processor;
use crate::meter::MeterId;
use crate::period::Period;
use crate::pricing::MeterUsage;
use crate::statement::{self, Statement};

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

    /// Makes the statements of the periods that partition `p` closed and that have none.
    pub(super) fn close_periods(&mut self, p: i32) {
        let grace = self.params.grace_secs;
        let Some(ps) = self.partitions.get(&p) else {
            return;
        };
        if ps.position < ps.replay_until || !closed(ps.next_close, ps.watermark_us) {
            return;
        }
        let wm = ps.watermark_us;
        let mut closing: FxHashSet<(u32, i64, i64)> = FxHashSet::default();
        let mut next_close = i64::MAX;
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

    /// The statement of a tenant's period from the rows in memory.
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
    /// to watch for.
    #[inline]
    pub(super) fn note_close(&mut self, p: i32, period_end: i64) {
        let close = period_end.saturating_add(self.params.grace_secs);
        if let Some(ps) = self.partitions.get_mut(&p)
            && close < ps.next_close
        {
            ps.next_close = close;
        }
    }

    /// Forgets made statements of (tenant, period)s without rows in memory.
    pub(super) fn forget_statements(&mut self, live: &FxHashSet<(u32, i64)>) {
        self.stated.retain(|k| live.contains(k));
    }
}

#[cfg(test)]
mod tests;
