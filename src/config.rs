//! Configuration: the TOML file of CONTRACT.md sections 2, 3 and 9, with `CALLMETER_...`
//! environment overrides (`CALLMETER_` + key path upper-cased, `__` between levels).
//!
//! Loading is two steps, without I/O beyond reading the file: [`Settings::load`] deserializes
//! (unknown keys are rejected with their path), then [`Settings::validate`] checks every
//! cross-reference and value and compiles the meter, plan and tenant tables into a [`Catalog`].
//! Every rejection is a [`ConfigError`] naming the key path and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::meter::{Aggregation, FieldPath, MeterDef, MeterId, Rounding, WhereValue};
use crate::pricing::{
    Addon, BillingCycle, Included, Plan, PlanChange, PlanMeter, Tenant, Threshold, Tier, TiersMode,
    WalletPolicy,
};

/// A rejected configuration: the key path (`plans.starter.currency`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted key path in the TOML file.
    pub key: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A decimal written in the config as a string (`"0.22"`) or an integer (`60000`).
/// Floats are accepted through their shortest decimal spelling (environment overrides
/// such as `CALLMETER_PLANS__STARTER__BASE_FEE=79.00` arrive as floats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Dec(#[serde(with = "rust_decimal::serde::str")] pub Decimal);

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string such as \"12.50\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dec, E> {
                Decimal::from_str(s.trim())
                    .or_else(|_| Decimal::from_scientific(s.trim()))
                    .map(|d| Dec(d.normalize()))
                    .map_err(|_| E::custom(format!("`{s}` is not a decimal number")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dec, E> {
                Ok(Dec(Decimal::from(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dec, E> {
                Ok(Dec(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dec, E> {
                if !v.is_finite() {
                    return Err(E::custom("not a finite number"));
                }
                self.visit_str(&format!("{v}"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A quantity that may be `"unlimited"` (or `"inf"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Quantity {
    Finite(Decimal),
    Unlimited,
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string or \"unlimited\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Quantity, E> {
                match s.trim().to_ascii_lowercase().as_str() {
                    "unlimited" | "inf" | "infinity" => Ok(Quantity::Unlimited),
                    _ => Decimal::from_str(s.trim())
                        .map(|d| Quantity::Finite(d.normalize()))
                        .map_err(|_| {
                            E::custom(format!("`{s}` is neither a decimal nor \"unlimited\""))
                        }),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::Finite(Decimal::from(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity::Finite(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                if v.is_infinite() && v > 0.0 {
                    return Ok(Quantity::Unlimited);
                }
                self.visit_str(&format!("{v}"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Everything in the configuration file, as written (before validation).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub clickhouse: ClickHouseSettings,
    pub pipeline: PipelineSettings,
    pub api: ApiSettings,
    pub metrics: MetricsSettings,
    pub stripe: StripeSettings,
    pub pricing: PricingSettings,
    /// Configured meters (CONTRACT section 2), by name.
    pub meters: BTreeMap<String, MeterSettings>,
    /// Plans (CONTRACT section 3), by id.
    pub plans: BTreeMap<String, PlanSettings>,
    /// Tenants, by tenant id (the CloudEvents `subject`).
    pub tenants: BTreeMap<String, TenantSettings>,
}

/// `[kafka]`: brokers, consumer group and topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    /// Static membership (KIP-345): unique per instance; a restarted instance gets its
    /// partitions back without waiting for the session timeout.
    pub group_instance_id: Option<String>,
    pub topic: String,
    pub dlq_topic: String,
    pub alerts_topic: String,
    /// librdkafka properties passed through unchanged (`security.protocol`, `sasl.*`, ...).
    pub properties: BTreeMap<String, ScalarString>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "callmeter".into(),
            group_instance_id: None,
            topic: "call-events".into(),
            dlq_topic: "call-events.dlq".into(),
            alerts_topic: "usage-alerts".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// A scalar config value kept as its string spelling (librdkafka takes strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum S {
            Str(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(ScalarString(match S::deserialize(d)? {
            S::Str(s) => s,
            S::Int(i) => i.to_string(),
            S::Float(f) => f.to_string(),
            S::Bool(b) => b.to_string(),
        }))
    }
}

/// `[clickhouse]`: where rollups, alerts and (optionally) raw events are stored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSettings {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Also store every counted event in `call_events` (for audits and `callmeter reconcile`).
    pub raw_events: bool,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "callmeter".into(),
            user: "default".into(),
            password: String::new(),
            raw_events: false,
        }
    }
}

/// `[pipeline]`: flushing, dedup, lateness and memory bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// How often dirty rollups are written to ClickHouse and offsets committed.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Flush early when this many rollup rows are dirty; consumption pauses while twice
    /// this many are dirty (e.g. ClickHouse is down).
    pub max_dirty_rows: usize,
    /// Duplicates by (`subject`, `source`, `id`) are dropped within this window of arrival time.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How long after its end a usage period still accepts late events (event time,
    /// against the partition watermark).
    #[serde(with = "humantime_serde")]
    pub late_event_grace: Duration,
    /// Events whose `time` is further than this ahead of the clock are rejected.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Events larger than this (bytes) are rejected as `invalid_event`. CloudEvents
    /// intermediaries must forward events up to 64 KiB.
    pub max_event_bytes: usize,
    /// Upper bound on dedup entries held per instance; consumption pauses at the bound
    /// until entries age out of the window.
    pub max_dedup_entries: usize,
    /// Deadline for the final flush on shutdown and for the flush on partition revocation.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(5),
            max_dirty_rows: 100_000,
            dedup_window: Duration::from_secs(3600),
            late_event_grace: Duration::from_secs(48 * 3600),
            max_clock_skew: Duration::from_secs(300),
            max_event_bytes: 64 * 1024,
            max_dedup_entries: 50_000_000,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// `[api]`: the HTTP listener and bearer tokens for `/v1/*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub listen: String,
    pub tokens: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: vec![],
        }
    }
}

/// `[metrics]`: Prometheus exposition options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Export per-tenant usage gauges (`callmeter_tenant_usage_ratio`, ...) for at most this
    /// many tenants; above it the per-tenant series are not exported (0 turns them off).
    pub tenant_gauges_max: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            tenant_gauges_max: 1000,
        }
    }
}

/// `[stripe]`: usage reporting to Stripe meters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeSettings {
    pub enabled: bool,
    /// `"v2"` (meter event stream) or `"v1"` (`/v1/billing/meter_events`).
    pub api: String,
    pub api_base: String,
    pub meter_events_base: String,
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// Events per request (Stripe's v2 stream takes at most 100).
    pub batch_size: usize,
    /// Requests per second sent to Stripe.
    pub rate_limit: u32,
    /// `Stripe-Version` header.
    pub api_version: String,
    /// Per meter: the Stripe meter's `event_name` and the multiplier.
    pub meters: BTreeMap<String, StripeMeterSettings>,
    /// Deadline of one HTTP request to Stripe; a request that takes longer is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Test and demo only: report as if the wall clock had read this RFC 3339 instant when
    /// the process started (it then runs on from there). Lets a replay of historical data
    /// be reported to the Stripe test server inside Stripe's 35-day window. Refused with a
    /// Stripe (`stripe.com`) endpoint.
    pub clock: Option<String>,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            api: "v2".into(),
            api_base: "https://api.stripe.com".into(),
            meter_events_base: "https://meter-events.stripe.com".into(),
            report_interval: Duration::from_secs(10),
            batch_size: 100,
            rate_limit: 50,
            api_version: "2025-03-31.preview".into(),
            meters: BTreeMap::new(),
            request_timeout: Duration::from_secs(30),
            clock: None,
        }
    }
}

/// `[stripe.meters.<meter>]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripeMeterSettings {
    pub event_name: String,
    /// Value sent = whole units of (meter value x multiplier).
    #[serde(default = "one")]
    pub multiplier: Dec,
}

fn one() -> Dec {
    Dec(Decimal::ONE)
}

/// `[pricing]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSettings {
    /// Plan for tenants that are not listed; without it their events go to the DLQ.
    /// A `legacy` plan cannot be the default (it is not offered to new tenants).
    pub default_plan: Option<String>,
    /// How often `callmeter run` checks the config file's modification time and reloads
    /// plans, tenants and API tokens when it changed (`"0s"`: only on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// How often prepaid wallet balances are recomputed (they are also recomputed for a
    /// tenant on every entitlement request).
    #[serde(with = "humantime_serde")]
    pub wallet_refresh_interval: Duration,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            default_plan: None,
            watch_interval: Duration::from_secs(3),
            wallet_refresh_interval: Duration::from_secs(2),
        }
    }
}

/// `[meters.<name>]` (CONTRACT section 2).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSettings {
    pub event_type: String,
    #[serde(default = "default_aggregation")]
    pub aggregation: String,
    pub value: Option<String>,
    pub divisor: Option<Dec>,
    #[serde(default = "default_rounding")]
    pub rounding: String,
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, toml::Value>,
}

fn default_aggregation() -> String {
    "sum".into()
}
fn default_rounding() -> String {
    "none".into()
}

/// `[plans.<id>]` (CONTRACT section 3).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    pub display_name: Option<String>,
    pub currency: Option<String>,
    pub base_fee: Option<Dec>,
    pub yearly_discount: Option<Dec>,
    pub legacy: bool,
    pub revenue_share: Option<Dec>,
    pub alert_thresholds: Option<Vec<Dec>>,
    pub meters: BTreeMap<String, PlanMeterSettings>,
    pub addons: BTreeMap<String, AddonSettings>,
    pub wallet: Option<PlanWalletSettings>,
}

/// `[plans.<id>.meters.<meter>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanMeterSettings {
    pub included: Option<Quantity>,
    /// A one-time allowance, not renewed each period (consumed by the tenant's first period).
    pub included_once: Option<Dec>,
    pub overage_rate: Option<Dec>,
    pub overage_cap: Option<Dec>,
    pub hard_limit: bool,
    pub rate: Option<Dec>,
    pub tiers_mode: Option<String>,
    pub tiers: Option<Vec<TierSettings>>,
}

/// One tier: `{ up_to = "500", unit_price = "0" }`; `up_to = "inf"` for the last.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    pub up_to: Quantity,
    pub unit_price: Dec,
    #[serde(default)]
    pub flat_fee: Option<Dec>,
}

/// `[plans.<id>.addons.<addon>]`: adds `included` to `meter`'s limit per unit, for `price`
/// per unit per period. Without `meter` it is a priced feature (a phone number, recording).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddonSettings {
    pub meter: Option<String>,
    pub included: Option<Dec>,
    pub price: Dec,
}

/// `[plans.<id>.wallet]`: a wallet (seed 001). Its balance is the sum of the tenant's
/// `wallet.topped_up` amounts and monthly grants less its usage charges (every charge line
/// but the base fee), deducted as they accrue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanWalletSettings {
    /// `true` (default): entitlement says no once the balance is zero or below. `false`: the
    /// balance is kept and alerted on, but usage is never refused.
    pub prepaid: bool,
    /// Credit granted at the start of every usage period.
    pub monthly_grant: Option<Dec>,
    /// `wallet_low` fires when the balance falls below this.
    pub low_balance: Option<Dec>,
}

impl Default for PlanWalletSettings {
    fn default() -> Self {
        Self {
            prepaid: true,
            monthly_grant: None,
            low_balance: None,
        }
    }
}

/// `[tenants.<id>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    pub plan: Option<String>,
    pub timezone: Option<String>,
    pub anchor_day: Option<i64>,
    pub billing_cycle: Option<String>,
    pub addons: BTreeMap<String, i64>,
    pub stripe_customer_id: Option<String>,
    pub plan_changes: Vec<PlanChangeSettings>,
    /// Overrides the plan's `wallet.low_balance` for this tenant.
    pub wallet_low_balance: Option<Dec>,
}

/// `[[tenants.<id>.plan_changes]]`: from `at` on, `plan` applies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeSettings {
    pub at: String,
    pub plan: String,
}

/// The validated, compiled pricing catalog: meters, plans and tenants.
#[derive(Debug)]
pub struct Catalog {
    /// All meters, built-in first; a [`MeterId`] indexes this.
    pub meters: Vec<MeterDef>,
    /// Meters fed by each event type.
    pub by_event_type: BTreeMap<String, Vec<MeterId>>,
    pub plans: BTreeMap<String, Arc<Plan>>,
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    pub default_plan: Option<Arc<Plan>>,
}

impl Catalog {
    pub fn meter_id(&self, name: &str) -> Option<MeterId> {
        self.meters
            .iter()
            .position(|m| &*m.name == name)
            .map(|i| MeterId(i as u16))
    }

    pub fn meter(&self, id: MeterId) -> &MeterDef {
        &self.meters[id.0 as usize]
    }

    /// Whether a running pipeline can switch from `self` to `next` without a restart: the
    /// meters must be the same (rows in memory are keyed by meter index). Errors name what
    /// differs.
    pub fn reloadable_to(&self, next: &Catalog) -> Result<(), ConfigError> {
        if self.meters == next.meters {
            return Ok(());
        }
        let names = |c: &Catalog| {
            c.meters
                .iter()
                .map(|m| m.name.to_string())
                .collect::<Vec<_>>()
        };
        let changed = next
            .meters
            .iter()
            .filter(|m| !self.meters.contains(m))
            .map(|m| m.name.to_string())
            .chain(
                self.meters
                    .iter()
                    .filter(|m| !next.meters.iter().any(|n| n.name == m.name))
                    .map(|m| m.name.to_string()),
            )
            .collect::<Vec<_>>();
        Err(ConfigError::new(
            "meters",
            format!(
                "meter definitions changed ({}; running: {}): restart callmeter to apply them",
                changed.join(", "),
                names(self).join(", ")
            ),
        ))
    }

    /// The tenant as configured, or a tenant on the default plan (UTC, anchor day 1).
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.tenants.get(id) {
            return Some(t.clone());
        }
        self.default_plan
            .as_ref()
            .map(|p| Arc::new(Tenant::on_default_plan(id, p.clone())))
    }
}

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub catalog: Arc<Catalog>,
}

impl Settings {
    /// Reads `path` and applies `CALLMETER_...` environment overrides.
    ///
    /// Errors: unreadable file, TOML syntax, unknown keys or wrong types, each with its key path.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::new(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        Self::from_figment(Figment::new().merge(Toml::file_exact(path)))
    }

    /// Parses TOML text (plus environment overrides); for tests and `check-config`.
    pub fn from_toml_str(text: &str) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(f: Figment) -> Result<Settings, ConfigError> {
        // CALLMETER_LOG_FORMAT is read before the configuration (telemetry::init_logging).
        let f = f.merge(
            Env::prefixed("CALLMETER_")
                .ignore(&["log_format"])
                .split("__"),
        );
        f.extract::<Settings>().map_err(|e| {
            let key = if e.path.is_empty() {
                "<root>".to_string()
            } else {
                e.path.join(".")
            };
            ConfigError::new(key, e.kind.to_string())
        })
    }

    /// Validates everything and compiles the catalog.
    pub fn validate(self) -> Result<Config, ConfigError> {
        validate_runtime(&self)?;
        let catalog = Arc::new(build_catalog(&self)?);
        for (meter, m) in &self.stripe.meters {
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
        Ok(Config {
            settings: self,
            catalog,
        })
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Settings::load(path)?.validate()
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Settings::from_toml_str(text)?.validate()
    }
}

fn validate_runtime(s: &Settings) -> Result<(), ConfigError> {
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
    if s.kafka.dlq_topic == s.kafka.topic {
        return Err(ConfigError::new(
            "kafka.dlq_topic",
            "must differ from kafka.topic",
        ));
    }
    if let Some(id) = &s.kafka.group_instance_id {
        nonempty("kafka.group_instance_id", id)?;
    }
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

fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

fn build_catalog(s: &Settings) -> Result<Catalog, ConfigError> {
    let mut meters = MeterDef::builtins();
    for (name, m) in &s.meters {
        let key = format!("meters.{name}");
        if meters.iter().any(|b| &*b.name == name) {
            return Err(ConfigError::new(
                key,
                "is a built-in meter and cannot be redefined",
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(ConfigError::new(key, "meter names use [A-Za-z0-9_.-]"));
        }
        if m.event_type.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.event_type"),
                "must not be empty",
            ));
        }
        let aggregation = match m.aggregation.as_str() {
            "sum" => Aggregation::Sum,
            "count" => Aggregation::Count,
            other => {
                return Err(ConfigError::new(
                    format!("{key}.aggregation"),
                    format!("`{other}` is not one of \"sum\", \"count\""),
                ));
            }
        };
        let rounding = match m.rounding.as_str() {
            "none" => Rounding::None,
            "ceil" => Rounding::Ceil,
            other => {
                return Err(ConfigError::new(
                    format!("{key}.rounding"),
                    format!("`{other}` is not one of \"none\", \"ceil\""),
                ));
            }
        };
        let value = match (aggregation, &m.value) {
            (Aggregation::Sum, None) => {
                return Err(ConfigError::new(
                    format!("{key}.value"),
                    "a sum meter needs the data field to sum",
                ));
            }
            (Aggregation::Sum, Some(v)) => Some(
                FieldPath::parse(v)
                    .ok_or_else(|| ConfigError::new(format!("{key}.value"), "empty field path"))?,
            ),
            (Aggregation::Count, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{key}.value"),
                    "a count meter takes no value field",
                ));
            }
            (Aggregation::Count, None) => None,
        };
        let divisor = m.divisor.map(|d| d.0).unwrap_or(Decimal::ONE);
        if divisor <= Decimal::ZERO {
            return Err(ConfigError::new(
                format!("{key}.divisor"),
                "must be positive",
            ));
        }
        if aggregation == Aggregation::Count
            && (divisor != Decimal::ONE || rounding != Rounding::None)
        {
            return Err(ConfigError::new(
                format!("{key}.divisor"),
                "a count meter takes no divisor or rounding",
            ));
        }
        let mut filters = Vec::new();
        for (field, v) in &m.filter {
            let path = FieldPath::parse(field)
                .ok_or_else(|| ConfigError::new(format!("{key}.where"), "empty field name"))?;
            let wv = match v {
                toml::Value::String(s) => WhereValue::Str(s.clone()),
                toml::Value::Integer(i) => WhereValue::Num(Decimal::from(*i)),
                toml::Value::Float(f) => {
                    WhereValue::Num(Decimal::from_str(&f.to_string()).map_err(|_| {
                        ConfigError::new(format!("{key}.where.{field}"), "bad number")
                    })?)
                }
                toml::Value::Boolean(b) => WhereValue::Bool(*b),
                _ => {
                    return Err(ConfigError::new(
                        format!("{key}.where.{field}"),
                        "filters compare with a string, number or boolean",
                    ));
                }
            };
            filters.push((path, wv));
        }
        meters.push(MeterDef {
            name: name.as_str().into(),
            event_types: vec![m.event_type.clone()],
            aggregation,
            value,
            divisor,
            rounding,
            filters,
            builtin: None,
        });
    }
    if meters.len() > u16::MAX as usize {
        return Err(ConfigError::new("meters", "too many meters"));
    }
    let mut by_event_type: BTreeMap<String, Vec<MeterId>> = BTreeMap::new();
    for (i, m) in meters.iter().enumerate() {
        for t in &m.event_types {
            by_event_type
                .entry(t.clone())
                .or_default()
                .push(MeterId(i as u16));
        }
    }
    let meter_id = |name: &str| {
        meters
            .iter()
            .position(|m| &*m.name == name)
            .map(|i| MeterId(i as u16))
    };

    let mut plans = BTreeMap::new();
    for (id, p) in &s.plans {
        plans.insert(id.clone(), Arc::new(build_plan(id, p, &meter_id)?));
    }

    let default_plan = match &s.pricing.default_plan {
        None => None,
        Some(name) => {
            let p = plans.get(name).cloned().ok_or_else(|| {
                ConfigError::new("pricing.default_plan", format!("no plan named `{name}`"))
            })?;
            if p.legacy {
                return Err(ConfigError::new(
                    "pricing.default_plan",
                    format!(
                        "plan `{name}` is legacy (grandfathered): it is not offered to new tenants"
                    ),
                ));
            }
            Some(p)
        }
    };

    let mut tenants = BTreeMap::new();
    for (id, t) in &s.tenants {
        tenants.insert(id.clone(), Arc::new(build_tenant(id, t, &plans)?));
    }

    Ok(Catalog {
        meters,
        by_event_type,
        plans,
        tenants,
        default_plan,
    })
}

fn nonneg(key: &str, d: Option<Dec>) -> Result<Option<Decimal>, ConfigError> {
    match d {
        Some(Dec(v)) if v < Decimal::ZERO => Err(ConfigError::new(key, "must not be negative")),
        Some(Dec(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

fn build_plan(
    id: &str,
    p: &PlanSettings,
    meter_id: &dyn Fn(&str) -> Option<MeterId>,
) -> Result<Plan, ConfigError> {
    let key = format!("plans.{id}");
    let currency = p
        .currency
        .clone()
        .ok_or_else(|| ConfigError::new(format!("{key}.currency"), "is required (ISO 4217)"))?;
    if !valid_currency(&currency) {
        return Err(ConfigError::new(
            format!("{key}.currency"),
            format!("`{currency}` is not an ISO 4217 code of 3 upper-case letters"),
        ));
    }
    let base_fee = nonneg(&format!("{key}.base_fee"), p.base_fee)?.unwrap_or_default();
    let yearly_discount =
        nonneg(&format!("{key}.yearly_discount"), p.yearly_discount)?.unwrap_or_default();
    if yearly_discount > Decimal::ONE {
        return Err(ConfigError::new(
            format!("{key}.yearly_discount"),
            "is a fraction between 0 and 1",
        ));
    }
    let revenue_share = nonneg(&format!("{key}.revenue_share"), p.revenue_share)?;
    if revenue_share.is_some_and(|r| r > Decimal::ONE) {
        return Err(ConfigError::new(
            format!("{key}.revenue_share"),
            "is a fraction between 0 and 1",
        ));
    }
    let thresholds = match &p.alert_thresholds {
        None => vec![
            Threshold::new(Decimal::new(8, 1)),
            Threshold::new(Decimal::ONE),
        ],
        Some(list) => {
            let mut out: Vec<Threshold> = Vec::new();
            for (i, d) in list.iter().enumerate() {
                if d.0 <= Decimal::ZERO || d.0 > Decimal::ONE {
                    return Err(ConfigError::new(
                        format!("{key}.alert_thresholds[{i}]"),
                        "thresholds are fractions in (0, 1]",
                    ));
                }
                if out.last().is_some_and(|l| l.ratio >= d.0) {
                    return Err(ConfigError::new(
                        format!("{key}.alert_thresholds"),
                        "must be strictly increasing",
                    ));
                }
                out.push(Threshold::new(d.0));
            }
            out
        }
    };

    let mut meters = BTreeMap::new();
    for (mname, m) in &p.meters {
        let mkey = format!("{key}.meters.{mname}");
        let mid = meter_id(mname)
            .ok_or_else(|| ConfigError::new(&mkey, format!("no meter named `{mname}`")))?;
        let included = match m.included {
            None => Included::None,
            Some(Quantity::Unlimited) => Included::Unlimited,
            Some(Quantity::Finite(d)) if d < Decimal::ZERO => {
                return Err(ConfigError::new(
                    format!("{mkey}.included"),
                    "must not be negative",
                ));
            }
            Some(Quantity::Finite(d)) => Included::Finite(d),
        };
        let included_once = nonneg(&format!("{mkey}.included_once"), m.included_once)?;
        let overage_rate = nonneg(&format!("{mkey}.overage_rate"), m.overage_rate)?;
        let overage_cap = nonneg(&format!("{mkey}.overage_cap"), m.overage_cap)?;
        let rate = nonneg(&format!("{mkey}.rate"), m.rate)?;
        if overage_cap.is_some() && overage_rate.is_none() {
            return Err(ConfigError::new(
                format!("{mkey}.overage_cap"),
                "needs an overage_rate",
            ));
        }
        if overage_rate.is_some()
            && !matches!(included, Included::Finite(_))
            && included_once.is_none()
        {
            return Err(ConfigError::new(
                format!("{mkey}.overage_rate"),
                "needs a finite `included` quantity to charge above",
            ));
        }
        if m.hard_limit && !matches!(included, Included::Finite(_)) && included_once.is_none() {
            return Err(ConfigError::new(
                format!("{mkey}.hard_limit"),
                "needs a finite `included` quantity",
            ));
        }
        let tiers = match (&m.tiers, &m.tiers_mode) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{mkey}.tiers"),
                    "tiers_mode is set but no tiers are",
                ));
            }
            (Some(list), mode) => {
                let mode = match mode.as_deref().unwrap_or("graduated") {
                    "graduated" => TiersMode::Graduated,
                    "volume" => TiersMode::Volume,
                    other => {
                        return Err(ConfigError::new(
                            format!("{mkey}.tiers_mode"),
                            format!("`{other}` is not one of \"graduated\", \"volume\""),
                        ));
                    }
                };
                if list.is_empty() {
                    return Err(ConfigError::new(format!("{mkey}.tiers"), "is empty"));
                }
                let mut tiers = Vec::new();
                let mut prev = Decimal::ZERO;
                for (i, t) in list.iter().enumerate() {
                    let tkey = format!("{mkey}.tiers[{i}]");
                    let last = i + 1 == list.len();
                    let up_to = match t.up_to {
                        Quantity::Unlimited if last => None,
                        Quantity::Unlimited => {
                            return Err(ConfigError::new(
                                format!("{tkey}.up_to"),
                                "only the last tier may be \"inf\"",
                            ));
                        }
                        Quantity::Finite(_) if last => {
                            return Err(ConfigError::new(
                                format!("{tkey}.up_to"),
                                "the last tier must be up_to = \"inf\"",
                            ));
                        }
                        Quantity::Finite(d) if d <= prev => {
                            return Err(ConfigError::new(
                                format!("{tkey}.up_to"),
                                "tier bounds must be positive and strictly increasing",
                            ));
                        }
                        Quantity::Finite(d) => {
                            prev = d;
                            Some(d)
                        }
                    };
                    if t.unit_price.0 < Decimal::ZERO {
                        return Err(ConfigError::new(
                            format!("{tkey}.unit_price"),
                            "must not be negative",
                        ));
                    }
                    let flat_fee = nonneg(&format!("{tkey}.flat_fee"), t.flat_fee)?;
                    tiers.push(Tier {
                        up_to,
                        unit_price: t.unit_price.0,
                        flat_fee: flat_fee.unwrap_or_default(),
                    });
                }
                Some((mode, tiers))
            }
        };
        if tiers.is_some() && (rate.is_some() || overage_rate.is_some()) {
            return Err(ConfigError::new(
                &mkey,
                "tiers cannot be combined with rate or overage_rate",
            ));
        }
        meters.insert(
            mid,
            PlanMeter {
                name: mname.as_str().into(),
                included,
                included_once,
                overage_rate,
                overage_cap,
                hard_limit: m.hard_limit,
                rate,
                tiers,
            },
        );
    }

    let mut addons = BTreeMap::new();
    for (aname, a) in &p.addons {
        let akey = format!("{key}.addons.{aname}");
        let meter = match &a.meter {
            None => None,
            Some(m) => Some(meter_id(m).ok_or_else(|| {
                ConfigError::new(format!("{akey}.meter"), format!("no meter named `{m}`"))
            })?),
        };
        let included = nonneg(&format!("{akey}.included"), a.included)?;
        if included.is_some() && meter.is_none() {
            return Err(ConfigError::new(
                format!("{akey}.included"),
                "an add-on with included usage needs a `meter`",
            ));
        }
        if a.price.0 < Decimal::ZERO {
            return Err(ConfigError::new(
                format!("{akey}.price"),
                "must not be negative",
            ));
        }
        addons.insert(
            aname.clone(),
            Addon {
                meter,
                meter_name: a.meter.as_deref().map(Arc::from),
                included: included.unwrap_or_default(),
                price: a.price.0,
            },
        );
    }

    let wallet = match &p.wallet {
        None => None,
        Some(w) => Some(WalletPolicy {
            prepaid: w.prepaid,
            monthly_grant: nonneg(&format!("{key}.wallet.monthly_grant"), w.monthly_grant)?
                .unwrap_or_default(),
            low_balance: nonneg(&format!("{key}.wallet.low_balance"), w.low_balance)?,
        }),
    };

    Ok(Plan {
        id: id.to_string(),
        display_name: p.display_name.clone().unwrap_or_else(|| id.to_string()),
        currency,
        base_fee,
        yearly_discount,
        legacy: p.legacy,
        revenue_share,
        thresholds,
        meters,
        addons,
        wallet,
    })
}

fn build_tenant(
    id: &str,
    t: &TenantSettings,
    plans: &BTreeMap<String, Arc<Plan>>,
) -> Result<Tenant, ConfigError> {
    let key = format!("tenants.{id}");
    if !crate::event::valid_subject(id) {
        return Err(ConfigError::new(
            &key,
            "tenant ids are 1..128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let plan_name = t
        .plan
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{key}.plan"), "is required"))?;
    let plan = plans.get(plan_name).cloned().ok_or_else(|| {
        ConfigError::new(
            format!("{key}.plan"),
            format!("no plan named `{plan_name}`"),
        )
    })?;
    let tz_name = t.timezone.clone().unwrap_or_else(|| "UTC".into());
    let tz: chrono_tz::Tz = tz_name.parse().map_err(|_| {
        ConfigError::new(
            format!("{key}.timezone"),
            format!("`{tz_name}` is not an IANA time zone name"),
        )
    })?;
    let anchor_day = t.anchor_day.unwrap_or(1);
    if !(1..=31).contains(&anchor_day) {
        return Err(ConfigError::new(
            format!("{key}.anchor_day"),
            "must be 1..=31",
        ));
    }
    let billing_cycle = match t.billing_cycle.as_deref().unwrap_or("monthly") {
        "monthly" => BillingCycle::Monthly,
        "yearly" => BillingCycle::Yearly,
        other => {
            return Err(ConfigError::new(
                format!("{key}.billing_cycle"),
                format!("`{other}` is not one of \"monthly\", \"yearly\""),
            ));
        }
    };
    let mut addons = BTreeMap::new();
    for (a, n) in &t.addons {
        if !plan.addons.contains_key(a) {
            return Err(ConfigError::new(
                format!("{key}.addons.{a}"),
                format!("plan `{plan_name}` has no add-on `{a}`"),
            ));
        }
        if *n < 0 || *n > u32::MAX as i64 {
            return Err(ConfigError::new(
                format!("{key}.addons.{a}"),
                "must be a non-negative count",
            ));
        }
        addons.insert(a.clone(), *n as u32);
    }
    let mut changes = Vec::new();
    for (i, c) in t.plan_changes.iter().enumerate() {
        let ckey = format!("{key}.plan_changes[{i}]");
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(&c.at)
            .map_err(|e| ConfigError::new(format!("{ckey}.at"), format!("not RFC 3339: {e}")))?
            .with_timezone(&Utc);
        let p = plans.get(&c.plan).cloned().ok_or_else(|| {
            ConfigError::new(
                format!("{ckey}.plan"),
                format!("no plan named `{}`", c.plan),
            )
        })?;
        if p.currency != plan.currency {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                "a plan change cannot change the currency",
            ));
        }
        if p.legacy {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                format!(
                    "plan `{}` is legacy (grandfathered): tenants can leave it but not move onto it",
                    c.plan
                ),
            ));
        }
        if let Some(a) = addons.keys().find(|a| !p.addons.contains_key(*a)) {
            return Err(ConfigError::new(
                format!("{ckey}.plan"),
                format!(
                    "plan `{}` has no add-on `{a}`, which the tenant holds (add-ons carry over plan changes)",
                    c.plan
                ),
            ));
        }
        if changes.last().is_some_and(|l: &PlanChange| l.at >= at) {
            return Err(ConfigError::new(
                format!("{ckey}.at"),
                "plan changes must be in increasing time order",
            ));
        }
        changes.push(PlanChange { at, plan: p });
    }
    if let Some(s) = &t.stripe_customer_id
        && s.trim().is_empty()
    {
        return Err(ConfigError::new(
            format!("{key}.stripe_customer_id"),
            "must not be empty",
        ));
    }
    Ok(Tenant {
        id: id.into(),
        plan,
        plan_changes: changes,
        tz,
        anchor_day: anchor_day as u32,
        billing_cycle,
        addons,
        stripe_customer_id: t.stripe_customer_id.clone(),
        wallet_low_balance: nonneg(&format!("{key}.wallet_low_balance"), t.wallet_low_balance)?,
        configured: true,
    })
}

/// The plan and tenant tables printed by `callmeter check-config`.
pub fn describe(c: &Config) -> String {
    use std::fmt::Write;
    let cat = &c.catalog;
    let mut out = String::new();
    let _ = writeln!(out, "configuration ok");
    let _ = writeln!(out, "\nmeters:");
    for m in &cat.meters {
        let _ = writeln!(
            out,
            "  {:<16} events={} {} divisor={}{}",
            m.name,
            m.event_types.join(","),
            match m.aggregation {
                Aggregation::Sum => format!(
                    "sum({})",
                    m.value.as_ref().map(|v| v.0.join(".")).unwrap_or_default()
                ),
                Aggregation::Count => "count".to_string(),
            },
            m.divisor,
            if m.rounding == Rounding::Ceil {
                " ceil"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\nplans:");
    let _ = writeln!(
        out,
        "  {:<20} {:<24} {:<4} {:>10} {:>8}  {:<6} meters",
        "id", "name", "cur", "base_fee", "yearly", "legacy"
    );
    for (id, p) in &cat.plans {
        let meters: Vec<String> = p
            .meters
            .iter()
            .map(|(mid, pm)| {
                let mut parts = vec![];
                match pm.included {
                    Included::Finite(d) => parts.push(format!("incl {d}")),
                    Included::Unlimited => parts.push("unlimited".into()),
                    Included::None => {}
                }
                if let Some(o) = pm.included_once {
                    parts.push(format!("once {o}"));
                }
                if let Some(r) = pm.overage_rate {
                    parts.push(format!("over {r}"));
                }
                if let Some(c) = pm.overage_cap {
                    parts.push(format!("cap {c}"));
                }
                if let Some(r) = pm.rate {
                    parts.push(format!("rate {r}"));
                }
                if let Some((mode, tiers)) = &pm.tiers {
                    parts.push(format!("{mode:?} tiers x{}", tiers.len()).to_lowercase());
                }
                if pm.hard_limit {
                    parts.push("hard".into());
                }
                format!("{}[{}]", cat.meter(*mid).name, parts.join(", "))
            })
            .collect();
        let mut extras = String::new();
        if let Some(r) = p.revenue_share {
            let _ = write!(extras, " revenue_share[{r}]");
        }
        for (a, addon) in &p.addons {
            let _ = write!(extras, " addon:{a}[price {}", addon.price);
            if let Some(m) = &addon.meter_name {
                let _ = write!(extras, ", +{} {m}", addon.included);
            }
            extras.push(']');
        }
        if let Some(w) = &p.wallet {
            let _ = write!(
                extras,
                " wallet[{}grant {}{}]",
                if w.prepaid { "prepaid, " } else { "" },
                w.monthly_grant,
                w.low_balance
                    .map(|l| format!(", low {l}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  {:<20} {:<24} {:<4} {:>10} {:>8}  {:<6} {}{}",
            id,
            p.display_name,
            p.currency,
            p.base_fee,
            p.yearly_discount,
            if p.legacy { "yes" } else { "no" },
            meters.join(" "),
            extras
        );
    }
    let legacy: Vec<String> = cat
        .plans
        .values()
        .filter(|p| p.legacy)
        .map(|p| {
            let n = cat.tenants.values().filter(|t| t.plan.id == p.id).count();
            format!("{} ({n} grandfathered tenants)", p.id)
        })
        .collect();
    if !legacy.is_empty() {
        let _ = writeln!(
            out,
            "  legacy plans are billable for their tenants but not offered to new ones \
             (never the default plan nor a plan change target): {}",
            legacy.join(", ")
        );
    }
    let _ = writeln!(out, "\ntenants:");
    let _ = writeln!(
        out,
        "  {:<24} {:<30} {:<20} {:>6} {:<8} addons",
        "id", "plan", "timezone", "anchor", "cycle"
    );
    for (id, t) in &cat.tenants {
        let addons: Vec<String> = t.addons.iter().map(|(a, n)| format!("{a}={n}")).collect();
        let mut plan = t.plan.id.clone();
        if t.plan.legacy {
            plan.push_str(" (legacy)");
        }
        let changes: String = t
            .plan_changes
            .iter()
            .map(|c| format!(" then {} from {}", c.plan.id, c.at.to_rfc3339()))
            .collect();
        let _ = writeln!(
            out,
            "  {:<24} {:<30} {:<20} {:>6} {:<8} {}{}",
            id,
            plan,
            t.tz.name(),
            t.anchor_day,
            format!("{:?}", t.billing_cycle).to_lowercase(),
            if addons.is_empty() {
                "-".to_string()
            } else {
                addons.join(",")
            },
            changes
        );
    }
    if let Some(p) = &cat.default_plan {
        let _ = writeln!(out, "\nunlisted tenants use plan `{}`", p.id);
    } else {
        let _ = writeln!(out, "\nunlisted tenants are rejected (unknown_tenant)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::from_toml_str(text).expect_err("config should be rejected")
    }

    const BASE: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.starter.meters.call_minutes]
included = "120"
overage_rate = "0.22"
[tenants.acme]
plan = "starter"
"#;

    #[test]
    fn accepts_the_contract_example() {
        let c = Config::from_toml_str(include_str!("../examples/contract.toml")).unwrap();
        assert!(c.catalog.plans.contains_key("starter"));
        assert!(c.catalog.tenants.contains_key("acme"));
        assert_eq!(c.settings.pipeline.flush_interval, Duration::from_secs(5));
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml_str(BASE).unwrap();
        assert_eq!(c.settings.kafka.topic, "call-events");
        assert_eq!(c.settings.kafka.dlq_topic, "call-events.dlq");
        assert_eq!(c.settings.pipeline.dedup_window, Duration::from_secs(3600));
        assert_eq!(
            c.settings.pipeline.late_event_grace,
            Duration::from_secs(48 * 3600)
        );
        assert_eq!(c.settings.api.listen, "127.0.0.1:8080");
    }

    #[test]
    fn rejects_unknown_keys_with_path() {
        let e = err("[pipeline]\nflush_intervall = \"5s\"\n");
        assert_eq!(e.key, "pipeline.flush_intervall");
        assert!(e.reason.contains("flush_intervall"), "{e}");
    }

    #[test]
    fn rejects_missing_currency() {
        let e = err("[plans.p]\nbase_fee = \"1\"\n");
        assert_eq!(e.key, "plans.p.currency");
    }

    #[test]
    fn rejects_bad_currency() {
        assert_eq!(
            err("[plans.p]\ncurrency = \"usd\"\n").key,
            "plans.p.currency"
        );
    }

    #[test]
    fn rejects_bad_decimal() {
        let e = err("[plans.p]\ncurrency = \"USD\"\nbase_fee = \"7x\"\n");
        assert_eq!(e.key, "plans.p.base_fee");
    }

    #[test]
    fn rejects_negative_fee() {
        let e = err("[plans.p]\ncurrency = \"USD\"\nbase_fee = \"-1\"\n");
        assert_eq!(e.key, "plans.p.base_fee");
    }

    #[test]
    fn rejects_unknown_plan_for_tenant() {
        let e = err("[tenants.t]\nplan = \"nope\"\n");
        assert_eq!(e.key, "tenants.t.plan");
    }

    #[test]
    fn rejects_bad_timezone() {
        let e = err(&format!("{BASE}timezone = \"Mars/Olympus\"\n"));
        assert_eq!(e.key, "tenants.acme.timezone");
    }

    #[test]
    fn rejects_bad_anchor_day() {
        assert_eq!(
            err(&format!("{BASE}anchor_day = 32\n")).key,
            "tenants.acme.anchor_day"
        );
        assert_eq!(
            err(&format!("{BASE}anchor_day = 0\n")).key,
            "tenants.acme.anchor_day"
        );
    }

    #[test]
    fn rejects_bad_billing_cycle() {
        let e = err(&format!("{BASE}billing_cycle = \"weekly\"\n"));
        assert_eq!(e.key, "tenants.acme.billing_cycle");
    }

    #[test]
    fn rejects_unknown_addon() {
        let e = err(&format!("{BASE}addons = {{ nope = 1 }}\n"));
        assert_eq!(e.key, "tenants.acme.addons.nope");
    }

    #[test]
    fn rejects_unknown_meter_in_plan() {
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.nope]\nrate = \"1\"\n");
        assert_eq!(e.key, "plans.p.meters.nope");
    }

    #[test]
    fn rejects_unknown_default_plan() {
        assert_eq!(
            err("[pricing]\ndefault_plan = \"x\"\n").key,
            "pricing.default_plan"
        );
    }

    #[test]
    fn rejects_bad_tiers() {
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers = [ { up_to = \"500\", unit_price = \"0\" } ]\n",
        );
        assert_eq!(e.key, "plans.p.meters.call_minutes.tiers[0].up_to");
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers = [ { up_to = \"500\", unit_price = \"0\" }, { up_to = \"100\", unit_price = \"1\" }, { up_to = \"inf\", unit_price = \"1\" } ]\n",
        );
        assert_eq!(e.key, "plans.p.meters.call_minutes.tiers[1].up_to");
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\ntiers_mode = \"stairs\"\ntiers = [ { up_to = \"inf\", unit_price = \"0\" } ]\n",
        );
        assert_eq!(e.key, "plans.p.meters.call_minutes.tiers_mode");
    }

    #[test]
    fn rejects_cap_without_rate() {
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\nincluded = \"10\"\noverage_cap = \"20\"\n",
        );
        assert_eq!(e.key, "plans.p.meters.call_minutes.overage_cap");
    }

    #[test]
    fn rejects_overage_without_included() {
        let e = err(
            "[plans.p]\ncurrency = \"USD\"\n[plans.p.meters.call_minutes]\noverage_rate = \"0.2\"\n",
        );
        assert_eq!(e.key, "plans.p.meters.call_minutes.overage_rate");
    }

    #[test]
    fn rejects_bad_thresholds() {
        let e = err("[plans.p]\ncurrency = \"USD\"\nalert_thresholds = [\"0.8\", \"0.5\"]\n");
        assert_eq!(e.key, "plans.p.alert_thresholds");
        let e = err("[plans.p]\ncurrency = \"USD\"\nalert_thresholds = [\"1.5\"]\n");
        assert_eq!(e.key, "plans.p.alert_thresholds[0]");
    }

    #[test]
    fn rejects_bad_meter_definitions() {
        assert_eq!(
            err("[meters.x]\nevent_type = \"call.completed\"\naggregation = \"avg\"\n").key,
            "meters.x.aggregation"
        );
        assert_eq!(
            err("[meters.x]\nevent_type = \"call.completed\"\n").key,
            "meters.x.value"
        );
        assert_eq!(
            err("[meters.x]\nevent_type = \"call.completed\"\nvalue = \"duration_ms\"\ndivisor = 0\n").key,
            "meters.x.divisor"
        );
        assert_eq!(
            err(
                "[meters.x]\nevent_type = \"call.completed\"\nvalue = \"d\"\nrounding = \"floor\"\n"
            )
            .key,
            "meters.x.rounding"
        );
        assert_eq!(
            err("[meters.calls]\nevent_type = \"call.completed\"\naggregation = \"count\"\n").key,
            "meters.calls"
        );
    }

    #[test]
    fn rejects_bad_runtime_settings() {
        assert_eq!(err("[api]\nlisten = \"nowhere\"\n").key, "api.listen");
        assert_eq!(
            err("[clickhouse]\nurl = \"tcp://x\"\n").key,
            "clickhouse.url"
        );
        assert_eq!(
            err("[pipeline]\nflush_interval = \"0s\"\n").key,
            "pipeline.flush_interval"
        );
        assert_eq!(
            err("[pipeline]\nflush_interval = \"soon\"\n").key,
            "pipeline.flush_interval"
        );
        assert_eq!(err("[stripe]\napi = \"v3\"\n").key, "stripe.api");
        assert_eq!(err("[stripe]\nbatch_size = 500\n").key, "stripe.batch_size");
        assert_eq!(
            err("[stripe.meters.nope]\nevent_name = \"x\"\n").key,
            "stripe.meters.nope"
        );
        assert_eq!(
            err("[stripe]\napi_base = \"api.stripe.com\"\n").key,
            "stripe.api_base"
        );
        assert_eq!(
            err("[stripe]\nrequest_timeout = \"0s\"\n").key,
            "stripe.request_timeout"
        );
        assert_eq!(
            err("[stripe]\nclock = \"March 1999\"\n").key,
            "stripe.clock"
        );
        // The demo clock never reaches the real Stripe.
        assert_eq!(
            err("[stripe]\nclock = \"1999-03-03T00:00:00Z\"\n").key,
            "stripe.clock"
        );
        assert!(
            Config::from_toml_str(
                "[stripe]\nclock = \"1999-03-03T00:00:00Z\"\napi_base = \"http://127.0.0.1:12111\"\nmeter_events_base = \"http://127.0.0.1:12111\"\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_bad_tenant_id() {
        let e = err("[plans.p]\ncurrency = \"USD\"\n[tenants.\"a b\"]\nplan = \"p\"\n");
        assert_eq!(e.key, "tenants.a b");
    }

    #[test]
    fn rejects_plan_change_out_of_order_or_currency() {
        let text = r#"
[plans.a]
currency = "USD"
[plans.b]
currency = "EUR"
[tenants.t]
plan = "a"
[[tenants.t.plan_changes]]
at = "2026-01-10T00:00:00Z"
plan = "b"
"#;
        assert_eq!(err(text).key, "tenants.t.plan_changes[0].plan");
        let text = r#"
[plans.a]
currency = "USD"
[tenants.t]
plan = "a"
[[tenants.t.plan_changes]]
at = "yesterday"
plan = "a"
"#;
        assert_eq!(err(text).key, "tenants.t.plan_changes[0].at");
    }

    const LEGACY: &str = r#"
[plans.starter]
currency = "USD"
base_fee = "79.00"
[plans.legacy_starter]
currency = "USD"
base_fee = "149.00"
legacy = true
[tenants.old]
plan = "legacy_starter"
"#;

    #[test]
    fn legacy_plans_keep_their_tenants() {
        let c = Config::from_toml_str(LEGACY).unwrap();
        assert!(c.catalog.plans["legacy_starter"].legacy);
        assert_eq!(c.catalog.tenants["old"].plan.id, "legacy_starter");
        // Leaving a legacy plan is fine.
        let c = Config::from_toml_str(&format!(
            "{LEGACY}[[tenants.old.plan_changes]]\nat = \"2026-11-16T00:00:00Z\"\nplan = \"starter\"\n"
        ))
        .unwrap();
        assert_eq!(c.catalog.tenants["old"].plan_changes[0].plan.id, "starter");
        let out = describe(&c);
        assert!(out.contains("legacy_starter (legacy)"), "{out}");
        assert!(
            out.contains("legacy_starter (1 grandfathered tenants)"),
            "{out}"
        );
    }

    #[test]
    fn rejects_legacy_default_plan() {
        let e = err(&format!(
            "{LEGACY}[pricing]\ndefault_plan = \"legacy_starter\"\n"
        ));
        assert_eq!(e.key, "pricing.default_plan");
        assert!(e.reason.contains("legacy"), "{e}");
    }

    #[test]
    fn rejects_plan_change_onto_a_legacy_plan() {
        let e = err(&format!(
            "{LEGACY}[tenants.new]\nplan = \"starter\"\n[[tenants.new.plan_changes]]\nat = \"2026-11-16T00:00:00Z\"\nplan = \"legacy_starter\"\n"
        ));
        assert_eq!(e.key, "tenants.new.plan_changes[0].plan");
        assert!(e.reason.contains("legacy"), "{e}");
    }

    #[test]
    fn rejects_plan_change_to_a_plan_without_the_tenants_addons() {
        let text = r#"
[plans.a]
currency = "USD"
[plans.a.addons.phone_number]
price = "5"
[plans.b]
currency = "USD"
[tenants.t]
plan = "a"
addons = { phone_number = 1 }
[[tenants.t.plan_changes]]
at = "2026-11-16T00:00:00Z"
plan = "b"
"#;
        let e = err(text);
        assert_eq!(e.key, "tenants.t.plan_changes[0].plan");
        assert!(e.reason.contains("phone_number"), "{e}");
    }

    #[test]
    fn rejects_zero_wallet_refresh() {
        assert_eq!(
            err("[pricing]\nwallet_refresh_interval = \"0s\"\n").key,
            "pricing.wallet_refresh_interval"
        );
    }

    #[test]
    fn rejects_negative_wallet_terms() {
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.wallet]\nmonthly_grant = \"-1\"\n");
        assert_eq!(e.key, "plans.p.wallet.monthly_grant");
        let e = err("[plans.p]\ncurrency = \"USD\"\n[plans.p.wallet]\nlow_balance = \"-1\"\n");
        assert_eq!(e.key, "plans.p.wallet.low_balance");
    }

    #[test]
    fn wallets_are_prepaid_unless_said_otherwise() {
        let c = Config::from_toml_str(
            "[plans.a]\ncurrency = \"USD\"\n[plans.a.wallet]\nmonthly_grant = \"10\"\n[plans.b]\ncurrency = \"USD\"\n[plans.b.wallet]\nprepaid = false\n",
        )
        .unwrap();
        assert!(c.catalog.plans["a"].wallet.as_ref().unwrap().prepaid);
        assert!(!c.catalog.plans["b"].wallet.as_ref().unwrap().prepaid);
    }

    #[test]
    fn reload_needs_the_same_meters() {
        let meter = "[meters.ai_minutes]\nevent_type = \"call.completed\"\nvalue = \"duration_ms\"\ndivisor = 60000\n";
        let a = Config::from_toml_str(&format!("{meter}{BASE}")).unwrap();
        let b = Config::from_toml_str(&format!("{meter}{BASE}base_fee_never = 1\n"));
        assert!(b.is_err());
        let same = Config::from_toml_str(&format!("{meter}{BASE}anchor_day = 5\n")).unwrap();
        assert!(a.catalog.reloadable_to(&same.catalog).is_ok());
        let other =
            Config::from_toml_str(&format!("{}{BASE}", meter.replace("60000", "1000"))).unwrap();
        let e = a.catalog.reloadable_to(&other.catalog).unwrap_err();
        assert_eq!(e.key, "meters");
        assert!(e.reason.contains("ai_minutes"), "{e}");
        let fewer = Config::from_toml_str(BASE).unwrap();
        assert!(a.catalog.reloadable_to(&fewer.catalog).is_err());
    }

    #[test]
    fn every_example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(describe(&c).starts_with("configuration ok"));
                n += 1;
            }
        }
        assert!(n >= 6, "only {n} example configs");
    }

    #[test]
    fn decimals_accept_integers_and_strings() {
        let c = Config::from_toml_str(
            "[meters.m]\nevent_type = \"x\"\nvalue = \"v\"\ndivisor = 60000\n[plans.p]\ncurrency = \"USD\"\nbase_fee = \"79.00\"\n",
        )
        .unwrap();
        let m = c.catalog.meter(c.catalog.meter_id("m").unwrap());
        assert_eq!(m.divisor, Decimal::from(60000));
        assert_eq!(c.catalog.plans["p"].base_fee, Decimal::new(79, 0));
    }
}
