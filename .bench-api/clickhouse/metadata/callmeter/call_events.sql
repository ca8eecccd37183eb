ATTACH TABLE call_events
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
ORDER BY (tenant_id, source, event_id)
SETTINGS index_granularity = 8192
