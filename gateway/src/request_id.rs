//! The request id: taken from the client's `x-request-id` when it is sane,
//! generated otherwise, echoed on every response and stamped on every event
//! the request carries.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longer ids are more likely garbage than a tracing system's id, and the
/// id is stored with every event.
const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum RequestIdError {
    #[error("request id is not a valid header value")]
    NotAHeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id if it is 1–128 characters of a conservative set
    /// (so it is safe in logs, headers and SQL), else a fresh UUIDv7.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|text| is_sane(text))
            .map(|text| Self(text.to_owned()))
            .unwrap_or_else(Self::generate)
    }

    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn header_value(&self) -> Result<HeaderValue, RequestIdError> {
        HeaderValue::from_str(&self.0).map_err(|_| RequestIdError::NotAHeaderValue)
    }
}

fn is_sane(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_REQUEST_ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

tokio::task_local! {
    /// The id of the request being answered, for an answer that refers the
    /// caller to the log instead of saying what went wrong.
    static CURRENT: RequestId;
}

impl RequestId {
    /// The id of the request this task is answering, if any.
    pub fn current() -> Option<RequestId> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

/// Middleware: decides the id once, before any handler, so the handler,
/// the logs and the response all agree on it.
pub async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let request_id = RequestId::from_headers(request.headers());
    request.extensions_mut().insert(request_id.clone());
    let span = tracing::info_span!("request", request_id = %request_id.as_str());
    let mut response =
        tracing::Instrument::instrument(CURRENT.scope(request_id.clone(), next.run(request)), span)
            .await;
    if let Ok(value) = request_id.header_value() {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId::from_headers(&parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn sane_client_ids_are_kept() {
        assert_eq!(
            RequestId::from_headers(&headers("req-123_abc:9")).as_str(),
            "req-123_abc:9"
        );
    }

    #[test]
    fn insane_client_ids_are_replaced() {
        for bad in ["has space", "quote\"", &"x".repeat(129), "semi;colon"] {
            let id = RequestId::from_headers(&headers(bad));
            assert_ne!(id.as_str(), bad);
            assert!(Uuid::parse_str(id.as_str()).is_ok());
        }
        assert!(Uuid::parse_str(RequestId::from_headers(&HeaderMap::new()).as_str()).is_ok());
    }
}
