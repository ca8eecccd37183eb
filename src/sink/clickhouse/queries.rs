//! Every SQL statement of the crate, in one place: the DDL files, the table names inserts
//! write to, and each query's text. Pure: nothing here talks to a server.
//!
//! Queries name tables fully (`db.table`, `db` the configured database); inserts use bare
//! names against a client whose default database is `db`. Each function says which columns
//! it selects, in order (the caller decodes them as a tuple or row struct of that shape), and
//! which `?` placeholders it binds, in order. Times are bound as `u32` Unix seconds
//! ([`super::rows::dt`]); `Decimal(38, 9)` columns come back as `i128` units of 1e-9
//! ([`super::rows::from_dec9`]).

/// The DDL files of `schemas/clickhouse/`, in order.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_usage_rollups.sql",
        include_str!("../../../schemas/clickhouse/001_usage_rollups.sql"),
    ),
    (
        "002_usage_alerts.sql",
        include_str!("../../../schemas/clickhouse/002_usage_alerts.sql"),
    ),
    (
        "003_rollup_state.sql",
        include_str!("../../../schemas/clickhouse/003_rollup_state.sql"),
    ),
    (
        "004_partition_checkpoints.sql",
        include_str!("../../../schemas/clickhouse/004_partition_checkpoints.sql"),
    ),
    (
        "005_call_events.sql",
        include_str!("../../../schemas/clickhouse/005_call_events.sql"),
    ),
    (
        "006_stripe_reports.sql",
        include_str!("../../../schemas/clickhouse/006_stripe_reports.sql"),
    ),
    (
        "007_subscriptions.sql",
        include_str!("../../../schemas/clickhouse/007_subscriptions.sql"),
    ),
    (
        "008_subscription_details.sql",
        include_str!("../../../schemas/clickhouse/008_subscription_details.sql"),
    ),
    (
        "009_usage_statements.sql",
        include_str!("../../../schemas/clickhouse/009_usage_statements.sql"),
    ),
    (
        "010_analytics_views.sql",
        include_str!("../../../schemas/clickhouse/010_analytics_views.sql"),
    ),
];

/// Per-row usage, one row per (tenant, meter, period, source partition) (CONTRACT section 5).
pub const USAGE_ROLLUPS: &str = "usage_rollups";
/// Fired alerts (CONTRACT section 4).
pub const USAGE_ALERTS: &str = "usage_alerts";
/// The raw aggregation state of each partition's rows.
pub const ROLLUP_STATE: &str = "rollup_state";
/// Each partition's replay position and watermark.
pub const PARTITION_CHECKPOINTS: &str = "partition_checkpoints";
/// Raw events (with `[clickhouse] raw_events = true`).
pub const CALL_EVENTS: &str = "call_events";
/// The ledger of Stripe reports.
pub const STRIPE_REPORTS: &str = "stripe_reports";
/// Applied subscription events (CONTRACT section 10).
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// What subscription events carry beyond the `subscriptions` columns.
pub const SUBSCRIPTION_DETAILS: &str = "subscription_details";
/// Period-close usage statements, one row per line (CONTRACT section 10).
pub const USAGE_STATEMENTS: &str = "usage_statements";
/// The analysts' views over `usage_statements` (schemas/clickhouse/010_analytics_views.sql).
pub const ANALYTICS_VIEWS: &[&str] = &[
    "statement_lines",
    "mrr_monthly",
    "revenue_by_plan_kind",
    "arpu_monthly",
    "tenants_gained_lost",
];

/// `CREATE DATABASE` for `db`, run before the migrations.
pub fn create_database(db: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {db}")
}

/// `DROP DATABASE` for `db` (the bench's clean-up of its own databases).
pub fn drop_database(db: &str) -> String {
    format!("DROP DATABASE IF EXISTS {db}")
}

/// The statements of [`MIGRATIONS`] for database `db`, in order: comment lines dropped,
/// split at `;`, the `callmeter.` prefix of table names replaced by `db.`.
pub fn migration_statements(db: &str) -> Vec<(&'static str, Vec<String>)> {
    MIGRATIONS
        .iter()
        .map(|(name, sql)| {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let stmts = code
                .split(';')
                .filter(|stmt| !stmt.trim().is_empty())
                .map(|stmt| stmt.replace("callmeter.", &format!("{db}.")))
                .collect();
            (*name, stmts)
        })
        .collect()
}

/// Round-trip check; selects one `UInt8`.
pub const PING: &str = "SELECT 1";

