//! What every phase with servers shares: fresh names for its topics, consumer group and
//! database ([`Names`], [`set_up`]), Kafka clients with the configured properties, and the
//! pipeline of `callmeter run` on its own thread ([`Running`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaSettings};
use crate::sink::clickhouse::ClickHouse;
use crate::state::Shared;

pub(super) fn client_config(ks: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ks.brokers);
    for (k, v) in &ks.properties {
        c.set(k, &v.0);
    }
    c
}

pub(super) async fn create_topics(
    ks: &KafkaSettings,
    topics: &[(&str, i32)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(ks)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, parts)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(1)).set("retention.ms", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

/// A plain consumer with the pipeline's client settings and a fresh group.
pub(super) fn plain_consumer(ks: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ks.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    // The pipeline's fetch settings: the comparison is of what each does with the messages.
    for (k, v) in crate::ingest::consumer::FETCH_DEFAULTS {
        c.set(*k, *v);
    }
    for (k, v) in &ks.properties {
        c.set(k, &v.0);
    }
    Ok(c.create()?)
}

/// `callmeter run`'s pipeline on its own thread.
pub(super) struct Running {
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    pub(super) thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub(super) fn start(rt: &tokio::runtime::Runtime, config: Config) -> anyhow::Result<Running> {
        let shared = Shared::new(config.catalog.clone());
        let shutdown = CancellationToken::new();
        let (s, stop, handle) = (shared.clone(), shutdown.clone(), rt.handle().clone());
        let thread = std::thread::Builder::new()
            .name("callmeter-consumer".into())
            .spawn(move || crate::ingest::run(config, s, stop, handle, Default::default()))
            .context("starting the consumer thread")?;
        Ok(Running {
            shared,
            shutdown,
            thread,
        })
    }

    pub(super) fn consumed(&self) -> u64 {
        self.shared.consumed()
    }

    pub(super) fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }
}

/// Names of one phase's resources.
pub(super) struct Names {
    pub(super) topic: String,
    pub(super) alerts: String,
    pub(super) statements: String,
    pub(super) dlq: String,
    pub(super) group: String,
    pub(super) database: String,
}

impl Names {
    pub(super) fn new(config: &Config, run: &str, phase: &str) -> Names {
        let base = format!("callmeter-bench-{run}-{phase}");
        Names {
            topic: format!("{base}-events"),
            alerts: format!("{base}-alerts"),
            statements: format!("{base}-statements"),
            dlq: format!("{base}-dlq"),
            group: base.clone(),
            database: format!(
                "{}_bench_{run}_{phase}",
                config.settings.clickhouse.database
            ),
        }
    }

    pub(super) fn config(&self, base: &Config) -> Config {
        let mut c = base.clone();
        let k = &mut c.settings.kafka;
        k.topic = self.topic.clone();
        k.alerts_topic = self.alerts.clone();
        k.statements_topic = self.statements.clone();
        k.dlq_topic = self.dlq.clone();
        k.group_id = self.group.clone();
        k.group_instance_id = Some(format!("{}-0", self.group));
        c.settings.clickhouse.database = self.database.clone();
        c
    }

    pub(super) async fn create(&self, ks: &KafkaSettings, partitions: i32) -> anyhow::Result<()> {
        create_topics(
            ks,
            &[
                (&self.topic, partitions),
                (&self.alerts, 1),
                (&self.statements, 1),
                (&self.dlq, 1),
            ],
        )
        .await
    }
}

pub(super) async fn stored_calls(ch: &ClickHouse, topic: &str) -> anyhow::Result<u64> {
    let n: u64 = ch
        .client()
        .query(&crate::sink::clickhouse::queries::bench_stored_calls(
            ch.database(),
        ))
        .bind(topic)
        .fetch_one()
        .await?;
    Ok(n)
}

/// A phase's fresh names, its configuration and ClickHouse client: topics created (when
/// `partitions` is given) and the database migrated (and listed for dropping at the end).
pub(super) fn set_up(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    run: &str,
    phase: &str,
    partitions: Option<i32>,
    databases: &mut Vec<String>,
) -> anyhow::Result<(Names, Config, ClickHouse)> {
    let names = Names::new(config, run, phase);
    let c = names.config(config);
    let ch = ClickHouse::new(&c.settings.clickhouse);
    rt.block_on(async {
        if let Some(p) = partitions {
            names.create(&c.settings.kafka, p).await?;
        }
        databases.push(names.database.clone());
        ch.migrate().await.context("migrating the bench database")
    })?;
    Ok((names, c, ch))
}
