//! A real Prometheus scraping a running pipeline while the real call records go through it:
//! the alerting rules load and evaluate without errors, and every series they use exists
//! with the labels they select and group by. The per-tenant gauges agree with an
//! independent reading of the records.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

use crate::common::{World, dataset_dir, eventually, free_port, spawn};

/// The first half of January 1999: enough for anonbank-tt to pass its 120-minute limit
/// and overage cap while the SQLite-backed test topic stays small.
const LAST_DAY: &str = "990115";

/// A Prometheus child process, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second with the project's rules loaded.
    fn start(dir: &std::path::Path, target: &str) -> Prometheus {
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: callmeter
    static_configs:
      - targets: ["{target}"]
"#
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(file);
        Prometheus {
            child: spawn(cmd),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query: (labels, value) of every series of the result.
    async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(data) = self.get("/api/v1/query", &[("query", q)]).await else {
            return vec![];
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// The single value of `q`, if the result has exactly one series.
    async fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q).await;
        (r.len() == 1).then(|| r[0].1)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes the subset of the data set into `dir` and returns anonbank-tt's call minutes in it,
/// computed independently of callmeter (CONTRACT section 8).
fn write_subset(dir: &std::path::Path) -> Decimal {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(dataset_dir().join("january.txt")).unwrap();
    let mut out = String::new();
    let mut tt_ms = 0i64;
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if i == 0 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if cols.len() != 17 || cols[5] > LAST_DAY {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if cols[4] == "TT" && cols[12] != "PHANTOM" {
            let n = |s: &str| s.trim().parse::<i64>().unwrap();
            tt_ms += 1000 * (n(cols[8]).max(0) + n(cols[11]) + n(cols[15]));
        }
    }
    std::fs::write(dir.join("january.txt"), out).unwrap();
    (Decimal::from(tt_ms) / Decimal::from(60_000))
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
}

fn to_f64(d: Decimal) -> f64 {
    d.to_string().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_series_the_rules_use() {
    let w = World::new("prom", 2)
        .extra(&crate::realdata::example_pricing())
        .section("metrics", "tenant_gauges = true");
    let dataset = w.dir.join("dataset");
    let tt_minutes = write_subset(&dataset);
    assert!(tt_minutes > Decimal::from(320), "tt is over limit and cap");

    let p = w.run("i0");
    let prom = Prometheus::start(&w.dir, &format!("127.0.0.1:{}", w.api_port));

    let out = w.cli(&["replay", "--dataset", dataset.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let published: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("published "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("replay output: {stdout}"));
    // One message that is not JSON, for a non-zero dead-letter series.
    w.produce(&[("anonbank-tt".into(), b"{not json".to_vec())])
        .await;

    // Everything consumed, as Prometheus sees it.
    let consumed = eventually(Duration::from_secs(60), || async {
        prom.value(r#"callmeter_events_consumed_total{job="callmeter"}"#)
            .await
            == Some(published + 1.0)
    })
    .await;
    assert!(
        consumed,
        "Prometheus saw {:?} consumed of {published}; pipeline log:\n{}\nprometheus log:\n{}",
        prom.query("callmeter_events_consumed_total").await,
        p.log_text(),
        prom.log_text()
    );

    // The per-tenant gauges (refreshed every 5 s) match the records.
    let tt = r#"{job="callmeter", tenant="anonbank-tt", meter="call_minutes"}"#;
    let want_usage = to_f64(tt_minutes);
    let gauges = eventually(Duration::from_secs(30), || async {
        prom.value(&format!("callmeter_tenant_usage{tt}"))
            .await
            .is_some_and(|v| (v - want_usage).abs() < 1e-6)
    })
    .await;
    assert!(
        gauges,
        "tenant usage {:?}, want {want_usage}",
        prom.query("callmeter_tenant_usage").await
    );
    let ratio = prom
        .value(&format!("callmeter_tenant_usage_ratio{tt}"))
        .await
        .unwrap();
    assert!((ratio - want_usage / 120.0).abs() < 1e-9, "ratio {ratio}");
    assert_eq!(
        prom.value(&format!("callmeter_tenant_overage_capped{tt}"))
            .await,
        Some(1.0)
    );
    // A rate-only meter: usage, but no ratio and no cap.
    let ind = r#"{tenant="anonbank-in", meter="calls"}"#;
    assert!(
        prom.value(&format!("callmeter_tenant_usage{ind}"))
            .await
            .is_some_and(|v| v > 0.0)
    );
    assert!(
        prom.query(&format!("callmeter_tenant_usage_ratio{ind}"))
            .await
            .is_empty()
    );
    // Every configured tenant with a limit has a ratio; only tt is over its limit.
    let ratios = prom
        .query(r#"callmeter_tenant_usage_ratio{meter="call_minutes"}"#)
        .await;
    let tenants: Vec<&str> = ratios.iter().map(|(l, _)| l["tenant"].as_str()).collect();
    for t in [
        "anonbank-ne",
        "anonbank-nw",
        "anonbank-pe",
        "anonbank-ps",
        "anonbank-tt",
    ] {
        assert!(tenants.contains(&t), "{t} in {ratios:?}");
    }
    let over: Vec<&str> = ratios
        .iter()
        .filter(|(_, v)| *v > 1.0)
        .map(|(l, _)| l["tenant"].as_str())
        .collect();
    assert_eq!(over, ["anonbank-tt"]);
    assert_eq!(
        prom.value("callmeter_tenant_gauges_suppressed").await,
        Some(0.0)
    );

    // Dead letters by reason: every code is exported from the start.
    let rejected = prom.query("callmeter_events_rejected_total").await;
    let reasons: Vec<&str> = rejected.iter().map(|(l, _)| l["reason"].as_str()).collect();
    for code in callmeter::event::ErrorCode::ALL {
        assert!(reasons.contains(&code.as_str()), "{code:?} in {reasons:?}");
    }
    assert_eq!(
        prom.value(r#"callmeter_events_rejected_total{reason="invalid_json"}"#)
            .await,
        Some(1.0)
    );

    // Usage alerts by kind: tt crossed every threshold.
    for kind in ["80%", "100%", "overage", "overage_cap"] {
        assert!(
            prom.value(&format!(r#"sum(callmeter_alerts_total{{kind="{kind}"}})"#))
                .await
                .is_some_and(|v| v >= 1.0),
            "alerts of kind {kind}"
        );
    }

    // Consumer lag per partition (from librdkafka statistics every 5 s).
    let lag = eventually(Duration::from_secs(30), || async {
        let parts: Vec<String> = prom
            .query(r#"callmeter_consumer_lag{job="callmeter"}"#)
            .await
            .into_iter()
            .map(|(l, _)| l["partition"].clone())
            .collect();
        parts.contains(&"0".to_string()) && parts.contains(&"1".to_string())
    })
    .await;
    assert!(
        lag,
        "consumer lag series: {:?}",
        prom.query("callmeter_consumer_lag").await
    );

    // Health, flushes and backpressure series of the instance and flush rules.
    assert_eq!(prom.value(r#"up{job="callmeter"}"#).await, Some(1.0));
    assert_eq!(prom.value("callmeter_ready").await, Some(1.0));
    assert_eq!(prom.value("callmeter_partitions_owned").await, Some(2.0));
    for series in [
        "callmeter_consumption_paused",
        "callmeter_flush_failures_total",
        "callmeter_dirty_rows",
        "callmeter_last_successful_flush_timestamp_seconds",
        "callmeter_flush_duration_seconds_count",
    ] {
        assert!(
            prom.value(series).await.is_some(),
            "{series}: {:?}",
            prom.query(series).await
        );
    }

    // The rules loaded and evaluate without errors.
    let rules = prom.get("/api/v1/rules", &[]).await.expect("rules API");
    let mut names = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {r}");
            names.push(r["name"].as_str().unwrap().to_string());
        }
    }
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prometheus/alerts.yml"
    ))
    .unwrap();
    let defined = file.matches("- alert: ").count();
    assert_eq!(names.len(), defined, "{names:?}");

    // Every query of the Grafana dashboard runs, with its variables filled in.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/grafana/callmeter.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "callmeter")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            assert!(
                prom.get("/api/v1/query", &[("query", &expr)])
                    .await
                    .is_some(),
                "dashboard query of panel {}: {expr}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} dashboard queries");
    let top = prom
        .query(
            r#"topk(20, max by (tenant, meter) (callmeter_tenant_usage_ratio{job="callmeter", instance=~".*"}))"#,
        )
        .await;
    assert_eq!(top.len(), 5, "top tenants panel: {top:?}");

    // The tenant rule sees tt over its limit (pending: it needs a minute to fire), and no
    // rule about the instance's health or its flushes is active.
    let alerting = eventually(Duration::from_secs(15), || async {
        let Some(a) = prom.get("/api/v1/alerts", &[]).await else {
            return false;
        };
        a["alerts"].as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "CallmeterTenantOverLimit"
                && a["labels"]["tenant"] == "anonbank-tt"
        })
    })
    .await;
    let alerts = prom.get("/api/v1/alerts", &[]).await.unwrap();
    assert!(alerting, "alerts: {alerts}");
    // A rule evaluated before the first scrape may be pending (CallmeterAbsent: no target
    // yet); once the target is scraped no health rule stays active.
    const HEALTH: [&str; 9] = [
        "CallmeterDown",
        "CallmeterAbsent",
        "CallmeterNotReady",
        "CallmeterConsumerStalled",
        "CallmeterFlushesFailing",
        "CallmeterNoSuccessfulFlush",
        "CallmeterConsumptionPaused",
        "CallmeterOutboxUndelivered",
        "CallmeterMemoryUnholdable",
    ];
    let healthy = eventually(Duration::from_secs(30), || async {
        let Some(a) = prom.get("/api/v1/alerts", &[]).await else {
            return false;
        };
        a["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| !HEALTH.contains(&a["labels"]["alertname"].as_str().unwrap_or_default()))
    })
    .await;
    let alerts = prom.get("/api/v1/alerts", &[]).await.unwrap();
    assert!(healthy, "a health rule is active: {alerts}");
}
