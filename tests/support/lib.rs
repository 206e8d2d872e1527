//! tokenledger's end-to-end test support: starts the real services (tansu as the Kafka broker,
//! PostgreSQL + TimescaleDB Community, Prometheus, Alertmanager) and the workspace's binaries as child
//! processes on free loopback ports, and tears them down on drop.
//!
//! The services are located through environment variables that `scripts/services.sh env` prints
//! and `scripts/test.sh` exports. A missing service is a test failure naming the variable, never
//! a skip: a green run must mean every test ran.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod binary;
mod broker;
mod database;
pub mod ledger_check;
mod monitoring;
mod process;
mod proxy;
pub mod tls;
pub mod usage;

pub use binary::Binary;
pub use broker::{header_strings, Broker};
pub use database::Database;
pub use monitoring::{Alertmanager, Prometheus};
pub use process::ChildProcess;
pub use proxy::{FaultProxy, ProxyMode, Shaping};

/// The repository root (the workspace directory), for `sql/`, `alerts/`, `grafana/` and friends.
pub fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is tests/; its parent is the workspace.
    // Prefer the directory cargo/nextest name at run time: a test binary
    // reused from a build of the same sources in another checkout (a shared
    // target directory) still has that checkout's path compiled in.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, drop the listener. Another process
/// can take it between the drop and the service's own bind; starters that use it retry.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the bound port: {e}"))
        .port()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes; returns whether it did.
#[must_use = "a timeout is only reported through the return value; use wait_until to panic"]
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` every 100 ms until it returns `Some`, or `timeout` passes (then `None`).
pub async fn wait_for_some<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`wait_for`], but panics with `what` when the timeout passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !wait_for(timeout, check).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// The executable a `TOKENLEDGER_*_BIN`-style variable points to, or a loud panic that says how
/// to get it.
pub fn required_path(var: &str) -> PathBuf {
    let hint = "run scripts/test.sh (it installs the services and exports this variable), \
                or `scripts/services.sh install && eval \"$(scripts/services.sh env)\"`";
    let value = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{var} is not set: {hint}"));
    let path = PathBuf::from(value);
    if !path.is_file() {
        panic!("{var}={} does not exist: {hint}", path.display());
    }
    path
}
