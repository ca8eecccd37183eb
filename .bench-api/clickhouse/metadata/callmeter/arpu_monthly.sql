ATTACH VIEW arpu_monthly
(
    month Date, 
    currency String, 
    revenue Decimal(38, 9), 
    tenants UInt64, 
    arpu Decimal(38, 9)
) AS
SELECT 
    month, 
    currency, 
    sum(amount) AS revenue, 
    uniqExact(tenant_id) AS tenants, 
    sum(amount) / uniqExact(tenant_id) AS arpu
FROM callmeter.statement_lines 
GROUP BY 
    month, 
    currency
