//! The gateway on real sockets (port 0): both ports answer, and a graceful
//! shutdown finishes the request in flight, then stops accepting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use async_trait::async_trait;
use gateway::append::{AppendError, AppendReport, Appender};
use gateway::server::{serve, Drained};
use gateway::{AppState, Settings};
use ledger::UsageEvent;
use serde_json::Value;
use tokio::net::TcpListener;

/// Acknowledges after a delay, so a request is reliably in flight when
/// shutdown begins.
#[derive(Default)]
struct SlowAppender {
    appended: AtomicUsize,
    closed: AtomicUsize,
}

const ACK_DELAY: Duration = Duration::from_millis(700);

#[async_trait]
impl Appender for SlowAppender {
    async fn append(&self, events: &[UsageEvent]) -> AppendReport {
        tokio::time::sleep(ACK_DELAY).await;
        self.appended.fetch_add(events.len(), Ordering::SeqCst);
        AppendReport {
            outcomes: vec![Ok(()); events.len()],
        }
    }
    async fn check_ready(&self) -> Result<(), AppendError> {
        Ok(())
    }
    async fn close(&self, _timeout: Duration) -> Result<(), AppendError> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_port_zero_and_drains_in_flight_requests_on_shutdown() {
    let appender = Arc::new(SlowAppender::default());
    let state = AppState::new(appender.clone(), key_ring(), Settings::default()).expect("state");
    let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let api = format!("http://{}", api_listener.local_addr().expect("addr"));
    let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
    let shutdown = state.shutdown.clone();
    let server = tokio::spawn(serve(
        api_listener,
        admin_listener,
        state,
        Duration::from_secs(5),
    ));

    let client = reqwest::Client::new();
    for base in [&api, &admin] {
        for path in ["/healthz", "/readyz"] {
            let response = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("GET");
            assert_eq!(response.status(), 200, "{base}{path}");
        }
    }
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("tokenledger_gateway_up 1"));

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{api}/v1/usage");
        async move {
            client
                .post(url)
                .bearer_auth(ACME_KEY)
                .header("content-type", "application/json")
                .body(event("acme").to_string())
                .send()
                .await
        }
    });
    // Let the request reach the appender, then ask the server to stop.
    tokio::time::sleep(ACK_DELAY / 3).await;
    shutdown.cancel();

    let response = in_flight
        .await
        .expect("client task")
        .expect("the in-flight request is answered, not cut off");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["accepted"], 1);

    let drained = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops within the shutdown timeout")
        .expect("server task")
        .expect("server ok");
    assert_eq!(drained, Drained::Completely);
    assert_eq!(appender.appended.load(Ordering::SeqCst), 1);
    assert_eq!(
        appender.closed.load(Ordering::SeqCst),
        1,
        "appender closed once"
    );

    let refused = reqwest::Client::new()
        .get(format!("{api}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "no longer accepting connections");
}
