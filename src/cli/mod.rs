//! The `callmeter` subcommands other than `run` (CONTRACT section 7), one module each: what
//! it reads, what it prints, and the library code only it uses. `src/main.rs` parses the
//! command line and calls these; `run`, the pipeline's lifecycle, lives apart.
//!
//! - [`check_config`]: the meter, plan and tenant tables of a configuration;
//! - [`migrate`]: the ClickHouse DDL;
//! - [`replay`]: the real data set as call events; [`loadgen`]: synthetic ones;
//! - [`report`]: per-tenant usage, alerts and charges read back from ClickHouse;
//! - [`reconcile`]: rollups against the raw events;
//! - `bench` (feature `bench`): the end-to-end measurements of BENCHMARKS.md.

#[cfg(feature = "bench")]
pub mod bench;
pub mod check_config;
pub mod loadgen;
pub mod reconcile;
pub mod replay;
pub mod report;

use anyhow::Context;

use crate::config::Config;
use crate::sink::clickhouse::ClickHouse;

/// `callmeter migrate`: creates the ClickHouse database and tables that are missing, and
/// prints each DDL file applied.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let ch = ClickHouse::new(&config.settings.clickhouse);
    let applied = ch
        .migrate()
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.settings.clickhouse.url))?;
    for f in applied {
        println!("ok {f}");
    }
    Ok(())
}
