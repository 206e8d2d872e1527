//! [`BudgetError`]: how the budget API refuses a request, and its answer:
//! `{"error", "message"}` (and `errors` for an invalid budget); a 503 says
//! when to retry.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use store::EditError;
use uuid::Uuid;

use crate::admin::{DatabaseFailure, NotAdmin};

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budgets are managed with an admin API key")]
    AdminOnly,
    #[error("this API key may only read the budget status of its own tenant")]
    OtherTenant,
    #[error("budgets need database.url in the gateway's configuration")]
    Unconfigured,
    #[error("invalid budget: {}", join_field_errors(.0))]
    Invalid(Vec<ledger::FieldError>),
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{0:?} is not a budget id (a UUID)")]
    BadId(String),
    #[error("no budget with id {0}")]
    NotFound(Uuid),
    #[error("a budget named {0:?} already exists")]
    DuplicateName(String),
    #[error("query parameter tenant_id is required with an admin key")]
    MissingTenantId,
    #[error("the database is unavailable: {0}")]
    Database(String),
}

impl From<NotAdmin> for BudgetError {
    fn from(_: NotAdmin) -> Self {
        Self::AdminOnly
    }
}

impl From<DatabaseFailure> for BudgetError {
    fn from(failure: DatabaseFailure) -> Self {
        Self::Database(failure.to_string())
    }
}

impl From<store::DbError> for BudgetError {
    fn from(error: store::DbError) -> Self {
        Self::Database(error.source.to_string())
    }
}

impl From<tokio_postgres::Error> for BudgetError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Database(error.to_string())
    }
}

impl From<EditError> for BudgetError {
    fn from(error: EditError) -> Self {
        match error {
            EditError::NotFound(id) => Self::NotFound(id),
            EditError::DuplicateName(name) => Self::DuplicateName(name),
            EditError::Database(error) => error.into(),
        }
    }
}

impl IntoResponse for BudgetError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code) = match &self {
            Self::AdminOnly | Self::OtherTenant => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Unconfigured => (StatusCode::SERVICE_UNAVAILABLE, "budgets_unavailable"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_budget"),
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::BadId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::MissingTenantId => (StatusCode::BAD_REQUEST, "missing_tenant_id"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::DuplicateName(_) => (StatusCode::CONFLICT, "duplicate_name"),
            Self::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        };
        let message = if let Self::Database(_) = &self {
            // The driver's text names hosts, ports, users and SQL: it goes to
            // the log, and the caller gets the request id it is logged under.
            let request_id = crate::request_id::RequestId::current();
            let request_id = request_id.as_ref().map_or("unknown", |id| id.as_str());
            tracing::error!(error = %message, request_id, "budget API: database error");
            format!(
                "the database is unavailable; the gateway logged the cause under request id {request_id}"
            )
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %message, "budget API unavailable");
            }
            message
        };
        let mut body = json!({ "error": code, "message": message });
        if let Self::Invalid(errors) = &self {
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
}

fn join_field_errors(errors: &[ledger::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
