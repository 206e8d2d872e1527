//! Prometheus and Alertmanager for a test: the Debian builds run as plain processes on free
//! loopback ports, with generated configs and temporary data directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::{free_port, required_path, wait_for, wait_for_some, ChildProcess};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

async fn is_ready(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Spawns `make_args(port)` on free ports until `ready_path` answers 200; retries when the
/// process exits early (another process took the port).
async fn start_http_service(
    name: &str,
    bin: &Path,
    make_args: impl Fn(u16) -> Vec<String>,
    ready_path: &str,
) -> (u16, ChildProcess) {
    let client = http();
    let mut last_log = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let mut process = ChildProcess::spawn(name, bin, &make_args(port), &[]);
        let url = format!("http://127.0.0.1:{port}{ready_path}");
        let ready = wait_for(READY_TIMEOUT, || {
            let running = process.is_running();
            let (client, url) = (client.clone(), url.clone());
            async move { !running || is_ready(&client, &url).await }
        })
        .await;
        if !process.is_running() {
            last_log = process.log_tail();
            continue;
        }
        if !ready {
            panic!(
                "{name} not ready at {url} within {READY_TIMEOUT:?}; log:\n{}",
                process.log_tail()
            );
        }
        return (port, process);
    }
    panic!("{name} did not start in {START_ATTEMPTS} attempts; last log:\n{last_log}");
}