/// The column names of `stripe_reports` in database `?` (binds: database name).
pub const STRIPE_REPORTS_COLUMNS: &str =
    "SELECT name FROM system.columns WHERE database = ? AND table = 'stripe_reports'";

/// Restore: a partition's checkpoints, `(position, watermark_us, max_ts_ms)`
/// (binds: topic, partition).
pub fn restore_checkpoint(db: &str) -> String {
    format!(
        "SELECT position, watermark_us, max_ts_ms FROM {db}.{PARTITION_CHECKPOINTS} FINAL \
         WHERE source_topic = ? AND source_partition = ?"
    )
}

/// Restore: a partition's state rows of periods ending at or after a second,
/// `(tenant_id, meter, period_start, period_end, raw, event_count, through_offset)`
/// (binds: topic, partition, minimum period end).
pub fn restore_state(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), toUInt32(period_end), raw, \
         event_count, through_offset FROM {db}.{ROLLUP_STATE} FINAL \
         WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?"
    )
}

/// Restore: the rollup rows of the same periods, `(tenant_id, meter, period_start,
/// through_offset)` (binds: topic, partition, minimum period end).
pub fn restore_rollups(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), through_offset FROM {db}.{USAGE_ROLLUPS} FINAL \
         WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?"
    )
}

/// Restore: the alerts fired for those rows, `(tenant_id, meter, period_start, kind)`
/// (binds: topic, partition, minimum period end).
pub fn restore_alerts(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), kind FROM {db}.{USAGE_ALERTS} FINAL \
         WHERE (tenant_id, meter, period_start) IN \
         (SELECT tenant_id, meter, period_start FROM {db}.{ROLLUP_STATE} \
          WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?)"
    )
}

/// The columns of a subscription record, `(tenant_id, plan, addons, billing_cycle,
/// effective_at, canceled, event_id, source_partition, through_offset)`.
const SUBSCRIPTION_COLUMNS: &str = "tenant_id, plan, addons, billing_cycle, \
     toUInt32(effective_at), canceled, event_id, source_partition, through_offset";

/// The columns of its details, `(tenant_id, event_id, effective_at, timezone, anchor_day,
/// stripe_customer_id)`.
const DETAIL_COLUMNS: &str =
    "tenant_id, event_id, toUInt32(effective_at), timezone, anchor_day, stripe_customer_id";

/// Restore: a partition's subscription records up to a position, in partition order,
/// [`SUBSCRIPTION_COLUMNS`] (binds: partition, position).
pub fn restore_subscriptions(db: &str) -> String {
    format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM {db}.{SUBSCRIPTIONS} FINAL \
         WHERE source_partition = ? AND through_offset <= ? ORDER BY through_offset, event_id"
    )
}

/// Restore: the details of the same records, [`DETAIL_COLUMNS`] (binds: partition,
/// position).
pub fn restore_subscription_details(db: &str) -> String {
    format!(
        "SELECT {DETAIL_COLUMNS} FROM {db}.{SUBSCRIPTION_DETAILS} FINAL \
         WHERE source_partition = ? AND through_offset <= ?"
    )
}

/// A tenant's stored subscription records in partition order, [`SUBSCRIPTION_COLUMNS`]
/// (binds: tenant).
pub fn tenant_subscriptions(db: &str) -> String {
    format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM {db}.{SUBSCRIPTIONS} FINAL \
         WHERE tenant_id = ? ORDER BY source_partition, through_offset, event_id"
    )
}

/// Their details, [`DETAIL_COLUMNS`] (binds: tenant).
pub fn tenant_subscription_details(db: &str) -> String {
    format!("SELECT {DETAIL_COLUMNS} FROM {db}.{SUBSCRIPTION_DETAILS} FINAL WHERE tenant_id = ?")
}

/// Restore: the (tenant, period) of a partition's restored rows whose statement is stored,
/// `(tenant_id, period_start)` (binds: topic, partition, minimum period end).
pub fn restore_stated(db: &str) -> String {
    format!(
        "SELECT DISTINCT tenant_id, toUInt32(period_start) FROM {db}.{USAGE_STATEMENTS} \
         WHERE (tenant_id, period_start) IN \
         (SELECT tenant_id, period_start FROM {db}.{ROLLUP_STATE} \
          WHERE source_topic = ? AND source_partition = ? AND toUInt32(period_end) >= ?)"
    )
}

