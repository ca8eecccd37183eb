//! Test fixture: real ClickHouse and real broker processes (Apache Kafka by default, tansu
//! with `BROKER=tansu`), a fresh database and topic set per test, and the
//! `callmeter` binary run as a child process.
//!
//! Servers are started once per test binary (shared) or per test (when a test stops or
//! restarts them). Every child process is spawned by one long-lived supervisor thread with
//! `PR_SET_PDEATHSIG`, so nothing outlives the test process even when a test panics.
//! `CM_TEST_CLICKHOUSE_URL` / `CM_TEST_BROKERS` point the shared fixture at
//! servers started elsewhere instead.

#![allow(dead_code)]

pub mod browser;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn supervisor() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static TX: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-supervisor".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
                // Keep the thread (the children's parent) alive for the whole test process.
                loop {
                    std::thread::park();
                }
            })
            .expect("supervisor thread");
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
    // parent; it makes the kernel SIGKILL the child when the spawning thread exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns a child that dies with the test process.
pub fn spawn(cmd: Command) -> Child {
    let (tx, rx) = mpsc::channel();
    supervisor()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("supervisor alive");
    rx.recv().expect("supervisor reply").expect("spawn child")
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn test_root() -> PathBuf {
    let p = std::env::temp_dir().join(format!("callmeter-it-{}", std::process::id()));
    std::fs::create_dir_all(&p).expect("test dir");
    p
}

/// A process's resident memory in kB (`VmRSS` of /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sends a signal (`STOP`, `CONT`, ...) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// A ClickHouse server process.
pub struct ClickHouseServer {
    pub url: String,
    pub http_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClickHouseServer {
    pub fn start(name: &str) -> ClickHouseServer {
        let dir = test_root().join(format!("clickhouse-{name}"));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let http_port = free_port();
        let mut s = ClickHouseServer {
            url: format!("http://127.0.0.1:{http_port}"),
            http_port,
            dir,
            child: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let d = self.dir.display().to_string();
        let mut cmd = Command::new("clickhouse-server");
        cmd.arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={d}/"))
            .arg(format!("--tmp_path={d}/tmp/"))
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", free_port()))
            .arg(format!("--interserver_http_port={}", free_port()))
            .arg(format!("--logger.log={d}/log"))
            .arg(format!("--logger.errorlog={d}/err"))
            .arg("--logger.level=warning")
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn(cmd));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(out) = Command::new("curl")
                .args(["-sf", &format!("{}/?query=SELECT%201", self.url)])
                .output()
                && out.status.success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "ClickHouse did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker the suite runs on: Apache Kafka by default, tansu with
/// `BROKER=tansu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Apache Kafka (the version pinned in `scripts/kafka/pom.xml`), KRaft combined mode.
    Kafka,
    /// tansu 0.6, a Kafka-compatible broker without Java.
    Tansu,
}

/// The broker flavor chosen for this test process.
pub fn flavor() -> Flavor {
    match std::env::var("BROKER").as_deref() {
        Ok("tansu") => Flavor::Tansu,
        Ok("kafka") | Err(_) => Flavor::Kafka,
        Ok(other) => panic!("BROKER must be kafka or tansu, not {other}"),
    }
}

/// tansu storage engines (Apache Kafka always keeps its log on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Persists across broker restarts; offsets_for_times is right.
    Sqlite,
    /// About twice as fast; loses everything on restart.
    Memory,
}

/// The Apache Kafka jars installed by `scripts/setup.sh` (or `CALLMETER_KAFKA_LIBS`).
fn kafka_libs() -> PathBuf {
    let dir = std::env::var_os("CALLMETER_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/kafka/libs"));
    assert!(
        dir.join(".").is_dir(),
        "no Apache Kafka jars in {}: run scripts/setup.sh (or BROKER=tansu)",
        dir.display()
    );
    dir
}

fn kafka_java(libs: &Path) -> Command {
    let mut cmd = Command::new("java");
    cmd.arg(format!(
        "-Dlog4j2.configurationFile={}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/kafka/log4j2.yaml")
            .display()
    ))
    .arg("-cp")
    .arg(format!("{}/*", libs.display()));
    cmd
}