/// A running Prometheus that scrapes the given targets every second.
#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    client: reqwest::Client,
    process: ChildProcess,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `scrape_targets` (`host:port`, path /metrics, job
    /// `tokenledger`) every second, evaluating `rule_files` every second.
    /// Panics if `TOKENLEDGER_PROMETHEUS_BIN` is not set (run scripts/test.sh).
    pub async fn start(scrape_targets: &[&str], rule_files: &[PathBuf]) -> Prometheus {
        Self::start_with_alertmanager(scrape_targets, rule_files, None).await
    }

    /// As [`Prometheus::start`], with each target under its own job name, as a deployment
    /// scrapes them (`tokenledger-processor`, `tokenledger-gateway`), so rules that select on
    /// `job` can be exercised.
    pub async fn start_jobs(jobs: &[(&str, &str)], rule_files: &[PathBuf]) -> Prometheus {
        Self::start_configured(&prometheus_config(jobs, rule_files, None)).await
    }

    /// As [`Prometheus::start`], sending fired alerts to the Alertmanager at `alertmanager`
    /// (`host:port`) when given.
    pub async fn start_with_alertmanager(
        scrape_targets: &[&str],
        rule_files: &[PathBuf],
        alertmanager: Option<&str>,
    ) -> Prometheus {
        let jobs: Vec<(&str, &str)> = scrape_targets.iter().map(|t| ("tokenledger", *t)).collect();
        Self::start_configured(&prometheus_config(&jobs, rule_files, alertmanager)).await
    }

    async fn start_configured(config_text: &str) -> Prometheus {
        let bin = required_path("TOKENLEDGER_PROMETHEUS_BIN");
        let dir = temp_dir("tokenledger-e2e-prometheus-");
        let config = dir.path().join("prometheus.yml");
        write(&config, config_text);
        let data = dir.path().join("data");
        let (port, process) = start_http_service(
            "prometheus",
            &bin,
            |port| {
                vec![
                    format!("--config.file={}", config.display()),
                    format!("--storage.tsdb.path={}", data.display()),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--log.level=warn".to_owned(),
                ]
            },
            "/-/ready",
        )
        .await;
        Prometheus {
            port,
            client: http(),
            process,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The generated configuration's path (for `promtool check config` and friends).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// An instant query; returns `data.result` (a JSON array of `{metric, value}`; a scalar or
    /// string result is returned as Prometheus gives it). Panics on an error answer.
    pub async fn query(&self, promql: &str) -> Value {
        let body = self.get("/api/v1/query", &[("query", promql)]).await;
        body["data"]["result"].clone()
    }

    /// The sum of the sample values of an instant query, or None when it returns no series.
    pub async fn query_f64(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        let samples = result.as_array()?;
        if samples.is_empty() {
            return None;
        }
        Some(
            samples
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// GET a Prometheus API path and return the JSON body; panics unless status is success.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = format!("{}{path}", self.url());
        let response = self
            .client
            .get(&url)
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        if body["status"] != "success" {
            panic!("GET {url} {params:?}: {body}");
        }
        body
    }

    /// The active scrape targets (`data.activeTargets`).
    pub async fn targets(&self) -> Vec<Value> {
        let body = self.get("/api/v1/targets", &[("state", "active")]).await;
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the target `host:port` has been scraped successfully (health "up").
    pub async fn wait_target_up(&self, target: &str, timeout: Duration) {
        let found = wait_for_some(timeout, || async {
            self.targets()
                .await
                .into_iter()
                .find(|t| t["labels"]["instance"] == target && t["health"] == "up")
        })
        .await;
        if found.is_none() {
            panic!(
                "Prometheus target {target} not up within {timeout:?}; targets: {}",
                Value::Array(self.targets().await)
            );
        }
    }

    /// The loaded rule groups (`data.groups` of /api/v1/rules).
    pub async fn rules(&self) -> Vec<Value> {
        let body = self.get("/api/v1/rules", &[]).await;
        body["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

fn yaml_list(items: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn prometheus_config(
    jobs: &[(&str, &str)],
    rules: &[PathBuf],
    alertmanager: Option<&str>,
) -> String {
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: {}\n\
         scrape_configs:\n",
        yaml_list(rules.iter().map(|p| p.display().to_string())),
    );
    let mut names: Vec<&str> = jobs.iter().map(|(job, _)| *job).collect();
    names.dedup();
    if names.is_empty() {
        names.push("tokenledger");
    }
    for name in names {
        let targets = jobs
            .iter()
            .filter(|(job, _)| *job == name)
            .map(|(_, target)| (*target).to_owned());
        config.push_str(&format!(
            "  - job_name: {name}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: {}\n",
            yaml_list(targets)
        ));
    }
    if let Some(am) = alertmanager {
        config.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: {}\n",
            yaml_list([am.to_owned()])
        ));
    }
    config
}

/// A running Alertmanager with one receiver that delivers nowhere: tests read alerts back through
/// its API.
#[derive(Debug)]
pub struct Alertmanager {
    port: u16,
    client: reqwest::Client,
    process: ChildProcess,
    bin: PathBuf,
    dir: TempDir,
}

fn alertmanager_args(dir: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--config.file={}", dir.join("alertmanager.yml").display()),
        format!("--storage.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // An empty cluster address turns gossip off; otherwise it binds :9094.
        "--cluster.listen-address=".to_owned(),
        "--log.level=warn".to_owned(),
    ]
}

impl Alertmanager {
    /// Starts Alertmanager on a free port (clustering off). Panics if
    /// `TOKENLEDGER_ALERTMANAGER_BIN` is not set (run scripts/test.sh).
    pub async fn start() -> Alertmanager {
        let bin = required_path("TOKENLEDGER_ALERTMANAGER_BIN");
        let dir = temp_dir("tokenledger-e2e-alertmanager-");
        let config = dir.path().join("alertmanager.yml");
        write(
            &config,
            "route:\n  receiver: tests\n  group_by: ['...']\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: tests\n",
        );
        let (port, process) = start_http_service(
            "alertmanager",
            &bin,
            |port| alertmanager_args(dir.path(), port),
            "/-/ready",
        )
        .await;
        Alertmanager {
            port,
            client: http(),
            process,
            bin,
            dir,
        }
    }

    /// Kills Alertmanager (an outage). The alerts it held are gone (it keeps them in memory).
    pub fn stop(&mut self) {
        self.process.kill9();
    }

    /// Starts Alertmanager again on the same port with the same configuration, after
    /// [`Alertmanager::stop`].
    pub async fn start_again(&mut self) {
        assert!(
            !self.process.is_running(),
            "start_again: alertmanager is still running"
        );
        let mut process = ChildProcess::spawn(
            "alertmanager",
            &self.bin,
            &alertmanager_args(self.dir.path(), self.port),
            &[],
        );
        let url = format!("{}/-/ready", self.url());
        let ready = wait_for(READY_TIMEOUT, || {
            let running = process.is_running();
            let (client, url) = (self.client.clone(), url.clone());
            async move { running && is_ready(&client, &url).await }
        })
        .await;
        if !ready {
            panic!(
                "alertmanager did not start again on port {} within {READY_TIMEOUT:?}; log:\n{}",
                self.port,
                process.log_tail()
            );
        }
        self.process = process;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port`, as Prometheus' alerting config wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Current alerts (GET /api/v2/alerts).
    pub async fn alerts(&self) -> Vec<Value> {
        let url = format!("{}/api/v2/alerts", self.url());
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not a JSON array: {e}"))
    }

    /// POSTs alerts (a JSON array) to /api/v2/alerts, as a client such as the processor does.
    pub async fn post_alerts(&self, alerts: &Value) {
        let url = format!("{}/api/v2/alerts", self.url());
        let response = self
            .client
            .post(&url)
            .json(alerts)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            response.status().is_success(),
            "POST {url}: {}",
            response.status()
        );
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}
