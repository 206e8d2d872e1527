//! The HTTP handlers and [`AppError`], the single place where a failure
//! becomes a status code and a JSON body.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{
    HeaderName, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use ledger::event::{parse_batch, BatchError, IndexedFieldError};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::append::AppendError;
use crate::auth::{AuthError, Authenticated};
use crate::metrics::RejectReason;
use crate::readiness::NotReady;
use crate::request_id::RequestId;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this API key may not write events for the tenant_id named in {} event(s)", .errors.len())]
    Forbidden { errors: Vec<IndexedFieldError> },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    UnreadableBody(String),
    #[error("request body is empty")]
    EmptyBody,
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("{} of {} event(s) were not acknowledged by Kafka ({cause}); retry them with the same ids", .ids.len() - .acknowledged.len(), .ids.len())]
    Unavailable {
        cause: AppendError,
        ids: Vec<Uuid>,
        acknowledged: Vec<Uuid>,
    },
    #[error("the request took longer than {0} ms")]
    RequestTimeout(u64),
    #[error("{0}")]
    NotReady(#[from] NotReady),
    #[error("no such route")]
    NotFound,
    #[error("cannot render metrics: {0}")]
    Metrics(String),
    // The budget API (crate::budgets); answered by `budget_error_response`.
    #[error("budgets are managed with an admin API key")]
    BudgetAdminOnly,
    #[error("this API key may only read the budget status of its own tenant")]
    BudgetOtherTenant,
    #[error("budgets need database.url in the gateway's configuration")]
    BudgetsUnconfigured,
    #[error("invalid budget: {}", join_field_errors(.0))]
    InvalidBudget(Vec<ledger::FieldError>),
    #[error("request body is not valid JSON: {0}")]
    MalformedBudget(String),
    #[error("{0:?} is not a budget id (a UUID)")]
    BadBudgetId(String),
    #[error("no budget with id {0}")]
    BudgetNotFound(Uuid),
    #[error("a budget named {0:?} already exists")]
    DuplicateBudgetName(String),
    #[error("query parameter tenant_id is required with an admin key")]
    MissingTenantId,
    #[error("the database is unavailable: {0}")]
    BudgetDatabase(String),
}

impl From<AuthError> for AppError {
    fn from(_: AuthError) -> Self {
        Self::Unauthorized
    }
}

impl AppError {
    /// The metrics reason and the number of events it refused, for errors
    /// that refuse usage events.
    pub fn rejection(&self) -> Option<(RejectReason, usize)> {
        let reason_and_count = match self {
            Self::Unauthorized => (RejectReason::Unauthorized, 1),
            Self::Forbidden { .. } => return None, // counted with the batch size by the handler
            Self::UnsupportedMediaType => (RejectReason::UnsupportedMediaType, 1),
            Self::PayloadTooLarge { .. } => (RejectReason::TooLarge, 1),
            Self::UnreadableBody(_) | Self::EmptyBody => (RejectReason::Malformed, 1),
            Self::Batch(BatchError::Invalid(errors)) => {
                let invalid_events: BTreeSet<Option<usize>> =
                    errors.iter().map(|error| error.index).collect();
                (RejectReason::Invalid, invalid_events.len())
            }
            Self::Batch(BatchError::TooMany { count, .. }) => (RejectReason::Invalid, *count),
            Self::Batch(_) => (RejectReason::Malformed, 1),
            Self::Unavailable { cause, ids, .. } => (unavailable_reason(cause), ids.len()),
            Self::RequestTimeout(_) => (RejectReason::Timeout, 1),
            Self::NotReady(_) | Self::NotFound | Self::Metrics(_) => return None,
            Self::BudgetAdminOnly
            | Self::BudgetOtherTenant
            | Self::BudgetsUnconfigured
            | Self::InvalidBudget(_)
            | Self::MalformedBudget(_)
            | Self::BadBudgetId(_)
            | Self::BudgetNotFound(_)
            | Self::DuplicateBudgetName(_)
            | Self::MissingTenantId
            | Self::BudgetDatabase(_) => return None,
        };
        Some(reason_and_count)
    }
}

fn unavailable_reason(cause: &AppendError) -> RejectReason {
    match cause {
        AppendError::QueueFull | AppendError::NotAttempted => RejectReason::QueueFull,
        AppendError::TimedOut(_) => RejectReason::Timeout,
        AppendError::ShuttingDown => RejectReason::ShuttingDown,
        AppendError::Rejected(_) | AppendError::Unreachable(_) => RejectReason::Unavailable,
    }
}

fn error_body(code: &str, message: String) -> serde_json::Value {
    json!({ "error": code, "message": message })
}

