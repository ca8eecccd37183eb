//! The memory budget (`pipeline.max_memory`): one estimate over the rollup rows in memory,
//! the dedup set, raw events waiting for a flush and dead-letter/alert messages not yet
//! delivered. Above the budget consumption pauses (the thread keeps polling, so group
//! membership is kept); it resumes once the estimate is back below 90 % of the budget. Dedup
//! entries inside the window are never dropped to make room: they leave only by ageing out.
//! When rows and dedup entries alone fill 90 % of the budget, pausing could never end (they
//! are freed only by consuming further), so consumption goes on above the budget, logged
//! and shown by `callmeter_memory_unholdable`, instead of stalling.
//!
//! Bytes per item, from the data structures (x86-64), including hash-table slack:
//! - a rollup row: [`ROW_BYTES`]: the `Shared::rows` entry (`RowKey` 24 B + `RowState`
//!   48 B in a DashMap at up to 87.5 % load, about 90 B), its copy in a flush snapshot while
//!   dirty (`RollupRecord`, about 70 B with its tenant and meter `Arc`s);
//! - a dedup entry: [`DEDUP_ENTRY_BYTES`]: a 16-byte slot of the open-addressing table at a
//!   load of 0.62 to 0.8 (grown ×1.3), so 20 to 26 B; the upper bound is counted;
//! - a raw event waiting for its flush (`clickhouse.raw_events`): [`RAW_EVENT_BYTES`] plus
//!   nothing else measured (its strings are a CloudEvent's, typically 300 to 500 B);
//! - an undelivered DLQ or alert message: its payload and headers as produced plus
//!   [`MESSAGE_OVERHEAD_BYTES`] (librdkafka's message struct and the delivery future).

/// Estimated bytes per rollup row in memory (see the module docs).
pub const ROW_BYTES: u64 = 160;
/// Estimated bytes per dedup entry (see the module docs).
pub const DEDUP_ENTRY_BYTES: u64 = 26;
/// Estimated bytes per raw event waiting for a flush.
pub const RAW_EVENT_BYTES: u64 = 640;
/// Estimated bytes per undelivered message beyond its payload and headers.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 256;

/// What the budget counts, in items (bytes for the outbox).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rows: u64,
    pub dedup_entries: u64,
    pub raw_events: u64,
    pub undelivered_bytes: u64,
}

impl Usage {
    /// The estimate in bytes.
    pub fn bytes(&self) -> u64 {
        self.rows
            .saturating_mul(ROW_BYTES)
            .saturating_add(self.dedup_entries.saturating_mul(DEDUP_ENTRY_BYTES))
            .saturating_add(self.raw_events.saturating_mul(RAW_EVENT_BYTES))
            .saturating_add(self.undelivered_bytes)
    }

    /// The part of the estimate that pausing cannot free: rollup rows (those of open usage
    /// periods leave only when the watermark closes their period) and dedup entries (they
    /// age out only as newer events arrive). Raw events and undelivered messages are freed
    /// by a flush or a delivery, which a pause waits for.
    pub fn unfreeable_bytes(&self) -> u64 {
        self.rows
            .saturating_mul(ROW_BYTES)
            .saturating_add(self.dedup_entries.saturating_mul(DEDUP_ENTRY_BYTES))
    }
}

/// The budget with hysteresis: over at the budget, under again below 90 % of it. A pause
/// that could never end is not taken: when the part no pause can free
/// ([`Usage::unfreeable_bytes`]) alone reaches 90 % of the budget, consumption goes on
/// ([`Budget::unholdable`] says so) instead of stalling forever.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    limit: u64,
    over: bool,
    unholdable: bool,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            over: false,
            unholdable: false,
        }
    }

    /// True when the last estimate's unfreeable part alone was at or above 90 % of the
    /// budget: the budget cannot be held by pausing (raise `pipeline.max_memory`, or shorten
    /// `pipeline.dedup_window` for the event rate).
    pub fn unholdable(&self) -> bool {
        self.unholdable
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes the current estimate; returns whether consumption must pause.
    pub fn update(&mut self, usage: &Usage) -> bool {
        let used = usage.bytes();
        let resume_below = self.limit / 10 * 9;
        self.unholdable = usage.unfreeable_bytes() >= resume_below;
        self.over = if self.unholdable {
            false
        } else if self.over {
            used >= resume_below
        } else {
            used >= self.limit
        };
        self.over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sum_every_part() {
        let u = Usage {
            rows: 10,
            dedup_entries: 100,
            raw_events: 2,
            undelivered_bytes: 1000,
        };
        assert_eq!(
            u.bytes(),
            10 * 160 + 100 * DEDUP_ENTRY_BYTES + 2 * 640 + 1000
        );
        let huge = Usage {
            rows: u64::MAX,
            ..Default::default()
        };
        assert_eq!(huge.bytes(), u64::MAX);
    }

    /// An estimate of `used` units of [`DEDUP_ENTRY_BYTES`] (one dedup entry), `unfreeable` of them dedup
    /// entries and the rest undelivered messages; budgets below are in the same unit.
    fn usage(used: u64, unfreeable: u64) -> Usage {
        Usage {
            dedup_entries: unfreeable,
            undelivered_bytes: (used - unfreeable) * DEDUP_ENTRY_BYTES,
            ..Default::default()
        }
    }

    #[test]
    fn pauses_at_the_budget_and_resumes_below_ninety_percent() {
        let mut b = Budget::new(1000 * DEDUP_ENTRY_BYTES);
        assert!(!b.update(&usage(999, 0)));
        assert!(b.update(&usage(1000, 0)));
        assert!(b.update(&usage(950, 0)));
        assert!(b.update(&usage(900, 0)));
        assert!(!b.update(&usage(899, 0)));
        assert!(!b.update(&usage(999, 0)));
        assert!(!b.unholdable());
    }

    #[test]
    fn never_pauses_when_a_pause_could_not_end() {
        // Rows and dedup entries inside the window at 90 % of the budget: no flush or
        // delivery can bring the estimate below the resume mark, so pausing would stall
        // consumption forever (and the entries could not age out without new arrivals).
        let mut b = Budget::new(1000 * DEDUP_ENTRY_BYTES);
        assert!(b.update(&usage(1000, 100)));
        assert!(!b.update(&usage(1000, 900)));
        assert!(b.unholdable());
        assert!(!b.update(&usage(5000, 950)));
        // Freed again (a period closed, entries aged out): the budget holds once more.
        assert!(b.update(&usage(1000, 100)));
        assert!(!b.unholdable());
    }
}
