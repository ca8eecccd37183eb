-- Subscription events (CONTRACT section 10): one row per applied subscription.updated or
-- subscription.canceled. `plan` is the plan from effective_at on (for a cancellation, the
-- plan left), `addons` a JSON object of add-on id -> units, `billing_cycle` "monthly" or
-- "yearly", `canceled` 1 for a cancellation; `through_offset` is the source partition's
-- offset after the event. Written in the flush that covers the event, before the partition
-- checkpoint; read back on assignment.
CREATE TABLE IF NOT EXISTS callmeter.subscriptions
(
    tenant_id String,
    plan String,
    addons String,
    billing_cycle String,
    effective_at DateTime('UTC'),
    canceled UInt8,
    event_id String,
    source_partition UInt32,
    through_offset Int64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(through_offset)
ORDER BY (tenant_id, effective_at, event_id);
