-- Internal: the exact raw sum behind each rollup (before division and rounding), written
-- just before usage_rollups in every flush, so that a restarted instance resumes from exact
-- sums. Same key and version as usage_rollups.
CREATE TABLE IF NOT EXISTS callmeter.rollup_state
(
    source_topic String,
    source_partition UInt32,
    tenant_id String,
    meter String,
    period_start DateTime('UTC'),
    period_end DateTime('UTC'),
    raw Decimal(38, 9),
    event_count UInt64,
    through_offset Int64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(period_start)
ORDER BY (source_topic, source_partition, tenant_id, meter, period_start);
