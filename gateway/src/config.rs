//! The gateway's configuration: its typed sections and their defaults and
//! cross-field rules. Layering (defaults, TOML file, `TOKENLEDGER_…`
//! variables) and the print path are [`infra::config`]'s.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::Env;
use infra::database::DatabaseSettings;
use infra::kafka::Properties;
use infra::Secret;
use ledger::event::ValidationLimits;
use serde::{Deserialize, Serialize};

pub use infra::config::ConfigError;

/// Room for reading the body and for the delivery report to arrive after
/// librdkafka's own message timeout.
const MIN_REQUEST_TIMEOUT_HEADROOM_MS: u64 = 1_000;

/// librdkafka settings the gateway owns: overriding them through
/// `kafka.properties` would silently weaken "202 means durably appended" or
/// fight a typed setting, so they are refused at startup instead.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "linger.ms",
    "queue.buffering.max.ms",
    "compression.type",
    "compression.codec",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub auth: AuthConfig,
    pub validation: ValidationConfig,
    pub database: DatabaseConfig,
    pub otlp: OtlpConfig,
    pub exports: ExportsConfig,
    pub reconciliation: ReconciliationConfig,
    pub reservations: ReservationsConfig,
    pub forecasts: ForecastConfig,
}

/// The database the budget API reads and writes (the processor's). Without
/// `url` the budget endpoints answer 503 and everything else works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A libpq-style connection string (`host=… user=…` or `postgres://…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    pub pool_size: usize,
    /// Upper bound on getting a connection and on each query.
    #[serde(alias = "timeout", deserialize_with = "infra::duration::millis")]
    pub timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 4,
            timeout_ms: 2_000,
        }
    }
}

