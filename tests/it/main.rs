//! Integration tests against a real broker (Apache Kafka, or tansu) and real ClickHouse (see
//! `common`).

mod common;
mod faults;
mod malformed;
mod pricing;
mod prometheus;
mod realdata;
mod rebalance;
mod sink;
#[cfg(feature = "testkit")]
mod stripe;
