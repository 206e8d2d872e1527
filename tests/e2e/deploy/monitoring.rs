//! Prometheus and Alertmanager as the compose stack mounts them: the scrape targets against the
//! binaries' metrics addresses, the alert rules' jobs, and `promtool` / `amtool` on the files laid
//! out at their container paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::required_path;
use serde::Deserialize;

use super::binaries::{host_port, lookup, metrics_listen_key};
use super::{assert_none, read, Deployment};

/// The path a service's `--config.file=` names, under its laid-out mounts.
fn mounted_config(d: &Deployment, service: &str, dir: &Path) -> PathBuf {
    let base = d.compose.lay_out(service, dir);
    let svc = &d.compose.services[service];
    let path = svc
        .command
        .iter()
        .find_map(|word| word.strip_prefix("--config.file="))
        .unwrap_or_else(|| panic!("{service}: no --config.file= in its command"));
    let file = base.join(path.trim_start_matches('/'));
    assert!(
        file.is_file(),
        "{service} reads {path}, which no bind mount provides"
    );
    file
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

#[derive(Deserialize)]
struct PrometheusConfig {
    #[serde(default)]
    scrape_configs: Vec<ScrapeConfig>,
    alerting: Option<Alerting>,
}

#[derive(Deserialize)]
struct ScrapeConfig {
    job_name: String,
    metrics_path: Option<String>,
    #[serde(default)]
    static_configs: Vec<StaticConfig>,
    #[serde(default)]
    dns_sd_configs: Vec<DnsSdConfig>,
}

#[derive(Deserialize)]
struct StaticConfig {
    #[serde(default)]
    targets: Vec<String>,
}

#[derive(Deserialize)]
struct DnsSdConfig {
    #[serde(default)]
    names: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct Alerting {
    #[serde(default)]
    alertmanagers: Vec<AlertmanagerConfig>,
}

#[derive(Deserialize)]
struct AlertmanagerConfig {
    #[serde(default)]
    static_configs: Vec<StaticConfig>,
}

/// Every `job="…"` an alert rule file selects.
fn rule_jobs(text: &str) -> BTreeSet<String> {
    let mut jobs = BTreeSet::new();
    for (at, _) in text.match_indices("job") {
        let rest = text[at + 3..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = rest.find('"') {
            jobs.insert(rest[..end].to_owned());
        }
    }
    jobs
}

fn alert_rule_files(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("alerts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn prometheus_scrapes_the_binaries_metrics_ports_and_every_alerted_job() {
    let d = Deployment::load();
    let dir = temp_dir();
    let path = mounted_config(&d, "prometheus", dir.path());
    let prometheus: PrometheusConfig = serde_yaml_ng::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("deploy/prometheus.yml: {e}"));
    let configs: BTreeMap<&str, (&str, toml::Table)> = d
        .binary_services()
        .into_iter()
        .map(|(name, binary, svc)| (name, (binary, d.config_of(binary, svc))))
        .collect();
    let services = &d.compose.services;
    let mut problems = Vec::new();
    let mut jobs = BTreeSet::new();
    for job in &prometheus.scrape_configs {
        let name = &job.job_name;
        jobs.insert(name.clone());
        let metrics_path = job.metrics_path.as_deref().unwrap_or("/metrics");
        let mut targets: Vec<String> = job
            .static_configs
            .iter()
            .flat_map(|s| s.targets.iter().cloned())
            .collect();
        for dns in &job.dns_sd_configs {
            match (dns.kind.as_deref(), dns.port) {
                (Some("A"), Some(port)) => {
                    targets.extend(dns.names.iter().map(|n| format!("{n}:{port}")));
                }
                _ => problems.push(format!(
                    "job {name}: dns_sd_configs must be type A with a port"
                )),
            }
        }
        if targets.is_empty() {
            problems.push(format!("job {name}: no targets"));
        }
        for target in &targets {
            let Some((host, port)) = host_port(target) else {
                problems.push(format!("job {name}: target {target} is not host:port"));
                continue;
            };
            if host == "localhost" {
                continue;
            }
            if !services.contains_key(host) {
                problems.push(format!(
                    "job {name}: target {target} is not a compose service"
                ));
                continue;
            }
            let Some((binary, config)) = configs.get(host) else {
                continue;
            };
            let listen = lookup(config, metrics_listen_key(binary)).and_then(|v| v.as_str());
            if listen.and_then(host_port).map(|(_, p)| p) != Some(port) {
                problems.push(format!(
                    "job {name}: scrapes {target}, {binary} serves metrics on {listen:?}"
                ));
            }
            if *binary == "processor" {
                let path = lookup(config, &["metrics", "path"]).and_then(|v| v.as_str());
                if path != Some(metrics_path) {
                    problems.push(format!(
                        "job {name}: metrics_path {metrics_path}, processor serves {path:?}"
                    ));
                }
            }
        }
    }
    let alertmanagers = prometheus.alerting.iter().flat_map(|a| &a.alertmanagers);
    for target in alertmanagers
        .flat_map(|am| &am.static_configs)
        .flat_map(|s| &s.targets)
    {
        if !host_port(target).is_some_and(|(host, _)| services.contains_key(host)) {
            problems.push(format!(
                "alertmanager target {target} is not a compose service"
            ));
        }
    }
    for file in alert_rule_files(&d.root) {
        for job in rule_jobs(&read(&file)) {
            if !jobs.contains(&job) {
                problems.push(format!(
                    "{} reads job=\"{job}\", which deploy/prometheus.yml does not scrape",
                    d.rel(&file)
                ));
            }
        }
    }
    assert_none("deploy/prometheus.yml", &problems);
}

#[test]
fn promtool_accepts_the_prometheus_config_as_mounted() {
    let d = Deployment::load();
    let promtool = required_path("TOKENLEDGER_PROMTOOL_BIN");
    let dir = temp_dir();
    let path = mounted_config(&d, "prometheus", dir.path());
    let output = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool check config:\n{text}");
    // Rule files resolve relative to the config: all of alerts/ must be found where it is mounted.
    let found: usize = text
        .split("SUCCESS: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let expected = alert_rule_files(&d.root).len();
    assert!(
        found >= 1 && found == expected,
        "promtool resolved {found} rule files, alerts/ holds {expected}:\n{text}"
    );
}

fn amtool(args: &[&str], config: &Path) -> Result<(), String> {
    let amtool = required_path("TOKENLEDGER_AMTOOL_BIN");
    let output = Command::new(&amtool)
        .args(args)
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", amtool.display()));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "amtool {} {}: {}{}",
            args.join(" "),
            config.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[test]
fn amtool_accepts_the_alertmanager_config_as_mounted() {
    let d = Deployment::load();
    let dir = temp_dir();
    let path = mounted_config(&d, "alertmanager", dir.path());
    amtool(&["check-config"], &path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn budget_alerts_route_by_severity_and_other_alerts_to_default() {
    let d = Deployment::load();
    let dir = temp_dir();
    let path = mounted_config(&d, "alertmanager", dir.path());
    let config_file = format!("--config.file={}", path.display());
    let cases: [(&str, &[&str]); 4] = [
        (
            "budget-critical",
            &["alertname=LLMBudgetThreshold", "severity=critical"],
        ),
        (
            "budget-warning",
            &["alertname=LLMBudgetThreshold", "severity=warning"],
        ),
        (
            "budget-info",
            &["alertname=LLMBudgetThreshold", "severity=info"],
        ),
        ("default", &["alertname=HighLLMSpend", "severity=warning"]),
    ];
    let mut problems = Vec::new();
    for (receiver, labels) in cases {
        let verify = format!("--verify.receivers={receiver}");
        let mut args = vec!["config", "routes", "test", &config_file, &verify];
        args.extend_from_slice(labels);
        if receiver != "default" {
            args.extend(["tenant=acme", "period=monthly", "threshold=75"]);
        }
        let output = Command::new(required_path("TOKENLEDGER_AMTOOL_BIN"))
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run amtool: {e}"));
        if !output.status.success() {
            problems.push(format!(
                "{labels:?} should route to {receiver}: {}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    assert_none("deploy/alertmanager.yml routes", &problems);
}

#[test]
fn rule_jobs_reads_job_equality_selectors() {
    assert_eq!(
        rule_jobs(r#"up{job="a"} == 0 or up{job = "b"} or job=~"c""#),
        BTreeSet::from(["a".into(), "b".into()])
    );
}
