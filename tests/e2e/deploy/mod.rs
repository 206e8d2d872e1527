//! The Docker deployment, checked without Docker: docker-compose.yml as Compose resolves it with
//! `.env.example`, the Dockerfile's stages, `.dockerignore`, deploy/ and grafana/provisioning/,
//! against each other and against the real binaries (`--print-config` with exactly the
//! environment their containers get), with `promtool` and `amtool` on the configuration files laid
//! out as the containers see them.
//!
//! Each structural check of the deployment lives here, once. `scripts/check-deploy.sh` runs only
//! the validators that need tools of their own (Compose v2 itself, the Compose Specification JSON
//! schema, hadolint). The dashboards' datasource uids are checked by tests/e2e/dashboards.rs.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and `TOKENLEDGER_PROMTOOL_BIN` /
//! `TOKENLEDGER_AMTOOL_BIN` (`scripts/services.sh env`).
//!
//! Layout: this file holds the checks of the compose model and of the binaries in their
//! containers; `compose` reads docker-compose.yml, `dockerfile` the Dockerfile and `.dockerignore`
//! (and checks the build context), `binaries` runs `--print-config`, `monitoring` checks
//! deploy/prometheus.yml and deploy/alertmanager.yml, `grafana_provisioning` the Grafana mounts.

mod binaries;
mod compose;
mod dockerfile;
mod grafana_provisioning;
mod monitoring;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use e2e::repo_root;

