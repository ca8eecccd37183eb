//! Integration tests against real tansu and real ClickHouse (see `common`).

mod common;
mod faults;
mod malformed;
mod pricing;
mod prometheus;
mod realdata;
#[cfg(feature = "testkit")]
mod stripe;
