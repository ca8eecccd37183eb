ATTACH TABLE usage_rollups
(
    tenant_id String, 
    meter String, 
    period_start DateTime('UTC'), 
    period_end DateTime('UTC'), 
    value Decimal(38, 9), 
    event_count UInt64, 
    source_topic String, 
    source_partition UInt32, 
    through_offset Int64, 
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
PARTITION BY toYYYYMM(period_start)
ORDER BY (tenant_id, meter, period_start, source_topic, source_partition)
SETTINGS index_granularity = 8192
