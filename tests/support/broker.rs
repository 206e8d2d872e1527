//! A Kafka-protocol broker for a test: tansu with in-memory storage on a free loopback port.
//!
//! tansu quirks the tests must live with (see TESTING.md): a consumer group join takes about half
//! of `session.timeout.ms`, so consumers in tests use 6000 ms; the high watermark it reports can
//! be wrong, so nothing may rely on it; with memory storage a restart loses every topic and
//! record; and when two producer connections append to one partition at once, a fetch can be
//! answered with the later append while the earlier offset is not yet readable, so a consumer
//! at the end of the partition moves past a record it never saw (seen as a `Fetch … at offset N`
//! answered by a single record at N+1, with N present when the partition is read again later).
//! Tests therefore never have two producers writing one partition at the same time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};

use crate::{free_port, required_path, wait_for, ChildProcess};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 3;

/// A record's headers by name, values as text (lossy UTF-8; a header without a value as "").
pub fn header_strings(message: &impl Message) -> BTreeMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A running tansu broker. Drop kills it.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    port: u16,
    /// The port put in metadata when clients must reach the broker through something else (a
    /// [`crate::FaultProxy`]); None = its own port.
    advertised_port: Option<u16>,
    process: Option<ChildProcess>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers a metadata request.
    /// Panics if `TOKENLEDGER_TANSU_BIN` is not set (run scripts/test.sh).
    pub async fn start() -> Broker {
        Self::start_with(None).await
    }

    /// Starts a broker that tells clients, in its metadata, to connect to `127.0.0.1:advertised`
    /// (a proxy forwarding to [`Broker::listener_addr`]), so every connection after the bootstrap
    /// goes through that port. Clients should bootstrap through it too.
    pub async fn start_advertising(advertised: u16) -> Broker {
        Self::start_with(Some(advertised)).await
    }

    async fn start_with(advertised_port: Option<u16>) -> Broker {
        let bin = required_path("TOKENLEDGER_TANSU_BIN");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut broker = Broker {
                bin: bin.clone(),
                port: free_port(),
                advertised_port,
                process: None,
            };
            match broker.launch().await {
                Ok(()) => return broker,
                // Most likely someone took the free port before tansu bound it: try another.
                Err(log) => last_log = log,
            }
        }
        panic!("tansu did not start in {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// Starts tansu on `self.port`; Err(log tail) if it exits during startup.
    async fn launch(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!(
            "tcp://127.0.0.1:{}",
            self.advertised_port.unwrap_or(self.port)
        );
        let args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ];
        let mut process = ChildProcess::spawn("tansu", &self.bin, &args, &[]);
        let bootstrap = self.bootstrap();
        let ready = wait_for(READY_TIMEOUT, || {
            let running = process.is_running();
            let bootstrap = bootstrap.clone();
            async move { !running || metadata_ok(&bootstrap).await }
        })
        .await;
        if !process.is_running() {
            let log = process.log_tail();
            drop(process);
            return Err(log);
        }
        if !ready {
            panic!(
                "tansu on {bootstrap} did not answer a metadata request within {READY_TIMEOUT:?}; log:\n{}",
                process.log_tail()
            );
        }
        self.process = Some(process);
        Ok(())
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address tansu listens on (what a proxy in front of it forwards to).
    pub fn listener_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client configuration pointing at this broker, with the settings tansu needs in tests.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4")
            // tansu takes about half the session timeout to complete a group join.
            .set("session.timeout.ms", "6000");
        config
    }

    /// Creates `name` with `partitions` partitions and waits until its metadata shows them all.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .unwrap_or_else(|e| panic!("cannot create an admin client: {e}"));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => panic!("create topic {topic}: {code}"),
            }
        }
        let bootstrap = self.bootstrap();
        let ok = wait_for(Duration::from_secs(10), || {
            let bootstrap = bootstrap.clone();
            let name = name.to_owned();
            async move { partition_count(&bootstrap, &name).await == Some(partitions) }
        })
        .await;
        assert!(
            ok,
            "topic {name} does not show {partitions} partitions in the metadata"
        );
    }

    /// Deletes `name` and waits until its metadata no longer shows it (a topic deleted under
    /// running clients; [`Broker::create_topic`] recreates it empty).
    pub async fn delete_topic(&self, name: &str) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .unwrap_or_else(|e| panic!("cannot create an admin client: {e}"));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .delete_topics(&[name], &opts)
            .await
            .unwrap_or_else(|e| panic!("delete topic {name}: {e}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("delete topic {topic}: {code}");
            }
        }
        let bootstrap = self.bootstrap();
        let gone = wait_for(Duration::from_secs(10), || {
            let bootstrap = bootstrap.clone();
            let name = name.to_owned();
            async move { partition_count(&bootstrap, &name).await.is_none() }
        })
        .await;
        assert!(
            gone,
            "topic {name} still shows in the metadata after deletion"
        );
    }

    /// The low and high watermarks the broker reports for one partition (diagnostics only: tansu's
    /// high watermark can be wrong, see the module comment).
    pub async fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let bootstrap = self.bootstrap();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            metadata_consumer(&bootstrap)?
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Kills the broker (an outage). With memory storage, topics and records are gone after
    /// [`Broker::start_again`]; tests that need them must create them again.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    /// Starts the broker again on the same port, so clients reconnect to the address they know.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "start_again: the broker is still running"
        );
        if let Err(log) = self.launch().await {
            panic!(
                "tansu did not start again on port {}; log:\n{log}",
                self.port
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// The broker's process, e.g. for its log.
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }
}

fn metadata_consumer(bootstrap: &str) -> Option<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("log_level", "3")
        .create()
        .ok()
}

/// Does the broker answer a metadata request? rdkafka's metadata call blocks, so it runs on the
/// blocking pool.
async fn metadata_ok(bootstrap: &str) -> bool {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        metadata_consumer(&bootstrap).is_some_and(|c| {
            c.fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
        })
    })
    .await
    .unwrap_or(false)
}

async fn partition_count(bootstrap: &str, topic: &str) -> Option<i32> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_consumer(&bootstrap)?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .ok()?;
        let t = metadata.topics().iter().find(|t| t.name() == topic)?;
        if t.error().is_some() {
            return None;
        }
        i32::try_from(t.partitions().len()).ok()
    })
    .await
    .ok()
    .flatten()
}
