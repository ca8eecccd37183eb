//! Validation of the runtime settings (`[kafka]`, `[clickhouse]`, `[pipeline]`, `[api]`,
//! `[metrics]`, `[stripe]`, `[pricing]`): values in range, names well formed, and Stripe
//! meters that exist in the compiled catalog. Each rejection is a [`ConfigError`] with the
//! key path.

use chrono::DateTime;
use rust_decimal::Decimal;

use super::{ConfigError, Settings};
use crate::catalog::Catalog;

/// The runtime settings, each value on its own.
pub(super) fn runtime(s: &Settings) -> Result<(), ConfigError> {
    let nonempty = |key: &str, v: &str| {
        if v.trim().is_empty() {
            Err(ConfigError::new(key, "must not be empty"))
        } else {
            Ok(())
        }
    };
    nonempty("kafka.brokers", &s.kafka.brokers)?;
    nonempty("kafka.group_id", &s.kafka.group_id)?;
    nonempty("kafka.topic", &s.kafka.topic)?;
    nonempty("kafka.dlq_topic", &s.kafka.dlq_topic)?;
    nonempty("kafka.alerts_topic", &s.kafka.alerts_topic)?;
    nonempty("kafka.statements_topic", &s.kafka.statements_topic)?;
    if s.kafka.dlq_topic == s.kafka.topic {
        return Err(ConfigError::new(
            "kafka.dlq_topic",
            "must differ from kafka.topic",
        ));
    }
    if s.kafka.statements_topic == s.kafka.topic {
        return Err(ConfigError::new(
            "kafka.statements_topic",
            "must differ from kafka.topic",
        ));
    }
    if let Some(id) = &s.kafka.group_instance_id {
        nonempty("kafka.group_instance_id", id)?;
    }
    kafka_properties(s)?;
    if !(s.clickhouse.url.starts_with("http://") || s.clickhouse.url.starts_with("https://")) {
        return Err(ConfigError::new(
            "clickhouse.url",
            "must be an http:// or https:// URL of ClickHouse's HTTP interface",
        ));
    }
    if s.clickhouse.database.is_empty()
        || !s
            .clickhouse
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ConfigError::new(
            "clickhouse.database",
            "must be a non-empty identifier of [A-Za-z0-9_]",
        ));
    }
    let p = &s.pipeline;
    if p.flush_interval.is_zero() {
        return Err(ConfigError::new(
            "pipeline.flush_interval",
            "must be positive",
        ));
    }
    if p.max_dirty_rows == 0 {
        return Err(ConfigError::new(
            "pipeline.max_dirty_rows",
            "must be positive",
        ));
    }
    if p.max_event_bytes < 256 {
        return Err(ConfigError::new(
            "pipeline.max_event_bytes",
            "must be at least 256",
        ));
    }
    if p.max_dedup_entries == 0 {
        return Err(ConfigError::new(
            "pipeline.max_dedup_entries",
            "must be positive",
        ));
    }
    if p.max_memory.0 < 1 << 20 {
        return Err(ConfigError::new(
            "pipeline.max_memory",
            "must be at least 1MiB",
        ));
    }
    if p.shutdown_timeout.is_zero() {
        return Err(ConfigError::new(
            "pipeline.shutdown_timeout",
            "must be positive",
        ));
    }
    if s.clickhouse.request_timeout.is_zero() {
        return Err(ConfigError::new(
            "clickhouse.request_timeout",
            "must be positive",
        ));
    }
    if s.clickhouse.permanent_error_retry.is_zero() {
        return Err(ConfigError::new(
            "clickhouse.permanent_error_retry",
            "must be positive",
        ));
    }
    if s.api.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(ConfigError::new(
            "api.listen",
            format!(
                "`{}` is not an address such as 127.0.0.1:8080",
                s.api.listen
            ),
        ));
    }
    if s.api.tokens.iter().any(|t| t.is_empty()) {
        return Err(ConfigError::new("api.tokens", "tokens must not be empty"));
    }
    if s.api.admin_tokens.iter().any(|t| t.is_empty()) {
        return Err(ConfigError::new(
            "api.admin_tokens",
            "tokens must not be empty",
        ));
    }
    let secret = &s.api.portal_secret;
    if !secret.is_empty() && secret.len() < super::settings::PORTAL_SECRET_MIN_BYTES {
        return Err(ConfigError::new(
            "api.portal_secret",
            format!(
                "must be empty (no portal) or at least {} bytes, e.g. `openssl rand -hex 32`",
                super::settings::PORTAL_SECRET_MIN_BYTES
            ),
        ));
    }
    if let Some(u) = &s.api.portal_upgrade_url
        && !((u.starts_with("https://") || u.starts_with("http://"))
            && u.len() > "https://".len()
            && !u.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ConfigError::new(
            "api.portal_upgrade_url",
            "must be an http:// or https:// URL without spaces",
        ));
    }
    let st = &s.stripe;
    if st.api != "v1" && st.api != "v2" {
        return Err(ConfigError::new("stripe.api", "must be \"v1\" or \"v2\""));
    }
    if st.batch_size == 0 || (st.api == "v2" && st.batch_size > 100) {
        return Err(ConfigError::new(
            "stripe.batch_size",
            "must be 1..=100 (Stripe's meter event stream takes at most 100 events per request)",
        ));
    }
    if st.rate_limit == 0 {
        return Err(ConfigError::new("stripe.rate_limit", "must be positive"));
    }
    if s.pricing.wallet_refresh_interval.is_zero() {
        return Err(ConfigError::new(
            "pricing.wallet_refresh_interval",
            "must be positive",
        ));
    }
    if st.enabled && st.report_interval.is_zero() {
        return Err(ConfigError::new(
            "stripe.report_interval",
            "must be positive",
        ));
    }
    for (key, url) in [
        ("stripe.api_base", &st.api_base),
        ("stripe.meter_events_base", &st.meter_events_base),
    ] {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(key, "must be an http:// or https:// URL"));
        }
    }
    if st.request_timeout.is_zero() {
        return Err(ConfigError::new(
            "stripe.request_timeout",
            "must be positive",
        ));
    }
    if let Some(clock) = &st.clock {
        if DateTime::parse_from_rfc3339(clock).is_err() {
            return Err(ConfigError::new(
                "stripe.clock",
                format!("`{clock}` is not an RFC 3339 instant"),
            ));
        }
        let real = |u: &str| {
            let host = u.split("://").nth(1).unwrap_or("").split(['/', ':']).next();
            host.is_some_and(|h| h == "stripe.com" || h.ends_with(".stripe.com"))
        };
        if real(&st.api_base) || real(&st.meter_events_base) {
            return Err(ConfigError::new(
                "stripe.clock",
                "is for the Stripe test server only; it cannot be used with a stripe.com endpoint",
            ));
        }
    }
    Ok(())
}

