//! `callmeter replay`: the real Anonymous Bank call-center records (CONTRACT section 8) as
//! `call.completed` events, published in event-time order across all files.
//!
//! Each row that is not `PHANTOM` and not type `AA` becomes one event: `subject` =
//! `anonbank-` + lower-case type, `source` = `anonbank-1999`, `id` = `<vru+line>-<call_id>`,
//! `time` = `date` + `vru_entry` in Asia/Jerusalem, `duration_ms` = 1000 x (max(vru_time, 0) +
//! q_time + ser_time), `handled_by` = `human` for `AGENT` outcomes. Rows that do not parse
//! are counted and reported, never fatal.
//!
//! Publishing shows its progress on stderr: a bar with the rate and the time left when
//! stderr is a terminal (indicatif), otherwise a plain line every 5 s ([`Progress`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Asia::Jerusalem;

use crate::config::Config;

/// One replayable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEvent {
    pub tenant: String,
    pub id: String,
    pub time: DateTime<FixedOffset>,
    pub duration_ms: u64,
    pub human: bool,
}

impl ReplayEvent {
    /// The CloudEvent JSON.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"anonbank-1999","type":"call.completed","subject":"{tenant}","time":"{time}","datacontenttype":"application/json","data":{{"call_id":"{id}","duration_ms":{d},"direction":"inbound","handled_by":"{h}"}}}}"#,
            id = self.id,
            tenant = self.tenant,
            time = self.time.to_rfc3339(),
            d = self.duration_ms,
            h = if self.human { "human" } else { "ai" },
        )
    }
}

/// What loading found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadStats {
    pub files: Vec<PathBuf>,
    pub rows: u64,
    pub events: u64,
    pub phantom: u64,
    pub junk_type: u64,
    pub unparsable: u64,
    /// The first few unparsable rows: (file, line number, reason).
    pub errors: Vec<(String, usize, String)>,
    pub per_tenant: BTreeMap<String, u64>,
}

/// Parses `H:MM:SS`.
fn clock(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M:%S").map_err(|_| format!("bad clock time `{s}`"))
}

fn secs(s: &str, name: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| format!("bad {name} `{s}`"))
}

/// Parses one data row. `Ok(None)` for rows that are not calls (PHANTOM, type AA).
pub fn parse_row(line: &str) -> Result<Option<ReplayEvent>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 17 {
        // Some months separate fields with spaces.
        fields = line.split_whitespace().collect();
    }
    if fields.len() != 17 {
        return Err(format!("expected 17 fields, found {}", fields.len()));
    }
    let (vru_line, call_id, ty, date, vru_entry) =
        (fields[0], fields[1], fields[4], fields[5], fields[6]);
    let outcome = fields[12];
    if outcome == "PHANTOM" || ty == "AA" {
        return Ok(None);
    }
    if vru_line.is_empty() || call_id.is_empty() || ty.is_empty() {
        return Err("empty key field".into());
    }
    if date.len() != 6 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad date `{date}`"));
    }
    let yy: i32 = date[0..2].parse().map_err(|_| "bad year")?;
    let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
    let day = NaiveDate::from_ymd_opt(
        year,
        date[2..4].parse().map_err(|_| "bad month")?,
        date[4..6].parse().map_err(|_| "bad day")?,
    )
    .ok_or_else(|| format!("bad date `{date}`"))?;
    let local = day.and_time(clock(vru_entry)?);
    let time = Jerusalem
        .from_local_datetime(&local)
        .earliest()
        .ok_or_else(|| format!("local time {local} does not exist in Asia/Jerusalem"))?;
    let vru = secs(fields[8], "vru_time")?.max(0);
    let q = secs(fields[11], "q_time")?;
    let ser = secs(fields[15], "ser_time")?;
    if q < 0 || ser < 0 {
        return Err("negative q_time or ser_time".into());
    }
    Ok(Some(ReplayEvent {
        tenant: format!("anonbank-{}", ty.to_ascii_lowercase()),
        id: format!("{vru_line}-{call_id}"),
        time: time.fixed_offset(),
        duration_ms: 1000 * (vru + q + ser) as u64,
        human: outcome == "AGENT",
    }))
}

