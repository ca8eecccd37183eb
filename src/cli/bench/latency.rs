//! The latency phase: the pipeline on a fresh topic while events are produced at `--rate`;
//! a consumer of the alerts topic times each crossing event's production to its alert's
//! arrival. First the floor: how long a plain consumer takes to receive the same load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{Duration as ChronoDuration, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::setup::{Names, Running, client_config, plain_consumer, set_up};
use super::{Options, Table, quantile, rate, thousands, wait_for};
use crate::cli::loadgen::{self, LoadSpec};
use crate::config::{Config, KafkaSettings};
use crate::ingest::consumer as kafka;

/// Alert arrivals: (crossing event id, arrival since the run's base instant, the alert's
/// `fired_at` in ms since the epoch).
type Arrivals = Vec<(String, Duration, Option<i64>)>;

fn alert_reader(
    ks: &KafkaSettings,
    group: &str,
    base: Instant,
    stop: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Arrivals>> {
    let c = {
        let mut cfg = client_config(ks);
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A latency-sensitive reader: do not let the broker hold fetches.
            .set("fetch.wait.max.ms", "10");
        let c: BaseConsumer = cfg.create()?;
        c.subscribe(&[&ks.alerts_topic])?;
        c
    };
    Ok(std::thread::spawn(move || {
        #[derive(serde::Deserialize)]
        struct A {
            event_id: String,
            fired_at: String,
        }
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if !assigned.load(Ordering::Relaxed)
                && c.assignment().map(|a| a.count() > 0).unwrap_or(false)
            {
                assigned.store(true, Ordering::Relaxed);
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                let at = base.elapsed();
                if let Some(a) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<A>(p).ok())
                {
                    let fired = chrono::DateTime::parse_from_rfc3339(&a.fired_at)
                        .ok()
                        .map(|t| t.timestamp_millis());
                    out.push((a.event_id, at, fired));
                }
            }
        }
        out
    }))
}

/// Produces `spec` at `rate` with the latency-oriented producer (small linger), as a live
/// platform would; returns each event's hand-over instant (since `base`), the count and the
/// time it took.
fn produce_at_rate(
    rt: &tokio::runtime::Runtime,
    ks: &KafkaSettings,
    topic: &str,
    spec: &LoadSpec,
    rate: u32,
    base: Instant,
) -> anyhow::Result<(HashMap<String, Duration>, u64, Duration)> {
    let mut sent: HashMap<String, Duration> = HashMap::with_capacity(spec.events as usize);
    let (n, took) = rt.block_on(async {
        let producer = kafka::producer(ks)?;
        let messages = loadgen::generate(spec).map(|g| {
            sent.insert(g.id.clone(), base.elapsed());
            (g.tenant, g.payload)
        });
        anyhow::Ok(kafka::publish_all(&producer, topic, messages, Some(rate)).await?)
    })?;
    Ok((sent, n, took))
}

/// The floor: how long a plain consumer takes to receive events produced at `rate`
/// (message timestamp to receipt, in ms), on a topic of its own.
fn delivery_floor(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    spec: &LoadSpec,
    table: &mut Table,
) -> anyhow::Result<()> {
    let names = Names::new(config, run, "floor");
    let ks = names.config(config).settings.kafka;
    rt.block_on(names.create(&ks, o.partitions))?;
    let c = plain_consumer(&ks, &names.group)?;
    c.subscribe(&[&ks.topic])?;
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicBool::new(false));
    let (stop2, assigned2) = (stop.clone(), assigned.clone());
    let reader = std::thread::spawn(move || {
        // (message timestamp ms, latency ms)
        let mut out: Vec<(i64, i64)> = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            if !assigned2.load(Ordering::Relaxed)
                && c.assignment().map(|a| a.count() > 0).unwrap_or(false)
            {
                assigned2.store(true, Ordering::Relaxed);
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20))
                && let Some(ts) = m.timestamp().to_millis()
            {
                out.push((ts, Utc::now().timestamp_millis() - ts));
            }
        }
        out
    });
    let ok = wait_for("plain consumer assigned", Duration::from_secs(60), || {
        assigned.load(Ordering::Relaxed)
    });
    let produced =
        ok.and_then(|_| produce_at_rate(rt, &ks, &names.topic, spec, o.rate, Instant::now()));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let got = reader.join().unwrap_or_default();
    let (_, n, _) = produced?;
    let first = got.iter().map(|g| g.0).min().unwrap_or(0);
    let warm_ms = o.latency_warmup.as_millis() as i64;
    let mut lat: Vec<f64> = got
        .iter()
        .filter(|g| g.0 >= first + warm_ms)
        .map(|g| g.1 as f64)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    table.add(
        format!(
            "floor: events received by a plain consumer, at {}/s",
            thousands(o.rate as f64)
        ),
        format!("{} of {}", thousands(got.len() as f64), thousands(n as f64)),
        "",
    );
    table.add(
        "floor: produced -> received by a plain consumer, p50",
        format!("{:.0} ms", quantile(&lat, 0.5)),
        "",
    );
    table.add(
        "floor: produced -> received by a plain consumer, p99",
        format!("{:.0} ms", quantile(&lat, 0.99)),
        "",
    );
    Ok(())
}

