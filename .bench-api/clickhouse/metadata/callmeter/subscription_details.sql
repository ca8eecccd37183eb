ATTACH TABLE subscription_details
(
    tenant_id String, 
    effective_at DateTime('UTC'), 
    event_id String, 
    timezone String, 
    anchor_day UInt8, 
    stripe_customer_id String, 
    source_partition UInt32, 
    through_offset Int64, 
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
ORDER BY (tenant_id, effective_at, event_id)
SETTINGS index_granularity = 8192