/// `[kafka.properties]` overrides that would break exactly-once counting: offsets
/// committed or stored by librdkafka behind the pipeline's back, or reading aborted
/// transactions.
fn kafka_properties(s: &Settings) -> Result<(), ConfigError> {
    const REFUSED: [(&str, &str, &str); 3] = [
        (
            "enable.auto.commit",
            "true",
            "offsets are committed only after ClickHouse holds everything below them",
        ),
        (
            "enable.auto.offset.store",
            "true",
            "offsets are stored only after ClickHouse holds everything below them",
        ),
        (
            "isolation.level",
            "read_uncommitted",
            "aborted transactions would be counted",
        ),
    ];
    for (key, bad, why) in REFUSED {
        if let Some(v) = s.kafka.properties.get(key)
            && v.0.trim().eq_ignore_ascii_case(bad)
        {
            return Err(ConfigError::new(
                format!("kafka.properties.{key}"),
                format!("`{bad}` breaks exactly-once counting ({why}); remove the override"),
            ));
        }
    }
    Ok(())
}

/// An ISO 4217 code: three upper-case letters.
pub(super) fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// `[stripe.meters.<name>]`: each names a meter of the catalog, an event name and a positive
/// multiplier.
pub(super) fn stripe_meters(s: &Settings, catalog: &Catalog) -> Result<(), ConfigError> {
    for (meter, m) in &s.stripe.meters {
        if catalog.meter_id(meter).is_none() {
            return Err(ConfigError::new(
                format!("stripe.meters.{meter}"),
                "no such meter",
            ));
        }
        if m.event_name.is_empty() {
            return Err(ConfigError::new(
                format!("stripe.meters.{meter}.event_name"),
                "must not be empty",
            ));
        }
        if m.multiplier.0 <= Decimal::ZERO {
            return Err(ConfigError::new(
                format!("stripe.meters.{meter}.multiplier"),
                "must be positive",
            ));
        }
    }
    Ok(())
}
