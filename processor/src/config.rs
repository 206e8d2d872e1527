//! The processor's configuration: its typed sections and their defaults
//! and cross-field rules. Layering (defaults → TOML file → `TOKENLEDGER_…`
//! variables) and the print path are [`infra::config`]'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Env;
use infra::Secret;
use serde::{Deserialize, Serialize};

pub use infra::config::ConfigError;

mod alerting;
mod optimize;

pub use alerting::AlertingConfig;
pub use optimize::OptimizeConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub batch: BatchConfig,
    pub metrics: MetricsConfig,
    pub pricing: PricingConfig,
    pub alerting: AlertingConfig,
    pub attribution: crate::attribution::AttributionConfig,
    pub reconcile: crate::reconcile::ReconcileConfig,
    pub optimize: OptimizeConfig,
    /// How long a graceful shutdown may take: finishing and committing the
    /// in-flight batch, leaving the consumer group.
    #[serde(
        alias = "shutdown_timeout",
        deserialize_with = "infra::duration::millis"
    )]
    pub shutdown_timeout_ms: u64,
}

infra::kafka_config! {
    /// The `[kafka]` section: the consumer's, the dead-letter producer's
    /// and the admin client's settings besides the shared ones.
    pub struct KafkaConfig {
        pub group_id: String,
        /// Where records that cannot be stored go, with the reason in a header.
        pub dlq_topic: String,
        #[serde(
            alias = "session_timeout",
            deserialize_with = "infra::duration::millis"
        )]
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
        /// Operator and test option, off by default: consume exactly these
        /// partitions of `topic` by manual assignment instead of joining the
        /// consumer group. They still start at the offsets stored in the
        /// database, so the exactly-once rules hold, but nothing keeps another
        /// processor off them: two processors then write the same partitions at
        /// once (docs/design.md, "Guarantees and failure modes"). For draining
        /// chosen partitions by hand and for testing that overlap.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub manual_assignment: Option<Vec<i32>>,
    }
}

/// The `[database]` section; the processor cannot run without one.
pub type DatabaseConfig = infra::database::DatabaseConfig<Secret>;

/// More writers than this cannot help: each needs a partition of its own.
const MAX_WRITERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    #[serde(alias = "max_latency", deserialize_with = "infra::duration::millis")]
    pub max_latency_ms: u64,
    /// Transactions in flight at once, each over its own partitions (a
    /// partition's records always go to the same writer). More than one
    /// helps when the database has cores to spare; each holds a pooled
    /// connection through its transaction.
    pub writers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
    pub path: String,
    pub max_tenant_labels: usize,
    pub max_model_labels: usize,
    /// Attribution label keys also exported as Prometheus labels (opt-in;
    /// see `label_metrics`), each capped at `max_label_values` values.
    pub label_keys: Vec<String>,
    pub max_label_values: usize,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// A TOML price book laid over the built-in one: a provider/model in
    /// this file takes its whole price history from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricebook_path: Option<PathBuf>,
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
            attribution: crate::attribution::AttributionConfig::default(),
            reconcile: crate::reconcile::ReconcileConfig::default(),
            optimize: OptimizeConfig::default(),
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: infra::kafka::DEFAULT_BROKERS.into(),
            topic: infra::kafka::DEFAULT_TOPIC.into(),
            group_id: "tokenledger-processor".into(),
            dlq_topic: "usage-events.dlq".into(),
            session_timeout_ms: 10_000,
            topic_partitions: 6,
            topic_replication: 1,
            topic_min_insync_replicas: None,
            properties: infra::kafka::Properties::default(),
            manual_assignment: None,
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
            writers: 1,
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
            label_keys: Vec::new(),
            max_label_values: 50,
        }
    }
}

/// The settings that hold a credential, each of which may instead be read
/// from the file its `<setting>_file` twin names.
pub const SECRET_SETTINGS: &[&str] = &[
    "database.url",
    "alerting.alertmanager_url",
    "alerting.webhook_url",
    "reconcile.openai.admin_key",
    "reconcile.anthropic.admin_key",
];