/// Restore: the (tenant, period) of the stored statements of the tenants with subscription
/// records from a partition, of periods ending at or after a second, `(tenant_id,
/// period_start)` (binds: partition, minimum period end). A period with only subscription
/// events has no rows, so [`restore_stated`] does not find it.
pub fn restore_subscription_stated(db: &str) -> String {
    format!(
        "SELECT DISTINCT tenant_id, toUInt32(period_start) FROM {db}.{USAGE_STATEMENTS} \
         WHERE tenant_id IN (SELECT tenant_id FROM {db}.{SUBSCRIPTIONS} WHERE source_partition = ?) \
         AND toUInt32(period_end) >= ?"
    )
}

/// The columns of `usage_statements` in table order (the shape of
/// [`super::rows::StatementRow`]).
const STATEMENT_COLUMNS: &str = "statement_id, tenant_id, plan, currency, period_start, \
    period_end, line_kind, meter, item, quantity, amount, total, closed_at";

/// The statements route: the lines of a tenant's newest statements, newest first, every
/// column in table order ([`super::rows::StatementRow`]) (binds: tenant, tenant, how many
/// statements).
pub fn list_statements(db: &str) -> String {
    format!(
        "SELECT {STATEMENT_COLUMNS} FROM {db}.{USAGE_STATEMENTS} FINAL \
         WHERE tenant_id = ? AND period_start IN \
         (SELECT period_start FROM {db}.{USAGE_STATEMENTS} WHERE tenant_id = ? \
          GROUP BY period_start ORDER BY period_start DESC LIMIT ?) \
         ORDER BY period_start DESC"
    )
}

/// `callmeter report`: every statement's lines, every column in table order
/// ([`super::rows::StatementRow`]), ordered by tenant and period (binds nothing).
pub fn report_statements(db: &str) -> String {
    format!(
        "SELECT {STATEMENT_COLUMNS} FROM {db}.{USAGE_STATEMENTS} FINAL \
         ORDER BY tenant_id, period_start"
    )
}

/// Restore: each tenant's earliest period on a partition, `(tenant_id, period_start)`
/// (binds: topic, partition).
pub fn restore_first_periods(db: &str) -> String {
    format!(
        "SELECT tenant_id, toUInt32(min(period_start)) FROM {db}.{ROLLUP_STATE} \
         WHERE source_topic = ? AND source_partition = ? GROUP BY tenant_id"
    )
}

/// The contract query (CONTRACT section 5): a tenant's usage of a meter in a period, with
/// the event count, `(sum(value), sum(event_count))` (binds: tenant, meter, period start).
pub fn tenant_meter_usage(db: &str) -> String {
    format!(
        "SELECT sum(value), sum(event_count) FROM {db}.{USAGE_ROLLUPS} FINAL \
         WHERE tenant_id = ? AND meter = ? AND period_start = toDateTime(?, 'UTC')"
    )
}

/// A tenant's usage per meter in a period, `(meter, sum(value))`
/// (binds: tenant, period start).
pub fn tenant_period_usage(db: &str) -> String {
    format!(
        "SELECT meter, sum(value) FROM {db}.{USAGE_ROLLUPS} FINAL \
         WHERE tenant_id = ? AND period_start = toDateTime(?, 'UTC') GROUP BY meter"
    )
}

/// Whether a tenant has rollups, and its earliest period, `(count(), min(period_start))`
/// (binds: tenant).
pub fn tenant_first_period(db: &str) -> String {
    format!(
        "SELECT count(), toUInt32(min(period_start)) FROM {db}.{USAGE_ROLLUPS} WHERE tenant_id = ?"
    )
}

/// The alert kinds of a tenant's period in firing order, `(meter, kind)`
/// (binds: tenant, period start).
pub fn tenant_period_alerts(db: &str) -> String {
    format!(
        "SELECT meter, kind FROM {db}.{USAGE_ALERTS} FINAL WHERE tenant_id = ? AND toUInt32(period_start) = ? ORDER BY fired_at"
    )
}

/// How many stored alerts have an id, `count()` (binds: alert id).
pub fn alert_count(db: &str) -> String {
    format!("SELECT count() FROM {db}.{USAGE_ALERTS} WHERE alert_id = ?")
}

/// Alerts of the given kinds on a meter, `(tenant_id, period_start, kind)`
/// (binds: meter, kind, kind).
pub fn meter_alert_kinds(db: &str) -> String {
    format!(
        "SELECT tenant_id, toUInt32(period_start), kind FROM {db}.{USAGE_ALERTS} FINAL \
         WHERE meter = ? AND kind IN (?, ?)"
    )
}

