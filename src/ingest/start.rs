//! Where a partition starts after its restore (CONTRACT section 5). The start comes from the
//! partition's ClickHouse checkpoint alone, never from the group's committed offset: when
//! ClickHouse lost data (a dropped database, an old backup), the checkpoint is missing or
//! older and the partition is read again from there, or from the earliest offset Kafka
//! retains. A checkpoint beyond the topic's high watermark (the topic was re-created or
//! truncated) or below its low watermark (retention deleted events never counted) is never
//! skipped silently: the partition stays unready with a [`StartError`], unless
//! `pipeline.accept_retention_gaps` says to count what is retained after a gap.
//!
//! rdkafka exposes no topic id in its safe API, so a re-created topic that already holds more
//! events than the checkpoint's position is not detected; the watermark rules are all there is.

use crate::state::Checkpoint;

/// Why a partition cannot start: the message names the partition, its checkpoint and the
/// topic's offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(
        "partition {partition}: checkpoint at offset {checkpoint} lies beyond the topic's \
         offsets {low}..{high} (the topic was re-created or truncated): its stored totals \
         cannot be continued (README, operations: a partition is unready)"
    )]
    BeyondHighWatermark {
        partition: i32,
        checkpoint: i64,
        low: i64,
        high: i64,
    },
    #[error(
        "partition {partition}: checkpoint at offset {checkpoint} lies below the topic's \
         offsets {low}..{high}: Kafka no longer retains {lost} events that were never \
         counted (retention gap); set pipeline.accept_retention_gaps = true to count what \
         is retained"
    )]
    RetentionGap {
        partition: i32,
        checkpoint: i64,
        low: i64,
        high: i64,
        lost: i64,
    },
}

/// The first offset to count from (before the dedup-window replay below a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No checkpoint: every retained event is counted, from the low watermark.
    Earliest(i64),
    /// From the checkpoint (events below it are already counted).
    Checkpoint(i64),
    /// Retention gap accepted: count from the low watermark (events between the
    /// checkpoint and it are lost).
    AfterGap(i64),
}

/// Decides a partition's start from its checkpoint and the topic's `low..high` offsets.
///
/// Errors: [`StartError`] when the checkpoint lies beyond `high`, or below `low` without
/// `accept_gaps`.
pub fn decide(
    partition: i32,
    checkpoint: Option<&Checkpoint>,
    low: i64,
    high: i64,
    accept_gaps: bool,
) -> Result<Start, StartError> {
    let low = low.max(0);
    let Some(c) = checkpoint else {
        return Ok(Start::Earliest(low));
    };
    if c.position > high {
        return Err(StartError::BeyondHighWatermark {
            partition,
            checkpoint: c.position,
            low,
            high,
        });
    }
    if c.position < low {
        if accept_gaps {
            return Ok(Start::AfterGap(low));
        }
        return Err(StartError::RetentionGap {
            partition,
            checkpoint: c.position,
            low,
            high,
            lost: low - c.position,
        });
    }
    Ok(Start::Checkpoint(c.position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(position: i64) -> Checkpoint {
        Checkpoint {
            partition: 0,
            position,
            watermark_us: 0,
            max_ts_ms: 0,
        }
    }

    #[test]
    fn without_checkpoint_starts_at_the_low_watermark() {
        assert_eq!(decide(0, None, 0, 10, false), Ok(Start::Earliest(0)));
        assert_eq!(decide(0, None, 7, 10, false), Ok(Start::Earliest(7)));
        assert_eq!(decide(0, None, -1, -1, false), Ok(Start::Earliest(0)));
    }

    #[test]
    fn checkpoint_within_the_offsets_is_the_start() {
        assert_eq!(
            decide(0, Some(&ck(5)), 0, 10, false),
            Ok(Start::Checkpoint(5))
        );
        assert_eq!(
            decide(0, Some(&ck(10)), 0, 10, false),
            Ok(Start::Checkpoint(10))
        );
        assert_eq!(
            decide(0, Some(&ck(3)), 3, 10, false),
            Ok(Start::Checkpoint(3))
        );
    }

    #[test]
    fn checkpoint_beyond_high_watermark_is_an_error_even_when_gaps_are_accepted() {
        let e = decide(2, Some(&ck(11)), 0, 4, true).unwrap_err();
        assert!(matches!(e, StartError::BeyondHighWatermark { .. }));
        let msg = e.to_string();
        assert!(msg.contains("partition 2") && msg.contains("11") && msg.contains("0..4"));
    }

    #[test]
    fn retention_gap_is_an_error_unless_accepted() {
        let e = decide(1, Some(&ck(3)), 8, 20, false).unwrap_err();
        assert_eq!(
            e,
            StartError::RetentionGap {
                partition: 1,
                checkpoint: 3,
                low: 8,
                high: 20,
                lost: 5
            }
        );
        assert_eq!(decide(1, Some(&ck(3)), 8, 20, true), Ok(Start::AfterGap(8)));
    }
}
