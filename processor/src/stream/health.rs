//! The admin listener: liveness (`/healthz`), readiness (`/readyz`) and the
//! metrics registry at the configured path, and the readiness flag the
//! pipeline moves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::stream::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

/// Whether the processor is taking and committing batches: false until the
/// pipeline starts, while a batch is being retried, and from shutdown on,
/// so a load balancer or orchestrator sees a stalled processor.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The admin router: metrics at `path`, liveness and readiness.
pub fn router(metrics: Arc<Metrics>, readiness: Readiness, path: &str) -> Router {
    Router::new()
        .route(path, get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_ready))
        .with_state(Admin { metrics, readiness })
}

/// A failed encoding is a 500: an empty or partial 200 would read to
/// Prometheus as series that stopped existing.
async fn serve_metrics(State(admin): State<Admin>) -> axum::response::Response {
    match admin.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

async fn serve_ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `address` now (so a taken port fails startup) and serves until
/// `shutdown` is cancelled.
pub async fn serve(
    metrics: Arc<Metrics>,
    readiness: Readiness,
    address: &str,
    path: &str,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen {
            address: address.to_owned(),
            source,
        })?;
    let local = listener.local_addr().ok();
    tracing::info!(address = ?local, path, "metrics listening");
    let app = router(metrics, readiness, path);
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(ServeError::Serve)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(client: &reqwest::Client, url: String) -> (StatusCode, Option<String>, String) {
        let response = client
            .get(url)
            .send()
            .await
            .expect("admin listener answers");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        (status, content_type, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_are_served_at_the_path() {
        let metrics = Arc::new(Metrics::new(10, 10).expect("metrics"));
        let readiness = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = router(metrics, readiness.clone(), "/custom-metrics");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let (status, _, body) = get(&client, format!("{base}/healthz")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, _) = get(&client, format!("{base}/readyz")).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready at start"
        );
        readiness.set(true);
        let (status, _, body) = get(&client, format!("{base}/readyz")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        readiness.set(false);
        let (status, _, _) = get(&client, format!("{base}/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        let (status, content_type, body) = get(&client, format!("{base}/custom-metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(prometheus::TEXT_FORMAT));
        assert!(body.contains("tokenledger_processor_up 1"), "{body}");
        server.abort();
    }

    /// Collects a family without a name, which the text encoder refuses.
    struct Unencodable(prometheus::core::Desc);

    impl prometheus::core::Collector for Unencodable {
        fn desc(&self) -> Vec<&prometheus::core::Desc> {
            vec![&self.0]
        }

        fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
            let mut family = prometheus::proto::MetricFamily::default();
            family.set_field_type(prometheus::proto::MetricType::GAUGE);
            family
                .mut_metric()
                .push(prometheus::proto::Metric::default());
            vec![family]
        }
    }

    #[tokio::test]
    async fn a_metrics_encoding_failure_is_a_500_not_an_empty_page() {
        let metrics = Arc::new(Metrics::new(10, 10).expect("metrics"));
        let desc = prometheus::core::Desc::new(
            "tokenledger_test_unencodable".into(),
            "a family the encoder refuses".into(),
            vec![],
            Default::default(),
        )
        .expect("desc");
        metrics
            .registry()
            .register(Box::new(Unencodable(desc)))
            .expect("registers");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = router(metrics, Readiness::default(), "/metrics");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let (status, _, body) = get(&reqwest::Client::new(), format!("{base}/metrics")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        server.abort();
    }
}
