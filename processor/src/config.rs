//! The processor's configuration: a typed struct with defaults, layered as
//! defaults → TOML file → `TOKENLEDGER_…` environment variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the processor reads as configuration.
pub const ENV_PREFIX: &str = "TOKENLEDGER_";
/// Environment variable naming the TOML configuration file.
pub const CONFIG_PATH_ENV: &str = "TOKENLEDGER_CONFIG";
/// Environment variable holding the tracing filter.
pub const LOG_FILTER_ENV: &str = "TOKENLEDGER_LOG";
/// Variables with the prefix that are not configuration keys. Compared
/// after the prefix is stripped, case-insensitively.
const NON_CONFIG_ENV_KEYS: &[&str] = &["CONFIG", "LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Constraint(String),
    #[error("cannot render the configuration as TOML: {0}")]
    Render(#[from] toml::ser::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub batch: BatchConfig,
    pub metrics: MetricsConfig,
    pub pricing: PricingConfig,
    pub alerting: AlertingConfig,
    /// How long a graceful shutdown may take: finishing and committing the
    /// in-flight batch, leaving the consumer group.
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Where records that cannot be stored go, with the reason in a header.
    pub dlq_topic: String,
    pub session_timeout_ms: u64,
    /// Partitions of the topics the processor creates when they are missing.
    pub topic_partitions: i32,
    /// Replication factor of the topics the processor creates.
    pub topic_replication: i32,
    /// `min.insync.replicas` of the topics the processor creates. Absent:
    /// 2 when the replication factor is 2 or more (so an `acks=all` write
    /// survives the loss of one replica), none (the broker's default) at 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_min_insync_replicas: Option<i32>,
    /// Extra librdkafka settings for the consumer, the dead-letter producer
    /// and the admin client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A libpq-style connection string: `host=… port=… user=…` or `postgres://…`.
    pub url: String,
    pub pool_size: usize,
    /// Upper bound on connecting and on any one query or transaction step;
    /// a database that hangs becomes an error that is retried.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
    pub path: String,
    pub max_tenant_labels: usize,
    pub max_model_labels: usize,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// A TOML price book laid over the built-in one: a provider/model in
    /// this file takes its whole price history from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricebook_path: Option<PathBuf>,
}

/// Delivery of budget threshold crossings (see `alert_outbox`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alertmanager's base URL (`http://alertmanager:9093`); crossings are
    /// POSTed to `<url>/api/v2/alerts`. Without it crossings are recorded
    /// in `budget_alerts` but pushed nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager_url: Option<String>,
    /// A URL that receives the same JSON array as Alertmanager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// How often the outbox looks for crossings to push.
    pub poll_interval_ms: u64,
    /// Upper bound of the pause between attempts at an alert that failed.
    pub max_backoff_ms: u64,
    /// Upper bound on one HTTP request.
    pub timeout_ms: u64,
    /// Alerts per request.
    pub batch_size: usize,
    /// Most `tokenledger_budget_spend_ratio` series exported (the highest
    /// ratios win).
    pub max_ratio_series: usize,
    /// For tests only: push a crossing only once it has been recorded for
    /// this long, leaving a window between commit and push. 0 in production.
    pub push_delay_ms: u64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            alertmanager_url: None,
            webhook_url: None,
            poll_interval_ms: 1_000,
            max_backoff_ms: 60_000,
            timeout_ms: 5_000,
            batch_size: 100,
            max_ratio_series: 5_000,
            push_delay_ms: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            database: DatabaseConfig::default(),
            batch: BatchConfig::default(),
            metrics: MetricsConfig::default(),
            pricing: PricingConfig::default(),
            alerting: AlertingConfig::default(),
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "usage-events".into(),
            group_id: "tokenledger-processor".into(),
            dlq_topic: "usage-events.dlq".into(),
            session_timeout_ms: 10_000,
            topic_partitions: 6,
            topic_replication: 1,
            topic_min_insync_replicas: None,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            pool_size: 4,
            timeout_ms: 30_000,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 5000,
            // Only an idle processor waits this long: records that arrive
            // during a commit form the next batch at once. Measured
            // (scripts/bench.sh, native database, latency at 10k events/s):
            // 50 ms gave p50/p99 128/225 ms accept → commit, 20 ms with
            // group commit 53/134 ms, and 10 ms no better than 20.
            max_latency_ms: 20,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            path: "/metrics".into(),
            max_tenant_labels: 1000,
            max_model_labels: 200,
        }
    }
}

/// Keeps only the variables that name one of this binary's settings. The
/// gateway and the processor share the `TOKENLEDGER_` prefix, so one
/// environment file can serve both, and tools export variables of their own
/// under it; a setting's section is matched, and an unknown key inside a
/// known section is still refused.
fn own_settings(env: Env) -> Env {
    let top_level: Vec<String> = match figment::value::Value::serialize(Config::default()) {
        Ok(figment::value::Value::Dict(_, dict)) => dict.into_keys().collect(),
        _ => Vec::new(),
    };
    env.filter(move |key| {
        let first = key.as_str().split("__").next().unwrap_or_default();
        top_level
            .iter()
            .any(|name| name.eq_ignore_ascii_case(first))
    })
}

