ATTACH TABLE stripe_reports
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
ORDER BY (tenant_id, meter, period_start, identifier)
SETTINGS index_granularity = 8192