use binaries::{
    container_env, host_port, http_url, last_line, listen_addresses, lookup, print_config, run,
    same_value, BINARIES, ENV_PREFIX, NOT_CONFIG_KEYS,
};
use compose::{Compose, Service};
use dockerfile::Stage;

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fails with every problem found, one per line.
fn assert_none(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

struct Deployment {
    root: PathBuf,
    compose: Compose,
    stages: BTreeMap<String, Stage>,
}

impl Deployment {
    fn load() -> Self {
        let root = repo_root();
        let settings = compose::env_example_settings(&root);
        let compose = Compose::load(&root.join("docker-compose.yml"), &root, &settings);
        let stages = dockerfile::stages(&root.join("Dockerfile"));
        Self {
            root,
            compose,
            stages,
        }
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// `(service, binary, service)` for each service built from one of the binaries' targets.
    fn binary_services(&self) -> Vec<(&str, &'static str, &Service)> {
        let found: Vec<_> = self
            .compose
            .services
            .iter()
            .filter_map(|(name, svc)| {
                let target = svc.build.as_ref()?.target.as_deref()?;
                let binary = BINARIES.iter().find(|b| **b == target)?;
                Some((name.as_str(), *binary, svc))
            })
            .collect();
        for binary in BINARIES {
            assert!(
                found.iter().any(|(_, b, _)| *b == binary),
                "no service in docker-compose.yml builds target {binary}"
            );
        }
        found
    }

    fn env_of(&self, binary: &str, service: &Service) -> BTreeMap<String, String> {
        let stage = self
            .stages
            .get(binary)
            .unwrap_or_else(|| panic!("the Dockerfile has no stage {binary}"));
        container_env(stage, service)
    }

    fn config_of(&self, binary: &str, service: &Service) -> toml::Table {
        print_config(binary, &self.env_of(binary, service)).unwrap_or_else(|e| panic!("{e}"))
    }
}

// --- the compose model -------------------------------------------------------------------------------

#[test]
fn bind_mounts_build_contexts_and_dockerfile_targets_exist() {
    let d = Deployment::load();
    let root = d.root.canonicalize().unwrap_or_else(|_| d.root.clone());
    let mut problems = Vec::new();
    let mut mounts = 0;
    for (name, svc) in &d.compose.services {
        for (_, source) in svc.binds() {
            mounts += 1;
            match source.canonicalize() {
                Err(_) => problems.push(format!(
                    "{name}: bind mount source {} does not exist",
                    d.rel(source)
                )),
                Ok(real) if !real.starts_with(&root) => problems.push(format!(
                    "{name}: bind mount source {} is outside the repository",
                    source.display()
                )),
                Ok(_) => {}
            }
        }
        if let Some(build) = &svc.build {
            if !build.context.is_dir() {
                problems.push(format!(
                    "{name}: build context {} is not a directory",
                    d.rel(&build.context)
                ));
            } else if !build.dockerfile.is_file() {
                problems.push(format!(
                    "{name}: build file {} does not exist",
                    d.rel(&build.dockerfile)
                ));
            } else if !build
                .target
                .as_ref()
                .is_some_and(|t| d.stages.contains_key(t))
            {
                problems.push(format!(
                    "{name}: build target {:?} is not a stage of {}",
                    build.target,
                    d.rel(&build.dockerfile)
                ));
            }
        }
    }
    assert!(
        mounts >= 4,
        "found only {mounts} bind mounts: is the reader still in step with docker-compose.yml?"
    );
    assert_none("compose mounts and builds", &problems);
}

#[test]
fn images_are_pinned_and_their_versions_overridable_from_env() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for (name, svc) in &d.compose.services {
        if svc.build.is_some() {
            continue;
        }
        let image = svc.image.as_deref().unwrap_or_default();
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        if tag.is_empty() || tag == "latest" {
            problems.push(format!(
                "{name}: image {image:?} is not pinned to a version"
            ));
        }
    }
    for (name, image) in &d.compose.images_as_written {
        if !image.contains("${") && !image.starts_with("tokenledger/") {
            problems.push(format!(
                "{name}: image {image} has no ${{..._VERSION:-default}} override"
            ));
        }
    }
    assert_none("compose images", &problems);
}

#[test]
fn long_running_services_have_healthchecks_and_dependencies_wait_for_them() {
    let d = Deployment::load();
    let services = &d.compose.services;
    let mut problems = Vec::new();
    for (name, svc) in services {
        if svc.is_one_shot() {
            if !svc.ports.is_empty() {
                problems.push(format!(
                    "{name}: a one-shot job (restart: no) publishes ports"
                ));
            }
        } else {
            if svc.healthcheck.is_empty() {
                problems.push(format!(
                    "{name}: long-running service without a healthcheck"
                ));
            }
            if !["always", "unless-stopped", "on-failure"].contains(&svc.restart.as_str()) {
                problems.push(format!("{name}: restart policy {:?}", svc.restart));
            }
        }
        for (dep, condition) in &svc.depends_on {
            let Some(dependency) = services.get(dep) else {
                problems.push(format!("{name} depends on {dep}, which is not a service"));
                continue;
            };
            let want = if dependency.is_one_shot() {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            if condition != want {
                problems.push(format!(
                    "{name} -> {dep}: condition {condition}, want {want}"
                ));
            }
        }
    }
    assert_none("compose healthchecks and dependencies", &problems);
}

#[test]
fn published_ports_bind_loopback_only() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for (name, svc) in &d.compose.services {
        for port in &svc.ports {
            if port.host_ip.as_deref() != Some("127.0.0.1") {
                problems.push(format!(
                    "{name}: port {}:{} binds {}",
                    port.published.as_deref().unwrap_or("?"),
                    port.target,
                    port.host_ip.as_deref().unwrap_or("every interface")
                ));
            }
        }
    }
    assert_none("compose published ports", &problems);
}

#[test]
fn every_compose_variable_is_documented_and_secrets_are_placeholders() {
    let d = Deployment::load();
    let documented = compose::env_example_documented(&d.root);
    let used = &d.compose.variables;
    let mut problems: Vec<String> = used
        .difference(&documented)
        .map(|v| format!("${{{v}}} is used by docker-compose.yml but not in .env.example"))
        .collect();
    problems.extend(
        documented
            .difference(used)
            .map(|v| format!("{v} is in .env.example but docker-compose.yml does not use it")),
    );
    let settings = compose::env_example_settings(&d.root);
    for secret in &d.compose.required {
        if !settings
            .get(secret)
            .is_some_and(|value| value.contains("change-me"))
        {
            problems.push(format!(
                "required {secret} has no change-me placeholder in .env.example"
            ));
        }
    }
    assert!(
        !d.compose.required.is_empty(),
        "docker-compose.yml requires no secret: is the reader still in step with it?"
    );
    assert_none(".env.example", &problems);
}

// --- the binaries as their containers run them --------------------------------------------------------

#[test]
fn every_tokenledger_variable_is_a_key_of_the_binarys_configuration() {
    let d = Deployment::load();
    for (name, binary, service) in d.binary_services() {
        let env = d.env_of(binary, service);
        assert!(!env.is_empty(), "{name}: no TOKENLEDGER_* variables found");
        let config = print_config(binary, &env)
            .unwrap_or_else(|e| panic!("{name}: {binary} refuses its container environment: {e}"));
        let mut problems = Vec::new();
        for (key, value) in &env {
            if NOT_CONFIG_KEYS.contains(&key.as_str()) {
                continue;
            }
            let lower = key[ENV_PREFIX.len()..].to_ascii_lowercase();
            let dotted: Vec<&str> = lower.split("__").collect();
            match lookup(&config, &dotted) {
                None => problems.push(format!(
                    "{key} names {}, which {binary} --print-config does not show",
                    dotted.join(".")
                )),
                Some(printed) if !same_value(printed, value) => problems.push(format!(
                    "{key}={value:?} but {} = {printed}",
                    dotted.join(".")
                )),
                Some(_) => {}
            }
        }
        assert_none(
            &format!("{name}: {binary}'s container environment"),
            &problems,
        );
    }
}

#[test]
fn published_ports_and_healthchecks_match_the_listen_addresses() {
    let d = Deployment::load();
    for (name, binary, service) in d.binary_services() {
        let config = d.config_of(binary, service);
        let listens = listen_addresses(&config);
        assert!(
            !listens.is_empty(),
            "{name}: {binary} shows no listen address"
        );
        let mut problems = Vec::new();
        let mut ports = BTreeSet::new();
        for (key, address) in &listens {
            match host_port(address) {
                Some((host, port)) => {
                    ports.insert(port);
                    if host != "0.0.0.0" && host != "::" {
                        problems.push(format!(
                            "{key} = {address}: unreachable from outside the container; listen on 0.0.0.0"
                        ));
                    }
                }
                None => problems.push(format!("{key} = {address:?} is not host:port")),
            }
        }
        for port in &service.ports {
            if !ports.contains(&port.target) {
                problems.push(format!(
                    "publishes container port {}, but {binary} listens on {listens:?}",
                    port.target
                ));
            }
        }
        let urls = service.healthcheck_urls();
        if !service.is_one_shot() && urls.is_empty() {
            problems.push("a long-running service without an HTTP healthcheck".into());
        }
        for url in &urls {
            let Some((_, port, path)) = http_url(url) else {
                problems.push(format!("healthcheck URL {url} cannot be read"));
                continue;
            };
            if !ports.contains(&port) {
                problems.push(format!(
                    "healthcheck {url} probes port {port}; {binary} listens on {listens:?}"
                ));
            }
            if binary == "processor" {
                let metrics_path = lookup(&config, &["metrics", "path"]).and_then(|v| v.as_str());
                if metrics_path != Some(path) {
                    problems.push(format!(
                        "healthcheck path {path} is not metrics.path {metrics_path:?}"
                    ));
                }
            }
        }
        assert_none(&format!("{name}: ports and healthcheck"), &problems);
    }
}

#[test]
fn compose_commands_are_subcommands_of_the_binaries() {
    let d = Deployment::load();
    let mut checked = 0;
    for (name, binary, service) in d.binary_services() {
        let Some(command) = service.command.first().filter(|c| !c.starts_with('-')) else {
            continue;
        };
        checked += 1;
        let output = run(binary, &[command, "--help"], &d.env_of(binary, service));
        assert!(
            output.status.success(),
            "{name}: `{binary} {command} --help` exited {}: {}",
            output.status,
            last_line(&String::from_utf8_lossy(&output.stderr))
        );
    }
    assert!(
        checked >= 2,
        "only {checked} compose commands found (migrate, run)"
    );
}

#[test]
fn the_binaries_images_run_as_a_non_root_user() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for binary in BINARIES {
        match d.stages.get(binary) {
            None => problems.push(format!("no Dockerfile stage {binary}")),
            Some(stage) => {
                let user = stage.user.as_deref().unwrap_or("root");
                let name = user.split(':').next().unwrap_or_default();
                if name == "root" || name == "0" {
                    problems.push(format!("stage {binary} runs as {user}"));
                }
            }
        }
    }
    assert_none("Dockerfile users", &problems);
}