impl Config {
    /// The layered sources: defaults, then the file (if any), then the
    /// environment. Kept separate from [`Config::load`] so tests can inspect it.
    pub fn figment(config_file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = config_file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(
            own_settings(Env::prefixed(ENV_PREFIX))
                .ignore(NON_CONFIG_ENV_KEYS)
                .split("__"),
        )
    }

    /// Loads the effective configuration. `config_file` comes from
    /// `--config`; without it `TOKENLEDGER_CONFIG` is consulted.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os(CONFIG_PATH_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        let path = config_file.map(Path::to_path_buf).or(from_env);
        if let Some(path) = &path {
            // figment treats a missing file as empty; an operator who names
            // a file that is not there has made a mistake worth stopping for.
            if !path.is_file() {
                return Err(ConfigError::MissingFile { path: path.clone() });
            }
        }
        let config: Config = Self::figment(path.as_deref()).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError::Constraint(message.to_owned()));
        if self.batch.max_events == 0 {
            return fail("batch.max_events must be at least 1");
        }
        if self.database.pool_size == 0 {
            return fail("database.pool_size must be at least 1");
        }
        if !self.metrics.path.starts_with('/') {
            return fail("metrics.path must start with '/'");
        }
        if self.kafka.topic.is_empty() || self.kafka.dlq_topic.is_empty() {
            return fail("kafka.topic and kafka.dlq_topic must not be empty");
        }
        if self.kafka.topic == self.kafka.dlq_topic {
            return fail("kafka.dlq_topic must differ from kafka.topic");
        }
        if self.kafka.topic_partitions < 1 || self.kafka.topic_replication < 1 {
            return fail("kafka.topic_partitions and kafka.topic_replication must be at least 1");
        }
        if let Some(min) = self.kafka.topic_min_insync_replicas {
            if min < 1 || min > self.kafka.topic_replication {
                return fail(
                    "kafka.topic_min_insync_replicas must be between 1 and kafka.topic_replication",
                );
            }
        }
        self.alerting.validate()?;
        Ok(())
    }

    /// The effective configuration as TOML, with the database password
    /// replaced so the output can be pasted into a ticket.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        shown.database.url = redact_database_url(&self.database.url);
        Ok(toml::to_string_pretty(&shown)?)
    }
}

impl AlertingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("alerting.alertmanager_url", &self.alertmanager_url),
            ("alerting.webhook_url", &self.webhook_url),
        ] {
            let Some(url) = url else { continue };
            if !url.starts_with("http://") {
                return Err(ConfigError::Constraint(format!(
                    "{key} must be an http:// URL, got {url:?} (this build speaks plain HTTP; \
                     route to TLS receivers through Alertmanager)"
                )));
            }
        }
        if self.poll_interval_ms == 0 || self.timeout_ms == 0 || self.batch_size == 0 {
            return Err(ConfigError::Constraint(
                "alerting.poll_interval_ms, timeout_ms and batch_size must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl BatchConfig {
    pub fn max_latency(&self) -> Duration {
        Duration::from_millis(self.max_latency_ms)
    }
}

const REDACTED: &str = "***";

/// Hides the password in either connection-string form: `postgres://user:pw@host/db`
/// or `host=… password=pw …` (values may be single-quoted).
pub fn redact_database_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let after_scheme = scheme_end + 3;
        let authority_end = url[after_scheme..]
            .find(['/', '?'])
            .map_or(url.len(), |i| after_scheme + i);
        let authority = &url[after_scheme..authority_end];
        let mut redacted = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => format!(
                        "{}{}:{REDACTED}{}",
                        &url[..after_scheme],
                        &userinfo[..colon],
                        &authority[at..]
                    ),
                    None => url[..authority_end].to_owned(),
                }
            }
            None => url[..authority_end].to_owned(),
        };
        redacted.push_str(&redact_query_password(&url[authority_end..]));
        return redacted;
    }
    redact_keyword_password(url)
}

fn redact_query_password(rest: &str) -> String {
    let Some(question) = rest.find('?') else {
        return rest.to_owned();
    };
    let params: Vec<String> = rest[question + 1..]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key == "password" => format!("{key}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", &rest[..question], params.join("&"))
}