/// Wallets: rollup rows, `(tenant_id, meter, period_start, period_end, source_partition,
/// value, through_offset, updated_at)`. `full`: every row, with `FINAL`; else rows updated
/// at or after a second (binds it first). `by_tenant`: only the tenants of an array (binds
/// it next).
pub fn wallet_rollups(db: &str, full: bool, by_tenant: bool) -> String {
    let mut conds = Vec::new();
    if !full {
        conds.push("toUInt32(updated_at) >= ?");
    }
    if by_tenant {
        conds.push("has(?, tenant_id)");
    }
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), toUInt32(period_end), \
         source_partition, value, through_offset, toUInt32(updated_at) FROM {db}.{USAGE_ROLLUPS}{}{}{}",
        if full { " FINAL" } else { "" },
        if conds.is_empty() { "" } else { " WHERE " },
        conds.join(" AND ")
    )
}

/// `callmeter report`: usage per (tenant, meter, period), `(tenant_id, meter, period_start,
/// period_end, sum(value))`, ordered by tenant, period, meter (binds nothing).
pub fn report_usage(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), toUInt32(any(period_end)), sum(value) \
         FROM {db}.{USAGE_ROLLUPS} FINAL GROUP BY tenant_id, meter, period_start ORDER BY tenant_id, period_start, meter"
    )
}

/// `callmeter report`: `call_minutes` alerts, `(tenant_id, period_start, kind)`, in firing
/// order per period (binds nothing).
pub fn report_alerts(db: &str) -> String {
    format!(
        "SELECT tenant_id, toUInt32(period_start), kind FROM {db}.{USAGE_ALERTS} FINAL \
         WHERE meter = 'call_minutes' ORDER BY tenant_id, period_start, fired_at, usage"
    )
}

/// `callmeter reconcile`: raw events in a time window, `(tenant_id, source, event_id, type,
/// time_us, data)` (binds: from, to, in seconds, `to` exclusive).
pub fn reconcile_raw_events(db: &str) -> String {
    format!(
        "SELECT tenant_id, source, event_id, type, time_us, data FROM {db}.{CALL_EVENTS} FINAL \
         WHERE toUInt32(time) >= ? AND toUInt32(time) < ?"
    )
}

/// `callmeter reconcile`: usage per (tenant, meter, period) of periods starting in a window,
/// `(tenant_id, meter, period_start, sum(value))` (binds: from, to, `to` exclusive).
pub fn reconcile_rollups(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), sum(value) FROM {db}.{USAGE_ROLLUPS} FINAL \
         WHERE toUInt32(period_start) >= ? AND toUInt32(period_start) < ? \
         GROUP BY tenant_id, meter, period_start"
    )
}

/// Portal: a tenant's stored raw events in a time window, for daily usage, `(source,
/// event_id, type, time_us, data)`, at most a given number (binds: tenant, from, to, in
/// seconds, `to` exclusive, then the row limit).
pub fn tenant_raw_events(db: &str) -> String {
    format!(
        "SELECT source, event_id, type, time_us, data FROM {db}.{CALL_EVENTS} FINAL \
         WHERE tenant_id = ? AND toUInt32(time) >= ? AND toUInt32(time) < ? LIMIT ?"
    )
}

/// `callmeter bench`: events counted on a topic, `sum(event_count)` of the `calls` meter
/// (binds: topic).
pub fn bench_stored_calls(db: &str) -> String {
    format!(
        "SELECT sum(event_count) FROM {db}.{USAGE_ROLLUPS} FINAL WHERE meter = 'calls' AND source_topic = ?"
    )
}

/// Stripe: flushed usage per (tenant, meter, period) of an array of meters,
/// `(tenant_id, meter, period_start, period_end, sum(value), min(source_partition),
/// max(updated_at))` (binds: meters; with `since`, then a second: only groups with a row
/// updated at or after it).
pub fn stripe_usage(db: &str, since: bool) -> String {
    let rollups = format!("{db}.{USAGE_ROLLUPS}");
    let recent = if since {
        format!(
            " AND (tenant_id, meter, period_start) IN (SELECT tenant_id, meter, period_start \
             FROM {rollups} WHERE updated_at >= toDateTime(?, 'UTC'))"
        )
    } else {
        String::new()
    };
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start) AS ps, toUInt32(any(period_end)), \
         sum(value), min(source_partition), toUInt32(max(updated_at)) \
         FROM {rollups} FINAL WHERE has(?, meter){recent} \
         GROUP BY tenant_id, meter, period_start"
    )
}

