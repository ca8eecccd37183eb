ATTACH TABLE partition_checkpoints
(
    source_topic String, 
    source_partition UInt32, 
    position Int64, 
    watermark_us Int64, 
    max_ts_ms Int64, 
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(position)
ORDER BY (source_topic, source_partition)
SETTINGS index_granularity = 8192
