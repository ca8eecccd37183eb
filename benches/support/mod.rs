//! What the criterion benchmarks share: a plan catalog, realistic payloads, and a feeder that
//! drives a real [`Processor`] the way the consuming loop of `callmeter run` does.
//!
//! Under `cargo test --all-targets` criterion runs every benchmark once in test mode; the
//! sizes here then shrink (see [`bench_mode`]) so that the whole run takes seconds.

#![allow(dead_code)]

use std::sync::Arc;

use callmeter::cli::loadgen::{self, LoadSpec};
use callmeter::config::Config;
use callmeter::state::{InMessage, Outcome, Params, Processor, Restored, Shared};
use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// A default plan for every generated tenant, with included minutes so that threshold
/// checks run on every event and alerts fire (80%, 100%, overage, overage cap).
pub const CONFIG: &str = r#"
[pricing]
default_plan = "starter"
[pipeline]
dedup_window = "1h"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
overage_cap = "20.00"
"#;

/// True when run by `cargo bench` (criterion passes `--bench`); false in test mode.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `full` when benchmarking, `test` in test mode.
pub fn size(full: usize, test: usize) -> usize {
    if bench_mode() { full } else { test }
}

pub fn config() -> Config {
    Config::from_toml_str(CONFIG).expect("bench config")
}

/// A processor owning partition 0, restored empty (a fresh consumer group).
pub fn processor(c: &Config, max_dedup_entries: usize) -> Processor {
    let shared = Shared::new(c.catalog.clone());
    let mut params = Params::from_settings(&c.settings);
    params.max_dedup_entries = max_dedup_entries;
    let mut p = Processor::new(shared, params);
    p.assign(0);
    p.install(Restored {
        partition: 0,
        ..Default::default()
    });
    p
}

/// `n` loadgen payloads (about 300 bytes each) over `tenants` tenants, event times from an
/// hour ago.
pub fn loadgen_payloads(n: usize, tenants: u32, start: DateTime<Utc>) -> Vec<Vec<u8>> {
    let spec = LoadSpec {
        events: n as u64,
        tenants,
        seed: 7,
        start,
        ..Default::default()
    };
    loadgen::generate(&spec)
        .map(|g| g.payload.into_bytes())
        .collect()
}

/// The width of the pass number written into every pooled event id.
const PASS_DIGITS: usize = 7;

/// Drives a processor with a pool of payloads, over and over, as a partition's consuming
/// loop would: increasing offsets and Kafka timestamps, `Utc::now()` per message, and a
/// flush (snapshot, then `flushed`, which evicts the dedup set) every `flush_every` events.
///
/// Every pass over the pool writes a new pass number into each event id (`"id":"p0000001-..."`),
/// so every message is a new event: nothing is a duplicate, all are counted. Kafka
/// timestamps (arrival times) advance by the dedup window plus the replay margin divided by
/// `dedup_entries` per event, so that the set holds `dedup_entries` identities in the steady
/// state, evicted by age as in production (`pipeline.max_dedup_entries` never drops an
/// identity inside the window, so it cannot bound the set). Arrival times start 89 days
/// ago and event times 90 days ago, so that no arrival time reaches the clock (where it
/// would be capped) within a run.
pub struct Feeder {
    pub proc: Processor,
    pool: Vec<Vec<u8>>,
    /// Offset of the pass digits in each payload.
    digits_at: Vec<usize>,
    next: usize,
    pass: u64,
    offset: i64,
    ts0: i64,
    /// Arrival time step per event (ms).
    ts_step: f64,
    flush_every: u64,
    since_flush: u64,
    pub counted: u64,
    pub other: u64,
}

impl Feeder {
    pub fn new(tenants: u32, pool_size: usize, dedup_entries: usize, flush_every: u64) -> Feeder {
        let c = config();
        let start = Utc::now() - ChronoDuration::days(90);
        let mut pool = loadgen_payloads(pool_size, tenants, start);
        let mut digits_at = Vec::with_capacity(pool.len());
        let needle = br#""id":""#;
        for p in &mut pool {
            let at = p
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("payload has an id")
                + needle.len();
            let mut prefixed = Vec::with_capacity(p.len() + PASS_DIGITS + 2);
            prefixed.extend_from_slice(&p[..at]);
            prefixed.push(b'p');
            prefixed.extend_from_slice(&[b'0'; PASS_DIGITS]);
            prefixed.push(b'-');
            prefixed.extend_from_slice(&p[at..]);
            *p = prefixed;
            digits_at.push(at + 1);
        }
        let proc = processor(&c, usize::MAX);
        let span_ms = proc.params().dedup_window_ms + proc.params().replay_margin_ms();
        let mut f = Feeder {
            proc,
            ts_step: span_ms as f64 / dedup_entries.max(1) as f64,
            pool,
            digits_at,
            next: 0,
            pass: 0,
            offset: 0,
            ts0: (Utc::now() - ChronoDuration::days(89)).timestamp_millis(),
            flush_every,
            since_flush: 0,
            counted: 0,
            other: 0,
        };
        f.write_pass();
        f
    }

    fn write_pass(&mut self) {
        let digits = format!("{:0width$}", self.pass, width = PASS_DIGITS);
        assert_eq!(digits.len(), PASS_DIGITS, "too many passes");
        for (p, at) in self.pool.iter_mut().zip(&self.digits_at) {
            p[*at..*at + PASS_DIGITS].copy_from_slice(digits.as_bytes());
        }
    }

    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Processes the next `n` messages; `n` must divide the pool size (a pass ends on a
    /// chunk boundary, where the ids of the next pass are written outside the timing).
    pub fn chunk(&mut self, n: usize) {
        let end = self.next + n;
        for i in self.next..end {
            let m = InMessage {
                partition: 0,
                offset: self.offset,
                payload: Some(&self.pool[i]),
                timestamp_ms: Some(self.ts0 + (self.offset as f64 * self.ts_step) as i64),
            };
            self.offset += 1;
            match self.proc.process(&m, Utc::now()) {
                Outcome::Counted => self.counted += 1,
                _ => self.other += 1,
            }
            self.since_flush += 1;
            if self.since_flush >= self.flush_every {
                let batch = self.proc.snapshot();
                self.proc.flushed(&batch.checkpoints);
                std::hint::black_box(batch);
                self.since_flush = 0;
            }
        }
        // Alerts go to Kafka in the real loop; here they are only taken.
        std::hint::black_box(self.proc.take_new_alerts());
        self.next = end;
    }

    /// After a chunk: writes the next pass's ids if the pool is exhausted (untimed).
    pub fn roll(&mut self) {
        if self.next >= self.pool.len() {
            self.next = 0;
            self.pass += 1;
            self.write_pass();
        }
    }

    /// A flush that succeeded at once: snapshot, then `flushed` (dedup eviction).
    pub fn flush(&mut self) {
        let batch = self.proc.snapshot();
        self.proc.flushed(&batch.checkpoints);
        std::hint::black_box(batch);
        self.since_flush = 0;
    }

    /// Runs until `events` messages were processed (warm-up, untimed).
    pub fn run(&mut self, events: usize, chunk: usize) {
        let mut done = 0;
        while done < events {
            self.chunk(chunk);
            self.roll();
            done += chunk;
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        self.proc.shared()
    }
}
