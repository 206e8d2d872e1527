//! The gateway's configuration: its typed sections and their defaults and
//! cross-field rules. Layering (defaults, TOML file, `TOKENLEDGER_…`
//! variables) and the print path are [`infra::config`]'s.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::Env;
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

/// The database the admin APIs read and write (the processor's). Without
/// `url` their endpoints answer 503 and everything else works.
pub type DatabaseConfig = infra::database::DatabaseConfig<Option<Secret>>;

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

infra::kafka_config! {
    /// The `[kafka]` section: the producer's settings besides the shared ones.
    pub struct KafkaConfig {
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
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: infra::kafka::DEFAULT_BROKERS.into(),
            topic: infra::kafka::DEFAULT_TOPIC.into(),
            message_timeout_ms: 5_000,
            queue_max_messages: 100_000,
            linger_ms: 5,
            compression: Compression::Lz4,
            properties: infra::kafka::Properties::default(),
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
mod tests;
