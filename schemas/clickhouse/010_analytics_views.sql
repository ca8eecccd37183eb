-- Views for analysts over usage_statements (definitions in schemas/clickhouse/README.md).
-- Every view reads statement_lines: the lines of each statement once (FINAL), with the
-- statement's billing month: the UTC calendar month of period_start + 12 hours, which is the
-- month of the period's first local day for every time zone within 12 hours of UTC (a period
-- starting at 00:00 in Paris, 23:00 UTC the day before, counts for the month it starts in).
CREATE VIEW IF NOT EXISTS callmeter.statement_lines AS
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
FROM callmeter.usage_statements FINAL;

-- Monthly recurring revenue per month and currency: the base fee and add-on lines (the
-- charges that recur each period whatever the usage), and the tenants paying them.
CREATE VIEW IF NOT EXISTS callmeter.mrr_monthly AS
SELECT
    month,
    currency,
    sum(amount) AS mrr,
    uniqExact(tenant_id) AS tenants
FROM callmeter.statement_lines
WHERE line_kind IN ('base_fee', 'addon')
GROUP BY month, currency;

-- Revenue per month, currency, plan and line kind, with the tenants billed such a line.
CREATE VIEW IF NOT EXISTS callmeter.revenue_by_plan_kind AS
SELECT
    month,
    currency,
    plan,
    line_kind,
    sum(amount) AS revenue,
    uniqExact(tenant_id) AS tenants
FROM callmeter.statement_lines
WHERE line_kind != ''
GROUP BY month, currency, plan, line_kind;

-- Average revenue per tenant per month and currency: the statements' totals over the tenants
-- with a statement (a statement without charges counts as a tenant with 0). arpu is the
-- quotient to 9 decimals, truncated.
CREATE VIEW IF NOT EXISTS callmeter.arpu_monthly AS
SELECT
    month,
    currency,
    sum(amount) AS revenue,
    uniqExact(tenant_id) AS tenants,
    sum(amount) / uniqExact(tenant_id) AS arpu
FROM callmeter.statement_lines
GROUP BY month, currency;

-- Tenants gained and lost per month: a tenant is gained in the month of its first statement
-- and lost in the month after its last one, counted once some tenant has a statement in that
-- month (before, the month has not closed yet). Gaps between the first and last statement
-- are not counted.
CREATE VIEW IF NOT EXISTS callmeter.tenants_gained_lost AS
SELECT
    month,
    sum(gained) AS gained,
    sum(lost) AS lost
FROM
(
    SELECT first_month AS month, toUInt64(1) AS gained, toUInt64(0) AS lost
    FROM
    (
        SELECT tenant_id, min(month) AS first_month
        FROM callmeter.statement_lines
        GROUP BY tenant_id
    )
    UNION ALL
    SELECT addMonths(last_month, 1) AS month, toUInt64(0) AS gained, toUInt64(1) AS lost
    FROM
    (
        SELECT tenant_id, max(month) AS last_month
        FROM callmeter.statement_lines
        GROUP BY tenant_id
    )
    WHERE addMonths(last_month, 1) <= (SELECT max(month) FROM callmeter.statement_lines)
)
GROUP BY month;
