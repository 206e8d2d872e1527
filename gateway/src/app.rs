//! The routers: the public API router and the admin router, and the layers
//! every route shares (request id, metrics, request timeout).
//!
//! Routes added later (the budget API) are handlers over [`AppState`]
//! passed to [`router_with`], so they get the same request id, metrics,
//! timeout and authentication as `POST /v1/usage`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::{self, IdsInFlight};
use crate::error::AppError;
use crate::metrics::Rejection;
use crate::request_id::assign_request_id;

pub use crate::state::{AppState, AppStateError, Settings};

/// Label for requests that matched no route, so probes of random paths
/// cannot grow the metrics' label sets.
const UNMATCHED_ROUTE: &str = "unmatched";

/// The public API: `POST /v1/usage`, `/healthz`, `/readyz`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The public API plus `extra` routes, all under the shared layers.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let routes = Router::new()
        .route("/v1/usage", post(api::post_usage))
        .route("/v1/traces", post(crate::otlp::post_traces))
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

/// Counts and times every request, bounds it by the request timeout, and
/// counts the events its response refused: the one place rejections are
/// counted, whichever route or layer refused them.
async fn observe_and_time_out(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let in_flight = IdsInFlight::default();
    request.extensions_mut().insert(in_flight.clone());
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
            tracing::warn!(
                route,
                timeout_ms = timeout.as_millis() as u64,
                "request timed out"
            );
            AppError::RequestTimeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                ids: in_flight.take(),
            }
            .into_response()
        }
    };
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        state.metrics.rejected(rejection.reason, rejection.events);
    }
    state.metrics.observe_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
