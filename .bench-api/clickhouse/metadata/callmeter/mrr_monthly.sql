ATTACH VIEW mrr_monthly
(
    month Date, 
    currency String, 
    mrr Decimal(38, 9), 
    tenants UInt64
) AS
SELECT 
    month, 
    currency, 
    sum(amount) AS mrr, 
    uniqExact(tenant_id) AS tenants
FROM callmeter.statement_lines 
WHERE line_kind IN ('base_fee', 'addon')
GROUP BY 
    month, 
    currency
