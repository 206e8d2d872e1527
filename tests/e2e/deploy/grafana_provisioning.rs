//! Grafana's provisioning as the compose stack mounts it: the files, the variables they read, the
//! dashboard paths and the datasource hosts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::{assert_none, read, Deployment};

/// `$NAME` and `${NAME}` references in a provisioning file (Grafana's `$__…` excepted).
fn dollar_variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices('$') {
        let rest = &text[at + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !name.starts_with("__")
        {
            found.insert(name.to_owned());
        }
    }
    found
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn grafana_provisioning_is_mounted_with_its_variables_paths_and_hosts() {
    let d = Deployment::load();
    let grafana = d
        .compose
        .services
        .get("grafana")
        .unwrap_or_else(|| panic!("docker-compose.yml has no grafana service"));
    let mounts = grafana.binds();
    let provisioning = mounts.get("/etc/grafana/provisioning").unwrap_or_else(|| {
        panic!("grafana/provisioning is not mounted at /etc/grafana/provisioning")
    });
    let mut files = Vec::new();
    yaml_files(provisioning, &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no provisioning files",
        d.rel(provisioning)
    );
    let mut problems = Vec::new();
    for path in &files {
        let text = read(path);
        for var in dollar_variables(&text) {
            if !grafana.environment.contains_key(&var) {
                problems.push(format!(
                    "{} reads ${var}, which the grafana service does not set",
                    d.rel(path)
                ));
            }
        }
        let doc: Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", d.rel(path)));
        let list = |key: &str| {
            doc.get(key)
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default()
        };
        for provider in list("providers") {
            if let Some(want) = provider
                .get("options")
                .and_then(|o| o.get("path"))
                .and_then(Value::as_str)
            {
                if !mounts.contains_key(want) {
                    problems.push(format!(
                        "{}: dashboard provider path {want} is not a mount of the grafana service",
                        d.rel(path)
                    ));
                }
            }
        }
        for datasource in list("datasources") {
            let url = datasource
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
            let host = authority.split(['/', ':']).next().unwrap_or_default();
            if !host.is_empty() && host != "localhost" && !d.compose.services.contains_key(host) {
                problems.push(format!(
                    "{}: datasource {:?} points at {url}, not a compose service",
                    d.rel(path),
                    datasource.get("uid")
                ));
            }
        }
    }
    assert_none("grafana provisioning", &problems);
}

#[test]
fn dollar_variables_skips_grafanas_own() {
    assert_eq!(
        dollar_variables("user: $A\npw: ${B}\n# $__rate_interval"),
        BTreeSet::from(["A".into(), "B".into()])
    );
}
