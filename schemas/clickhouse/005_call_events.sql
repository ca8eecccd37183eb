-- Optional ([clickhouse] raw_events = true): every counted event, for audits and
-- `callmeter reconcile`. A re-insert after a crash collapses on (tenant_id, source, event_id).
CREATE TABLE IF NOT EXISTS callmeter.call_events
(
    tenant_id String,
    source String,
    event_id String,
    type String,
    time DateTime('UTC'),
    time_us Int64,
    data String,
    source_topic String,
    source_partition UInt32,
    source_offset Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (tenant_id, source, event_id);