/// Cumulative buckets `(le, count)` of a Prometheus histogram in exposition text.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The upper bound of the bucket holding quantile `q`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, n)| *n >= q * total).map(|b| b.0)
}

pub(super) fn latency(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    o: &Options,
    run: &str,
    table: &mut Table,
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (names, c, _) = set_up(rt, config, run, "latency", Some(o.partitions), databases)?;
    let ks = c.settings.kafka.clone();
    let events = o.rate as u64 * o.latency_duration.as_secs().max(1);
    let tenants = o.latency_tenants.unwrap_or(o.rate.saturating_mul(20));
    let spec = LoadSpec {
        events,
        tenants,
        tenant_skew: o.latency_skew,
        seed: 13,
        start: Utc::now() - ChronoDuration::hours(1),
        ..Default::default()
    };
    println!(
        "latency: a plain consumer, {} events at {}/s (the broker and client floor)",
        events, o.rate
    );
    delivery_floor(rt, config, o, run, &spec, table)?;
    println!(
        "latency: pipeline on {}, {} events at {}/s for {} tenants (skew {})",
        names.topic, events, o.rate, tenants, o.latency_skew
    );
    // The pipeline's own alert histogram (event timestamp -> alert acknowledged), as
    // `callmeter run` exports it.
    let telemetry = crate::telemetry::Telemetry::install();
    let p = Running::start(rt, c.clone())?;
    let base = Instant::now();
    // The wall clock at `base`, to place the alerts' `fired_at` on the same time line.
    let base_wall_ms = Utc::now().timestamp_millis();
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicBool::new(false));
    let reader = alert_reader(
        &ks,
        &format!("{}-alerts-reader", names.group),
        base,
        stop.clone(),
        assigned.clone(),
    )?;
    let ready = wait_for("pipeline ready", Duration::from_secs(120), || {
        p.shared.partitions_ready()
    })
    .and_then(|_| {
        wait_for("alerts reader assigned", Duration::from_secs(60), || {
            assigned.load(Ordering::Relaxed)
        })
    });
    if let Err(e) = ready {
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        p.stop()?;
        return Err(e);
    }
    let produced = produce_at_rate(rt, &ks, &names.topic, &spec, o.rate, base);
    let produced_end = Instant::now();
    let drained = produced
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|(_, n, _)| {
            wait_for("pipeline caught up", Duration::from_secs(120), || {
                p.consumed() >= *n
            })
        });
    let lag_after = produced_end.elapsed();
    // Alerts still in flight.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let arrivals = reader.join().unwrap_or_default();
    p.stop()?;
    let (sent, n, took) = produced?;
    drained?;
    // Per alert: its event id, when the event was produced (since the base instant), the
    // latency (ms), and when the alert fired (ms since the base instant, on the wall clock).
    let samples: Vec<(&str, Duration, f64, Option<f64>)> = arrivals
        .iter()
        .filter_map(|(id, at, fired)| {
            sent.get(id).map(|s| {
                (
                    id.as_str(),
                    *s,
                    at.saturating_sub(*s).as_secs_f64() * 1e3,
                    fired.map(|f| (f - base_wall_ms) as f64),
                )
            })
        })
        .collect();
    if let Some(path) = &o.latency_csv {
        let mut csv = String::from("sent_ms,latency_ms,fired_ms,event_id\n");
        for (id, s, l, f) in &samples {
            let f = f.map(|f| f.to_string()).unwrap_or_default();
            csv.push_str(&format!("{:.3},{l:.3},{f},{id}\n", s.as_secs_f64() * 1e3));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let first_sent = sent.values().min().copied().unwrap_or_default();
    let warm = |s: &Duration| *s < first_sent + o.latency_warmup;
    // Where the time goes: production -> fired (the event through the broker and the
    // pipeline) and fired -> consumed (the alert through the producer, the broker and the
    // reader), for the alerts measured below (ms; the clocks are this process's).
    let (mut ingress, mut egress): (Vec<f64>, Vec<f64>) = samples
        .iter()
        .filter(|s| !warm(&s.1))
        .filter_map(|(_, s, l, f)| {
            let (s, f) = (s.as_secs_f64() * 1e3, (*f)?);
            Some((f - s, s + l - f))
        })
        .unzip();
    ingress.sort_by(|a, b| a.total_cmp(b));
    egress.sort_by(|a, b| a.total_cmp(b));
    let warmup_max = samples
        .iter()
        .filter(|s| warm(&s.1))
        .map(|s| s.2)
        .fold(f64::NAN, f64::max);
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| !warm(&s.1))
        .map(|s| s.2)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    table.add(
        "latency run: produced",
        format!("{} ev/s", thousands(rate(n, took))),
        &format!("target {}/s", thousands(o.rate as f64)),
    );
    table.add(
        "latency run: pipeline caught up after the last event",
        format!("{:.0} ms", lag_after.as_secs_f64() * 1e3),
        "",
    );
    table.add(
        "latency run: alerts received",
        thousands(samples.len() as f64),
        "",
    );
    table.add(
        format!(
            "latency run: alerts measured (events after the first {})",
            humantime::format_duration(o.latency_warmup)
        ),
        thousands(lat.len() as f64),
        "",
    );
    let p50 = quantile(&lat, 0.5);
    let p99 = quantile(&lat, 0.99);
    table.add(
        format!(
            "alert latency p50 at {}/s (production -> alert consumed)",
            thousands(o.rate as f64)
        ),
        format!("{p50:.1} ms"),
        "",
    );
    table.add(
        format!("alert latency p99 at {}/s", thousands(o.rate as f64)),
        format!("{p99:.1} ms"),
        if p99 < 100.0 {
            "< 100 ms: met"
        } else {
            "< 100 ms: NOT met"
        },
    );
    table.add(
        format!("alert latency p90 at {}/s", thousands(o.rate as f64)),
        format!("{:.1} ms", quantile(&lat, 0.9)),
        "",
    );
    table.add(
        "alert latency max",
        format!("{:.1} ms", lat.last().copied().unwrap_or(f64::NAN)),
        "",
    );
    table.add(
        "alert latency max during the warm-up (left out above)",
        format!("{warmup_max:.1} ms"),
        "",
    );
    for (what, v) in [
        ("production -> alert fired (event in, pipeline)", &ingress),
        ("alert fired -> alert consumed (alert out)", &egress),
    ] {
        table.add(
            format!("  of which {what}, p50 / p99"),
            format!("{:.1} / {:.1} ms", quantile(v, 0.5), quantile(v, 0.99)),
            "",
        );
    }
    let buckets = histogram(&telemetry.render(), crate::telemetry::ALERT_LATENCY);
    for q in [0.5, 0.99] {
        table.add(
            format!(
                "pipeline histogram: event -> alert acknowledged, p{:.0} (all alerts)",
                q * 100.0
            ),
            bucket_quantile(&buckets, q)
                .map(|b| format!("<= {:.0} ms", b * 1e3))
                .unwrap_or_else(|| "n/a".into()),
            "",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_prometheus_histogram() {
        let text = "\
# TYPE callmeter_alert_produce_latency_seconds histogram
callmeter_alert_produce_latency_seconds_bucket{le=\"0.05\"} 10
callmeter_alert_produce_latency_seconds_bucket{le=\"0.1\"} 90
callmeter_alert_produce_latency_seconds_bucket{le=\"+Inf\"} 100
callmeter_alert_produce_latency_seconds_sum 7.5
callmeter_alert_produce_latency_seconds_count 100
";
        let b = histogram(text, "callmeter_alert_produce_latency_seconds");
        assert_eq!(b.len(), 3);
        assert_eq!(bucket_quantile(&b, 0.5), Some(0.1));
        assert_eq!(bucket_quantile(&b, 0.99), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&histogram("", "x"), 0.5), None);
    }
}