// --- the readers themselves ---------------------------------------------------------------------------

#[test]
fn the_compose_reader_understands_the_shapes_used() {
    let text = "\
name: ${NAME:-x}
x-logging: &logging
  driver: json-file
services:
  gateway:
    build:
      context: .
      target: gateway
    restart: unless-stopped
    command: [\"run\"]
    environment:
      TOKENLEDGER_HTTP__LISTEN: 0.0.0.0:8080
      TOKENLEDGER_AUTH__KEYS: ${KEYS:?set it}
      NUMBER: 1
      SHELL_VAR: $$HOME
    ports:
      - 127.0.0.1:${PORT:-18080}:8080
      - \"9464\"
    volumes:
      - ./deploy/a.yml:/etc/a.yml:ro
      - data:/var/lib/x
    depends_on:
      kafka:
        condition: service_healthy
    healthcheck:
      test: [\"CMD\", \"curl\", \"-fsS\", \"http://127.0.0.1:9464/readyz\"]
    logging: *logging
volumes:
  data:
";
    let settings = BTreeMap::from([("KEYS".to_owned(), "[{a=1}]".to_owned())]);
    let compose =
        Compose::parse(text, Path::new("/p"), &settings).unwrap_or_else(|e| panic!("{e:?}"));
    let gateway = &compose.services["gateway"];
    assert_eq!(
        gateway.build.as_ref().and_then(|b| b.target.as_deref()),
        Some("gateway")
    );
    assert_eq!(gateway.restart, "unless-stopped");
    assert_eq!(gateway.command, ["run"]);
    assert_eq!(gateway.environment["TOKENLEDGER_AUTH__KEYS"], "[{a=1}]");
    assert_eq!(gateway.environment["NUMBER"], "1");
    assert_eq!(gateway.environment["SHELL_VAR"], "$HOME");
    let ports: Vec<_> = gateway
        .ports
        .iter()
        .map(|p| (p.host_ip.as_deref(), p.published.as_deref(), p.target))
        .collect();
    assert_eq!(
        ports,
        [(Some("127.0.0.1"), Some("18080"), 8080), (None, None, 9464)]
    );
    assert_eq!(
        gateway.binds().into_iter().collect::<Vec<_>>(),
        [("/etc/a.yml", Path::new("/p/./deploy/a.yml"))]
    );
    assert_eq!(gateway.volumes.len(), 2);
    assert_eq!(gateway.depends_on["kafka"], "service_healthy");
    assert_eq!(
        gateway.healthcheck_urls(),
        ["http://127.0.0.1:9464/readyz".to_owned()]
    );
    assert_eq!(
        compose.services.len(),
        1,
        "top-level volumes are not services"
    );
    assert_eq!(
        compose.variables,
        BTreeSet::from(["KEYS".into(), "NAME".into(), "PORT".into()])
    );
    assert_eq!(compose.required, BTreeSet::from(["KEYS".into()]));

    assert!(Compose::parse(
        "services:\n  a:\n    image: x:${UNSET}\n",
        Path::new("/"),
        &settings
    )
    .is_err());
}
