//! `POST /v1/traces`: the OTLP/HTTP trace receiver. Spans with GenAI usage
//! become usage events ([`ledger::otlp`] owns the mapping); this module owns
//! the OTLP/HTTP protocol around it: encodings, gzip, limits, the
//! partial-success answer and the status codes an exporter retries on.
//!
//! Refusals reuse [`AppError`], so they are counted and logged as on
//! `POST /v1/usage`; only their body is rewritten into the OTLP error form
//! (a `google.rpc.Status` in the request's encoding).

use std::io::Read;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ledger::event::BatchError;
use ledger::otlp::{self, Caller, Encoding};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use uuid::Uuid;

use crate::api::{read_body, IdsInFlight};
use crate::append::AppendError;
use crate::auth::{AuthError, Authenticated, TrustRefusal};
use crate::error::AppError;
use crate::metrics::{RejectReason, Rejection};
use crate::request_id::RequestId;
use crate::state::AppState;

/// `google.rpc.Status`, the body of an OTLP/HTTP failure (details omitted).
#[derive(Clone, PartialEq, Message, Serialize)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// `POST /v1/traces`.
pub async fn post_traces(
    State(state): State<AppState>,
    request_id: RequestId,
    in_flight: Option<Extension<IdsInFlight>>,
    auth: Result<Authenticated, AuthError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let in_flight = in_flight.map(|Extension(ids)| ids).unwrap_or_default();
    // Answer in the request's encoding; protobuf when it named neither.
    let encoding = encoding(&headers);
    let reply_encoding = encoding.unwrap_or(Encoding::Protobuf);
    match export(
        &state,
        &request_id,
        &in_flight,
        auth,
        encoding,
        &headers,
        body,
    )
    .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(error = %error, "trace export refused");
            failure(error, reply_encoding)
        }
    }
}

async fn export(
    state: &AppState,
    request_id: &RequestId,
    in_flight: &IdsInFlight,
    auth: Result<Authenticated, AuthError>,
    encoding: Option<Encoding>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let received_at = Utc::now();
    let caller = auth?;
    let encoding = encoding.ok_or(AppError::UnsupportedMediaType)?;
    let limit = state.settings.max_body_bytes;
    let body = read_body(headers, body, limit).await?;
    let body = decompress(headers, body, limit)?;
    let request = otlp::decode_request(&body, encoding)
        .map_err(|error| AppError::Batch(BatchError::Malformed(error.0)))?;
    let tenant = if caller.admin {
        None
    } else {
        caller.tenant.as_deref()
    };
    let mut mapped = otlp::map_request(
        &request,
        Caller { tenant },
        &state.settings.otlp,
        &state.settings.limits,
        received_at,
    );
    // The request is bounded by its bytes (above) and by the spans that
    // report usage: a collector's batch is mostly spans of other kinds,
    // which cost a decode and nothing downstream.
    let usage_spans = mapped.events.len() + mapped.duplicates + mapped.refused.len();
    let max = state.settings.limits.max_batch_events;
    if usage_spans > max {
        return Err(AppError::Batch(BatchError::TooMany {
            count: usage_spans,
            max,
        }));
    }
    // The key's trust policy holds for spans as for /v1/usage (a tenant key
    // cannot report usage further back than its lateness), span by span:
    // exporters do not retry a 4xx, so refusing the whole export would lose
    // the on-time spans beside a late one.
    let too_late = refuse_untrusted(&caller, &mut mapped, received_at);
    state.metrics.rejected(RejectReason::TooLate, too_late);
    for event in &mut mapped.events {
        event.request_id = Some(request_id.as_str().to_owned());
        event.api_key.clone_from(&caller.key_name);
    }
    state.metrics.otlp_spans("event", mapped.events.len());
    state
        .metrics
        .otlp_spans("without_usage", mapped.without_usage);
    state.metrics.otlp_spans("duplicate", mapped.duplicates);
    state.metrics.otlp_spans("refused", mapped.refused.len());

    let ids: Vec<Uuid> = mapped.events.iter().map(|event| event.id).collect();
    if !mapped.events.is_empty() {
        in_flight.record(&ids);
        let produce_started = Instant::now();
        let report = state.appender.append(&mapped.events).await;
        state
            .metrics
            .observe_produce(produce_started.elapsed().as_secs_f64());
        if report.outcomes.len() != ids.len() || !report.all_acknowledged() {
            // The exporter retries the whole batch; the events' ids are
            // derived from the spans, so the retry cannot double them.
            let acknowledged = ids
                .iter()
                .zip(&report.outcomes)
                .filter(|(_, outcome)| outcome.is_ok())
                .map(|(id, _)| *id)
                .collect();
            let cause = report.cause().cloned().unwrap_or_else(|| {
                AppendError::Rejected("the appender reported too few outcomes".into())
            });
            return Err(AppError::Unavailable {
                cause,
                ids,
                acknowledged,
            });
        }
        state.metrics.accepted(ids.len());
    }

    let invalid = mapped.refused.len() - too_late;
    let partial_success = (!mapped.refused.is_empty()).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(mapped.refused.len()).unwrap_or(i64::MAX),
        error_message: otlp::refusal_message(&mapped.refused),
    });
    let answer = ExportTraceServiceResponse { partial_success };
    let mut response = encoded(StatusCode::OK, encoding, &answer);
    if invalid > 0 {
        response.extensions_mut().insert(Rejection {
            reason: RejectReason::Invalid,
            events: invalid,
        });
    }
    Ok(response)
}

