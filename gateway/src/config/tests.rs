//! The gateway's configuration: defaults, layering, and the rules it refuses.
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
    let config =
        Config::load_from(None, Env::prefixed("TLGWTEST_C_")).expect("foreign variables ignored");
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
