//! Configuration the gateway must refuse when it starts rather than fail on later, per request:
//! time windows that overflow date arithmetic, two keys with one hash, a key bound to `*`.

use gateway::auth::{hash_key, KeyRing};
use gateway::config::{AuthConfig, Config, KeyConfig};

#[test]
fn time_windows_that_overflow_date_arithmetic_are_refused_at_startup() {
    let mut config = Config::default();
    config.validation.backfill_days = u32::MAX;
    assert!(config.validate().is_err(), "backfill_days = u32::MAX");

    let mut config = Config::default();
    config.validation.max_future_skew_secs = u64::MAX;
    assert!(
        config.validate().is_err(),
        "max_future_skew_secs = u64::MAX"
    );

    let mut config = Config::default();
    config.auth.tenant_max_lateness_ms = 9_223_372_036_854_775_807;
    assert!(
        config.validate().is_err(),
        "tenant_max_lateness_ms = i64::MAX"
    );

    let mut key = KeyConfig::tenant(hash_key("k1"), "acme");
    key.max_lateness_ms = Some(9_223_372_036_854_775_807);
    let auth = AuthConfig {
        keys: vec![key],
        ..AuthConfig::default()
    };
    assert!(
        KeyRing::from_config(&auth).is_err(),
        "a key's max_lateness_ms = i64::MAX"
    );

    // The largest accepted values still work.
    let mut config = Config::default();
    config.validation.backfill_days = 3650;
    config.validation.max_future_skew_secs = 86_400;
    assert!(config.validate().is_ok());
}

#[test]
fn two_keys_with_one_hash_are_a_startup_error() {
    let auth = AuthConfig {
        keys: vec![
            KeyConfig::tenant(hash_key("shared"), "acme"),
            KeyConfig::tenant(hash_key("shared").to_uppercase(), "globex"),
        ],
        ..AuthConfig::default()
    };
    let error = KeyRing::from_config(&auth).expect_err("duplicate hashes refused");
    assert!(error.to_string().contains("same"), "{error}");
}

#[test]
fn a_key_bound_to_every_tenant_is_refused() {
    let auth = AuthConfig {
        keys: vec![KeyConfig::tenant(hash_key("star"), "*")],
        ..AuthConfig::default()
    };
    assert!(KeyRing::from_config(&auth).is_err());
}
