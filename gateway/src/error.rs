//! [`AppError`]: every way a request is refused, and the single place
//! where a refusal becomes a status code, a JSON body and, for refused
//! usage events, a [`Rejection`] on the response that the shared
//! middleware counts.

use std::collections::BTreeSet;

use axum::http::header::{CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::event::{BatchError, IndexedFieldError};
use serde_json::json;
use uuid::Uuid;

use crate::append::AppendError;
use crate::auth::{AuthError, TrustRefusal};
use crate::metrics::{RejectReason, Rejection};
use crate::readiness::NotReady;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this API key may not write events for the tenant_id named in {} event(s)", .errors.len())]
    Forbidden {
        errors: Vec<IndexedFieldError>,
        /// Every event of the batch is refused, not only the foreign ones.
        events: usize,
    },
    /// The key's trust policy refuses the batch, whole.
    #[error("{refusal}")]
    Untrusted {
        refusal: TrustRefusal,
        events: usize,
    },
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
    /// `ids` are those the request had minted or read when it was cut off:
    /// none is known to be acknowledged, and a retry with them is safe.
    #[error("the request took longer than {timeout_ms} ms{}", if .ids.is_empty() { "" } else { "; its events may not be appended, retry them with the same ids" })]
    RequestTimeout { timeout_ms: u64, ids: Vec<Uuid> },
    #[error("{0}")]
    NotReady(#[from] NotReady),
    #[error("no such route")]
    NotFound,
    #[error("cannot render metrics: {0}")]
    Metrics(String),
}

impl From<AuthError> for AppError {
    fn from(_: AuthError) -> Self {
        Self::Unauthorized
    }
}

impl AppError {
    /// The metrics reason and the number of events it refused, for errors
    /// that refuse usage events. Its response carries the same as a
    /// [`Rejection`] extension, counted once by the shared middleware.
    pub fn rejection(&self) -> Option<(RejectReason, usize)> {
        let reason_and_count = match self {
            Self::Unauthorized => (RejectReason::Unauthorized, 1),
            Self::Forbidden { events, .. } => (RejectReason::Forbidden, *events),
            Self::Untrusted { refusal, events } => match refusal {
                TrustRefusal::CallerCost(_) => (RejectReason::CallerCost, *events),
                TrustRefusal::TooLate { .. } => (RejectReason::TooLate, *events),
            },
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
            Self::RequestTimeout { ids, .. } => (RejectReason::Timeout, ids.len().max(1)),
            Self::NotReady(_) | Self::NotFound | Self::Metrics(_) => return None,
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
        let rejection = self
            .rejection()
            .map(|(reason, events)| Rejection { reason, events });
        let mut response = self.render();
        if let Some(rejection) = rejection {
            response.extensions_mut().insert(rejection);
        }
        response
    }
}

impl AppError {
    fn render(self) -> Response {
        let message = self.to_string();
        match self {
            Self::Unauthorized => closing((
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(error_body("unauthorized", message)),
            )),
            Self::Forbidden { errors, .. } => (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "forbidden", "message": message, "errors": errors })),
            )
                .into_response(),
            Self::Untrusted { refusal, .. } => untrusted_response(refusal, message),
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
            Self::RequestTimeout { ids, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(RETRY_AFTER, HeaderValue::from_static("5"))],
                Json(json!({
                    "error": "timeout",
                    "reason": "timeout",
                    "message": message,
                    "ids": ids,
                    "acknowledged": [],
                    "not_acknowledged": ids,
                })),
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

/// A cost the key may not set is a permission (403); a date further back
/// than the key may write is a bad value with a stated limit (400).
fn untrusted_response(refusal: TrustRefusal, message: String) -> Response {
    match refusal {
        TrustRefusal::CallerCost(errors) => (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": "caller_cost_not_allowed",
                "message": message,
                "errors": errors,
            })),
        )
            .into_response(),
        TrustRefusal::TooLate {
            errors,
            max_lateness,
        } => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "too_late",
                "message": message,
                "max_lateness_ms": max_lateness.num_milliseconds(),
                "errors": errors,
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_events_carries_its_rejection_on_the_response() {
        let forbidden = AppError::Forbidden {
            errors: vec![IndexedFieldError {
                index: Some(1),
                field: "tenant_id".into(),
                message: "foreign".into(),
            }],
            events: 3,
        }
        .into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            forbidden.extensions().get::<Rejection>(),
            Some(&Rejection {
                reason: RejectReason::Forbidden,
                events: 3
            }),
            "the whole batch is refused, not only the foreign event"
        );

        let unauthorized = AppError::Unauthorized.into_response();
        assert_eq!(
            unauthorized.extensions().get::<Rejection>(),
            Some(&Rejection {
                reason: RejectReason::Unauthorized,
                events: 1
            })
        );

        for not_a_refusal_of_events in [AppError::NotFound, AppError::Metrics("x".into())] {
            let response = not_a_refusal_of_events.into_response();
            assert!(response.extensions().get::<Rejection>().is_none());
        }
    }
}
