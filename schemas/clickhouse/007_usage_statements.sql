-- Usage statements (CONTRACT section 10): one row per charge line of a closed usage period,
-- every row of a statement carrying its statement_id, plan, currency and total.
-- statement_id is a deterministic function of (tenant_id, period_start): a re-emitted
-- statement collapses onto the same rows. meter and item are '' when a line has none.
CREATE TABLE IF NOT EXISTS callmeter.usage_statements
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
ORDER BY (tenant_id, period_start, line_kind, meter, item);
