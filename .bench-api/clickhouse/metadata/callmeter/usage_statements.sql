ATTACH TABLE usage_statements
(
    statement_id String, 
    tenant_id String, 
    plan String, 
    currency String, 
    period_start DateTime('UTC'), 
    period_end DateTime('UTC'), 
    line_kind String, 
    meter String, 
    item String, 
    quantity Decimal(38, 9), 
    amount Decimal(38, 9), 
    total Decimal(38, 9), 
    closed_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, period_start, line_kind, meter, item)
SETTINGS index_granularity = 8192
