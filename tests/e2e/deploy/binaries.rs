//! The workspace's binaries as their containers run them: the environment a container gets (the
//! Dockerfile stage's `ENV`, then the service's `environment:`), and the effective configuration
//! the binary prints for it with `--print-config`.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use e2e::Binary;

use super::compose::Service;
use super::dockerfile::Stage;

/// The services the repository's Dockerfile builds, by build target (= binary name).
pub const BINARIES: [&str; 2] = ["gateway", "processor"];
/// Variables with the prefix that are not configuration keys.
pub const NOT_CONFIG_KEYS: [&str; 2] = ["TOKENLEDGER_LOG", "TOKENLEDGER_CONFIG"];
pub const ENV_PREFIX: &str = "TOKENLEDGER_";

/// Where each binary serves its metrics, as a key of its configuration.
pub fn metrics_listen_key(binary: &str) -> &'static [&'static str] {
    match binary {
        "gateway" => &["http", "admin_listen"],
        "processor" => &["metrics", "listen"],
        other => panic!("no metrics address known for {other}"),
    }
}

/// The `TOKENLEDGER_*` environment of a container built from `stage`.
pub fn container_env(stage: &Stage, service: &Service) -> BTreeMap<String, String> {
    stage
        .env
        .iter()
        .chain(&service.environment)
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Runs `binary args…` with exactly `env` (and PATH).
pub fn run(binary: &str, args: &[&str], env: &BTreeMap<String, String>) -> Output {
    let path = Binary::path(binary);
    Command::new(&path)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(env)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// `binary --print-config` with the container's environment, parsed; `Err` says why not.
pub fn print_config(binary: &str, env: &BTreeMap<String, String>) -> Result<toml::Table, String> {
    let output = run(binary, &["--print-config"], env);
    if !output.status.success() {
        return Err(format!(
            "{binary} --print-config exited {}: {}",
            output.status,
            last_line(&String::from_utf8_lossy(&output.stderr))
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.parse::<toml::Table>()
        .map_err(|e| format!("{binary} --print-config is not TOML: {e}"))
}

pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
}

pub fn lookup<'a>(config: &'a toml::Table, dotted: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = dotted.split_first()?;
    let mut node = config.get(*first)?;
    for part in rest {
        node = node.as_table()?.get(*part)?;
    }
    Some(node)
}

/// Whether the printed value is the one the variable set: scalars compare as text (booleans
/// case-insensitively), redacted secrets and arrays or tables count as present.
pub fn same_value(printed: &toml::Value, wanted: &str) -> bool {
    match printed {
        toml::Value::Boolean(b) => b.to_string() == wanted.trim().to_ascii_lowercase(),
        toml::Value::Integer(i) => i.to_string() == wanted.trim(),
        toml::Value::Float(f) => f.to_string() == wanted.trim(),
        toml::Value::String(s) => s == wanted || s.contains("***") || s.contains("<redacted>"),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => true,
    }
}

/// `section.key → address` for every `listen` or `*_listen` key of a top-level section.
pub fn listen_addresses(config: &toml::Table) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for (section, values) in config {
        let Some(values) = values.as_table() else {
            continue;
        };
        for (key, value) in values {
            if key == "listen" || key.ends_with("_listen") {
                let address = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                found.insert(format!("{section}.{key}"), address);
            }
        }
    }
    found
}

/// `host:port` (host may be `[v6]`).
pub fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']), port.parse().ok()?))
}

/// Host, port and path of an `http://` URL.
pub fn http_url(url: &str) -> Option<(&str, u16, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let (host, port) = host_port(authority).unwrap_or((authority, 80));
    Some((host, port, path))
}

#[cfg(test)]
mod print_config_secrets {
    use std::process::Command;

    use e2e::Binary;

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
}
