//! The dedup set of one partition: event identities (a 128-bit hash of subject, source and
//! id) with the arrival time (ms) at which each was accepted, evicted in arrival order once
//! out of the dedup window (plus the replay margin); the entry cap only hastens the eviction
//! of entries already outside the window, never of one inside it. Pure.

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
    /// True if `key` was accepted at an arrival time >= `ts - window`.
    #[inline]
    pub(super) fn seen(&self, key: DedupKey, ts: i64, window_ms: i64) -> bool {
        self.map
            .get(&key)
            .is_some_and(|at| *at >= ts.saturating_sub(window_ms))
    }

    /// Records `key` as accepted at `ts` (after [`Self::seen`] said no).
    #[inline]
    pub(super) fn insert(&mut self, key: DedupKey, ts: i64) {
        self.map.insert(key, ts);
        self.order.push_back((ts, key));
    }

    /// Evicts entries accepted before `cutoff` (the window plus the replay margin behind the
    /// newest arrival); while more than `max_entries` remain, also those accepted before
    /// `window_start` (outside the dedup window, inside the margin). An entry inside the
    /// window is never dropped: returns how many entries above `max_entries` are kept because
    /// they are still inside it (pausing consumption is the memory budget's job).
    pub(super) fn evict_before(
        &mut self,
        cutoff: i64,
        window_start: i64,
        max_entries: usize,
    ) -> usize {
        while let Some(&(ts, key)) = self.order.front() {
            let over = self.map.len() > max_entries;
            if ts >= cutoff && !(over && ts < window_start) {
                break;
            }
            self.order.pop_front();
            if let std::collections::hash_map::Entry::Occupied(e) = self.map.entry(key)
                && *e.get() == ts
            {
                e.remove();
            }
        }
        self.map.len().saturating_sub(max_entries)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
