//! Where the pipeline writes: ClickHouse (rollups, alerts, state).

pub mod clickhouse;
