//! The gateway protects its connections, on real sockets (port 0): a
//! client that stalls or drips its headers is disconnected, an idle
//! kept-alive connection is closed, a connection past the cap is refused
//! while open ones keep working, a timed-out request's 503 lists the ids
//! the gateway minted, and a stalled client does not hold up shutdown.
//!
//! The clock is paused: tokio moves it forward only when every task is
//! waiting, and loopback bytes are readable as soon as they are written, so
//! a timeout fires at its point in the exchange however loaded the machine
//! is, and the deadlines cost no real time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use async_trait::async_trait;
use figment::providers::Env;
use gateway::append::{AppendError, AppendReport, Appender};
use gateway::config::Config;
use gateway::config::ConnectionLimits;
use gateway::memory::MemoryAppender;
use gateway::server::{serve, Drained, ServeError};
use gateway::{AppState, Settings};
use ledger::UsageEvent;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a test waits for something the gateway should do within a
/// second or two (paused time: no real wait).
const DEADLINE: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(600);

fn limits(header_read_timeout: Duration, idle_timeout: Duration, max: usize) -> Settings {
    Settings {
        connections: ConnectionLimits {
            header_read_timeout,
            idle_timeout,
            max_connections: max,
        },
        ..Settings::default()
    }
}

struct Running {
    api: SocketAddr,
    admin: SocketAddr,
    state: AppState,
    server: JoinHandle<Result<Drained, ServeError>>,
}

async fn start_with(settings: Settings, appender: Arc<dyn Appender>) -> Running {
    let state = AppState::new(appender, key_ring(), settings).expect("state");
    let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let api = api_listener.local_addr().expect("addr");
    let admin = admin_listener.local_addr().expect("addr");
    let server = tokio::spawn(serve(
        api_listener,
        admin_listener,
        state.clone(),
        Duration::from_secs(20),
    ));
    Running {
        api,
        admin,
        state,
        server,
    }
}

async fn start(settings: Settings) -> Running {
    start_with(settings, Arc::new(MemoryAppender::new())).await
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n")
}

/// Writes `request` and reads one response (headers and a
/// `Content-Length` body) within the deadline.
async fn exchange(stream: &mut TcpStream, request: &str) -> Answer {
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    tokio::time::timeout(DEADLINE, read_answer(stream))
        .await
        .expect("an answer within the deadline")
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.expect("read the answer");
        assert!(
            read > 0,
            "connection closed before a full answer: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(key, _)| key == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("a Content-Length in {head:?}"));
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.expect("read the body");
        assert!(read > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..read]);
    }
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

/// Whether the server closed (or reset) the connection within the
/// deadline. Anything it sends first is read and ignored.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), deadline: Duration) -> bool {
    let closed = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, closed).await.is_ok()
}

async fn metrics_text(running: &Running) -> String {
    running.state.metrics.render().expect("metrics render")
}

