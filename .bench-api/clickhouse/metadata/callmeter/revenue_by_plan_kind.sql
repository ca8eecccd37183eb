ATTACH VIEW revenue_by_plan_kind
(
    month Date, 
    currency String, 
    plan String, 
    line_kind String, 
    revenue Decimal(38, 9), 
    tenants UInt64
) AS
SELECT 
    month, 
    currency, 
    plan, 
    line_kind, 
    sum(amount) AS revenue, 
    uniqExact(tenant_id) AS tenants
FROM callmeter.statement_lines 
WHERE line_kind != ''
GROUP BY 
    month, 
    currency, 
    plan, 
    line_kind
