//! The pipeline's moving parts for fault tests: gateway and processor processes with the short
//! timeouts tests need, a client that retries a request with the same ids until it gets a 202
//! (as a well-behaved client must), concurrent load made of such clients, and process memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::ledger_check::{install_budgets, Counters, Expected, Ledger, Rng};
use crate::{free_port, wait_for, Binary, Broker, ChildProcess, Database, FaultProxy};

pub const USAGE_TOPIC: &str = "usage-events";
pub const DLQ_TOPIC: &str = "usage-events.dlq";
const STARTUP: Duration = Duration::from_secs(60);

/// Broker and database, each behind its own proxy, migrated, with the test budgets.
#[derive(Debug)]
pub struct Services {
    pub broker_proxy: FaultProxy,
    pub broker: Broker,
    pub db_proxy: FaultProxy,
    pub database: Database,
    /// `bootstrap.servers` through the proxy.
    pub brokers: String,
    /// The database through the proxy (the processors' URL).
    pub db_url: String,
}

impl Services {
    /// Starts both with `partitions` partitions on the usage topic.
    pub async fn start(partitions: i32) -> Services {
        let broker_proxy = FaultProxy::bind().await;
        let (broker, database) = tokio::join!(
            Broker::start_advertising(broker_proxy.port()),
            Database::start()
        );
        broker_proxy.forward_to(broker.listener_addr());
        let db_proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], database.port()))).await;
        broker.create_topic(USAGE_TOPIC, partitions).await;
        broker.create_topic(DLQ_TOPIC, 1).await;
        let url = database.url();
        let mut migrate = ChildProcess::spawn(
            "processor-migrate",
            Binary::path("processor"),
            &["migrate"],
            &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
        );
        let status = migrate.wait_exit(STARTUP).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "processor migrate: {status:?}\n{}",
            migrate.log_tail()
        );
        install_budgets(&database.client().await).await;
        Services {
            brokers: format!("127.0.0.1:{}", broker_proxy.port()),
            db_url: format!("host=127.0.0.1 port={} user=postgres", db_proxy.port()),
            broker_proxy,
            broker,
            db_proxy,
            database,
        }
    }

    /// A gateway through the broker proxy, auth off, ready.
    pub async fn gateway(&self, name: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start(name, &self.brokers, "", env, true).await
    }

    /// A processor through both proxies (see [`Processor::spawn`]).
    pub fn processor(&self, name: &str, env: &[(&str, &str)]) -> Processor {
        Processor::spawn(name, &self.brokers, &self.db_url, env)
    }
}

/// A gateway process and its addresses.
#[derive(Debug)]
pub struct Gateway {
    pub process: ChildProcess,
    pub url: String,
    pub admin_url: String,
    _config_dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway on free ports; `config` is TOML written to a file (keys, …), `env` adds
    /// `TOKENLEDGER_…` settings. Auth is off unless `config` or `env` configure it. Waits for
    /// `/readyz` when `wait_ready`.
    pub async fn start(
        name: &str,
        brokers: &str,
        config: &str,
        env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Gateway {
        let config_dir = tempfile::tempdir().expect("tempdir");
        let config_path = config_dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).expect("gateway config");
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut all_env: Vec<(&str, &str)> = vec![
            ("TOKENLEDGER_KAFKA__BROKERS", brokers),
            ("TOKENLEDGER_HTTP__LISTEN", listen.as_str()),
            ("TOKENLEDGER_HTTP__ADMIN_LISTEN", admin.as_str()),
        ];
        if !config.contains("[auth]") && !config.contains("[[auth.keys]]") {
            all_env.push(("TOKENLEDGER_AUTH__ENABLED", "false"));
        }
        all_env.extend_from_slice(env);
        let config_arg = config_path.display().to_string();
        let process = ChildProcess::spawn(
            name,
            Binary::path("gateway"),
            &["--config", config_arg.as_str()],
            &all_env,
        );
        let mut gateway = Gateway {
            process,
            url: format!("http://{listen}"),
            admin_url: format!("http://{admin}"),
            _config_dir: config_dir,
        };
        if wait_ready {
            gateway.wait_ready(Duration::from_secs(60)).await;
        }
        gateway
    }

    pub async fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("{}/readyz", self.url);
        let ready = wait_for(timeout, || answers_ok(&url, Duration::from_secs(2))).await;
        if !ready {
            self.process.assert_running();
            panic!("{} was not ready within {timeout:?}", self.process.name());
        }
    }

    pub async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.admin_url))
            .await
            .unwrap_or_default()
    }
}

/// A processor process, its metrics address and when it was started.
#[derive(Debug)]
pub struct Processor {
    pub process: ChildProcess,
    pub metrics_url: String,
    /// Taken just before the spawn: every row this process inserts is ingested after it.
    pub spawned_at: SystemTime,
}

