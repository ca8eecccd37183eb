ATTACH TABLE rollup_state
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
ORDER BY (source_topic, source_partition, tenant_id, meter, period_start)
SETTINGS index_granularity = 8192
