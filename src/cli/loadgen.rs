//! `callmeter loadgen`: synthetic call events, deterministic for a seed.
//!
//! Tenants are `t00000` .. `t{T-1}` (configure them or set `pricing.default_plan`). Each event
//! is a `call.completed` of about 300 bytes with a duration of 1 s to 20 min; a fraction
//! carries revenue. Optional duplicates (the same event again, later) and disorder (event
//! times jittered back) exercise dedup and lateness. The same seed always yields the same
//! messages, so tests can compute ground truth from the generator itself.

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;

/// Generator settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub events: u64,
    pub tenants: u32,
    pub seed: u64,
    /// Event time of the first event; later ones advance by `step_ms` each.
    pub start: DateTime<Utc>,
    pub step_ms: i64,
    /// Fraction of messages that repeat an earlier event (same id).
    pub duplicate_rate: f64,
    /// Fraction of events whose time is moved back by up to `disorder_ms`.
    pub disorder_rate: f64,
    pub disorder_ms: i64,
    /// Revenue currency (must match the tenants' plan currency).
    pub currency: String,
    /// Tenant id prefix.
    pub tenant_prefix: String,
    /// Tenant popularity: 1.0 picks tenants uniformly; k > 1 picks tenant
    /// `floor(T x u^k)` for uniform `u`, so low-numbered tenants are busier (a few large
    /// customers, a long tail of small ones) and cross their thresholds at different times.
    pub tenant_skew: f64,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            events: 100_000,
            tenants: 100,
            seed: 1,
            start: Utc::now() - ChronoDuration::hours(1),
            step_ms: 1,
            duplicate_rate: 0.0,
            disorder_rate: 0.0,
            disorder_ms: 60_000,
            currency: "USD".into(),
            tenant_prefix: "t".into(),
            tenant_skew: 1.0,
        }
    }
}

/// One generated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub tenant: String,
    pub id: String,
    pub time: DateTime<Utc>,
    pub duration_ms: u64,
    pub human: bool,
    /// Revenue in cents, if the call took an order.
    pub revenue_cents: Option<u64>,
    /// True if this message repeats an earlier one.
    pub duplicate: bool,
    pub payload: String,
}

/// The tenant id of tenant number `i`.
pub fn tenant_id(prefix: &str, i: u32) -> String {
    format!("{prefix}{i:05}")
}

fn payload(g: &Generated, currency: &str) -> String {
    let revenue = match g.revenue_cents {
        Some(c) => format!(
            r#","revenue":{{"amount":"{}.{:02}","currency":"{currency}"}}"#,
            c / 100,
            c % 100
        ),
        None => String::new(),
    };
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"loadgen/eu-1","type":"call.completed","subject":"{t}","time":"{time}","datacontenttype":"application/json","data":{{"call_id":"{id}","duration_ms":{d},"direction":"{dir}","handled_by":"{h}"{revenue}}}}}"#,
        id = g.id,
        t = g.tenant,
        time = g.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        d = g.duration_ms,
        dir = if g.duration_ms.is_multiple_of(3) {
            "outbound"
        } else {
            "inbound"
        },
        h = if g.human { "human" } else { "ai" },
    )
}

/// The deterministic message sequence of `spec`.
pub fn generate(spec: &LoadSpec) -> impl Iterator<Item = Generated> + '_ {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut recent: Vec<Generated> = Vec::with_capacity(1024);
    let mut n = 0u64;
    std::iter::from_fn(move || {
        if n >= spec.events {
            return None;
        }
        n += 1;
        if !recent.is_empty() && rng.random_bool(spec.duplicate_rate.clamp(0.0, 1.0)) {
            let i = rng.random_range(0..recent.len());
            let mut d = recent[i].clone();
            d.duplicate = true;
            return Some(d);
        }
        let seq = n;
        let tenants = spec.tenants.max(1);
        let pick = if spec.tenant_skew == 1.0 {
            rng.random_range(0..tenants)
        } else {
            let u: f64 = rng.random();
            ((tenants as f64 * u.powf(spec.tenant_skew)) as u32).min(tenants - 1)
        };
        let tenant = tenant_id(&spec.tenant_prefix, pick);
        let mut time = spec.start + ChronoDuration::milliseconds(spec.step_ms * seq as i64);
        if rng.random_bool(spec.disorder_rate.clamp(0.0, 1.0)) {
            time -= ChronoDuration::milliseconds(rng.random_range(0..spec.disorder_ms.max(1)));
        }
        let duration_ms = rng.random_range(1_000..1_200_000u64);
        let human = rng.random_bool(0.2);
        let revenue_cents = rng
            .random_bool(0.1)
            .then(|| rng.random_range(100..50_000u64));
        let mut g = Generated {
            tenant,
            id: format!("lg-{}-{seq}", spec.seed),
            time,
            duration_ms,
            human,
            revenue_cents,
            duplicate: false,
            payload: String::new(),
        };
        g.payload = payload(&g, &spec.currency);
        if recent.len() < 1024 {
            recent.push(g.clone());
        } else {
            let i = rng.random_range(0..recent.len());
            recent[i] = g.clone();
        }
        Some(g)
    })
}

/// `callmeter loadgen`: publishes `spec`'s events to the configured topic at `rate` events
/// per second (unlimited: as fast as possible).
pub async fn run(config: &Config, spec: LoadSpec, rate: Option<u32>) -> anyhow::Result<()> {
    let producer = crate::ingest::consumer::bulk_producer(&config.settings.kafka)?;
    let topic = &config.settings.kafka.topic;
    let mut dups = 0u64;
    let messages = generate(&spec).map(|g| {
        dups += g.duplicate as u64;
        (g.tenant, g.payload)
    });
    let (n, took) = crate::ingest::consumer::publish_all(&producer, topic, messages, rate).await?;
    let secs = took.as_secs_f64();
    println!(
        "published {n} events ({dups} duplicates) for {} tenants to {topic} in {secs:.2} s ({:.0} events/s)",
        spec.tenants,
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_valid() {
        let spec = LoadSpec {
            events: 2000,
            tenants: 7,
            seed: 42,
            duplicate_rate: 0.1,
            disorder_rate: 0.1,
            ..Default::default()
        };
        let a: Vec<Generated> = generate(&spec).collect();
        let b: Vec<Generated> = generate(&spec).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2000);
        let dups = a.iter().filter(|g| g.duplicate).count();
        assert!(dups > 100 && dups < 300, "{dups}");
        for g in &a {
            let ev = crate::event::decode(g.payload.as_bytes(), |t| t == "call.completed").unwrap();
            assert_eq!(ev.subject, g.tenant);
            assert_eq!(ev.id, g.id);
            assert!(g.payload.len() < 400);
        }
        let other: Vec<Generated> = generate(&LoadSpec {
            seed: 43,
            ..spec.clone()
        })
        .collect();
        assert_ne!(a, other);
    }

    #[test]
    fn skew_favours_low_numbered_tenants() {
        let spec = LoadSpec {
            events: 10_000,
            tenants: 1_000,
            tenant_skew: 2.0,
            ..Default::default()
        };
        let head = generate(&spec)
            .filter(|g| g.tenant.as_str() < "t00100")
            .count();
        // u^2 < 0.1 for u < 0.316: about 32% of events go to the first 10% of tenants.
        assert!((2_800..3_600).contains(&head), "{head}");
        let uniform = generate(&LoadSpec {
            tenant_skew: 1.0,
            ..spec.clone()
        })
        .filter(|g| g.tenant.as_str() < "t00100")
        .count();
        assert!((800..1_200).contains(&uniform), "{uniform}");
    }
}
