//! Integration tests against a real broker (Apache Kafka, or tansu) and real ClickHouse (see
//! `common`).

mod common;
mod faults;
mod hostile;
mod malformed;
mod outbox;
mod portal;
mod pricing;
mod prometheus;
mod realdata;
mod rebalance;
mod sink;
mod startpos;
mod statements;
#[cfg(feature = "testkit")]
mod stripe;
mod subscriptions;
mod views;
