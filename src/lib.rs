//! callmeter: a stream-processing metering pipeline for voice platforms.
//!
//! Call events (CloudEvents on Kafka) are aggregated per tenant, meter and usage period,
//! priced against each tenant's plan, alerted on at thresholds, flushed to ClickHouse exactly
//! once, and reported to Stripe. See `CONTRACT.md` for the external interfaces.

pub mod alerts;
pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod event;
pub mod gauges;
pub mod health;
pub mod ingest;
pub mod meter;
pub mod period;
pub mod pricing;
pub mod sink;
pub mod state;
pub mod stripe;
pub mod telemetry;
pub mod usage;
pub mod wallet;
