//! The configuration file as written: the serde structs of every `[section]` (CONTRACT.md
//! sections 2, 3 and 9), their defaults, and the two value types the file spells loosely
//! ([`Dec`]: decimal strings or integers; [`Quantity`]: a decimal or `"unlimited"`).
//!
//! Deserializing rejects unknown keys; nothing here checks values or cross-references
//! (that is [`super::validate`] and [`super::compile`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

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

/// A size in bytes, written as an integer or `"64MiB"`, `"1GiB"`, `"500MB"`, `"512KiB"`
/// (binary units `KiB`, `MiB`, `GiB`, `TiB`; decimal `kB`, `MB`, `GB`, `TB`; `B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"` and the like (see the type's docs).
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return None,
        };
        let n = Decimal::from_str(num).ok()?;
        let bytes = n.checked_mul(Decimal::from(mult))?.trunc();
        u64::try_from(bytes).ok().map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let units = [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (m, u) in units {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).ok_or_else(|| {
                    E::custom(format!("`{s}` is not a size (e.g. \"64MiB\", \"1GiB\")"))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
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
    /// Period-close usage statements (CONTRACT section 10), JSON, key = tenant id.
    pub statements_topic: String,
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
            statements_topic: "usage-statements".into(),
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
    /// Bound on one ClickHouse request, connecting included (a flush, a restore read, a
    /// query): a server that hangs (e.g. stopped) fails the request, which is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often a flush is retried after a permanent error (authentication, a schema that
    /// does not match): until it succeeds `/readyz` answers 503 naming the error.
    #[serde(with = "humantime_serde")]
    pub permanent_error_retry: Duration,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "callmeter".into(),
            user: "default".into(),
            password: String::new(),
            raw_events: false,
            request_timeout: Duration::from_secs(30),
            permanent_error_retry: Duration::from_secs(30),
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
    /// One memory budget over rollup rows, the dedup set and undelivered dead-letter and
    /// alert messages (estimated bytes, see `ingest::memory`). Above it consumption pauses
    /// (group membership kept) until flushes and the dedup window bring it below 90 %.
    pub max_memory: ByteSize,
    /// Bound on the whole shutdown (drain, final flush, commit, last Stripe cycle) and on
    /// the flush on partition revocation. Keep it below the orchestrator's grace period
    /// (docker-compose's `stop_grace_period`).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// When a partition's checkpoint lies below the earliest offset Kafka retains (events
    /// deleted by retention before they were counted): count what is retained instead of
    /// keeping the partition unready.
    pub accept_retention_gaps: bool,
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
            max_memory: ByteSize(1 << 30),
            shutdown_timeout: Duration::from_secs(30),
            accept_retention_gaps: false,
        }
    }
}

/// `[api]`: the HTTP listener, bearer tokens for `/v1/*`, and the tenant portal
/// (CONTRACT sections 6, 9 and 10).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// `host:port` of the listener.
    pub listen: String,
    /// Bearer tokens that may read `/v1/*`.
    pub tokens: Vec<String>,
    /// Tokens that may also write (`PUT /v1/tenants/{tenant}/subscription`, `POST
    /// /v1/portal/tokens`); a token only in `tokens` gets 403 there
    /// (`CALLMETER_API__ADMIN_TOKENS`).
    pub admin_tokens: Vec<String>,
    /// The HMAC-SHA256 key of portal tokens (`CALLMETER_API__PORTAL_SECRET`); empty: no
    /// portal (its routes answer 503). At least 32 bytes when set.
    pub portal_secret: String,
    /// Where the portal's "upgrade" link points when a hard limit is near (an `http://` or
    /// `https://` URL); none: no link.
    pub portal_upgrade_url: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: vec![],
            admin_tokens: vec![],
            portal_secret: String::new(),
            portal_upgrade_url: None,
        }
    }
}

/// The shortest `api.portal_secret` accepted, in bytes (the HMAC-SHA256 output size: a
/// shorter key weakens the MAC below its tag length).
pub const PORTAL_SECRET_MIN_BYTES: usize = 32;

/// `[metrics]`: Prometheus exposition options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Export the per-tenant series (`callmeter_tenant_usage`, `_usage_ratio`,
    /// `_overage_capped`, `callmeter_wallet_balance`). Off by default: `/metrics` needs no
    /// token, and these name tenants and their balances to anyone who can reach it.
    pub tenant_gauges: bool,
    /// Export per-tenant usage gauges (`callmeter_tenant_usage_ratio`, ...) for at most this
    /// many tenants; above it the per-tenant series are not exported (0 turns them off).
    pub tenant_gauges_max: usize,
}

impl MetricsSettings {
    /// The most tenants per-tenant series are exported for: 0 when `tenant_gauges` is off.
    pub fn tenant_gauge_cap(&self) -> usize {
        if self.tenant_gauges {
            self.tenant_gauges_max
        } else {
            0
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            tenant_gauges: false,
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
    /// `[plans.<id>.features]`: features the plan grants, a boolean or a whole number each
    /// (CONTRACT section 10; see [`crate::features`]).
    pub features: BTreeMap<String, FeatureSetting>,
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
    /// Features each unit grants or raises: `features = { call_recording = true }`.
    #[serde(default)]
    pub features: BTreeMap<String, FeatureSetting>,
}

/// A feature's configured value: `true`/`false` or a whole number (a string holding one of
/// these, from an environment override, is accepted too). Other values are kept so that
/// the configuration can reject them with the key path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FeatureSetting {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
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