impl DatabaseConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How to connect, when `url` is set.
    pub fn settings(&self) -> Option<DatabaseSettings<'_>> {
        Some(DatabaseSettings {
            url: self.url.as_ref()?,
            pool_size: self.pool_size,
            timeout: self.timeout(),
            application_name: "tokenledger-gateway",
            session_setup: None,
            // Tenants' requests reach the database: none may hold a backend
            // past the time the gateway waits for it.
            statement_timeout: Some(self.timeout()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The API: `POST /v1/usage`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`; kept apart so the API port can be
    /// exposed publicly without exposing metrics.
    pub admin_listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Upper bound on a whole request, body upload included. Must exceed
    /// `kafka.message_timeout_ms` by a second so a produce is never cut
    /// short by it.
    #[serde(
        alias = "request_timeout",
        deserialize_with = "infra::duration::millis"
    )]
    pub request_timeout_ms: u64,
    /// How long in-flight requests and the producer flush may take after
    /// SIGTERM before the process exits anyway.
    #[serde(
        alias = "shutdown_timeout",
        deserialize_with = "infra::duration::millis"
    )]
    pub shutdown_timeout_ms: u64,
    /// How long a client may take to send a request's headers, from the
    /// connection's start or the first byte of a later request; a client
    /// that stalls longer is disconnected.
    #[serde(
        alias = "header_read_timeout",
        deserialize_with = "infra::duration::millis"
    )]
    pub header_read_timeout_ms: u64,
    /// How long a kept-alive connection may sit with no request before it
    /// is closed. Longer than a load balancer's usual 60 s, so the balancer
    /// closes first and never reuses a connection the gateway is closing.
    #[serde(alias = "idle_timeout", deserialize_with = "infra::duration::millis")]
    pub idle_timeout_ms: u64,
    /// Open connections per port; one more is answered 503 with
    /// `Retry-After` and closed. Keep it below the file-descriptor limit
    /// (`ulimit -n`) with room for the Kafka sockets.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 15_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: 10_000,
        }
    }
}

impl HttpConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The connection settings' own rules.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        if self.header_read_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http.header_read_timeout_ms and http.idle_timeout_ms must be positive".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "http.max_connections must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub topic: String,
    /// How long one record may wait for the broker's acknowledgement before
    /// the request is answered 503.
    #[serde(
        alias = "message_timeout",
        deserialize_with = "infra::duration::millis"
    )]
    pub message_timeout_ms: u64,
    /// Bound of the producer's in-memory queue; a full queue answers 503
    /// instead of growing.
    pub queue_max_messages: u32,
    #[serde(alias = "linger", deserialize_with = "infra::duration::millis")]
    pub linger_ms: u64,
    pub compression: Compression,
    /// Extra librdkafka settings (security, tuning), applied verbatim.
    pub properties: Properties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "usage-events".into(),
            message_timeout_ms: 5_000,
            queue_max_messages: 100_000,
            linger_ms: 5,
            compression: Compression::Lz4,
            properties: Properties::default(),
        }
    }
}

impl KafkaConfig {
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }
}

// The `[auth]` section and each key's trust policy.
/// The limits each listener enforces on its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(http: &HttpConfig) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout(),
            idle_timeout: http.idle_timeout(),
            max_connections: http.max_connections,
        }
    }
}

mod exports;
mod keys;
mod otlp;
mod reconciliation;
mod reservations;
pub use exports::ExportsConfig;
pub use keys::{AuthConfig, KeyConfig, KeyKind, KeyPolicy};
pub use otlp::OtlpConfig;
pub use reconciliation::{AnthropicTenants, OpenAiTenants, ReconciliationConfig};
pub use reservations::{ForecastConfig, ReservationsConfig};

/// The shape of `auth.keys_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    pub max_batch_events: usize,
    pub backfill_days: u32,
    #[serde(alias = "max_future_skew", deserialize_with = "infra::duration::secs")]
    pub max_future_skew_secs: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let limits = ValidationLimits::default();
        Self {
            max_batch_events: limits.max_batch_events,
            backfill_days: 35,
            max_future_skew_secs: 300,
        }
    }
}

impl ValidationConfig {
    /// Windows past what date arithmetic holds would panic on every
    /// request; they are refused here, at startup.
    fn validate(&self) -> Result<(), ConfigError> {
        let max_days = keys::MAX_WINDOW_MS / (24 * 60 * 60 * 1000);
        if u64::from(self.backfill_days) > max_days {
            return Err(ConfigError::Invalid(format!(
                "validation.backfill_days must be at most {max_days} (ten years)"
            )));
        }
        if self.max_future_skew_secs > keys::MAX_WINDOW_MS / 1000 {
            return Err(ConfigError::Invalid(format!(
                "validation.max_future_skew_secs must be at most {} (ten years)",
                keys::MAX_WINDOW_MS / 1000
            )));
        }
        Ok(())
    }

    pub fn limits(&self) -> ValidationLimits {
        ValidationLimits {
            max_future_skew: chrono::Duration::seconds(
                i64::try_from(self.max_future_skew_secs).unwrap_or(i64::MAX / 1000),
            ),
            backfill_window: chrono::Duration::days(i64::from(self.backfill_days)),
            max_batch_events: self.max_batch_events,
        }
    }
}

/// The settings that hold a credential, each of which may instead be read
/// from the file its `<setting>_file` twin names.
pub const SECRET_SETTINGS: &[&str] = &["database.url"];

impl Config {
    /// Defaults, then `file` (`--config`, else `TOKENLEDGER_CONFIG`), then
    /// `TOKENLEDGER_…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(
            infra::config::file_path(file).as_deref(),
            infra::config::process_env(),
        )
    }

    /// [`Config::load`] with the file resolved and the environment provider
    /// supplied, so tests can use a fake environment instead of mutating
    /// the process's.
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let config: Config = infra::config::load_with_secret_files(file, env, SECRET_SETTINGS)?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.http.request_timeout_ms
            < self.kafka.message_timeout_ms + MIN_REQUEST_TIMEOUT_HEADROOM_MS
        {
            return invalid(format!(
                "http.request_timeout_ms ({}) must exceed kafka.message_timeout_ms ({}) by at least {MIN_REQUEST_TIMEOUT_HEADROOM_MS} ms, or a slow acknowledgement is cut off without saying which events were appended",
                self.http.request_timeout_ms, self.kafka.message_timeout_ms
            ));
        }
        if self.http.max_body_bytes == 0 {
            return invalid("http.max_body_bytes must be positive".into());
        }
        self.http.validate_connections()?;
        self.auth.validate()?;
        self.validation.validate()?;
        self.otlp.validate()?;
        self.exports.validate()?;
        self.reservations.check().map_err(ConfigError::Invalid)?;
        if self.forecasts.window_s == 0 {
            return invalid("forecasts.window_s must be positive".into());
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers must name at least one broker".into());
        }
        if self.kafka.topic.trim().is_empty() {
            return invalid("kafka.topic must not be empty".into());
        }
        if self.kafka.message_timeout_ms == 0 {
            return invalid("kafka.message_timeout_ms must be positive".into());
        }
        if self.kafka.queue_max_messages == 0 {
            return invalid("kafka.queue_max_messages must be positive".into());
        }
        for name in self.kafka.properties.keys() {
            if RESERVED_KAFKA_PROPERTIES.contains(&name.as_str()) {
                return invalid(format!(
                    "kafka.properties may not set {name:?}: the gateway sets it itself (use the typed kafka.* setting if there is one)"
                ));
            }
        }
        if self.validation.max_batch_events == 0 {
            return invalid("validation.max_batch_events must be positive".into());
        }
        if self.database.pool_size == 0 || self.database.timeout_ms == 0 {
            return invalid("database.pool_size and database.timeout_ms must be positive".into());
        }
        Ok(())
    }

    /// The configuration as TOML with credentials replaced, for
    /// `--print-config`.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        infra::config::to_toml(&self.with_key_policies_shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix nobody sets keeps these tests independent of the
    /// machine's own `TOKENLEDGER_…` variables.
    fn no_env() -> Env {
        Env::prefixed("TLGWTEST_UNSET_")
    }

    fn error_chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let config = Config::load_from(None, no_env()).expect("defaults load");
        assert_eq!(config, Config::default());
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.http.admin_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.http.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.kafka.topic, "usage-events");
        assert_eq!(config.kafka.message_timeout_ms, 5_000);
        assert_eq!(config.kafka.queue_max_messages, 100_000);
        assert_eq!(config.kafka.compression, Compression::Lz4);
        assert!(config.auth.enabled);
        assert_eq!(config.validation.max_batch_events, 1000);
        assert_eq!(config.validation.backfill_days, 35);
        assert_eq!(config.validation.max_future_skew_secs, 300);
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            r#"
[http]
listen = "0.0.0.0:18080"
[kafka]
topic = "from-file"
brokers = "file:9092"
[[auth.keys]]
sha256 = "aa"
tenant_id = "acme"
"#,
        )
        .expect("write config");
        let env = Env::prefixed("TLGWTEST_A_");
        std::env::set_var("TLGWTEST_A_KAFKA__BROKERS", "10.0.0.1:9092,10.0.0.2:9092");
        std::env::set_var("TLGWTEST_A_CONFIG", "/ignored.toml");
        std::env::set_var("TLGWTEST_A_LOG", "debug");
        let config = Config::load_from(Some(&path), env).expect("layered config loads");
        assert_eq!(config.http.listen.to_string(), "0.0.0.0:18080");
        assert_eq!(config.kafka.topic, "from-file");
        assert_eq!(config.kafka.brokers, "10.0.0.1:9092,10.0.0.2:9092");
        assert_eq!(config.auth.keys.len(), 1);
        assert_eq!(config.auth.keys[0].tenant_id.as_deref(), Some("acme"));
    }

    #[test]
    fn unknown_keys_are_refused_in_files_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "[kafka]\ntopics = \"typo\"\n").expect("write config");
        let err = Config::load_from(Some(&path), no_env()).expect_err("typo refused");
        assert!(error_chain(&err).contains("topics"), "{err:?}");

        std::env::set_var("TLGWTEST_B_HTTP__LISTN", "0.0.0.0:1");
        let err = Config::load_from(None, Env::prefixed("TLGWTEST_B_")).expect_err("typo refused");
        assert!(error_chain(&err).contains("listn"), "{err:?}");
    }

    #[test]
    fn variables_of_other_binaries_and_tools_are_not_settings() {
        std::env::set_var("TLGWTEST_C_TANSU_BIN", "/opt/tansu");
        std::env::set_var("TLGWTEST_C_DATABASE_POOL", "9");
        std::env::set_var("TLGWTEST_C_METRICS__LISTEN", "127.0.0.1:1");
        std::env::set_var("TLGWTEST_C_KAFKA__TOPIC", "from-env");
        let config = Config::load_from(None, Env::prefixed("TLGWTEST_C_"))
            .expect("foreign variables ignored");
        assert_eq!(config.kafka.topic, "from-env");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Config::load_from(Some(Path::new("/nonexistent/gateway.toml")), no_env())
            .expect_err("missing file refused");
        assert!(matches!(err, ConfigError::MissingFile { .. }));
    }

    #[test]
    fn reserved_kafka_properties_are_refused() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("enable.idempotence".into(), "false".into());
        assert!(config.validate().is_err());
        config.kafka.properties.clear();
        config
            .kafka
            .properties
            .insert("client.id".into(), "gw".into());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn request_timeout_must_exceed_message_timeout() {
        let mut config = Config::default();
        config.http.request_timeout_ms = config.kafka.message_timeout_ms;
        assert!(config.validate().is_err());
    }

    #[test]
    fn printed_config_redacts_secrets_and_parses_back() {
        let mut config = Config::default();
        config
            .auth
            .keys
            .push(KeyConfig::tenant("deadbeef".repeat(8), "acme"));
        config
            .kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        config
            .kafka
            .properties
            .insert("client.id".into(), "gateway-1".into());
        let printed = config.to_redacted_toml().expect("renders");
        assert!(!printed.contains("deadbeef"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("gateway-1"), "{printed}");
        let reparsed: Config = toml::from_str(&printed).expect("printed config parses back");
        assert_eq!(reparsed.kafka.topic, config.kafka.topic);
        assert_eq!(reparsed.auth.keys[0].tenant_id.as_deref(), Some("acme"));
    }

    #[test]
    fn printed_config_hides_the_database_password() {
        for (url, hidden) in [
            (
                "postgres://u:s3cret@db:5432/x",
                "postgres://u:<redacted>@db:5432/x",
            ),
            (
                "host=db user=u password=s3cret",
                "host=db user=u password=<redacted>",
            ),
        ] {
            let mut config = Config::default();
            config.database.url = Some(url.into());
            let printed = config.to_redacted_toml().expect("renders");
            assert!(!printed.contains("s3cret"), "{printed}");
            assert!(printed.contains(hidden), "{printed}");
        }
    }

    /// Every secret-bearing setting, in every form a credential takes,
    /// through the path `gateway --print-config` prints.
    #[test]
    fn printed_config_never_shows_a_secret() {
        for url in [
            "postgres://u:hunter2@db/x",
            // tokio-postgres reads the password as `hunter#2`
            "postgres://u:hunter#2@db/x",
            "postgres://u@db/x?password=hunter2",
            "postgres://db/x?user=u&sslpassword=hunter2",
            "host=db user=u password=hunter2",
            "host=db user=u password='hunter 2'",
            "host=db password = hunter2 user=u",
        ] {
            let mut config = Config::default();
            config.database.url = Some(url.into());
            config
                .auth
                .keys
                .push(KeyConfig::tenant("hunter2".repeat(9), "acme"));
            config
                .kafka
                .properties
                .insert("sasl.password".into(), "hunter2".into());
            config
                .kafka
                .properties
                .insert("sasl.oauthbearer.client.secret".into(), "hunter2".into());
            let printed = config.to_redacted_toml().expect("renders");
            assert!(!printed.contains("hunter"), "{url}: {printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
            assert!(!format!("{config:?}").contains("hunter"), "{url}: Debug");
        }
    }

    #[test]
    fn key_debug_output_hides_the_hash() {
        let key = KeyConfig::admin("0123456789abcdef");
        assert!(!format!("{key:?}").contains("0123456789abcdef"));
    }
}
