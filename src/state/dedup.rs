//! The dedup set of one partition: event identities (a 128-bit hash of subject, source and
//! id) with the Kafka timestamp (ms) at which each was accepted, evicted in arrival order
//! once out of the dedup window or over the entry cap. Pure.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

/// An event identity: the 128-bit hash of (subject, source, id), as two words so that an
/// entry is 24 bytes, not 32 (a `u128` is 16-byte aligned).
pub(super) type DedupKey = (u64, u64);

/// The identity of an event; `buf` is scratch space reused across calls.
#[inline]
pub(super) fn dedup_key(buf: &mut Vec<u8>, subject: &str, source: &str, id: &str) -> DedupKey {
    buf.clear();
    for s in [subject, source, id] {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    let h = xxhash_rust::xxh3::xxh3_128(buf);
    ((h >> 64) as u64, h as u64)
}

#[derive(Debug, Default)]
pub(super) struct DedupSet {
    map: FxHashMap<DedupKey, i64>,
    order: VecDeque<(i64, DedupKey)>,
}

impl DedupSet {
    /// True if `key` was accepted at a timestamp >= `ts - window`; otherwise records it.
    #[inline]
    pub(super) fn check_insert(&mut self, key: DedupKey, ts: i64, window_ms: i64) -> bool {
        use std::collections::hash_map::Entry;
        match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                if *e.get() >= ts - window_ms {
                    return true;
                }
                e.insert(ts);
            }
            Entry::Vacant(e) => {
                e.insert(ts);
            }
        }
        self.order.push_back((ts, key));
        false
    }

    /// Evicts entries accepted before `cutoff`, and the oldest ones while more than
    /// `max_entries` remain; returns how many of those were still inside the window.
    pub(super) fn evict_before(&mut self, cutoff: i64, max_entries: usize) -> usize {
        let mut early = 0;
        while let Some(&(ts, key)) = self.order.front() {
            let over = self.map.len() > max_entries;
            if ts >= cutoff && !over {
                break;
            }
            if ts >= cutoff {
                early += 1;
            }
            self.order.pop_front();
            if let std::collections::hash_map::Entry::Occupied(e) = self.map.entry(key)
                && *e.get() == ts
            {
                e.remove();
            }
        }
        early
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
