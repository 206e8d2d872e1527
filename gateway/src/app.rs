//! The application state shared by every handler, and the routers built on
//! it: the public API router and the admin router.
//!
//! Routes added later (the budget API) are handlers over [`AppState`]
//! passed to [`router_with`], so they get the same request id, metrics,
//! timeout and authentication as `POST /v1/usage`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ledger::event::ValidationLimits;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppError};
use crate::append::Appender;
use crate::auth::KeyRing;
use crate::config::Config;
use crate::metrics::{Metrics, MetricsError};
use crate::readiness::{Readiness, DEFAULT_CACHE_TTL};
use crate::request_id::assign_request_id;

/// Label for requests that matched no route, so probes of random paths
/// cannot grow the metrics' label sets.
const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Debug, thiserror::Error)]
pub enum AppStateError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// The request-handling settings taken from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: ValidationLimits,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            limits: config.validation.limits(),
            max_body_bytes: config.http.max_body_bytes,
            request_timeout: config.http.request_timeout(),
        }
    }
}

/// Everything a handler needs; cloning is cheap (`Arc`s and small values).
#[derive(Clone)]
pub struct AppState {
    pub appender: Arc<dyn Appender>,
    pub keys: Arc<KeyRing>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub settings: Arc<Settings>,
    /// Cancelled when shutdown begins; `/readyz` fails from then on.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        appender: Arc<dyn Appender>,
        keys: KeyRing,
        settings: Settings,
    ) -> Result<Self, AppStateError> {
        let shutdown = CancellationToken::new();
        let readiness = Readiness::new(appender.clone(), shutdown.clone(), DEFAULT_CACHE_TTL);
        Ok(Self {
            appender,
            keys: Arc::new(keys),
            metrics: Arc::new(Metrics::new()?),
            readiness: Arc::new(readiness),
            settings: Arc::new(settings),
            shutdown,
        })
    }
}

impl FromRef<AppState> for Arc<KeyRing> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// The public API: `POST /v1/usage`, `/healthz`, `/readyz`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The public API plus `extra` routes, all under the shared layers.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let routes = Router::new()
        .route("/v1/usage", post(api::post_usage))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(extra)
        .fallback(api::not_found);
    with_shared_layers(routes, state)
}

/// The admin port: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .fallback(api::not_found);
    with_shared_layers(routes, state)
}

fn with_shared_layers(routes: Router<AppState>, state: AppState) -> Router {
    // Layers run outside-in in the reverse order of the calls: the request
    // id is assigned first so every response, timeouts included, carries
    // it, and observation wraps the timeout so timeouts are counted.
    routes
        .layer(from_fn_with_state(state.clone(), observe_and_time_out))
        .layer(from_fn(assign_request_id))
        .with_state(state)
}

/// Counts and times every request, and bounds it by the request timeout.
async fn observe_and_time_out(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let _inflight = state.metrics.inflight_guard();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let timeout = state.settings.request_timeout;
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            let error =
                AppError::RequestTimeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
            if let Some((reason, events)) = error.rejection() {
                state.metrics.rejected(reason, events);
            }
            tracing::warn!(
                route,
                timeout_ms = timeout.as_millis() as u64,
                "request timed out"
            );
            error.into_response()
        }
    };
    state.metrics.observe_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
