//! The keys file is read again on SIGHUP (`KeyRing::reload`, which the gateway's SIGHUP handler
//! calls): a revoked key stops working for every route without a restart, and a keys file that
//! no longer loads leaves the keys in force as they were.

use axum::http::{HeaderMap, HeaderValue};
use gateway::auth::{hash_key, KeyRing};
use gateway::config::AuthConfig;

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    headers
}

fn keys_file(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(key, tenant)| {
            format!(
                "[[keys]]\nsha256 = \"{}\"\ntenant_id = \"{tenant}\"\n",
                hash_key(key)
            )
        })
        .collect()
}

#[test]
fn a_key_removed_from_the_keys_file_stops_working_after_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.toml");
    std::fs::write(
        &path,
        keys_file(&[("old-key", "acme"), ("other-key", "globex")]),
    )
    .expect("write");
    let auth = AuthConfig {
        keys_file: Some(path.clone()),
        ..AuthConfig::default()
    };
    let ring = KeyRing::from_config(&auth).expect("keys load");
    // What the routes hold: clones of the ring made at startup.
    let held_by_a_route = ring.clone();
    assert!(held_by_a_route.authenticate(&bearer("old-key")).is_ok());

    std::fs::write(&path, keys_file(&[("other-key", "globex")])).expect("rewrite");
    assert_eq!(ring.reload(&auth).expect("reloads"), 1);
    assert!(
        held_by_a_route.authenticate(&bearer("old-key")).is_err(),
        "the revoked key still authenticates"
    );
    assert!(held_by_a_route.authenticate(&bearer("other-key")).is_ok());

    // A broken file keeps the keys in force.
    std::fs::write(&path, "[[keys]]\nsha256 = \"nothex\"\ntenant_id = \"x\"\n").expect("break");
    assert!(ring.reload(&auth).is_err());
    assert!(held_by_a_route.authenticate(&bearer("other-key")).is_ok());
}