/// Moves the events the caller's key may not write into the refusals, each
/// with the policy's reason; returns how many were moved.
fn refuse_untrusted(
    caller: &Authenticated,
    mapped: &mut otlp::Mapped,
    received_at: chrono::DateTime<Utc>,
) -> usize {
    let before = mapped.refused.len();
    let events = std::mem::take(&mut mapped.events);
    for event in events {
        match caller
            .policy
            .check(std::slice::from_ref(&event), received_at, false)
        {
            Ok(()) => mapped.events.push(event),
            Err(refusal) => mapped.refused.push(otlp::SpanRefusal {
                span: format!("the call {} at {}", event.id, event.created_at.to_rfc3339()),
                reason: refusal_detail(&refusal),
            }),
        }
    }
    mapped.refused.len() - before
}

fn refusal_detail(refusal: &TrustRefusal) -> String {
    match refusal {
        TrustRefusal::CallerCost(errors) | TrustRefusal::TooLate { errors, .. } => errors
            .iter()
            .map(|error| format!("{} {}", error.field, error.message))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The encoding the `Content-Type` names, if OTLP/HTTP defines it.
fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/x-protobuf") {
        Some(Encoding::Protobuf)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(Encoding::Json)
    } else {
        None
    }
}

/// The body with its `Content-Encoding` undone; the decompressed size is
/// held to the same limit as the body, so a small gzip bomb is refused.
fn decompress(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, AppError> {
    let coding = headers
        .get(CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match coding.as_deref() {
        None | Some("identity") | Some("") => Ok(body),
        Some("gzip") | Some("x-gzip") => {
            let mut inflated = Vec::new();
            let decoder = flate2::read::GzDecoder::new(body.as_ref());
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|error| {
                    AppError::UnreadableBody(format!("the gzip body cannot be inflated: {error}"))
                })?;
            if inflated.len() > limit {
                return Err(AppError::PayloadTooLarge { limit });
            }
            Ok(Bytes::from(inflated))
        }
        Some(_) => Err(AppError::UnsupportedMediaType),
    }
}

fn encoded<T: Message + Serialize>(
    status: StatusCode,
    encoding: Encoding,
    message: &T,
) -> Response {
    let (content_type, bytes) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", message.encode_to_vec()),
        Encoding::Json => (
            "application/json",
            // A struct of integers and strings always serialises.
            serde_json::to_vec(message).unwrap_or_default(),
        ),
    };
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}

/// An [`AppError`]'s response with its status, headers (`Retry-After`,
/// `WWW-Authenticate`, `Connection`) and counted rejection kept, and its
/// body replaced by a `google.rpc.Status` in the request's encoding.
fn failure(error: AppError, encoding: Encoding) -> Response {
    let message = match &error {
        AppError::UnsupportedMediaType => "Content-Type must be application/x-protobuf or application/json, and Content-Encoding gzip or none".to_owned(),
        other => other.to_string(),
    };
    let too_many = matches!(error, AppError::Batch(BatchError::TooMany { .. }));
    let original = error.into_response();
    let status = if too_many {
        // The limit is on the request's size: an exporter must split it.
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        original.status()
    };
    let body = Status {
        code: grpc_code(status),
        message,
    };
    let mut response = encoded(status, encoding, &body);
    let (parts, _) = original.into_parts();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if let Some(rejection) = parts.extensions.get::<Rejection>() {
        response.extensions_mut().insert(*rejection);
    }
    response
}

/// The gRPC status code closest to an HTTP status, as OTLP/HTTP's
/// `Status.code` expects.
fn grpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 415 => 3,  // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        503 | 504 => 14, // UNAVAILABLE
        _ => 13,         // INTERNAL
    }
}
