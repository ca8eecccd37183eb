//! The memory phase (no servers): state bytes per row, per tenant and per dedup entry, from
//! the resident set size before and after feeding a [`Processor`] synthetic calls
//! ([`Synth`], which the flush phase uses too).

use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};

use super::{Options, Table, mib, thousands};
use crate::cli::loadgen;
use crate::config::Config;
use crate::state::{InMessage, Outcome, Params, Processor, Restored, Shared};

/// Resident set size of this process in bytes (Linux), if known.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A `call.completed` like loadgen's, without revenue (two rows per tenant and period:
/// `call_minutes` and `calls`).
fn call_payload(tenant: &str, id: &str, time: &str, duration_ms: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"bench/eu-1","type":"call.completed","subject":"{tenant}","time":"{time}","datacontenttype":"application/json","data":{{"call_id":"{id}","duration_ms":{duration_ms},"direction":"inbound","handled_by":"ai"}}}}"#
    )
}

/// Feeds synthetic calls to a processor on partition 0.
pub(super) struct Synth {
    pub(super) proc: Processor,
    offset: i64,
    ts_ms: i64,
}

impl Synth {
    pub(super) fn new(config: &Config) -> Synth {
        let shared = Shared::new(config.catalog.clone());
        let mut params = Params::from_settings(&config.settings);
        // Measure the window's natural size; the cap is applied in the report.
        params.max_dedup_entries = usize::MAX;
        let mut proc = Processor::new(shared, params);
        proc.assign(0);
        proc.install(Restored {
            partition: 0,
            ..Default::default()
        });
        Synth {
            proc,
            offset: 0,
            ts_ms: Utc::now().timestamp_millis() - 60_000,
        }
    }

    /// One call per tenant `0..tenants`, `per_tenant` times, at event time `time`.
    pub(super) fn calls(
        &mut self,
        tag: &str,
        tenants: u32,
        per_tenant: u64,
        time: DateTime<Utc>,
    ) -> u64 {
        let time = time.to_rfc3339_opts(SecondsFormat::Millis, true);
        let now = Utc::now();
        let mut counted = 0;
        for round in 0..per_tenant {
            for t in 0..tenants {
                let tenant = loadgen::tenant_id("t", t);
                let id = format!("{tag}-{round}-{t}");
                // A few seconds each: no tenant nears a limit, so no alerts pile up.
                let p = call_payload(&tenant, &id, &time, 1_000 + (t as u64 % 10) * 1_000);
                let m = InMessage {
                    partition: 0,
                    offset: self.offset,
                    payload: Some(p.as_bytes()),
                    // Within the window: nothing ages out during the measurement.
                    timestamp_ms: Some(self.ts_ms),
                };
                self.offset += 1;
                if self.proc.process(&m, now) == Outcome::Counted {
                    counted += 1;
                }
            }
            self.proc.take_new_alerts();
        }
        counted
    }
}

pub(super) fn memory(config: &Config, o: &Options, table: &mut Table) -> anyhow::Result<()> {
    println!(
        "memory: {} tenants, {} dedup entries sampled",
        o.memory_tenants, o.dedup_sample
    );
    let Some(rss0) = rss_bytes() else {
        table.add("memory", "n/a (no /proc/self/status)", "");
        return Ok(());
    };
    let mut s = Synth::new(config);
    let now = Utc::now();
    let t = o.memory_tenants;
    // 1. Every tenant, one call in an earlier usage period: tenants + 2 rows each + dedup.
    let n1 = s.calls("m1", t, 1, now - ChronoDuration::days(40));
    let rss1 = rss_bytes().unwrap_or(rss0);
    let rows1 = s.proc.shared().row_count();
    // 2. Every tenant, one call in the current period: 2 new rows each + dedup, no tenants.
    let n2 = s.calls("m2", t, 1, now - ChronoDuration::hours(1));
    let rss2 = rss_bytes().unwrap_or(rss1);
    let rows2 = s.proc.shared().row_count();
    // 3. More calls of the same tenants and period: only dedup entries grow.
    let per_tenant = o.dedup_sample.div_ceil(t.max(1) as u64);
    let before = s.proc.dedup_entries();
    let n3 = s.calls("m3", t, per_tenant, now - ChronoDuration::minutes(30));
    let rss3 = rss_bytes().unwrap_or(rss2);
    let entries = (s.proc.dedup_entries() - before) as f64;
    if n1 != t as u64 || n2 != t as u64 || n3 != per_tenant * t as u64 {
        bail!(
            "memory phase: events were not counted ({n1}, {n2}, {n3}); the configuration must price tenants t00000.. (pricing.default_plan)"
        );
    }
    let per_entry = (rss3.saturating_sub(rss2)) as f64 / entries.max(1.0);
    let new_rows = (rows2 - rows1) as f64;
    let per_row = ((rss2.saturating_sub(rss1)) as f64 - n2 as f64 * per_entry) / new_rows;
    let per_tenant_b =
        ((rss1.saturating_sub(rss0)) as f64 - n1 as f64 * per_entry - rows1 as f64 * per_row)
            / t as f64;
    table.add(
        "memory: bytes per (tenant, meter, period) row",
        format!("{per_row:.0} B"),
        "",
    );
    table.add(
        format!("memory: bytes per tenant (besides rows), {t} tenants"),
        format!("{per_tenant_b:.0} B"),
        "",
    );
    table.add(
        format!(
            "memory: bytes per dedup entry ({} entries)",
            thousands(entries)
        ),
        format!("{per_entry:.0} B"),
        "",
    );
    table.add(
        format!("memory: state of {t} tenants, 2 rows each"),
        mib(t as f64 * (per_tenant_b + 2.0 * per_row)),
        "",
    );
    // The window as the pipeline holds it: dedup window plus the replay margin.
    let p = s.proc.params();
    let held_ms = p.dedup_window_ms + p.replay_margin_ms();
    let need = o.dedup_rate as f64 * held_ms as f64 / 1000.0;
    let cap = config.settings.pipeline.max_dedup_entries as f64;
    table.add(
        format!(
            "memory: dedup, {} window (+{} replay margin) at {}/s",
            humantime::format_duration(config.settings.pipeline.dedup_window),
            humantime::format_duration(Duration::from_millis(p.replay_margin_ms() as u64)),
            thousands(o.dedup_rate as f64)
        ),
        format!("{} entries", thousands(need)),
        "",
    );
    table.add(
        "memory: dedup at that window and rate",
        mib(need * per_entry),
        "",
    );
    if need > cap {
        table.add(
            format!(
                "memory: capped by pipeline.max_dedup_entries = {}",
                thousands(cap)
            ),
            mib(cap * per_entry),
            &format!(
                "window shrinks to {:.0} min at this rate",
                cap / o.dedup_rate as f64 / 60.0
            ),
        );
    }
    drop(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_calls_are_counted_without_alerts() {
        let c = Config::from_toml_str(include_str!("../../../examples/bench.toml")).unwrap();
        let mut s = Synth::new(&c);
        assert_eq!(
            s.calls("t", 50, 3, Utc::now() - ChronoDuration::hours(1)),
            150
        );
        assert_eq!(s.proc.shared().row_count(), 100);
        assert_eq!(s.proc.dedup_entries(), 150);
        assert!(s.proc.snapshot().alerts.is_empty());
    }
}