fn redact_keyword_password(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some((key_start, value_start)) = find_password_value(rest) {
        out.push_str(&rest[..key_start]);
        out.push_str("password=");
        out.push_str(REDACTED);
        let value = &rest[value_start..];
        let value_len = match value.strip_prefix('\'') {
            Some(quoted) => 1 + quoted_value_len(quoted),
            None => value.find(char::is_whitespace).unwrap_or(value.len()),
        };
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// Length of a single-quoted value's body including its closing quote;
/// `\'` inside it does not close it.
fn quoted_value_len(quoted: &str) -> usize {
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '\'' if !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    quoted.len()
}

/// Where a `password = value` pair starts and where its value starts, for
/// a `password` that is a whole key rather than part of another word.
fn find_password_value(text: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = text[from..].find("password") {
        let key_start = from + found;
        let key_end = key_start + "password".len();
        let at_key_start = text[..key_start]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        let after_key = text[key_end..].trim_start();
        if at_key_start {
            if let Some(after_eq) = after_key.strip_prefix('=') {
                let value = after_eq.trim_start();
                return Some((key_start, text.len() - value.len()));
            }
        }
        from = key_end;
    }
    None
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.kafka.topic, "usage-events");
        assert_eq!(config.kafka.group_id, "tokenledger-processor");
        assert_eq!(config.kafka.dlq_topic, "usage-events.dlq");
        assert_eq!(config.kafka.session_timeout_ms, 10_000);
        assert_eq!(
            config.database.url,
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        );
        assert_eq!(config.batch.max_events, 5000);
        assert_eq!(config.batch.max_latency_ms, 20);
        assert_eq!(config.metrics.listen, "127.0.0.1:8081");
        assert_eq!(config.metrics.path, "/metrics");
        assert_eq!(config.metrics.max_tenant_labels, 1000);
        assert_eq!(config.metrics.max_model_labels, 200);
        assert_eq!(config.pricing.pricebook_path, None);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "processor.toml",
                r#"
                shutdown_timeout_ms = 3000
                [kafka]
                brokers = "file:1"
                topic = "from-file"
                [kafka.properties]
                "security.protocol" = "plaintext"
                [batch]
                max_events = 10
                "#,
            )?;
            jail.set_env("TOKENLEDGER_KAFKA__BROKERS", "env:2");
            jail.set_env("TOKENLEDGER_DATABASE__URL", "host=db port=6543 user=u");
            jail.set_env("TOKENLEDGER_BATCH__MAX_LATENCY_MS", "17");
            // not configuration keys: must not trip deny_unknown_fields
            jail.set_env("TOKENLEDGER_CONFIG", "processor.toml");
            jail.set_env("TOKENLEDGER_LOG", "debug");
            // the gateway's settings and tools' variables share the prefix
            jail.set_env("TOKENLEDGER_HTTP__LISTEN", "0.0.0.0:8080");
            jail.set_env("TOKENLEDGER_TANSU_BIN", "/opt/tansu");

            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.brokers, "env:2", "env wins over the file");
            assert_eq!(config.kafka.topic, "from-file", "file wins over defaults");
            assert_eq!(config.kafka.group_id, "tokenledger-processor");
            assert_eq!(
                config
                    .kafka
                    .properties
                    .get("security.protocol")
                    .map(String::as_str),
                Some("plaintext")
            );
            assert_eq!(config.database.url, "host=db port=6543 user=u");
            assert_eq!(config.batch.max_events, 10);
            assert_eq!(config.batch.max_latency_ms, 17);
            assert_eq!(config.shutdown_timeout_ms, 3000);
            Ok(())
        });
    }

    #[test]
    fn explicit_path_wins_over_the_env_variable() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("a.toml", "[kafka]\ntopic = \"a\"\n")?;
            jail.create_file("b.toml", "[kafka]\ntopic = \"b\"\n")?;
            jail.set_env("TOKENLEDGER_CONFIG", "a.toml");
            let config = Config::load(Some(Path::new("b.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.topic, "b");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_in_file_and_env() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("typo.toml", "[kafka]\nbrokerz = \"x\"\n")?;
            let err = Config::load(Some(Path::new("typo.toml"))).expect_err("unknown file key");
            assert!(err.to_string().contains("brokerz"), "{err}");

            jail.set_env("TOKENLEDGER_BATCH__MAX_EVENTZ", "3");
            let err = Config::load(None).expect_err("unknown env key");
            assert!(err.to_string().contains("max_eventz"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_named_but_missing_file_is_an_error() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let err = Config::load(Some(Path::new("nope.toml"))).expect_err("missing file");
            assert!(matches!(err, ConfigError::MissingFile { .. }));
            Ok(())
        });
    }

    #[test]
    fn printed_config_hides_the_password_and_parses_back() {
        let mut config = Config::default();
        config.database.url = "host=db user=u password=s3cret dbname=x".into();
        let text = config.to_redacted_toml().expect("renders");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("password=***"), "{text}");
        let parsed: Config = toml::from_str(&text).expect("printed config parses back");
        assert_eq!(parsed.kafka, config.kafka);
    }

    #[test]
    fn redacts_passwords_in_both_connection_string_forms() {
        let cases = [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            (
                "postgres://h/db?user=u&password=pw",
                "postgres://h/db?user=u&password=***",
            ),
            ("host=h password=pw user=u", "host=h password=*** user=u"),
            (
                "host=h password='p w\\'x' user=u",
                "host=h password=*** user=u",
            ),
            ("host=h user=u", "host=h user=u"),
            ("host=h password = pw user=u", "host=h password=*** user=u"),
            ("host=h mypassword=x", "host=h mypassword=x"),
            ("password=pw", "password=***"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_database_url(input), expected, "input {input:?}");
        }
    }
}