impl Config {
    /// Loads the effective configuration: defaults, then the file
    /// (`--config`, else `TOKENLEDGER_CONFIG`), then `TOKENLEDGER_…`
    /// variables from the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(
            infra::config::file_path(config_file).as_deref(),
            infra::config::process_env(),
        )
    }

    /// [`Config::load`] with the file resolved and the environment provider
    /// supplied.
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let config: Config = infra::config::load_with_secret_files(file, env, SECRET_SETTINGS)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        if self.batch.max_events == 0 {
            return fail("batch.max_events must be at least 1");
        }
        if self.database.pool_size == 0 {
            return fail("database.pool_size must be at least 1");
        }
        if !(1..=MAX_WRITERS).contains(&self.batch.writers) {
            return fail(&format!(
                "batch.writers must be between 1 and {MAX_WRITERS}"
            ));
        }
        if self.database.pool_size <= self.batch.writers {
            return fail(&format!(
                "database.pool_size ({}) must be more than batch.writers ({}): each writer holds a \
                 connection through its transaction, and assigning partitions and delivering \
                 alerts need one besides",
                self.database.pool_size, self.batch.writers
            ));
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
        if let Some(partitions) = &self.kafka.manual_assignment {
            let mut sorted = partitions.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.is_empty() || sorted.len() != partitions.len() || sorted[0] < 0 {
                return fail(
                    "kafka.manual_assignment must list distinct partition numbers, at least one, none negative",
                );
            }
        }
        self.alerting.validate()?;
        self.optimize.validate()?;
        self.attribution.validate().map_err(ConfigError::Invalid)?;
        self.reconcile.validate().map_err(ConfigError::Invalid)?;
        if let Some(key) = self
            .metrics
            .label_keys
            .iter()
            .find(|key| !self.attribution.labels.contains(key))
        {
            return fail(&format!(
                "metrics.label_keys names {key:?}, which is not one of attribution.labels"
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with every credential
    /// redacted so the output can be pasted into a ticket.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        infra::config::to_toml(self)
    }
}

impl BatchConfig {
    pub fn max_latency(&self) -> Duration {
        Duration::from_millis(self.max_latency_ms)
    }
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
            config.database.url.expose(),
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
            assert_eq!(config.database.url.expose(), "host=db port=6543 user=u");
            assert_eq!(config.batch.max_events, 10);
            assert_eq!(config.batch.max_latency_ms, 17);
            assert_eq!(config.shutdown_timeout_ms, 3000);
            Ok(())
        });
    }

    #[test]
    fn durations_read_as_durations_under_either_name() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "processor.toml",
                "shutdown_timeout = \"3s\"\n[batch]\nmax_latency = \"25ms\"\n\
                 [kafka]\nsession_timeout_ms = \"1m\"\n[alerting]\npoll_interval = \"2s\"\n",
            )?;
            jail.set_env("TOKENLEDGER_DATABASE__TIMEOUT", "4s");
            let config =
                Config::load(Some(Path::new("processor.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.shutdown_timeout_ms, 3_000);
            assert_eq!(config.batch.max_latency_ms, 25);
            assert_eq!(config.kafka.session_timeout_ms, 60_000);
            assert_eq!(config.alerting.poll_interval_ms, 2_000);
            assert_eq!(config.database.timeout_ms, 4_000);
            jail.set_env("TOKENLEDGER_SHUTDOWN_TIMEOUT", "soon");
            let error = Config::load(Some(Path::new("processor.toml")))
                .expect_err("not a duration")
                .to_string();
            assert!(error.contains("is not a duration"), "{error}");
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
    fn writers_need_a_connection_each_and_one_to_spare() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOKENLEDGER_BATCH__WRITERS", "3");
            jail.set_env("TOKENLEDGER_DATABASE__POOL_SIZE", "4");
            assert_eq!(
                Config::load(None).map_err(|e| e.to_string())?.batch.writers,
                3
            );

            jail.set_env("TOKENLEDGER_DATABASE__POOL_SIZE", "3");
            let err = Config::load(None).expect_err("as many writers as connections");
            assert!(err.to_string().contains("database.pool_size (3)"), "{err}");

            jail.set_env("TOKENLEDGER_BATCH__WRITERS", "0");
            let err = Config::load(None).expect_err("no writer");
            assert!(err.to_string().contains("batch.writers"), "{err}");
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
        assert!(text.contains("password=<redacted>"), "{text}");
        let parsed: Config = toml::from_str(&text).expect("printed config parses back");
        assert_eq!(parsed.kafka, config.kafka);
    }

    /// Every secret-bearing setting, in every form a credential takes,
    /// through the path `processor --print-config` prints.
    #[test]
    fn printed_config_never_shows_a_secret() {
        for (database, webhook) in [
            (
                "postgres://u:hunter2@db/x",
                "http://alerts:hunter2@hooks.example/x",
            ),
            (
                "postgres://u@db/x?password=hunter2",
                "http://hunter2@hooks.example/x",
            ),
            (
                "postgres://db/x?user=u&sslpassword=hunter2",
                "http://hooks.example/x?token=hunter2",
            ),
            (
                "host=db user=u password=hunter2",
                "http://hooks.example/x?api_key=hunter2&channel=ops",
            ),
            (
                "host=db user=u password='hunter 2'",
                "http://hooks.example/x",
            ),
            (
                // tokio-postgres reads the password as `hunter#2`
                "postgres://u:hunter#2@db/x",
                // a token in the path, as Slack's incoming webhooks carry it
                "http://hooks.internal/services/T0/B0/hunter2TOKEN123",
            ),
        ] {
            let mut config = Config::default();
            config.database.url = database.into();
            config.alerting.webhook_url = Some(webhook.into());
            config.alerting.alertmanager_url = Some("http://am:hunter2@alertmanager:9093".into());
            config
                .kafka
                .properties
                .insert("sasl.password".into(), "hunter2".into());
            config
                .kafka
                .properties
                .insert("security.protocol".into(), "sasl_plaintext".into());
            config.validate().expect("valid");
            let printed = config.to_redacted_toml().expect("renders");
            assert!(
                !printed.contains("hunter"),
                "{database} {webhook}: {printed}"
            );
            assert!(printed.contains("<redacted>"), "{printed}");
            assert!(printed.contains("sasl_plaintext"), "{printed}");
            assert!(
                !format!("{config:?}").contains("hunter"),
                "{database}: Debug"
            );
        }
    }

    #[test]
    fn manual_assignment_is_read_from_env_and_validated() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            assert_eq!(
                Config::load(None)
                    .map_err(|e| e.to_string())?
                    .kafka
                    .manual_assignment,
                None
            );
            jail.set_env("TOKENLEDGER_KAFKA__MANUAL_ASSIGNMENT", "[2, 0]");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.manual_assignment, Some(vec![2, 0]));
            for bad in ["[]", "[1, 1]", "[-1]"] {
                jail.set_env("TOKENLEDGER_KAFKA__MANUAL_ASSIGNMENT", bad);
                let err = Config::load(None).expect_err(bad);
                assert!(
                    err.to_string().contains("manual_assignment"),
                    "{bad}: {err}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn an_invalid_alert_url_is_reported_redacted() {
        let mut config = Config::default();
        config.alerting.webhook_url = Some("ftp://u:hunter2@hooks.example/x".into());
        let err = config.validate().expect_err("ftp refused");
        assert!(err.to_string().contains("webhook_url"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