/// A broker process: Apache Kafka or tansu, per [`flavor`].
pub struct Broker {
    pub addr: String,
    pub flavor: Flavor,
    port: u16,
    /// Apache Kafka's controller listener.
    controller_port: u16,
    dir: PathBuf,
    engine: Engine,
    child: Option<Child>,
    /// How long the last start took until the broker answered metadata requests.
    pub started_in: Duration,
}

impl Broker {
    /// A broker of this process's flavor; `engine` applies to tansu only.
    pub fn start(name: &str, engine: Engine) -> Broker {
        let flavor = flavor();
        let dir = test_root().join(format!(
            "{}-{name}",
            match flavor {
                Flavor::Kafka => "kafka",
                Flavor::Tansu => "tansu",
            }
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut b = Broker {
            addr: format!("127.0.0.1:{port}"),
            flavor,
            port,
            controller_port: free_port(),
            dir,
            engine,
            child: None,
            started_in: Duration::ZERO,
        };
        if flavor == Flavor::Kafka {
            b.format_kafka();
        }
        b.launch();
        b
    }

    /// Writes Apache Kafka's `server.properties` (KRaft combined mode, one node, all state
    /// under the broker's directory) and formats its log directory.
    fn format_kafka(&self) {
        let (port, ctl) = (self.port, self.controller_port);
        let data = self.dir.join("data");
        let props = include_str!("../../../scripts/kafka/server.properties")
            .replace("@PORT@", &port.to_string())
            .replace("@CONTROLLER_PORT@", &ctl.to_string())
            .replace("@DATA@", &data.display().to_string());
        std::fs::write(self.dir.join("server.properties"), props).unwrap();
        let out = kafka_java(&kafka_libs())
            .args(["kafka.tools.StorageTool", "format", "--standalone"])
            // `--cluster-id=ID`: an id may start with `-`, which the tool would take for an option.
            .arg(format!("--cluster-id={}", kafka_cluster_id()))
            .arg("-c")
            .arg(self.dir.join("server.properties"))
            .output()
            .expect("run Kafka's StorageTool (java)");
        assert!(
            out.status.success(),
            "formatting Kafka's log dir: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&mut self) {
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        let mut cmd = match self.flavor {
            Flavor::Kafka => {
                let mut cmd = kafka_java(&kafka_libs());
                cmd.args(["-Xms256m", "-Xmx512m", "kafka.Kafka"])
                    .arg(self.dir.join("server.properties"));
                cmd
            }
            Flavor::Tansu => {
                let url = format!("tcp://127.0.0.1:{}", self.port);
                let storage = match self.engine {
                    Engine::Sqlite => "sqlite://tansu.db".to_string(),
                    Engine::Memory => "memory://tansu/".to_string(),
                };
                let mut cmd = Command::new("tansu");
                cmd.args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", &storage]);
                cmd
            }
        };
        cmd.current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(spawn(cmd));
        assert!(
            wait_port(self.port, Duration::from_secs(90)),
            "the broker ({:?}) did not start; see {}",
            self.flavor,
            self.dir.join("broker.log").display()
        );
        if self.flavor == Flavor::Kafka {
            wait_metadata(&self.addr, Duration::from_secs(60));
        }
        self.started_in = started.elapsed();
        eprintln!(
            "broker: {:?} on {} answered after {:.1} s",
            self.flavor,
            self.addr,
            self.started_in.as_secs_f64()
        );
    }

    /// Kills the broker (SIGKILL: an outage without a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and state.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The broker's resident memory in kB (from /proc), when running.
    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.child.as_ref()?.id())
    }

    /// Creates a topic (neither broker auto-creates).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        create_topic(&self.addr, name, partitions);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random KRaft cluster id (a UUID, URL-safe base64 without padding).
fn kafka_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Waits until the broker answers a metadata request.
fn wait_metadata(brokers: &str, timeout: Duration) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let deadline = Instant::now() + timeout;
    loop {
        match c.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(md) if !md.brokers().is_empty() => return,
            other => assert!(
                Instant::now() < deadline,
                "the broker at {brokers} answers no metadata: {:?}",
                other.err()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The servers shared by the tests that do not stop them.
pub struct Shared {
    pub clickhouse_url: String,
    pub brokers: String,
    _ch: Option<ClickHouseServer>,
    _broker: Option<Broker>,
    broker: Option<&'static Broker>,
}

pub fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let (ch_url, ch) = match std::env::var("CM_TEST_CLICKHOUSE_URL") {
            Ok(u) => (u, None),
            Err(_) => {
                let s = ClickHouseServer::start("shared");
                (s.url.clone(), Some(s))
            }
        };
        let (brokers, b) = match std::env::var("CM_TEST_BROKERS") {
            Ok(b) => (b, None),
            Err(_) => {
                let b = Broker::start("shared", Engine::Sqlite);
                (b.addr.clone(), Some(b))
            }
        };
        Shared {
            clickhouse_url: ch_url,
            brokers,
            _ch: ch,
            _broker: b,
            broker: None,
        }
    })
}

/// Creates a topic with unlimited retention: with rdkafka's admin client on Apache Kafka,
/// with tansu's CLI on tansu.
pub fn create_topic(brokers: &str, name: &str, partitions: u32) {
    match flavor() {
        Flavor::Kafka => create_topic_admin(brokers, name, partitions, &[]),
        Flavor::Tansu => {
            let out = Command::new("tansu")
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--config", "retention.ms=-1"])
                .args(["--broker", &format!("tcp://{brokers}")])
                .output()
                .expect("tansu topic create");
            assert!(
                out.status.success(),
                "creating topic {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Creates a topic with rdkafka's admin client, with extra topic configs.
pub fn create_topic_admin(brokers: &str, name: &str, partitions: u32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let mut topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1))
        .set("retention.ms", "-1");
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin(brokers, |a, opts| a.create_topics([&topic], opts)).expect("create topics");
    for r in results {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Sets topic configs on an existing topic with rdkafka's admin client (incremental
/// semantics are not needed: the test sets what it names).
pub fn alter_topic(brokers: &str, name: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (k, v) in configs {
        change = change.set(k, v);
    }
    let results =
        admin(brokers, |a, opts| a.alter_configs([&change], opts)).expect("alter configs");
    for r in results {
        if let Err((t, e)) = r {
            panic!("altering topic {t:?}: {e}");
        }
    }
}

/// Runs one admin-client request against `brokers` (30 s operation timeout). The admin
/// future needs no runtime: it is blocked on off any async worker.
fn admin<T, F>(
    brokers: &str,
    request: impl FnOnce(
        &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
        &rdkafka::admin::AdminOptions,
    ) -> F,
) -> T
where
    F: std::future::Future<Output = T> + Send,
    T: Send,
{
    let client: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
    let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let fut = request(&client, &opts);
    std::thread::scope(|s| {
        s.spawn(|| futures::executor::block_on(fut))
            .join()
            .expect("admin thread")
    })
}

/// A unique name for this test's resources.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's world: topics, database, group, config file, API port.
#[derive(Clone)]
pub struct World {
    pub name: String,
    pub brokers: String,
    pub clickhouse_url: String,
    pub database: String,
    pub topic: String,
    pub dlq: String,
    pub alerts: String,
    /// The period-close statements topic (`kafka.statements_topic`).
    pub statements: String,
    pub group: String,
    pub api_port: u16,
    pub dir: PathBuf,
    /// Extra TOML appended to the generated config (plans, tenants, meters, ...).
    pub extra: String,
    /// Overrides of generated sections, e.g. `("pipeline", "flush_interval = \"500ms\"")`.
    pub sections: BTreeMap<String, String>,
    /// The instance that owns `api_port` (the first one started).
    primary: Primary,
}

/// Which instance name serves the world's API port (shared by clones).
#[derive(Clone, Default)]
struct Primary(std::sync::Arc<Mutex<String>>);

impl Primary {
    /// Sets the primary to `name` if none is set; returns the primary.
    fn compare_exchange(&self, empty: String, name: String) -> Result<String, String> {
        let mut g = self.0.lock().unwrap();
        if *g == empty {
            *g = name.clone();
            Ok(name)
        } else {
            Err(g.clone())
        }
    }
}

impl World {
    /// A world on the shared servers with `partitions` partitions on the events topic.
    pub fn new(name: &str, partitions: u32) -> World {
        let s = shared();
        World::on(name, partitions, &s.brokers, &s.clickhouse_url)
    }

    pub fn on(name: &str, partitions: u32, brokers: &str, ch: &str) -> World {
        let w = World::without_output_topics(name, partitions, brokers, ch);
        create_topic(brokers, &w.dlq, 1);
        create_topic(brokers, &w.alerts, 1);
        create_topic(brokers, &w.statements, 1);
        w
    }

    /// A world whose dead-letter and alerts topics are not created (only the events topic).
    pub fn without_output_topics(name: &str, partitions: u32, brokers: &str, ch: &str) -> World {
        let id = unique(name);
        let w = World {
            name: id.clone(),
            brokers: brokers.to_string(),
            clickhouse_url: ch.to_string(),
            database: format!("cm_{id}"),
            topic: format!("{id}.events"),
            dlq: format!("{id}.dlq"),
            alerts: format!("{id}.alerts"),
            statements: format!("{id}.statements"),
            group: format!("{id}.group"),
            api_port: free_port(),
            dir: test_root().join(&id),
            extra: String::new(),
            sections: BTreeMap::new(),
            primary: Primary::default(),
        };
        std::fs::create_dir_all(&w.dir).unwrap();
        create_topic(brokers, &w.topic, partitions);
        w
    }

    pub fn section(mut self, name: &str, body: &str) -> Self {
        self.sections.insert(name.to_string(), body.to_string());
        self
    }

    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Writes the config file and returns its path.
    pub fn config(&self) -> PathBuf {
        let pipeline = self
            .sections
            .get("pipeline")
            .cloned()
            .unwrap_or_else(|| "flush_interval = \"500ms\"".into());
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topic = "{topic}"
dlq_topic = "{dlq}"
alerts_topic = "{alerts}"
statements_topic = "{statements}"

[clickhouse]
url = "{ch}"
database = "{db}"
{clickhouse_extra}

[pipeline]
{pipeline}

[api]
listen = "127.0.0.1:{port}"
tokens = ["test-token"]

{other_sections}
{extra}
"#,
            other_sections = self
                .sections
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "pipeline" | "clickhouse"))
                .map(|(name, body)| format!("[{name}]\n{body}\n"))
                .collect::<String>(),
            brokers = self.brokers,
            group = self.group,
            topic = self.topic,
            dlq = self.dlq,
            alerts = self.alerts,
            statements = self.statements,
            ch = self.clickhouse_url,
            db = self.database,
            clickhouse_extra = self.sections.get("clickhouse").cloned().unwrap_or_default(),
            port = self.api_port,
            extra = self.extra,
        );
        // Written to a temporary file and renamed into place: an instance started a moment
        // before may still be reading the file, and must never see it truncated (it would
        // start on the defaults: a flaky failure seen with two instances).
        let path = self.dir.join("callmeter.toml");
        let tmp = self.dir.join(format!("{}.toml.tmp", unique("callmeter")));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Starts `callmeter run` (instance `instance`, static membership).
    pub fn run(&self, instance: &str) -> Pipeline {
        self.run_with(instance, &[])
    }

    /// Starts `callmeter run` as a dynamic group member (no `group.instance.id`).
    pub fn run_dynamic(&self, instance: &str) -> Pipeline {
        self.run_with(instance, &[("DYNAMIC_MEMBERSHIP", "1")])
    }

    pub fn run_with(&self, instance: &str, env: &[(&str, &str)]) -> Pipeline {
        let config = self.config();
        // The first instance started serves the world's API port; others get their own.
        let port = if self
            .primary
            .compare_exchange(String::new(), instance.to_string())
            .unwrap_or_else(|cur| cur)
            == instance
        {
            self.api_port
        } else {
            free_port()
        };
        let log = self.dir.join(format!("{instance}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callmeter"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("CALLMETER_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if !env.iter().any(|(k, _)| *k == "DYNAMIC_MEMBERSHIP") {
            cmd.env("CALLMETER_KAFKA__GROUP_INSTANCE_ID", instance);
        }
        for (k, v) in env.iter().filter(|(k, _)| *k != "DYNAMIC_MEMBERSHIP") {
            cmd.env(k, v);
        }
        Pipeline {
            child: Some(spawn(cmd)),
            log,
            api_port: port,
        }
    }

    /// Runs a callmeter subcommand to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let config = self.config();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callmeter"));
        cmd.args(args).arg("--config").arg(&config);
        cmd.output().expect("run callmeter")
    }

    pub fn ch(&self) -> Ch {
        Ch {
            url: self.clickhouse_url.clone(),
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer")
    }

    /// Produces `(key, payload)` messages and waits for all deliveries.
    pub async fn produce(&self, msgs: &[(String, Vec<u8>)]) {
        let p = self.producer();
        self.produce_with(&p, msgs).await;
    }

    /// Produces with an existing producer (streams reuse one client).
    pub async fn produce_with(&self, p: &FutureProducer, msgs: &[(String, Vec<u8>)]) {
        let mut futs = Vec::new();
        for (k, v) in msgs {
            let rec = FutureRecord::to(&self.topic).key(k).payload(v);
            futs.push(p.send(rec, Duration::from_secs(30)));
            if futs.len() >= 5000 {
                for f in futs.drain(..) {
                    f.await.expect("delivered");
                }
            }
        }
        for f in futs {
            f.await.expect("delivered");
        }
    }

    /// Reads every message currently in `topic` (all partitions), waiting until at least
    /// `min` arrived or `timeout` passed.
    pub fn read_topic(&self, topic: &str, min: usize, timeout: Duration) -> Vec<Consumed> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        c.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while Instant::now() < deadline && out.len() < min {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            hd.value
                                .map(|v| String::from_utf8_lossy(v).to_string())
                                .unwrap_or_default(),
                        );
                    }
                }
                out.push(Consumed {
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().map(|p| p.to_vec()),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
        }
        out
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// The broker flavor this world runs on.
    pub fn flavor(&self) -> Flavor {
        flavor()
    }
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

/// A running `callmeter run`.
pub struct Pipeline {
    child: Option<Child>,
    pub log: PathBuf,
    /// This instance's API port.
    pub api_port: u16,
}

impl Pipeline {
    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// ClickHouse over HTTP (TabSeparated results).
#[derive(Clone)]
pub struct Ch {
    pub url: String,
}

impl Ch {
    pub async fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, BoxError> {
        let resp = reqwest::Client::new()
            .post(&self.url)
            .body(format!("{sql} FORMAT TabSeparated"))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(format!("ClickHouse {status}: {text}").into());
        }
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// The first column of the first row, or None.
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        self.query(sql)
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|r| r.into_iter().next())
    }

    pub async fn exec(&self, sql: &str) -> Result<(), BoxError> {
        let resp = reqwest::Client::new()
            .post(&self.url)
            .body(sql.to_string())
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(resp.text().await?.into());
        }
        Ok(())
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// The Anonymous Bank call records shipped in the repository.
pub fn dataset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/anonbank")
}
