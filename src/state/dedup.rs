//! The dedup set of one partition: event identities (a 128-bit hash of subject, source and
//! id, of which 96 bits are kept) with the arrival time at which each was accepted; entries
//! older than the dedup window plus the replay margin are evicted; the entry cap only hastens
//! the eviction of entries already outside the window, never of one inside it. Pure.
//!
//! Layout: one open-addressing table with linear probing, 16 bytes per slot (a 96-bit
//! fingerprint and a 32-bit arrival time relative to a base, in units of
//! [`DedupSet::unit_ms`]), capacity grown ×1.3 at a load of 0.8 (down to 0.62 right after
//! growth): 20 to 26 B per entry, against 92 B for a `HashMap` plus an arrival-order queue. Eviction is a sequential sweep with backward-shift deletion (no tombstones), run
//! when the cutoff has moved by 1/32 of the window or the set is over its cap. A false
//! positive (two identities sharing 96 bits) has a probability of about n²/2⁹⁷: below 10⁻¹⁴
//! for 10M entries.

/// An event identity: the 128-bit hash of (subject, source, id), as two words.
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

/// A hint to the CPU to load the cache line holding `r`.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_read<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it reads no value into the program and cannot fault,
    // whatever the address; `r` is a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Smallest capacity (slots) once anything is inserted.
const MIN_CAPACITY: usize = 1024;
/// Growth above this load, in percent.
const MAX_LOAD_PCT: usize = 80;
/// Shrinking (after a sweep) below this load, in percent.
const MIN_LOAD_PCT: usize = 20;
/// The arrival time of the first entry, relative to the base (units): as much room behind it
/// as ahead.
const FIRST_REL: i64 = 1 << 31;
/// Where the newest arrival lands after a rebase (units).
const REBASED_REL: i64 = 3 << 30;

/// A slot: word 0 is the fingerprint's high 64 bits (also the home position), word 1 its low
/// 32 bits and, above them, the arrival time in units. All zero: empty.
type Slot = [u64; 2];

/// The slots, zeroed, in an anonymous memory mapping advised to use transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`, which the kernel honours in its default `madvise` mode): a
/// probe lands on a random slot of a table of up to hundreds of megabytes, and with 4 KiB
/// pages nearly every probe also missed the TLB. With 2 MiB pages the table's translations
/// fit the TLB; criterion, 10,000 tenants and 10M entries: about 20 % more events per second
/// (BENCHMARKS.md). Unmapped when dropped, so a table left behind by growth leaves the
/// resident set at once.
struct Table(Option<memmap2::MmapMut>);

impl Table {
    fn empty() -> Table {
        Table(None)
    }

    /// `n` empty slots. A mapping that cannot be made is an allocation failure, which ends
    /// the process as a `Vec` that cannot grow does.
    fn zeroed(n: usize) -> Table {
        if n == 0 {
            return Table::empty();
        }
        let bytes = n * std::mem::size_of::<Slot>();
        let map = memmap2::MmapMut::map_anon(bytes).unwrap_or_else(|e| {
            panic!("cannot map {bytes} bytes for the dedup set: {e}");
        });
        // Advice only: where the kernel has THP off, the table works on 4 KiB pages.
        let _ = map.advise(memmap2::Advice::HugePage);
        Table(Some(map))
    }
}

impl std::ops::Deref for Table {
    type Target = [Slot];
    #[inline]
    fn deref(&self) -> &[Slot] {
        self.0.as_deref().map_or(&[], bytemuck::cast_slice)
    }
}

impl std::ops::DerefMut for Table {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Slot] {
        self.0
            .as_deref_mut()
            .map_or(&mut [], bytemuck::cast_slice_mut)
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({} slots)", self.len())
    }
}

#[derive(Debug)]
pub(super) struct DedupSet {
    slots: Table,
    len: usize,
    /// Arrival time unit (ms): 1 unless the window plus margin exceeds 2³⁰ ms (12.4 days).
    unit_ms: i64,
    /// The window plus the replay margin, in units.
    span_units: i64,
    /// Arrival time (ms) of relative time 0; `None` before the first insert.
    base_ms: Option<i64>,
    /// The cutoff (units) of the last sweep.
    swept_to: i64,
}

impl DedupSet {
    /// An empty set for a dedup window plus replay margin of `span_ms` (ms).
    pub(super) fn new(span_ms: i64) -> Self {
        let span_ms = span_ms.max(1);
        let unit_ms = ((span_ms - 1) / (1 << 30) + 1).max(1);
        DedupSet {
            slots: Table::empty(),
            len: 0,
            unit_ms,
            span_units: (span_ms - 1) / unit_ms + 1,
            base_ms: None,
            swept_to: i64::MIN,
        }
    }

