//! ClickHouse: the client of the crate's database, schema migration, and the errors of every
//! ClickHouse call.
//!
//! One room per role: [`rows`] encodes values and rows (RowBinary: `Decimal(38, 9)` as i128
//! units of 1e-9, `DateTime('UTC')` as u32 seconds), [`queries`] holds every SQL statement of
//! the crate, `write` writes flush batches ([`ClickHouse::write_batch`]) and `restore` reads
//! a partition back on assignment ([`ClickHouse::restore`]). Other modules that read
//! ClickHouse (usage, wallets, Stripe, report, reconcile) take their statements from
//! [`queries`] and run them through [`ClickHouse::client`].

use std::time::Duration;

use clickhouse::Client;
use rust_decimal::Decimal;

use crate::config::ClickHouseSettings;

pub mod queries;
mod restore;
pub mod rows;
pub mod statements;
mod write;

pub use queries::MIGRATIONS;
pub use rows::{AlertRow, RollupRow, dec9, dt, from_dec9, now_secs, stored_event_json};
pub use statements::{StoredLine, StoredStatement};

/// A ClickHouse failure. All are retryable from the pipeline's point of view (the server may
/// come back, a missing table may be migrated); the flag tells operators what to expect.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("ClickHouse request failed: {0}")]
    Request(#[from] clickhouse::error::Error),
    #[error("ClickHouse returned an out-of-range value: {0}")]
    Data(String),
}

impl SinkError {
    /// Network errors and timeouts are transient; others likely need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SinkError::Request(clickhouse::error::Error::Network(_))
                | SinkError::Request(clickhouse::error::Error::TimedOut)
        )
    }
}

/// The ClickHouse side of the pipeline.
#[derive(Clone)]
pub struct ClickHouse {
    /// Queries name tables fully; inserts use bare names against this client's database.
    client: Client,
    /// Without a default database (for `CREATE DATABASE`).
    admin: Client,
    db: String,
}

impl ClickHouse {
    pub fn new(s: &ClickHouseSettings) -> ClickHouse {
        let admin = Client::default()
            .with_url(&s.url)
            .with_user(&s.user)
            .with_password(&s.password)
            .with_validation(false);
        ClickHouse {
            client: admin.clone().with_database(&s.database),
            admin,
            db: s.database.clone(),
        }
    }

    /// The client, its default database the configured one (run [`queries`] through it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configured database (the `db` argument of [`queries`]).
    pub fn database(&self) -> &str {
        &self.db
    }

    /// `db.table`.
    pub fn table(&self, t: &str) -> String {
        format!("{}.{}", self.db, t)
    }

    /// Creates the database and every table that is missing; changes nothing that exists.
    pub async fn migrate(&self) -> Result<Vec<String>, SinkError> {
        self.admin
            .query(&queries::create_database(&self.db))
            .execute()
            .await?;
        let mut applied = Vec::new();
        for (name, stmts) in queries::migration_statements(&self.db) {
            for body in stmts {
                self.admin.query(&body).execute().await?;
            }
            applied.push(name.to_string());
        }
        Ok(applied)
    }

    /// Round-trip check.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.admin.query(queries::PING).fetch_one::<u8>().await?;
        Ok(())
    }

    /// A tenant's stored usage of `meter` in the period starting at `period_start`
    /// (the contract query), with the event count.
    pub async fn usage(
        &self,
        tenant: &str,
        meter: &str,
        period_start: i64,
    ) -> Result<(Decimal, u64), SinkError> {
        let (v, n): (i128, u64) = self
            .client
            .query(&queries::tenant_meter_usage(&self.db))
            .bind(tenant)
            .bind(meter)
            .bind(dt(period_start))
            .fetch_one()
            .await?;
        Ok((from_dec9(v)?, n))
    }
}

/// Retry delays for flushes: jittered exponential backoff from 200 ms, capped at 30 s.
pub fn flush_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
