//! The Docker deployment, checked without Docker: what `docker-compose.yml` mounts exists, every
//! `TOKENLEDGER_*` variable it (or the Dockerfile) hands to a binary is a key of that binary's
//! configuration, the ports it publishes and probes are the ones the binary listens on, and the
//! Grafana dashboards use only the datasource uids the provisioning defines.
//!
//! These are the cheap checks; `scripts/check-deploy.sh` runs the heavy ones (Compose itself, the
//! JSON schema, promtool, amtool, hadolint). This file reads only the subset of YAML that
//! `docker-compose.yml` uses at the places it looks (block mappings and lists, one item a line,
//! no anchors there) and fails loudly when it finds less than it expects, never silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{repo_root, Binary};

/// The services the repository's Dockerfile builds, by build target (= binary name).
const BINARIES: [&str; 2] = ["gateway", "processor"];
/// Variables with the prefix that are not configuration keys.
const NOT_CONFIG_KEYS: [&str; 2] = ["TOKENLEDGER_LOG", "TOKENLEDGER_CONFIG"];
const ENV_PREFIX: &str = "TOKENLEDGER_";

// --- reading docker-compose.yml --------------------------------------------------------------------

/// What the tests need to know about one compose service.
#[derive(Debug, Default)]
struct Service {
    build_target: Option<String>,
    /// `restart:`; `"no"` marks a one-shot job (migrate), which has no healthcheck.
    restart: Option<String>,
    environment: Vec<(String, String)>,
    /// Container-side ports of `ports:` entries.
    published_ports: Vec<u16>,
    /// Host-side sources of bind mounts (`./path:/target[:ro]`).
    bind_sources: Vec<String>,
    healthcheck_urls: Vec<String>,
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

/// The services of a compose file: names at two spaces under `services:`, their keys at four,
/// list items and mapping entries at six.
fn parse_compose(text: &str) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut service: Option<String> = None;
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = indentation(line);
        if indent == 0 {
            in_services = trimmed == "services:";
            service = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = trimmed.trim_end_matches(':').to_owned();
            services.insert(name.clone(), Service::default());
            service = Some(name);
            section.clear();
            continue;
        }
        let Some(current) = service.as_ref().and_then(|name| services.get_mut(name)) else {
            continue;
        };
        if indent == 4 {
            let (key, value) = trimmed.split_once(':').unwrap_or((trimmed, ""));
            section = key.to_owned();
            if key == "restart" {
                current.restart = Some(unquote(value).to_owned());
            }
            if key == "environment" && !value.trim().is_empty() {
                panic!("environment of a service must be a block mapping, found {trimmed:?}");
            }
            continue;
        }
        match section.as_str() {
            "build" => {
                if let Some(target) = trimmed.strip_prefix("target:") {
                    current.build_target = Some(unquote(target).to_owned());
                }
            }
            "environment" if indent == 6 => {
                let (key, value) = trimmed
                    .split_once(':')
                    .unwrap_or_else(|| panic!("environment entry without ':': {trimmed:?}"));
                current
                    .environment
                    .push((key.trim().to_owned(), unquote(value).to_owned()));
            }
            "ports" => {
                if let Some(item) = trimmed.strip_prefix("- ") {
                    let container = unquote(item).rsplit(':').next().unwrap_or_default();
                    let port = container.split('/').next().unwrap_or_default();
                    current.published_ports.push(
                        port.parse().unwrap_or_else(|_| {
                            panic!("cannot read the container port of {item:?}")
                        }),
                    );
                }
            }
            "volumes" => {
                if let Some(item) = trimmed.strip_prefix("- ") {
                    let item = unquote(item);
                    if item.starts_with("./") || item.starts_with("../") {
                        let source = item.split(':').next().unwrap_or_default();
                        current.bind_sources.push(source.to_owned());
                    }
                }
            }
            "healthcheck" => {
                for word in trimmed.split(['"', ' ', ',', '[', ']']) {
                    if word.starts_with("http://") {
                        current.healthcheck_urls.push(word.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    services
}

/// `NAME=value` lines of `.env.example` (comments skipped).
fn env_example() -> BTreeMap<String, String> {
    read(&repo_root().join(".env.example"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Compose interpolation as far as docker-compose.yml uses it: `${NAME:-default}`,
/// `${NAME:?message}` and `${NAME}`, with the values of `.env.example`; `$$` is a literal `$`.
fn interpolate(value: &str, settings: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body_start) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let end = body_start
            .find('}')
            .unwrap_or_else(|| panic!("unterminated ${{ in {value:?}"));
        let body = &body_start[..end];
        let (name, default) = match body.find([':', '?', '-']) {
            Some(i) if body[i..].starts_with(":-") => (&body[..i], Some(&body[i + 2..])),
            Some(i) => (&body[..i], None),
            None => (body, None),
        };
        let resolved = settings
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .or(default)
            .unwrap_or_else(|| {
                panic!("${{{name}}} has neither a value in .env.example nor a default")
            });
        out.push_str(resolved);
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    out
}

// --- reading the Dockerfile -------------------------------------------------------------------------

/// `TOKENLEDGER_*` variables each Dockerfile stage sets with `ENV`, parents' included.
fn dockerfile_env() -> BTreeMap<String, Vec<(String, String)>> {
    let text = read(&repo_root().join("Dockerfile")).replace("\\\n", " ");
    let mut stages: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("FROM") => {
                let words: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let base = words.first().copied().unwrap_or_default();
                let name = match words.get(1) {
                    Some(kw) if kw.eq_ignore_ascii_case("as") => words.get(2).copied(),
                    _ => None,
                };
                let inherited = stages.get(base).cloned().unwrap_or_default();
                let name = name.map_or_else(|| format!("#{}", stages.len()), str::to_owned);
                stages.insert(name.clone(), inherited);
                current = Some(name);
            }
            Some("ENV") => {
                let Some(stage) = current.as_ref().and_then(|name| stages.get_mut(name)) else {
                    continue;
                };
                for pair in words {
                    if let Some((key, value)) = pair.split_once('=') {
                        stage.push((key.to_owned(), unquote(value).to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    stages
}

// --- the binaries' effective configuration ------------------------------------------------------------

/// `--print-config` output as `section.key → value`; tables and arrays of tables appear under
/// their own dotted name as well.
fn print_config(binary: &str, env: &[(String, String)]) -> BTreeMap<String, String> {
    let path = Binary::path(binary);
    let output = Command::new(&path)
        .arg("--print-config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{binary} --print-config refused the container's environment {env:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).trim().to_owned();
            keys.insert(section.clone(), String::new());
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = unquote(key.trim());
            let dotted = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            keys.insert(dotted, unquote(value).to_owned());
        }
    }
    assert!(
        !keys.is_empty(),
        "{binary} --print-config printed nothing:\n{text}"
    );
    keys
}

/// The environment a binary's container gets: the Dockerfile stage's `ENV`, then the service's
/// `environment:` (interpolated with `.env.example`); only `TOKENLEDGER_*`.
fn container_env(target: &str, service: &Service) -> Vec<(String, String)> {
    let settings = env_example();
    let mut env: BTreeMap<String, String> = dockerfile_env()
        .remove(target)
        .unwrap_or_else(|| panic!("the Dockerfile has no stage {target}"))
        .into_iter()
        .collect();
    for (key, value) in &service.environment {
        env.insert(key.clone(), interpolate(value, &settings));
    }
    env.into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} is not host:port"))
}

fn url_port(url: &str) -> u16 {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    port_of(authority)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose() -> BTreeMap<String, Service> {
    let services = parse_compose(&read(&repo_root().join("docker-compose.yml")));
    for binary in BINARIES {
        assert!(
            services
                .values()
                .any(|s| s.build_target.as_deref() == Some(binary)),
            "no service in docker-compose.yml builds target {binary}"
        );
    }
    services
}

fn binary_services(services: &BTreeMap<String, Service>) -> Vec<(&str, &str, &Service)> {
    services
        .iter()
        .filter_map(|(name, s)| {
            let target = s.build_target.as_deref()?;
            BINARIES
                .contains(&target)
                .then_some((name.as_str(), target, s))
        })
        .collect()
}

// --- the tests ---------------------------------------------------------------------------------------

#[test]
fn every_bind_mount_of_the_compose_file_exists_in_the_repository() {
    let root = repo_root();
    let services = compose();
    let mut mounts = 0;
    let mut missing = Vec::new();
    for (name, service) in &services {
        for source in &service.bind_sources {
            mounts += 1;
            if !root.join(source).exists() {
                missing.push(format!("{name}: {source}"));
            }
        }
    }
    assert!(
        mounts >= 4,
        "found only {mounts} bind mounts: is the parser still in step with docker-compose.yml?"
    );
    assert!(
        missing.is_empty(),
        "bind-mount sources missing from the repository: {missing:?}"
    );
}

#[test]
fn every_tokenledger_variable_is_a_key_of_the_binarys_configuration() {
    let services = compose();
    for (name, target, service) in binary_services(&services) {
        let env = container_env(target, service);
        assert!(!env.is_empty(), "{name}: no TOKENLEDGER_* variables found");
        let config = print_config(target, &env);
        for (key, value) in &env {
            if NOT_CONFIG_KEYS.contains(&key.as_str()) {
                continue;
            }
            let dotted = key[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            let printed = config.get(&dotted).unwrap_or_else(|| {
                panic!("{name}: {key} names `{dotted}`, which `{target} --print-config` does not show; keys: {:?}", config.keys())
            });
            // Scalars come back as set; arrays, tables and redacted secrets are checked for presence.
            let scalar = !value.trim_start().starts_with(['[', '{']) && !printed.is_empty();
            let redacted = printed.contains("***") || printed.contains("<redacted>");
            if scalar && !redacted {
                assert_eq!(printed, value, "{name}: {key} is not what `{dotted}` shows");
            }
        }
    }
}

#[test]
fn published_ports_and_healthchecks_match_the_listen_addresses() {
    let services = compose();
    for (name, target, service) in binary_services(&services) {
        let config = print_config(target, &container_env(target, service));
        let listens: BTreeMap<&String, &String> = config
            .iter()
            .filter(|(key, _)| key.ends_with(".listen") || key.ends_with("_listen"))
            .collect();
        assert!(
            !listens.is_empty(),
            "{name}: {target} shows no listen address"
        );
        let ports: BTreeSet<u16> = listens.values().map(|a| port_of(a)).collect();
        for (key, address) in &listens {
            let host = address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']));
            assert!(
                matches!(host, Some("0.0.0.0" | "::")),
                "{name}: {key} = {address} is unreachable from outside the container"
            );
        }
        for port in &service.published_ports {
            assert!(
                ports.contains(port),
                "{name} publishes {port}; {target} listens on {listens:?}"
            );
        }
        let one_shot = service.restart.as_deref() == Some("no");
        assert!(
            one_shot || !service.healthcheck_urls.is_empty(),
            "{name}: a long-running service without an HTTP healthcheck"
        );
        for url in &service.healthcheck_urls {
            assert!(
                ports.contains(&url_port(url)),
                "{name}: healthcheck {url} is not a port of {listens:?}"
            );
        }
    }
}

/// Every `datasource` object in a dashboard: `(uid, where)`.
fn datasource_uids(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}.{key}");
                if key == "datasource" {
                    match child {
                        serde_json::Value::Object(ds) => {
                            if let Some(uid) = ds.get("uid").and_then(|u| u.as_str()) {
                                out.push((uid.to_owned(), here.clone()));
                            }
                        }
                        serde_json::Value::String(name) => out.push((name.clone(), here.clone())),
                        _ => {}
                    }
                }
                datasource_uids(child, &here, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                datasource_uids(child, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn dashboards_use_only_the_provisioned_datasource_uids() {
    let root = repo_root();
    let provisioning = root.join("grafana/provisioning/datasources");
    let mut provisioned = BTreeSet::new();
    for path in files_with_extension(&provisioning, &["yml", "yaml"]) {
        for line in read(&path).lines() {
            if let Some(uid) = line.trim().trim_start_matches("- ").strip_prefix("uid:") {
                provisioned.insert(unquote(uid).to_owned());
            }
        }
    }
    assert!(
        provisioned.contains("tokenledger-prometheus")
            && provisioned.contains("tokenledger-timescaledb"),
        "grafana/provisioning/datasources defines {provisioned:?}"
    );

    let dashboards = files_with_extension(&root.join("grafana/dashboards"), &["json"]);
    assert!(
        !dashboards.is_empty(),
        "grafana/dashboards holds no dashboard"
    );
    let mut wrong = Vec::new();
    for path in &dashboards {
        let dashboard: serde_json::Value = serde_json::from_str(&read(path))
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(
            dashboard.get("__inputs").is_none(),
            "{} has __inputs (UI import only)",
            path.display()
        );
        let mut uids = Vec::new();
        datasource_uids(&dashboard, "", &mut uids);
        for (uid, at) in uids {
            // Grafana's built-in sources and template variables are not provisioned.
            let builtin = matches!(
                uid.as_str(),
                "grafana" | "-- Grafana --" | "-- Mixed --" | "-- Dashboard --"
            );
            if !builtin && !uid.starts_with('$') && !provisioned.contains(&uid) {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default();
                wrong.push(format!("{file}{at}: {uid}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "datasource uids not provisioned ({provisioned:?}): {wrong:?}"
    );
}

fn files_with_extension(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_compose_reader_and_interpolation_understand_the_shapes_used() {
    let text = "\
name: x
services:
  gateway:
    build:
      context: .
      target: gateway
    restart: unless-stopped
    environment:
      TOKENLEDGER_HTTP__LISTEN: 0.0.0.0:8080
      TOKENLEDGER_AUTH__KEYS: ${KEYS:?set it}
    ports:
      - 127.0.0.1:${PORT:-18080}:8080
    volumes:
      - ./deploy/a.yml:/etc/a.yml:ro
      - data:/var/lib/x
    healthcheck:
      test: [\"CMD\", \"curl\", \"-fsS\", \"http://127.0.0.1:9464/readyz\"]
volumes:
  data:
";
    let services = parse_compose(text);
    let gateway = &services["gateway"];
    assert_eq!(gateway.build_target.as_deref(), Some("gateway"));
    assert_eq!(gateway.restart.as_deref(), Some("unless-stopped"));
    assert_eq!(gateway.environment.len(), 2);
    assert_eq!(gateway.published_ports, vec![8080]);
    assert_eq!(gateway.bind_sources, vec!["./deploy/a.yml".to_owned()]);
    assert_eq!(
        gateway.healthcheck_urls,
        vec!["http://127.0.0.1:9464/readyz".to_owned()]
    );
    assert_eq!(services.len(), 1, "top-level volumes are not services");

    let settings = BTreeMap::from([("KEYS".to_owned(), "[{a=1}]".to_owned())]);
    assert_eq!(interpolate("${KEYS:?set it}", &settings), "[{a=1}]");
    assert_eq!(
        interpolate("p=${UNSET:-x y} $$HOME", &settings),
        "p=x y $HOME"
    );
}

/// `--print-config` output gets pasted into tickets: no credential may reach it, whichever form
/// the setting carries it in and whichever layer (file or environment) set it.
#[test]
fn print_config_never_shows_a_secret() {
    const DATABASE_URLS: [&str; 6] = [
        "postgres://u:hunter2@db:5432/x",
        "postgres://u@db/x?password=hunter2",
        "postgres://db/x?user=u&sslpassword=hunter2",
        "host=db user=u password=hunter2 dbname=x",
        "host=db user=u password='hunter 2' dbname=x",
        "host=db password = hunter2 user=u",
    ];
    let key_hash = "0123456789abcdef".repeat(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway_file = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway_file,
        format!(
            "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\
             [[auth.keys]]\nsha256 = \"{key_hash}\"\ntenant_id = \"acme\"\n"
        ),
    )
    .expect("write gateway config");
    let processor_file = dir.path().join("processor.toml");
    std::fs::write(
        &processor_file,
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\
         [alerting]\nalertmanager_url = \"http://am:hunter2@alertmanager:9093\"\n",
    )
    .expect("write processor config");
    for (binary, file) in [("gateway", &gateway_file), ("processor", &processor_file)] {
        for url in DATABASE_URLS {
            let path = Binary::path(binary);
            let mut command = Command::new(&path);
            command
                .arg("--config")
                .arg(file)
                .arg("--print-config")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("TOKENLEDGER_DATABASE__URL", url);
            if binary == "processor" {
                command.env(
                    "TOKENLEDGER_ALERTING__WEBHOOK_URL",
                    "http://hooks.example/x?token=hunter2",
                );
            }
            let output = command
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
            let printed = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{binary} --print-config with database.url {url:?} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                printed.contains("[database]") && printed.contains("<redacted>"),
                "{binary} printed no redacted database section:\n{printed}"
            );
            for secret in ["hunter", key_hash.as_str()] {
                assert!(
                    !printed.contains(secret),
                    "{binary} --print-config shows {secret:?} of database.url {url:?}:\n{printed}"
                );
            }
        }
    }
}
