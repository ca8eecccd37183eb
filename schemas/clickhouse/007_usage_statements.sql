-- Period-close usage statements (CONTRACT section 10): one row per charge line of a closed
-- usage period, with the statement's total repeated on each line. statement_id is a
-- deterministic function of (tenant_id, period_start), so a statement made again after a
-- crash is the same rows and collapses under FINAL. A statement without charges is one row
-- with line_kind = '' (quantity, amount and total 0). meter and item are '' when the line has
-- none. closed_at = period_end + pipeline.late_event_grace.
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
