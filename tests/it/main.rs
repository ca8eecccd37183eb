//! Integration tests against real tansu and real ClickHouse (see `common`).

mod common;
mod malformed;
mod pricing;
mod realdata;
