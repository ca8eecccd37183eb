-- Internal: per source partition, the position (next offset) covered by the last flush, the
-- event-time watermark (microseconds) and the largest Kafka timestamp (milliseconds) at that
-- position. Written after the rows of a flush and before the offset commit.
CREATE TABLE IF NOT EXISTS callmeter.partition_checkpoints
(
    source_topic String,
    source_partition UInt32,
    position Int64,
    watermark_us Int64,
    max_ts_ms Int64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(position)
ORDER BY (source_topic, source_partition);
