//! ClickHouse: the client of the crate's database, schema migration, and the errors of every
//! ClickHouse call.
//!
//! One room per role: [`rows`] encodes values and rows (RowBinary: `Decimal(38, 9)` as i128
//! units of 1e-9, `DateTime('UTC')` as u32 seconds), [`queries`] holds every SQL statement of
//! the crate, `write` writes flush batches ([`ClickHouse::write_batch`]) and `restore` reads
//! a partition back on assignment ([`ClickHouse::restore`]), [`statements`] reads stored
//! statements back ([`ClickHouse::list_statements`]). Other modules that read
//! ClickHouse (usage, wallets, Stripe, report, reconcile) take their statements from
//! [`queries`] and run them through [`ClickHouse::client`].

use std::sync::Arc;
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
pub use rows::{
    AlertRow, RollupRow, StatementRow, dec9, dt, from_dec9, now_secs, stored_event_json,
};

/// A ClickHouse failure, classified by [`SinkError::is_transient`]: transient ones (the
/// server unreachable or hung, overloaded, 5xx) are retried with backoff; permanent ones
/// (authentication, a schema that does not match) need an operator: the pipeline keeps its
/// state, retries slowly and answers 503 on `/readyz` naming the error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("ClickHouse request failed: {0}")]
    Request(#[from] clickhouse::error::Error),
    #[error("ClickHouse returned an out-of-range value: {0}")]
    Data(String),
    #[error("ClickHouse request timed out after {0:?}")]
    Timeout(Duration),
}

/// ClickHouse error codes that no retry fixes: authentication and access (516, 192, 194,
/// 497), unknown database, table or column (81, 60, 16, 47), a type or format that does not
/// match (53, 70, 27, 33, 62, 117).
const PERMANENT_CODES: &[u32] = &[516, 192, 194, 497, 81, 60, 16, 47, 53, 70, 27, 33, 62, 117];

impl SinkError {
    /// Whether a retry can succeed without an operator: network errors, timeouts, 5xx and
    /// server-side overload (too many parts, memory limit, ...) are transient; the codes in
    /// `PERMANENT_CODES`, and responses the client cannot decode (a schema mismatch), are not.
    pub fn is_transient(&self) -> bool {
        use clickhouse::error::Error as E;
        match self {
            SinkError::Timeout(_) => true,
            SinkError::Data(_) => false,
            SinkError::Request(e) => match e {
                E::Network(_) | E::TimedOut => true,
                E::BadResponse(msg) => match exception_code(msg) {
                    Some(code) => !PERMANENT_CODES.contains(&code),
                    // No exception code: an HTTP status without a ClickHouse body (a proxy).
                    None => !(msg.contains("401") || msg.contains("403") || msg.contains("404")),
                },
                E::SchemaMismatch(_)
                | E::NotEnoughData
                | E::InvalidColumnsHeader(_)
                | E::DataFormat(_)
                | E::InvalidParams(_)
                | E::Unsupported(_) => false,
                _ => true,
            },
        }
    }
}

/// The `N` of `Code: N.` in a ClickHouse exception text.
fn exception_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The ClickHouse side of the pipeline. Cheap to clone (one reference count): the HTTP API
/// clones it with its state for every request.
#[derive(Clone)]
pub struct ClickHouse(Arc<Conn>);

struct Conn {
    /// Queries name tables fully; inserts use bare names against this client's database.
    client: Client,
    /// Without a default database (for `CREATE DATABASE`).
    admin: Client,
    db: String,
    /// Bound on each request (`clickhouse.request_timeout`).
    timeout: Duration,
}

impl ClickHouse {
    pub fn new(s: &ClickHouseSettings) -> ClickHouse {
        let admin = Client::default()
            .with_url(&s.url)
            .with_user(&s.user)
            .with_password(&s.password)
            .with_validation(false);
        ClickHouse(Arc::new(Conn {
            client: admin.clone().with_database(&s.database),
            admin,
            db: s.database.clone(),
            timeout: s.request_timeout,
        }))
    }

    /// Runs `fut` (one or more requests) bounded by `clickhouse.request_timeout`.
    pub async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.0.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::Timeout(self.0.timeout)),
        }
    }

    /// The client, its default database the configured one (run [`queries`] through it).
    pub fn client(&self) -> &Client {
        &self.0.client
    }

    /// The configured database (the `db` argument of [`queries`]).
    pub fn database(&self) -> &str {
        &self.0.db
    }

    /// `db.table`.
    pub fn table(&self, t: &str) -> String {
        format!("{}.{}", self.0.db, t)
    }

    /// Creates the database and every table that is missing; changes nothing that exists.
    pub async fn migrate(&self) -> Result<Vec<String>, SinkError> {
        self.timed(self.migrate_inner()).await
    }

    async fn migrate_inner(&self) -> Result<Vec<String>, SinkError> {
        self.0
            .admin
            .query(&queries::create_database(&self.0.db))
            .execute()
            .await?;
        let mut applied = Vec::new();
        for (name, stmts) in queries::migration_statements(&self.0.db) {
            for body in stmts {
                self.0.admin.query(&body).execute().await?;
            }
            applied.push(name.to_string());
        }
        Ok(applied)
    }

    /// Round-trip check.
    pub async fn ping(&self) -> Result<(), SinkError> {
        self.timed(async {
            self.0.admin.query(queries::PING).fetch_one::<u8>().await?;
            Ok(())
        })
        .await
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
            .timed(async {
                Ok(self
                    .0
                    .client
                    .query(&queries::tenant_meter_usage(&self.0.db))
                    .bind(tenant)
                    .bind(meter)
                    .bind(dt(period_start))
                    .fetch_one()
                    .await?)
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    fn bad(msg: &str) -> SinkError {
        SinkError::Request(E::BadResponse(msg.into()))
    }

    #[test]
    fn classification() {
        assert!(SinkError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(SinkError::Request(E::TimedOut).is_transient());
        assert!(SinkError::Request(E::Network("refused".into())).is_transient());
        assert!(bad("Code: 252. DB::Exception: Too many parts (300).").is_transient());
        assert!(bad("Code: 241. DB::Exception: Memory limit (total) exceeded").is_transient());
        assert!(bad("bad response: 503 Service Unavailable").is_transient());
        assert!(
            !bad("Code: 516. DB::Exception: default: Authentication failed: password is incorrect")
                .is_transient()
        );
        assert!(
            !bad("Code: 60. DB::Exception: Unknown table expression identifier").is_transient()
        );
        assert!(!bad("Code: 16. DB::Exception: No such column x in table").is_transient());
        assert!(!bad("Code: 53. DB::Exception: Type mismatch").is_transient());
        assert!(!SinkError::Request(E::SchemaMismatch("x".into())).is_transient());
        assert!(!SinkError::Data("x".into()).is_transient());
        assert_eq!(exception_code("Code: 81. DB::Exception"), Some(81));
        assert_eq!(exception_code("no code"), None);
    }
}
