ATTACH TABLE usage_alerts
(
    alert_id String, 
    tenant_id String, 
    meter String, 
    kind String, 
    period_start DateTime('UTC'), 
    period_end DateTime('UTC'), 
    usage Decimal(38, 9), 
    usage_limit Decimal(38, 9), 
    plan String, 
    event_id String, 
    fired_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY alert_id
SETTINGS index_granularity = 8192