/// Loads every `*.txt` file of `dir`, sorted by event time (ties keep file and line order).
pub fn load_dataset(dir: &Path) -> std::io::Result<(Vec<ReplayEvent>, LoadStats)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut stats = LoadStats {
        files: files.clone(),
        ..Default::default()
    };
    let mut events = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f)?;
        let text = String::from_utf8_lossy(&bytes);
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if i == 0 && line.starts_with("vru+line") {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            stats.rows += 1;
            match parse_row(line) {
                Ok(Some(e)) => {
                    *stats.per_tenant.entry(e.tenant.clone()).or_default() += 1;
                    events.push(e);
                }
                Ok(None) => {
                    if line.contains("PHANTOM") {
                        stats.phantom += 1;
                    } else {
                        stats.junk_type += 1;
                    }
                }
                Err(reason) => {
                    stats.unparsable += 1;
                    if stats.errors.len() < 20 {
                        stats.errors.push((name.clone(), i + 1, reason));
                    }
                }
            }
        }
    }
    events.sort_by_key(|e| e.time);
    stats.events = events.len() as u64;
    Ok((events, stats))
}

/// Publishes the events to `topic`, keyed by tenant, at most `rate` per second if given.
pub async fn publish(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    events: &[ReplayEvent],
    rate: Option<u32>,
) -> Result<Duration, rdkafka::error::KafkaError> {
    let progress = Progress::new(events.len() as u64);
    let messages = events.iter().map(|e| {
        progress.inc();
        (e.tenant.clone(), e.to_json())
    });
    let result = crate::ingest::consumer::publish_all(producer, topic, messages, rate).await;
    progress.finish();
    Ok(result?.1)
}

/// Replay progress on stderr: an indicatif bar on a terminal, plain lines otherwise.
pub struct Progress {
    total: u64,
    inner: ProgressKind,
}

enum ProgressKind {
    Bar(indicatif::ProgressBar),
    Lines(std::sync::Mutex<Lines>),
}

struct Lines {
    started: std::time::Instant,
    last: std::time::Instant,
    done: u64,
}

impl Progress {
    /// How often a plain progress line is written.
    pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64) -> Progress {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::bar(total)
        } else {
            Progress::lines(total)
        }
    }

    fn bar(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(total);
        let style = indicatif::ProgressStyle::with_template(
            "replay {bar:40.cyan/blue} {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        Progress {
            total,
            inner: ProgressKind::Bar(bar),
        }
    }

    /// Plain lines (for logs and pipes).
    pub fn lines(total: u64) -> Progress {
        let now = std::time::Instant::now();
        Progress {
            total,
            inner: ProgressKind::Lines(std::sync::Mutex::new(Lines {
                started: now,
                last: now,
                done: 0,
            })),
        }
    }

    /// One more event handed to the producer.
    pub fn inc(&self) {
        match &self.inner {
            ProgressKind::Bar(b) => b.inc(1),
            ProgressKind::Lines(l) => {
                let mut l = l.lock().expect("progress lock");
                l.done += 1;
                if l.last.elapsed() >= Self::LINE_INTERVAL {
                    l.last = std::time::Instant::now();
                    eprintln!("{}", progress_line(l.done, self.total, l.started.elapsed()));
                }
            }
        }
    }

    /// Clears the bar (the caller prints the summary).
    pub fn finish(&self) {
        if let ProgressKind::Bar(b) = &self.inner {
            b.finish_and_clear();
        }
    }
}

