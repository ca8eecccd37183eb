-- Usage alerts (80%, 100%, overage, overage_cap, wallet_low, wallet_empty). alert_id is a
-- deterministic function of (tenant, meter, period_start, kind): a repeated alert collapses.
CREATE TABLE IF NOT EXISTS callmeter.usage_alerts
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
ORDER BY alert_id;