/// Stripe: units reported per (tenant, meter, period, customer, rejected or not), the sum of
/// `value` over distinct identifiers, `(tenant_id, meter, period_start, customer, rejected,
/// reported)` (binds nothing).
pub fn stripe_reported(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), customer, toUInt8(rejected), toInt64(sum(v)) FROM \
         (SELECT tenant_id, meter, period_start, identifier, any(stripe_customer_id) AS customer, \
          argMax(status, version) = 'rejected' AS rejected, any(value) AS v FROM {db}.{STRIPE_REPORTS} \
          GROUP BY tenant_id, meter, period_start, identifier) \
         GROUP BY tenant_id, meter, period_start, customer, rejected"
    )
}

/// Stripe: reports whose latest status is `pending`, `(tenant_id, meter, period_start,
/// period_end, identifier, stripe_customer_id, event_name, reported_before, reported_after,
/// event_timestamp, flushed_at)` (binds nothing).
pub fn stripe_pending(db: &str) -> String {
    format!(
        "SELECT tenant_id, meter, toUInt32(period_start), toUInt32(any(period_end)), \
         identifier, any(stripe_customer_id), any(event_name), any(reported_before), \
         any(reported_after), toUInt32(any(event_timestamp)), toUInt32(any(flushed_at)) \
         FROM {db}.{STRIPE_REPORTS} GROUP BY tenant_id, meter, period_start, identifier \
         HAVING argMax(status, version) = 'pending'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_name_only_the_callmeter_database() {
        for (name, sql) in MIGRATIONS {
            assert!(
                sql.contains("CREATE TABLE IF NOT EXISTS callmeter.")
                    || sql.contains("CREATE VIEW IF NOT EXISTS callmeter."),
                "{name}"
            );
            for banned in ["LowCardinality", "DateTime64", "JSON"] {
                let code: String = sql
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect();
                assert!(!code.contains(banned), "{name} uses {banned}");
            }
        }
    }

    #[test]
    fn migration_statements_target_the_configured_database() {
        let all = migration_statements("other");
        assert_eq!(all.len(), MIGRATIONS.len());
        for (name, stmts) in all {
            assert!(!stmts.is_empty(), "{name}");
            for s in stmts {
                assert!(!s.contains("callmeter."), "{name}: {s}");
                assert!(!s.trim_start().starts_with("--"), "{name}: {s}");
            }
        }
    }

    #[test]
    fn queries_name_tables_in_the_given_database() {
        let db = "x_db";
        let all = [
            restore_checkpoint(db),
            restore_state(db),
            restore_rollups(db),
            restore_alerts(db),
            restore_first_periods(db),
            tenant_meter_usage(db),
            tenant_period_usage(db),
            tenant_first_period(db),
            tenant_period_alerts(db),
            alert_count(db),
            meter_alert_kinds(db),
            wallet_rollups(db, true, false),
            wallet_rollups(db, false, true),
            report_usage(db),
            report_alerts(db),
            reconcile_raw_events(db),
            reconcile_rollups(db),
            bench_stored_calls(db),
            stripe_usage(db, false),
            stripe_usage(db, true),
            stripe_reported(db),
            stripe_pending(db),
            restore_stated(db),
            restore_subscription_stated(db),
            list_statements(db),
            report_statements(db),
            tenant_raw_events(db),
        ];
        for q in all {
            assert!(q.contains(" FROM x_db."), "{q}");
            for word in q.split_whitespace() {
                if let Some(t) = word.strip_prefix("x_db.") {
                    assert!(
                        [
                            USAGE_ROLLUPS,
                            USAGE_ALERTS,
                            ROLLUP_STATE,
                            PARTITION_CHECKPOINTS,
                            CALL_EVENTS,
                            STRIPE_REPORTS,
                            USAGE_STATEMENTS,
                            SUBSCRIPTIONS
                        ]
                        .contains(&t.trim_end_matches(')')),
                        "{q}"
                    );
                }
            }
        }
    }

    #[test]
    fn wallet_rollups_conditions() {
        assert!(wallet_rollups("d", true, false).ends_with("FROM d.usage_rollups FINAL"));
        assert!(wallet_rollups("d", false, true).ends_with(
            "FROM d.usage_rollups WHERE toUInt32(updated_at) >= ? AND has(?, tenant_id)"
        ));
    }
}