/// `replay: 12,000/64,423 events (18%), 2,000 events/s, 26 s left`.
pub fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let left = if rate > 0.0 {
        format!("{:.0} s left", total.saturating_sub(done) as f64 / rate)
    } else {
        "time left unknown".to_string()
    };
    format!(
        "replay: {}/{} events ({pct}%), {} events/s, {left}",
        thousands(done),
        thousands(total),
        thousands(rate.round() as u64)
    )
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `callmeter replay`: loads the data set, prints what it holds, publishes it to the
/// configured topic at `rate` events per second (unlimited: as fast as possible).
pub async fn run(config: &Config, dataset: &Path, rate: Option<u32>) -> anyhow::Result<()> {
    let (events, stats) =
        load_dataset(dataset).with_context(|| format!("reading data set {}", dataset.display()))?;
    println!(
        "data set {}: {} files, {} rows, {} events, {} phantom, {} junk type, {} unparsable",
        dataset.display(),
        stats.files.len(),
        stats.rows,
        stats.events,
        stats.phantom,
        stats.junk_type,
        stats.unparsable
    );
    for (f, line, reason) in &stats.errors {
        println!("  unparsable: {f}:{line}: {reason}");
    }
    let producer = crate::ingest::consumer::bulk_producer(&config.settings.kafka)?;
    let took = publish(&producer, &config.settings.kafka.topic, &events, rate).await?;
    println!(
        "published {} events to {} in {:.2} s ({:.0} events/s)",
        events.len(),
        config.settings.kafka.topic,
        took.as_secs_f64(),
        events.len() as f64 / took.as_secs_f64().max(1e-9)
    );
    for (t, n) in &stats.per_tenant {
        println!("  {t}: {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_skips_phantoms() {
        let r = parse_row("AA0101\t33116\t9664491\t2\tPS\t990101\t0:00:31\t0:00:36\t5\t0:00:36\t0:03:09\t153\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER\r")
            .unwrap()
            .unwrap();
        assert_eq!(r.tenant, "anonbank-ps");
        assert_eq!(r.id, "AA0101-33116");
        assert_eq!(r.time.to_rfc3339(), "1999-01-01T00:00:31+02:00");
        assert_eq!(r.duration_ms, 158_000);
        assert!(!r.human);
        let agent = parse_row("AA0101\t33118\t27997683\t2\tPS\t990101\t6:55:20\t6:55:26\t6\t6:55:26\t6:55:43\t17\tAGENT\t6:55:43\t6:56:37\t54\tMICHAL").unwrap().unwrap();
        assert!(agent.human);
        assert_eq!(agent.duration_ms, 77_000);
        assert!(parse_row("AA0101\t1\t0\t0\tPS\t990101\t0:00:31\t0:00:36\t5\t0:00:00\t0:00:00\t0\tPHANTOM\t0:00:00\t0:00:00\t61437\tNO_SERVER").unwrap().is_none());
        assert!(parse_row("AA0101\t1\t0\t0\tAA\t990101\t0:00:31\t0:00:36\t5\t0:00:00\t0:00:00\t0\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER").unwrap().is_none());
    }

    #[test]
    fn negative_vru_time_counts_as_zero_and_spaces_separate() {
        let r = parse_row("AA0101 33116 9664491 2 NW 990215 10:00:00 10:00:36 -192 0:00:36 0:03:09 10 HANG 0:00:00 0:00:00 5 NO_SERVER").unwrap().unwrap();
        assert_eq!(r.duration_ms, 15_000);
        assert_eq!(r.tenant, "anonbank-nw");
    }

    #[test]
    fn plain_progress_lines() {
        assert_eq!(
            progress_line(12_000, 64_423, Duration::from_secs(6)),
            "replay: 12,000/64,423 events (18%), 2,000 events/s, 26 s left"
        );
        assert_eq!(
            progress_line(0, 10, Duration::ZERO),
            "replay: 0/10 events (0%), 0 events/s, time left unknown"
        );
        let p = Progress::lines(3);
        for _ in 0..3 {
            p.inc();
        }
        p.finish();
    }

    #[test]
    fn bad_rows_are_errors() {
        assert!(parse_row("garbage").is_err());
        assert!(parse_row("AA0101\t33116\t9664491\t2\tPS\t99x101\t0:00:31\t0:00:36\t5\t0:00:36\t0:03:09\t153\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER").is_err());
        assert!(parse_row("AA0101\t33116\t9664491\t2\tPS\t990101\t0:0x:31\t0:00:36\t5\t0:00:36\t0:03:09\t153\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER").is_err());
    }

    #[test]
    fn json_is_a_valid_event() {
        let r = parse_row("AA0101\t33118\t27997683\t2\tPS\t990101\t6:55:20\t6:55:26\t6\t6:55:26\t6:55:43\t17\tAGENT\t6:55:43\t6:56:37\t54\tMICHAL").unwrap().unwrap();
        let json = r.to_json();
        let ev = crate::event::decode(json.as_bytes(), |t| t == "call.completed").unwrap();
        assert_eq!(ev.subject, "anonbank-ps");
        assert_eq!(ev.source, "anonbank-1999");
    }
}
