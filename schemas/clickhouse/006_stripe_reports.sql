-- What was reported to Stripe: one row per meter event, keyed by its identifier. A report
-- covers the units from reported_before to reported_after (whole units after the
-- multiplier) of a (tenant, meter, usage period). It is written with status 'pending'
-- BEFORE it is sent and replaced (version 2) by 'sent', 'rejected' (with error_code) or
-- 'unreportable' (older than Stripe's 35-day window, never sent). What a group has reported
-- is the sum of value over its distinct identifiers; a pending row is resent with the same
-- identifier, which Stripe deduplicates. flushed_at: when the reported usage was flushed;
-- written_at: when this row version was written. Read with GROUP BY identifier / argMax(status,
-- version), not FINAL with filters on non-key columns.
CREATE TABLE IF NOT EXISTS callmeter.stripe_reports
(
    tenant_id String,
    meter String,
    period_start DateTime('UTC'),
    period_end DateTime('UTC'),
    identifier String,
    stripe_customer_id String,
    event_name String,
    reported_before Int64,
    reported_after Int64,
    value Int64,
    event_timestamp DateTime('UTC'),
    status String,
    error_code String,
    version UInt8,
    flushed_at DateTime('UTC'),
    written_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant_id, meter, period_start, identifier);
