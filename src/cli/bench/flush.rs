//! The flush phase: [`ClickHouse::write_batch`](crate::sink::clickhouse::ClickHouse::write_batch)
//! of `--flush-rows` dirty rows (from [`Synth`]) to a fresh database, timed.

use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{Duration as ChronoDuration, Utc};

use super::memory::Synth;
use super::setup::set_up;
use super::{Options, Table, quantile};
use crate::config::Config;

pub(super) fn flush(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    table: &mut Table,
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (names, c, ch) = set_up(rt, config, run, "flush", None, databases)?;
    let tenants = o.flush_rows.div_ceil(2) as u32;
    println!(
        "flush: {} dirty rows ({} tenants x 2 meters) to ClickHouse, {} times",
        tenants * 2,
        tenants,
        o.flush_repeats
    );
    let mut s = Synth::new(&c);
    s.calls("f", tenants, 1, Utc::now() - ChronoDuration::hours(1));
    let mut times = Vec::new();
    let mut snaps = Vec::new();
    for _ in 0..o.flush_repeats.max(1) {
        let t = Instant::now();
        let batch = s.proc.snapshot();
        snaps.push(t.elapsed().as_secs_f64() * 1e3);
        let rows = batch.rows.len();
        let t = Instant::now();
        rt.block_on(ch.write_batch(&names.topic, &batch))
            .context("writing the flush batch")?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        s.proc.unflushed(batch);
        if rows != tenants as usize * 2 {
            bail!("flush batch had {rows} rows");
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    snaps.sort_by(|a, b| a.total_cmp(b));
    table.add(
        format!("flush: snapshot of {} dirty rows (median)", tenants * 2),
        format!("{:.1} ms", quantile(&snaps, 0.5)),
        "",
    );
    table.add(
        format!(
            "flush: write_batch of {} rows to ClickHouse (median of {})",
            tenants * 2,
            times.len()
        ),
        format!("{:.0} ms", quantile(&times, 0.5)),
        &format!(
            "min {:.0} ms, max {:.0} ms",
            times[0],
            times[times.len() - 1]
        ),
    );
    Ok(())
}