/// Waits until `line` is in the gateway's metrics.
async fn wait_for_metric(running: &Running, line: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = metrics_text(running).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stalls_halfway_through_its_headers_is_disconnected() {
    let running = start(limits(Duration::from_secs(1), LONG, 100)).await;
    let mut stalled = TcpStream::connect(running.api).await.expect("connect");
    stalled
        .write_all(b"POST /v1/usage HTTP/1.1\r\nHost: gateway\r\nContent-Ty")
        .await
        .expect("half the headers");
    assert!(
        closed_within(&mut stalled, DEADLINE).await,
        "a client stalled in its headers is still connected after {DEADLINE:?}"
    );
    wait_for_metric(
        &running,
        "tokenledger_gateway_header_read_timeouts_total{listener=\"api\"} 1",
    )
    .await;

    let mut other = TcpStream::connect(running.api).await.expect("connect");
    assert_eq!(exchange(&mut other, &get("/healthz")).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_drips_its_headers_is_disconnected_although_it_is_never_silent() {
    let running = start(limits(Duration::from_secs(1), LONG, 100)).await;
    let stream = TcpStream::connect(running.api).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let dripping = tokio::spawn(async move {
        if writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
            .await
            .is_err()
        {
            return;
        }
        // One byte every 50 ms: never idle long enough for an inactivity
        // timer, never done with its headers.
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        closed_within(&mut reader, DEADLINE).await,
        "a client dripping its headers is still connected after {DEADLINE:?}"
    );
    dripping.abort();
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_is_closed() {
    let running = start(limits(LONG, Duration::from_secs(1), 100)).await;
    let mut kept = TcpStream::connect(running.api).await.expect("connect");
    let answer = exchange(&mut kept, &get("/healthz")).await;
    assert_eq!(answer.status, 200);
    assert_ne!(
        answer.header("connection"),
        Some("close"),
        "the first answer keeps the connection alive"
    );
    assert!(
        closed_within(&mut kept, DEADLINE).await,
        "an idle kept-alive connection is still open after {DEADLINE:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_outlives_the_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(300);
    let running = start(limits(header_read_timeout, LONG, 100)).await;
    let mut kept = TcpStream::connect(running.api).await.expect("connect");
    assert_eq!(exchange(&mut kept, &get("/healthz")).await.status, 200);
    // Idle between requests is the idle timeout's business, not the header
    // timeout's: a balancer's pooled connection must survive this pause.
    tokio::time::sleep(header_read_timeout * 5).await;
    assert_eq!(exchange(&mut kept, &get("/healthz")).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_a_new_connection_is_refused_while_open_ones_keep_working() {
    let running = start(limits(LONG, LONG, 2)).await;
    let mut first = TcpStream::connect(running.api).await.expect("connect");
    let mut second = TcpStream::connect(running.api).await.expect("connect");
    for open in [&mut first, &mut second] {
        assert_eq!(exchange(open, &get("/healthz")).await.status, 200);
    }

    let mut third = TcpStream::connect(running.api).await.expect("connect");
    let refused = exchange(&mut third, &get("/healthz")).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    assert!(
        refused
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"], "too_many_connections", "{refused:?}");
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{refused:?}"
    );
    assert!(
        closed_within(&mut third, DEADLINE).await,
        "the refused connection is closed"
    );

    for open in [&mut first, &mut second] {
        assert_eq!(exchange(open, &get("/healthz")).await.status, 200);
    }
    // The admin port has its own cap: metrics stay reachable.
    let mut admin = TcpStream::connect(running.admin).await.expect("connect");
    assert_eq!(exchange(&mut admin, &get("/healthz")).await.status, 200);
    drop(admin);
    let metrics = metrics_text(&running).await;
    for line in [
        "tokenledger_gateway_connections_refused_total{listener=\"api\"} 1",
        "tokenledger_gateway_connections_refused_total{listener=\"admin\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    // A closed connection frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut fresh = TcpStream::connect(running.api).await.expect("connect");
        let answer = exchange(&mut fresh, &get("/healthz")).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection never freed its place: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Never answers, like a producer whose broker vanished without an error.
struct HangingAppender;

#[async_trait]
impl Appender for HangingAppender {
    async fn append(&self, _events: &[UsageEvent]) -> AppendReport {
        std::future::pending().await
    }
    async fn check_ready(&self) -> Result<(), AppendError> {
        Ok(())
    }
    async fn close(&self, _timeout: Duration) -> Result<(), AppendError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_request_is_503_listing_the_ids_the_gateway_minted() {
    let settings = Settings {
        request_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let running = start_with(settings, Arc::new(HangingAppender)).await;
    let client_id = Uuid::now_v7();
    let mut with_id = event("acme");
    with_id["id"] = json!(client_id.to_string());
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/usage", running.api))
        .bearer_auth(ACME_KEY)
        .json(&json!([event("acme"), with_id, event("acme")]))
        .timeout(DEADLINE)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "timeout", "{body}");
    let ids: Vec<&str> = body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids in {body}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len(), 3, "{body}");
    assert_eq!(ids[1], client_id.to_string(), "request order: {body}");
    for minted in [ids[0], ids[2]] {
        assert!(Uuid::parse_str(minted).is_ok(), "{body}");
    }
    assert_eq!(body["acknowledged"], json!([]), "{body}");
    assert_eq!(body["not_acknowledged"], body["ids"], "{body}");
    wait_for_metric(
        &running,
        "tokenledger_gateway_events_rejected_total{reason=\"timeout\"} 3",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_does_not_hold_up_shutdown() {
    let running = start(limits(Duration::from_secs(1), LONG, 100)).await;
    let mut stalled = TcpStream::connect(running.api).await.expect("connect");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .expect("half the headers");
    wait_for_metric(
        &running,
        "tokenledger_gateway_connections_open{listener=\"api\"} 1",
    )
    .await;
    running.state.shutdown.cancel();
    let drained = tokio::time::timeout(DEADLINE, running.server)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("server ok");
    assert_eq!(drained, Drained::Completely);
    assert!(closed_within(&mut stalled, DEADLINE).await);
}

#[test]
fn the_connection_settings_have_defaults_are_printed_and_can_be_set() {
    let printed = Config::default().to_redacted_toml().expect("renders");
    for line in [
        "header_read_timeout_ms = 10000",
        "idle_timeout_ms = 75000",
        "max_connections = 10000",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }

    std::env::set_var("TLGWCONN_A_HTTP__MAX_CONNECTIONS", "25");
    std::env::set_var("TLGWCONN_A_HTTP__HEADER_READ_TIMEOUT_MS", "2500");
    let config = Config::load_from(None, Env::prefixed("TLGWCONN_A_")).expect("loads");
    let limits = Settings::from_config(&config).connections;
    assert_eq!(limits.max_connections, 25);
    assert_eq!(limits.header_read_timeout, Duration::from_millis(2500));
    assert_eq!(limits.idle_timeout, Duration::from_millis(75_000));

    std::env::set_var("TLGWCONN_B_HTTP__MAX_CONNECTIONS", "0");
    assert!(Config::load_from(None, Env::prefixed("TLGWCONN_B_")).is_err());
}

/// A streamed answer (an export) is still being written after its handler
/// returned: a reader slower than the idle timeout gets it whole, because
/// each write of the body counts as activity, and the connection is closed
/// for idleness only once the answer is out.
#[tokio::test(start_paused = true)]
async fn a_streamed_answer_slower_than_the_idle_timeout_arrives_whole() {
    let idle = Duration::from_secs(2);
    let settings = limits(Duration::from_secs(10), idle, 10);
    let state =
        AppState::new(Arc::new(MemoryAppender::new()), key_ring(), settings).expect("state");
    // Ten chunks a second apart: the body takes five idle timeouts.
    let router = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            let chunks = futures::stream::unfold(0u32, |n| async move {
                if n == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let chunk = axum::body::Bytes::from(format!("chunk {n}\n"));
                Some((Ok::<_, std::convert::Infallible>(chunk), n + 1))
            });
            axum::body::Body::from_stream(chunks)
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(gateway::connection::serve(
        listener,
        router,
        gateway::metrics::Port::Api,
        state.clone(),
    ));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(get("/slow").as_bytes())
        .await
        .expect("request written");
    let mut received = Vec::new();
    tokio::time::timeout(LONG, stream.read_to_end(&mut received))
        .await
        .expect("the connection closes within the deadline")
        .expect("read");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("chunk 9\n") && text.ends_with("0\r\n\r\n"),
        "the whole chunked answer arrived:\n{text}"
    );
    state.shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server");
}
