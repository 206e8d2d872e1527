//! [`ExportApiError`]: how the export API refuses a request, and its
//! answer: `{"error", "message"}`; a 503 says when to retry.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use store::exports::ExportError;

use crate::admin::{DatabaseFailure, NotAdmin};

#[derive(Debug, thiserror::Error)]
pub enum ExportApiError {
    #[error("exports are read with an admin API key")]
    AdminOnly,
    #[error("{0}")]
    Invalid(String),
    #[error("exports are unavailable: {0}")]
    Unavailable(String),
}

impl From<NotAdmin> for ExportApiError {
    fn from(_: NotAdmin) -> Self {
        Self::AdminOnly
    }
}

impl From<DatabaseFailure> for ExportApiError {
    fn from(failure: DatabaseFailure) -> Self {
        Self::Unavailable(failure.to_string())
    }
}

impl From<ExportError> for ExportApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Invalid(message) => Self::Invalid(message),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl IntoResponse for ExportApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::AdminOnly => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_export"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "exports_unavailable"),
        };
        let message = self.to_string();
        let mut response =
            (status, Json(json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %message, "export unavailable");
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
