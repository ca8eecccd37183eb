-- Internal: what a subscription event carries that `subscriptions` has no column for: the
-- time zone and anchor day of a tenant it created ('' and 0 when not given) and the Stripe
-- customer it sets ('' when unchanged). Same key and version as `subscriptions`, written
-- just before it in every flush.
CREATE TABLE IF NOT EXISTS callmeter.subscription_details
(
    tenant_id String,
    effective_at DateTime('UTC'),
    event_id String,
    timezone String,
    anchor_day UInt8,
    stripe_customer_id String,
    source_partition UInt32,
    through_offset Int64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
ORDER BY (tenant_id, effective_at, event_id);