/// A refusal sent before the request body was read. The unread body makes
/// the connection unusable for another request, so say so: a client that
/// reuses it would otherwise meet a reset on its next request.
fn closing(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Self::Unauthorized => closing((
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(error_body("unauthorized", message)),
            )),
            Self::Forbidden { errors } => (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "forbidden", "message": message, "errors": errors })),
            )
                .into_response(),
            Self::UnsupportedMediaType => closing((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(error_body("unsupported_media_type", message)),
            )),
            Self::PayloadTooLarge { limit } => closing((
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(
                    json!({ "error": "payload_too_large", "message": message, "limit_bytes": limit }),
                ),
            )),
            Self::UnreadableBody(_) => closing((
                StatusCode::BAD_REQUEST,
                Json(error_body("unreadable_body", message)),
            )),
            Self::EmptyBody => (
                StatusCode::BAD_REQUEST,
                Json(error_body("empty_body", message)),
            )
                .into_response(),
            Self::Batch(batch) => batch_error_response(batch, message),
            Self::Unavailable {
                cause,
                ids,
                acknowledged,
            } => {
                let not_acknowledged: Vec<Uuid> = {
                    let acked: BTreeSet<&Uuid> = acknowledged.iter().collect();
                    ids.iter()
                        .filter(|id| !acked.contains(id))
                        .copied()
                        .collect()
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, HeaderValue::from(cause.retry_after_secs()))],
                    Json(json!({
                        "error": "unavailable",
                        "reason": cause.reason(),
                        "message": message,
                        "ids": ids,
                        "acknowledged": acknowledged,
                        "not_acknowledged": not_acknowledged,
                    })),
                )
                    .into_response()
            }
            Self::RequestTimeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(RETRY_AFTER, HeaderValue::from_static("5"))],
                Json(error_body("timeout", message)),
            )
                .into_response(),
            Self::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "error": "not_ready", "message": message })),
            )
                .into_response(),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                Json(error_body("not_found", message)),
            )
                .into_response(),
            Self::Metrics(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(error_body("internal", message)),
            )
                .into_response(),
            budget @ (Self::BudgetAdminOnly
            | Self::BudgetOtherTenant
            | Self::BudgetsUnconfigured
            | Self::InvalidBudget(_)
            | Self::MalformedBudget(_)
            | Self::BadBudgetId(_)
            | Self::BudgetNotFound(_)
            | Self::DuplicateBudgetName(_)
            | Self::MissingTenantId
            | Self::BudgetDatabase(_)) => budget_error_response(budget, message),
        }
    }
}

fn batch_error_response(batch: BatchError, message: String) -> Response {
    let body = match batch {
        BatchError::Invalid(errors) => {
            json!({ "error": "invalid_events", "message": message, "errors": errors })
        }
        BatchError::Malformed(_) => error_body("malformed_json", message),
        BatchError::WrongShape => error_body("invalid_body", message),
        BatchError::Empty => error_body("empty_batch", message),
        BatchError::TooMany { max, .. } => {
            json!({ "error": "too_many_events", "message": message, "max_events": max })
        }
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
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
    auth: Result<Authenticated, AuthError>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, [(HeaderName, HeaderValue); 1], Json<Accepted>), AppError> {
    let started = Instant::now();
    let received_at = Utc::now();
    let result = accept_usage(&state, request_id, auth, &headers, body, received_at).await;
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
            if let Some((reason, events)) = error.rejection() {
                state.metrics.rejected(reason, events);
            }
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

async fn accept_usage(
    state: &AppState,
    request_id: RequestId,
    auth: Result<Authenticated, AuthError>,
    headers: &HeaderMap,
    body: Body,
    received_at: chrono::DateTime<Utc>,
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
    let mut events = parse_batch(&body, received_at, &state.settings.limits)?;

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
        state
            .metrics
            .rejected(RejectReason::Forbidden, events.len());
        return Err(AppError::Forbidden { errors: foreign });
    }

    for event in &mut events {
        event.request_id = Some(request_id.as_str().to_owned());
    }
    let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();

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
        AppError::Unavailable { .. } | AppError::RequestTimeout(_) => {
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

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, AppError> {
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

/// The answer to a failed budget API request: `{"error", "message"}` (and
/// `errors` for an invalid budget); a 503 says when to retry.
fn budget_error_response(error: AppError, message: String) -> Response {
    let (status, code) = match &error {
        AppError::BudgetAdminOnly | AppError::BudgetOtherTenant => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        AppError::BudgetsUnconfigured => (StatusCode::SERVICE_UNAVAILABLE, "budgets_unavailable"),
        AppError::InvalidBudget(_) => (StatusCode::BAD_REQUEST, "invalid_budget"),
        AppError::MalformedBudget(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
        AppError::BadBudgetId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
        AppError::MissingTenantId => (StatusCode::BAD_REQUEST, "missing_tenant_id"),
        AppError::BudgetNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        AppError::DuplicateBudgetName(_) => (StatusCode::CONFLICT, "duplicate_name"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
    };
    if status.is_server_error() {
        tracing::warn!(error = %message, "budget API unavailable");
    }
    let mut body = error_body(code, message);
    if let AppError::InvalidBudget(errors) = &error {
        body["errors"] = json!(errors);
    }
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn join_field_errors(errors: &[ledger::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
