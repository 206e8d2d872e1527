//! The gateway as the admin-API tests (exports, optimization reports,
//! reconciliation) run it: its binary on a test database with one admin key
//! and one tenant key for `acme`, no broker (these routes need none), handed
//! back once it answers; and the authenticated GET they read it with.

use std::path::Path;
use std::time::Duration;

use e2e::usage::{answers_ok, hash_key};
use e2e::{free_port, wait_for, Binary, ChildProcess, Database};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the gateway with `config` (sections of its own, may be empty)
/// followed by the two keys, and waits until `/healthz` answers. Returns the
/// process and the API's base URL.
pub async fn start(
    db: &Database,
    dir: &Path,
    config: &str,
    admin_key: &str,
    acme_key: &str,
) -> (ChildProcess, String) {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "{config}[[auth.keys]]\nsha256 = \"{}\"\nadmin = true\n\n\
             [[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\n",
            hash_key(admin_key),
            hash_key(acme_key)
        ),
    )
    .expect("write the gateway configuration");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin_listen = format!("127.0.0.1:{}", free_port());
    let path = path.to_string_lossy().into_owned();
    let url = db.url();
    let mut gateway = ChildProcess::spawn(
        "gateway",
        Binary::path("gateway"),
        &["--config", path.as_str()],
        &[
            ("TOKENLEDGER_KAFKA__BROKERS", "127.0.0.1:9"),
            ("TOKENLEDGER_HTTP__LISTEN", listen.as_str()),
            ("TOKENLEDGER_HTTP__ADMIN_LISTEN", admin_listen.as_str()),
            ("TOKENLEDGER_DATABASE__URL", url.as_str()),
        ],
    );
    let base = format!("http://{listen}");
    let healthz = format!("{base}/healthz");
    let up = wait_for(TIMEOUT, || answers_ok(&healthz, Duration::from_secs(5))).await;
    gateway.assert_running();
    assert!(up, "gateway not up; log:\n{}", gateway.log_tail());
    (gateway, base)
}

/// `GET url` with `key`: the status and the body.
pub async fn get(url: &str, key: &str) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .timeout(TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body").to_vec();
    (status, body)
}