impl Processor {
    /// Starts `processor run` with test timeouts (6 s session timeout for tansu, 100 ms batches,
    /// debug logs so commits are visible), plus `env`.
    pub fn spawn(name: &str, brokers: &str, database_url: &str, env: &[(&str, &str)]) -> Processor {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut all_env: Vec<(&str, &str)> = vec![
            ("TOKENLEDGER_KAFKA__BROKERS", brokers),
            ("TOKENLEDGER_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TOKENLEDGER_DATABASE__URL", database_url),
            ("TOKENLEDGER_DATABASE__TIMEOUT_MS", "5000"),
            ("TOKENLEDGER_METRICS__LISTEN", metrics.as_str()),
            ("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "100"),
            ("TOKENLEDGER_LOG", "info,processor=debug"),
        ];
        all_env.extend_from_slice(env);
        let spawned_at = SystemTime::now();
        let process = ChildProcess::spawn(name, Binary::path("processor"), &["run"], &all_env);
        Processor {
            process,
            metrics_url: format!("http://{metrics}"),
            spawned_at,
        }
    }

    /// Waits until this processor has taken partitions (its assignment log line).
    pub async fn wait_assigned(&mut self, timeout: Duration) {
        self.process
            .wait_for_log("partitions assigned at stored offsets", timeout)
            .await;
    }

    /// The processor's counters, if its metrics endpoint answers.
    pub async fn scrape(&self) -> Option<Counters> {
        get_text(&format!("{}/metrics", self.metrics_url))
            .await
            .map(|text| Counters::parse(&text))
    }

    /// Like [`Processor::scrape`], but panics when the endpoint does not answer.
    pub async fn final_scrape(&mut self) -> Counters {
        match self.scrape().await {
            Some(counters) => counters,
            None => {
                self.process.assert_running();
                panic!("{}: /metrics does not answer", self.process.name())
            }
        }
    }

    /// How many batches it logged as committed so far.
    pub fn commits_logged(&self) -> usize {
        self.process
            .log_contents()
            .matches("batch committed")
            .count()
    }
}

/// Waits until the gateway has acknowledged at least 100 more events and each of `processors`
/// has logged at least three more committed batches: traffic flows end to end, through every
/// one of them. Panics with `what` after 60 s.
pub async fn wait_for_flow(ledger: &Ledger, processors: &[&Processor], what: &str) {
    let timeout = Duration::from_secs(60);
    let events = ledger.len();
    let commits: Vec<usize> = processors.iter().map(|p| p.commits_logged()).collect();
    let flowing = wait_for(timeout, || async {
        ledger.len() >= events + 100
            && processors
                .iter()
                .zip(&commits)
                .all(|(p, before)| p.commits_logged() >= before + 3)
    })
    .await;
    assert!(
        flowing,
        "{what}: no traffic end to end within {timeout:?} ({} → {} events acknowledged; \
         commits logged {commits:?} → {:?})",
        events,
        ledger.len(),
        processors
            .iter()
            .map(|p| p.commits_logged())
            .collect::<Vec<_>>()
    );
}

/// `(VmRSS, VmHWM)` of a process in KiB, from /proc.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

/// Whether a GET of `url` answers 2xx within `timeout`.
pub async fn answers_ok(url: &str, timeout: Duration) -> bool {
    http_client()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn get_text(url: &str) -> Option<String> {
    let response = http_client()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// One HTTP attempt of a usage request, as the client saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started: Instant,
    pub finished: Instant,
    /// None: no HTTP answer (connection refused or reset, timeout).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub body: Value,
    pub events: usize,
}

/// POSTs usage events and retries each request with the same ids until it is answered 202,
/// recording every 202'd event in a [`Ledger`] and every attempt.
#[derive(Debug, Clone)]
pub struct UsageClient {
    http: reqwest::Client,
    gateways: Arc<Mutex<Vec<String>>>,
    key: Option<String>,
    ledger: Ledger,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// A 503's Retry-After is honoured up to this long.
    pub max_retry_wait: Duration,
}

impl UsageClient {
    pub fn new(gateway_url: &str, ledger: &Ledger) -> UsageClient {
        UsageClient {
            http: http_client(),
            gateways: Arc::new(Mutex::new(vec![gateway_url.to_owned()])),
            key: None,
            ledger: ledger.clone(),
            attempts: Arc::default(),
            max_retry_wait: Duration::from_secs(5),
        }
    }

    pub fn with_key(mut self, key: &str) -> UsageClient {
        self.key = Some(key.to_owned());
        self
    }

    /// Replaces the gateways requests go to (the client moves to the next one when one does
    /// not answer).
    pub fn set_gateways(&self, urls: &[String]) {
        *self.gateways.lock().unwrap_or_else(PoisonError::into_inner) = urls.to_vec();
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One POST of `body`, recorded. Returns the status (None: no HTTP answer).
    pub async fn post_once(&self, gateway: &str, body: &Value, events: usize) -> Attempt {
        let started = Instant::now();
        let mut request = self.http.post(format!("{gateway}/v1/usage")).json(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let attempt = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.json().await.unwrap_or(Value::Null);
                Attempt {
                    started,
                    finished: Instant::now(),
                    status: Some(status),
                    retry_after,
                    body,
                    events,
                }
            }
            Err(_) => Attempt {
                started,
                finished: Instant::now(),
                status: None,
                retry_after: None,
                body: Value::Null,
                events,
            },
        };
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attempt.clone());
        attempt
    }

    /// Sends `events` as one request until a 202, retrying 503s (after their Retry-After, capped)
    /// and lost connections with the same ids. Any other status is a test failure. Gives up
    /// with an error after `deadline`.
    pub async fn send_until_accepted(
        &self,
        events: &[Expected],
        deadline: Duration,
    ) -> Result<(), String> {
        let body = Value::Array(events.iter().map(Expected::json).collect());
        let give_up = Instant::now() + deadline;
        let mut gateway_index = 0usize;
        loop {
            let gateway = {
                let gateways = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
                gateways[gateway_index % gateways.len()].clone()
            };
            let attempt = self.post_once(&gateway, &body, events.len()).await;
            let wait = match attempt.status {
                Some(202) => {
                    let ids: Vec<&str> = attempt.body["ids"]
                        .as_array()
                        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let sent: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                    if ids != sent {
                        return Err(format!("202 with ids {ids:?}, sent {sent:?}"));
                    }
                    self.ledger.acknowledge(events);
                    return Ok(());
                }
                Some(503) => {
                    let seconds: u64 = attempt
                        .retry_after
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| format!("503 without Retry-After: {}", attempt.body))?;
                    Duration::from_secs(seconds).min(self.max_retry_wait)
                }
                None => {
                    // Not answering: try the next gateway soon.
                    gateway_index += 1;
                    Duration::from_millis(200)
                }
                Some(status) => {
                    return Err(format!(
                        "unexpected {status} from {gateway}: {}",
                        attempt.body
                    ))
                }
            };
            if Instant::now() + wait > give_up {
                return Err(format!(
                    "no 202 within {deadline:?}; last answer {:?} {}",
                    attempt.status, attempt.body
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Concurrent clients sending random batches until stopped.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Result<usize, String>>>,
}

/// The shape of a [`Load`].
#[derive(Debug, Clone)]
pub struct LoadShape {
    pub clients: usize,
    pub tenants: Vec<String>,
    /// Events per request: uniform in `min..=max`.
    pub batch_min: usize,
    pub batch_max: usize,
    /// Pause between one client's requests.
    pub pause: Duration,
    /// How long one request may keep being retried.
    pub request_deadline: Duration,
}

impl Default for LoadShape {
    fn default() -> Self {
        LoadShape {
            clients: 4,
            tenants: (0..6).map(|n| format!("tenant-{n}")).collect(),
            batch_min: 1,
            batch_max: 20,
            pause: Duration::from_millis(20),
            request_deadline: Duration::from_secs(90),
        }
    }
}

impl Load {
    pub fn start(client: &UsageClient, shape: &LoadShape, rng: &mut Rng) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..shape.clients)
            .map(|_| {
                let mut rng = Rng::new(rng.next_u64());
                let client = client.clone();
                let shape = shape.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let tenants: Vec<&str> = shape.tenants.iter().map(String::as_str).collect();
                    let mut requests = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let size = rng.range(shape.batch_min as u64, shape.batch_max as u64 + 1);
                        let events: Vec<Expected> = (0..size)
                            .map(|_| Expected::random(&mut rng, &tenants))
                            .collect();
                        client
                            .send_until_accepted(&events, shape.request_deadline)
                            .await?;
                        requests += 1;
                        tokio::time::sleep(shape.pause).await;
                    }
                    Ok(requests)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients after their current request (which is still retried until its 202) and
    /// returns the number of requests they completed; panics if a client failed.
    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for task in self.tasks {
            match task.await {
                Ok(Ok(requests)) => total += requests,
                Ok(Err(error)) => panic!("a load client failed: {error}"),
                Err(error) => panic!("a load client panicked: {error}"),
            }
        }
        total
    }
}

/// The SHA-256 form of an API key, as `gateway hash-key` prints it for the `[[auth.keys]]`
/// configuration.
pub fn hash_key(key: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new(Binary::path("gateway"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .env_remove("TOKENLEDGER_CONFIG")
        .spawn()
        .expect("gateway hash-key runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(key.as_bytes())
        .expect("key written");
    let output = child.wait_with_output().expect("hash-key finishes");
    assert!(output.status.success(), "gateway hash-key failed");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}
