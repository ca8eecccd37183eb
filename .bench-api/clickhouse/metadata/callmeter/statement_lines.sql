ATTACH VIEW statement_lines
(
    month Date, 
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
    total Decimal(38, 9)
) AS
SELECT 
    toStartOfMonth(period_start + 43200) AS month, 
    statement_id, 
    tenant_id, 
    plan, 
    currency, 
    period_start, 
    period_end, 
    line_kind, 
    meter, 
    item, 
    quantity, 
    amount, 
    total
FROM callmeter.usage_statements
FINAL 
