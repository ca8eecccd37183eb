ATTACH TABLE subscriptions
(
    tenant_id String, 
    plan String, 
    addons String, 
    billing_cycle String, 
    effective_at DateTime('UTC'), 
    canceled UInt8, 
    event_id String, 
    source_partition UInt32, 
    through_offset Int64, 
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
ORDER BY (tenant_id, effective_at, event_id)
SETTINGS index_granularity = 8192
