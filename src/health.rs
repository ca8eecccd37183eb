//! Why the instance is not ready: the one registry of problems in effect, each keyed by its
//! [`Source`] so that every source sets and clears its own (a permanent ClickHouse error, the
//! outbox's undelivered messages, a partition that cannot start). `/readyz`, the
//! `callmeter_ready` gauge and every other reader take the verdict from
//! [`crate::state::Shared::readiness`], which adds the partitions' restore state and keeps
//! only the problems of partitions this instance owns.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where a problem comes from. The order is the order in which `/readyz` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A permanent ClickHouse error of the flush; cleared by the next successful write.
    ClickHouse,
    /// Dead-letter messages or alerts still undelivered after a failure; cleared once all
    /// are delivered.
    Outbox,
    /// A partition that cannot start from its checkpoint; cleared when its restore ends.
    /// Counts only while the partition is owned.
    Partition(i32),
}

/// The problems in effect, one per source; `/readyz` answers 503 while any counts. Each
/// message is the line `/readyz` shows, naming its source.
#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<Source, String>>,
}

impl Health {
    /// Sets (or replaces) the problem of `source`.
    pub fn set(&self, source: Source, message: impl Into<String>) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(source, message.into());
    }

    /// Clears the problem of `source`, if set.
    pub fn clear(&self, source: Source) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(&source);
    }

    /// The problems in effect whose source `counts`, in [`Source`] order.
    pub fn problems(&self, counts: impl Fn(Source) -> bool) -> Vec<(Source, String)> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.iter()
            .filter(|(s, _)| counts(**s))
            .map(|(s, m)| (*s, m.clone()))
            .collect()
    }
}

/// A readiness verdict: the partitions' state and the problems in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// At least one partition owned and every owned partition restored.
    pub partitions_restored: bool,
    /// The problems in effect, in [`Source`] order (of partitions, only the owned ones).
    pub problems: Vec<(Source, String)>,
}

impl Readiness {
    /// Ready: partitions restored and no problem in effect (`/readyz` 200).
    pub fn is_ready(&self) -> bool {
        self.partitions_restored && self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_is_set_and_cleared_independently() {
        let h = Health::default();
        let all = |_| true;
        assert!(h.problems(all).is_empty());
        h.set(Source::Partition(3), "partition 3: cannot start");
        h.set(Source::Outbox, "1 message(s) undelivered");
        h.set(Source::ClickHouse, "clickhouse: Code: 516");
        h.set(Source::ClickHouse, "clickhouse: Code: 60");
        h.set(Source::Partition(1), "partition 1: cannot start");
        let sources: Vec<Source> = h.problems(all).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            sources,
            [
                Source::ClickHouse,
                Source::Outbox,
                Source::Partition(1),
                Source::Partition(3)
            ]
        );
        assert_eq!(h.problems(all)[0].1, "clickhouse: Code: 60");
        h.clear(Source::Outbox);
        h.clear(Source::Partition(3));
        let only_partitions = h.problems(|s| matches!(s, Source::Partition(_)));
        assert_eq!(
            only_partitions,
            [(
                Source::Partition(1),
                "partition 1: cannot start".to_string()
            )]
        );
        h.clear(Source::ClickHouse);
        h.clear(Source::Partition(1));
        assert!(h.problems(all).is_empty());
    }

    #[test]
    fn ready_only_with_partitions_restored_and_no_problem() {
        let ready = Readiness {
            partitions_restored: true,
            problems: vec![],
        };
        assert!(ready.is_ready());
        let restoring = Readiness {
            partitions_restored: false,
            ..ready.clone()
        };
        assert!(!restoring.is_ready());
        let blocked = Readiness {
            problems: vec![(Source::Outbox, "undelivered".into())],
            ..ready
        };
        assert!(!blocked.is_ready());
    }
}
