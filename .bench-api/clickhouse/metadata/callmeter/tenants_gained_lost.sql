ATTACH VIEW tenants_gained_lost
(
    month Date, 
    gained UInt64, 
    lost UInt64
) AS
SELECT 
    month, 
    sum(gained) AS gained, 
    sum(lost) AS lost
FROM 
(
    SELECT 
        first_month AS month, 
        toUInt64(1) AS gained, 
        toUInt64(0) AS lost
    FROM 
    (
        SELECT 
            tenant_id, 
            min(month) AS first_month
        FROM callmeter.statement_lines 
        GROUP BY tenant_id
    ) 
    UNION ALL
    SELECT 
        addMonths(last_month, 1) AS month, 
        toUInt64(0) AS gained, 
        toUInt64(1) AS lost
    FROM 
    (
        SELECT 
            tenant_id, 
            max(month) AS last_month
        FROM callmeter.statement_lines 
        GROUP BY tenant_id
    ) 
    WHERE addMonths(last_month, 1) <= 
    (
        SELECT max(month)
        FROM callmeter.statement_lines 
    )
) 
GROUP BY month
