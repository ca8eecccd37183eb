-- Internal: what was reported to Stripe per (tenant, meter, usage period). Each report is a
-- delta from reported_before to reported_after (whole units after the multiplier) sent with a
-- deterministic identifier; the row with the largest reported_after is the current state.
CREATE TABLE IF NOT EXISTS callmeter.stripe_reports
(
    tenant_id String,
    meter String,
    period_start DateTime('UTC'),
    stripe_customer_id String,
    event_name String,
    identifier String,
    reported_before Int64,
    reported_after Int64,
    value Int64,
    status String,
    reported_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(reported_after)
ORDER BY (tenant_id, meter, period_start);
