//! Where the pipeline reads: Kafka.

pub mod kafka;
