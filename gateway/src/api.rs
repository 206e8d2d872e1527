//! The HTTP handlers: `POST /v1/usage`, the health routes and `/metrics`.
//! Every refusal they make is an [`AppError`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use ledger::event::{parse_batch, IndexedFieldError};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::append::AppendError;
use crate::auth::{AuthError, Authenticated};
use crate::request_id::RequestId;
use crate::state::AppState;

pub use crate::error::AppError;

/// The ids a request has minted or read, shared with the layer that times
/// requests out: the handler is dropped at the timeout, and its 503 must
/// still say which events the client should retry with which ids.
#[derive(Debug, Clone, Default)]
pub struct IdsInFlight(Arc<Mutex<Vec<Uuid>>>);

impl IdsInFlight {
    pub fn record(&self, ids: &[Uuid]) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.clear();
        slot.extend_from_slice(ids);
    }

    pub fn take(&self) -> Vec<Uuid> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The 202 body. `ids` are in request order, including the ones the
/// gateway generated, so a client can retry with exactly these ids.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub ids: Vec<Uuid>,
}

/// `POST /v1/usage`.
pub async fn post_usage(
    State(state): State<AppState>,
    request_id: RequestId,
    in_flight: Option<Extension<IdsInFlight>>,
    auth: Result<Authenticated, AuthError>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<Accepted>), AppError> {
    let started = Instant::now();
    let received_at = Utc::now();
    let in_flight = in_flight.map(|Extension(ids)| ids).unwrap_or_default();
    let request = RequestContext {
        id: request_id,
        received_at,
        in_flight: &in_flight,
    };
    let result = accept_usage(&state, request, auth, &headers, body).await;
    match result {
        Ok((accepted, produce_time)) => {
            state.metrics.accepted(accepted.accepted);
            let timing = server_timing(produce_time, started.elapsed());
            Ok((
                StatusCode::ACCEPTED,
                [(SERVER_TIMING, timing)],
                Json(accepted),
            ))
        }
        Err(error) => {
            log_refusal(&error);
            Err(error)
        }
    }
}

/// The `Server-Timing` response header (the `http` crate has no constant).
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// `Server-Timing` of a 202: `kafka` is the wait for the broker's
/// acknowledgement, `gateway` everything else the handler spent (reading,
/// validating, encoding), in milliseconds. Lets a client or a benchmark
/// tell the gateway's own latency from the broker's.
fn server_timing(produce_time: Duration, total: Duration) -> HeaderValue {
    let gateway_time = total.saturating_sub(produce_time);
    let text = format!(
        "kafka;dur={:.3}, gateway;dur={:.3}",
        produce_time.as_secs_f64() * 1e3,
        gateway_time.as_secs_f64() * 1e3
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("gateway"))
}

/// What `accept_usage` needs to know about the request besides its body.
struct RequestContext<'a> {
    id: RequestId,
    received_at: chrono::DateTime<Utc>,
    in_flight: &'a IdsInFlight,
}

async fn accept_usage(
    state: &AppState,
    request: RequestContext<'_>,
    auth: Result<Authenticated, AuthError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Accepted, Duration), AppError> {
    // Authenticate before reading the body: an anonymous client learns
    // nothing about validation and cannot make us buffer megabytes.
    let caller = auth?;
    if !is_json(headers) {
        return Err(AppError::UnsupportedMediaType);
    }
    let body = read_body(headers, body, state.settings.max_body_bytes).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::EmptyBody);
    }
    let mut events = parse_batch(&body, request.received_at, &state.settings.limits)?;

    let body_is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let foreign: Vec<IndexedFieldError> = events
        .iter()
        .enumerate()
        .filter(|(_, event)| !caller.may_access_tenant(&event.tenant_id))
        .map(|(index, _)| IndexedFieldError {
            index: body_is_array.then_some(index),
            field: "tenant_id".into(),
            message: "this API key may only write events of its own tenant".into(),
        })
        .collect();
    if !foreign.is_empty() {
        return Err(AppError::Forbidden {
            errors: foreign,
            events: events.len(),
        });
    }
    caller
        .policy
        .check(&events, request.received_at, body_is_array)
        .map_err(|refusal| AppError::Untrusted {
            refusal,
            events: events.len(),
        })?;

    for event in &mut events {
        event.request_id = Some(request.id.as_str().to_owned());
        // The key that authenticated the request, by name: what per-key
        // budgets count (a client cannot send `api_key`: not an API field).
        event.api_key.clone_from(&caller.key_name);
    }
    let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    request.in_flight.record(&ids);

    let produce_started = Instant::now();
    let report = state.appender.append(&events).await;
    let produce_time = produce_started.elapsed();
    state.metrics.observe_produce(produce_time.as_secs_f64());
    debug_assert_eq!(report.outcomes.len(), events.len(), "one outcome per event");

    if report.outcomes.len() == events.len() && report.all_acknowledged() {
        tracing::debug!(events = events.len(), "usage events appended");
        return Ok((
            Accepted {
                accepted: ids.len(),
                ids,
            },
            produce_time,
        ));
    }
    let acknowledged = ids
        .iter()
        .zip(&report.outcomes)
        .filter(|(_, outcome)| outcome.is_ok())
        .map(|(id, _)| *id)
        .collect();
    let cause = report
        .cause()
        .cloned()
        .unwrap_or_else(|| AppendError::Rejected("the appender reported too few outcomes".into()));
    Err(AppError::Unavailable {
        cause,
        ids,
        acknowledged,
    })
}

fn log_refusal(error: &AppError) {
    match error {
        AppError::Unavailable { .. } | AppError::RequestTimeout { .. } => {
            tracing::warn!(error = %error, "usage request not appended")
        }
        _ => tracing::debug!(error = %error, "usage request refused"),
    }
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, AppError> {
    let declared_length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(AppError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        if is_length_limit_error(&error) {
            AppError::PayloadTooLarge { limit }
        } else {
            AppError::UnreadableBody(error.to_string())
        }
    })
}

fn is_length_limit_error(error: &axum::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: not shutting down, and the broker answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    state.readiness.check().await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics` on the admin port.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, AppError> {
    let text = state
        .metrics
        .render()
        .map_err(|error| AppError::Metrics(error.to_string()))?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response())
}

pub async fn not_found() -> AppError {
    AppError::NotFound
}