    /// The unit (ms) of stored arrival times: times are rounded up to it, so a duplicate is
    /// never missed at the window's edge (one arriving up to one unit beyond it may still be
    /// recognised).
    #[cfg(test)]
    pub(super) fn unit_ms(&self) -> i64 {
        self.unit_ms
    }

    /// `ms` relative to the base, in units, rounded up (saturating at the `i64` range).
    #[inline]
    fn rel(&self, base: i64, ms: i64) -> i64 {
        let d = ms as i128 - base as i128;
        let up = -(-d).div_euclid(self.unit_ms as i128);
        up.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    #[inline]
    fn home(&self, hi: u64) -> usize {
        ((hi as u128 * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    #[inline]
    fn words(key: DedupKey) -> (u64, u32) {
        let lo = key.1 as u32;
        if key.0 == 0 && lo == 0 {
            (0, 1)
        } else {
            (key.0, lo)
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, hi: u64, lo: u32) -> (usize, bool) {
        let mut i = self.home(hi);
        loop {
            let s = self.slots[i];
            if s[0] == hi && s[1] as u32 == lo {
                return (i, true);
            }
            if s[0] == 0 && s[1] as u32 == 0 {
                return (i, false);
            }
            i = self.next(i);
        }
    }

    /// Starts loading the slot where `key`'s probe begins, so that [`Self::seen`] and
    /// [`Self::insert`] that follow find it in cache (a random slot of a large table is a
    /// cache miss: about 13 % of the time per event at 1M entries, measured with `perf`).
    #[inline]
    pub(super) fn prefetch(&self, key: DedupKey) {
        if !self.slots.is_empty() {
            prefetch_read(&self.slots[self.home(Self::words(key).0)]);
        }
    }

    /// True if `key` was accepted at an arrival time >= `ts - window` (ms).
    #[inline]
    pub(super) fn seen(&self, key: DedupKey, ts: i64, window_ms: i64) -> bool {
        let Some(base) = self.base_ms else {
            return false;
        };
        if self.len == 0 {
            return false;
        }
        let (hi, lo) = Self::words(key);
        let (i, found) = self.find(hi, lo);
        if !found {
            return false;
        }
        let at = (self.slots[i][1] >> 32) as i64;
        at >= self.rel(base, ts.saturating_sub(window_ms))
    }

    /// Records `key` as accepted at `ts` (ms), after [`Self::seen`] said no.
    #[inline]
    pub(super) fn insert(&mut self, key: DedupKey, ts: i64) {
        let base = match self.base_ms {
            Some(b) => b,
            None => {
                let b = ts.saturating_sub(FIRST_REL.saturating_mul(self.unit_ms));
                self.base_ms = Some(b);
                b
            }
        };
        let mut rel = self.rel(base, ts);
        if rel > u32::MAX as i64 {
            self.rebase(rel - REBASED_REL);
            rel = REBASED_REL;
        }
        let at = rel.clamp(0, u32::MAX as i64) as u64;
        if (self.len + 1) * 100 > self.slots.len() * MAX_LOAD_PCT {
            self.resize(((self.slots.len() * 13) / 10).max(MIN_CAPACITY));
        }
        let (hi, lo) = Self::words(key);
        let (i, found) = self.find(hi, lo);
        if !found {
            self.len += 1;
        }
        self.slots[i] = [hi, lo as u64 | (at << 32)];
    }

    /// Moves the base forward by `delta` units: entries older than that go (they are at
    /// least twice the window plus margin behind the newest arrival), the others shift.
    #[cold]
    fn rebase(&mut self, delta: i64) {
        if delta >= u32::MAX as i64 {
            self.slots.iter_mut().for_each(|s| *s = [0, 0]);
            self.len = 0;
        } else {
            let delta = delta as u64;
            self.sweep(|at| at.checked_sub(delta));
        }
        if let Some(b) = self.base_ms.as_mut() {
            *b = b.saturating_add(delta.saturating_mul(self.unit_ms));
        }
        self.swept_to = i64::MIN;
    }

    /// Rehashes into `capacity` slots.
    #[cold]
    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, Table::zeroed(capacity));
        for &s in old.iter() {
            if s[0] != 0 || s[1] as u32 != 0 {
                let mut i = self.home(s[0]);
                while self.slots[i] != [0, 0] {
                    i = self.next(i);
                }
                self.slots[i] = s;
            }
        }
    }

    /// One pass over every slot: `f(arrival)` gives the new arrival or `None` to delete.
    /// Deletion shifts the rest of the probe run back (no tombstones). The pass starts after
    /// an empty slot, which no shift can fill, so every entry is visited at least once.
    fn sweep(&mut self, mut f: impl FnMut(u64) -> Option<u64>) {
        let n = self.slots.len();
        let Some(start) = self.slots.iter().position(|s| *s == [0, 0]) else {
            return;
        };
        let mut i = self.next(start);
        let mut steps = 1;
        while steps < n {
            let s = self.slots[i];
            if s == [0, 0] {
                i = self.next(i);
                steps += 1;
                continue;
            }
            match f(s[1] >> 32) {
                Some(at) => {
                    self.slots[i][1] = (s[1] & 0xffff_ffff) | (at << 32);
                    i = self.next(i);
                    steps += 1;
                }
                None => {
                    self.delete_at(i);
                    // Slot `i` may now hold an entry shifted back from further on: look again.
                }
            }
        }
    }

    /// Deletes slot `i` by shifting back each later entry of its probe run that may move.
    fn delete_at(&mut self, i: usize) {
        let mut hole = i;
        let mut j = i;
        loop {
            j = self.next(j);
            let s = self.slots[j];
            if s == [0, 0] {
                break;
            }
            let h = self.home(s[0]);
            // The entry at `j` may fill the hole unless its home lies in (hole, j].
            let stays = if hole < j {
                hole < h && h <= j
            } else {
                hole < h || h <= j
            };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = [0, 0];
        self.len -= 1;
    }

    /// Evicts entries accepted before `cutoff` (ms: the window plus the replay margin behind
    /// the newest arrival); while more than `max_entries` remain, also those accepted before
    /// `window_start` (outside the dedup window, inside the margin). An entry inside the
    /// window is never dropped: returns how many entries above `max_entries` are kept because
    /// they are still inside it (pausing consumption is the memory budget's job).
    pub(super) fn evict_before(
        &mut self,
        cutoff: i64,
        window_start: i64,
        max_entries: usize,
    ) -> usize {
        let Some(base) = self.base_ms else {
            return 0;
        };
        let cut = self.rel(base, cutoff);
        let before = self.len;
        if cut >= self.swept_to.saturating_add((self.span_units / 32).max(1)) && cut > 0 {
            let c = cut.min(u32::MAX as i64 + 1) as u64;
            self.sweep(|at| (at >= c).then_some(at));
            self.swept_to = cut;
        }
        if self.len > max_entries {
            let w = self.rel(base, window_start).clamp(0, u32::MAX as i64 + 1) as u64;
            self.sweep(|at| (at >= w).then_some(at));
        }
        if self.len < before
            && self.slots.len() > MIN_CAPACITY
            && self.len * 100 < self.slots.len() * MIN_LOAD_PCT
        {
            self.resize((self.len * 10 / 7).max(MIN_CAPACITY));
        }
        self.len.saturating_sub(max_entries)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes of the table.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(n: u64) -> DedupKey {
        let h = xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes());
        ((h >> 64) as u64, h as u64)
    }

    #[test]
    fn seen_within_the_window_and_not_after() {
        let mut d = DedupSet::new(3_960_000);
        d.insert(key(1), 1_000);
        assert!(d.seen(key(1), 1_000, 3_600_000));
        assert!(d.seen(key(1), 3_601_000, 3_600_000));
        assert!(!d.seen(key(1), 3_601_001, 3_600_000));
        assert!(!d.seen(key(2), 1_000, 3_600_000));
    }

    #[test]
    fn grows_and_keeps_every_entry() {
        let mut d = DedupSet::new(3_960_000);
        for n in 0..100_000 {
            d.insert(key(n), n as i64);
        }
        assert_eq!(d.len(), 100_000);
        for n in 0..100_000 {
            assert!(d.seen(key(n), 100_000, 3_600_000), "{n}");
        }
        assert!(!d.seen(key(100_000), 100_000, 3_600_000));
        // 16 B per slot at a load between 0.62 and 0.8.
        let per_entry = d.heap_bytes() as f64 / d.len() as f64;
        assert!((20.0..=26.0).contains(&per_entry), "{per_entry}");
    }

    #[test]
    fn eviction_drops_only_entries_before_the_cutoff_and_shrinks() {
        let mut d = DedupSet::new(1_000);
        for n in 0..50_000 {
            d.insert(key(n), n as i64);
        }
        assert_eq!(d.evict_before(40_000, 40_500, usize::MAX), 0);
        assert_eq!(d.len(), 10_000);
        for n in 0..50_000 {
            assert_eq!(d.seen(key(n), 0, 0), n >= 40_000, "{n}");
        }
        assert!(d.heap_bytes() <= 32 * 10_000, "{}", d.heap_bytes());
    }

    #[test]
    fn the_cap_never_drops_an_entry_inside_the_window() {
        let mut d = DedupSet::new(2_000);
        for n in 0..1_000 {
            d.insert(key(n), n as i64);
        }
        // Cutoff 0, window from 500: 500 entries outside the window go, 500 inside stay.
        assert_eq!(d.evict_before(0, 500, 100), 400);
        assert_eq!(d.len(), 500);
        assert!(d.seen(key(500), 500, 0));
        assert!(!d.seen(key(499), 0, 0));
    }

    #[test]
    fn long_running_partitions_rebase_arrival_times() {
        // 1 h window: one unit is 1 ms, the relative range 49.7 days.
        let mut d = DedupSet::new(3_960_000);
        assert_eq!(d.unit_ms(), 1);
        let day = 86_400_000i64;
        for n in 0..200 {
            let ts = 1_700_000_000_000 + n * day / 2;
            d.insert(key(n as u64), ts);
            assert!(d.seen(key(n as u64), ts, 3_600_000));
            if n > 0 {
                assert!(!d.seen(key(n as u64 - 1), ts, 3_600_000));
                // The previous one, asked at its own time, is still known until evicted.
                assert!(d.seen(key(n as u64 - 1), ts - day / 2, 3_600_000));
            }
            d.evict_before(ts - 3_960_000, ts - 3_600_000, usize::MAX);
        }
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_window_longer_than_the_millisecond_range_rounds_arrivals_up() {
        let window = 60 * 86_400_000i64;
        let mut d = DedupSet::new(window + window / 10);
        assert!(d.unit_ms() > 1);
        d.insert(key(1), 1_000_000_007);
        // Never missed at the edge: rounded up, not down.
        assert!(d.seen(key(1), 1_000_000_007 + window, window));
        assert!(!d.seen(key(1), 1_000_000_007 + window + d.unit_ms(), window));
    }

    #[test]
    fn arrival_times_far_in_the_past_or_at_the_extremes_do_not_panic() {
        let mut d = DedupSet::new(3_960_000);
        for (n, ts) in [0, i64::MIN, i64::MAX, -1, 1_700_000_000_000, i64::MIN / 2]
            .into_iter()
            .enumerate()
        {
            d.insert(key(n as u64), ts);
            let _ = d.seen(key(n as u64), ts, 3_600_000);
            let _ = d.seen(key(n as u64), i64::MIN, i64::MAX);
            d.evict_before(
                ts.saturating_sub(3_960_000),
                ts.saturating_sub(3_600_000),
                3,
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u16),
        Evict,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u16..1_500, 0u16..2_000).prop_map(|(k, dt)| Op::Insert(k, dt)),
            1 => Just(Op::Evict),
        ]
    }

    proptest! {
        /// Against a model (a map of each key's last acceptance): every query inside the
        /// retention horizon answers exactly as the model; eviction never drops an entry the
        /// model still holds after the cutoff.
        #[test]
        fn answers_as_a_map_of_last_acceptance(ops in proptest::collection::vec(op(), 1..3_000)) {
            let (window, margin) = (3_000i64, 1_000i64);
            let mut d = DedupSet::new(window + margin);
            let mut model: HashMap<u16, i64> = HashMap::new();
            let mut now = 1_000_000i64;
            let mut last_cutoff = i64::MIN;
            for op in ops {
                match op {
                    Op::Insert(k, dt) => {
                        // Arrivals mostly advance, some are behind the newest one.
                        let ts = now + dt as i64 - 500;
                        now = now.max(ts);
                        let expected = model.get(&k).is_some_and(|at| *at >= ts - window);
                        if ts >= now - margin {
                            prop_assert_eq!(d.seen(key(k as u64), ts, window), expected);
                        }
                        if !d.seen(key(k as u64), ts, window) {
                            d.insert(key(k as u64), ts);
                            model.insert(k, ts);
                        }
                    }
                    Op::Evict => {
                        let cutoff = now - window - margin;
                        d.evict_before(cutoff, now - window, usize::MAX);
                        last_cutoff = cutoff;
                        let live = model.values().filter(|at| **at >= cutoff).count();
                        prop_assert!(d.len() >= live);
                        prop_assert!(d.len() <= model.len());
                    }
                }
            }
            for (k, at) in model.iter().filter(|(_, at)| **at >= last_cutoff) {
                prop_assert!(d.seen(key(*k as u64), *at, 0));
            }
        }
    }
}
