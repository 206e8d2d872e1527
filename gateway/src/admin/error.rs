//! [`AdminApiError`]: how an admin API on the processor's database refuses
//! a request, named after the API that refused (`exports are read with an
//! admin API key`, `reports_unavailable`), and its answer:
//! `{"error", "message"}`; a 503 says when to retry.

use std::fmt;
use std::marker::PhantomData;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use serde_json::json;

use super::{AdminDatabase, DatabaseFailure, NotAdmin};

/// What an admin API is called in its refusals.
pub trait AdminApi {
    /// The subject of its messages: "exports", "the reconciliation".
    const NAME: &'static str;
    /// "are" or "is", to agree with [`AdminApi::NAME`].
    const VERB: &'static str;
    /// The code of a refused parameter: `invalid_export`.
    const INVALID: &'static str;
    /// The code of a 503: `exports_unavailable`.
    const UNAVAILABLE: &'static str;
}

/// Why API `A` refused a request.
pub struct AdminApiError<A> {
    refusal: Refusal,
    // `fn() -> A`: the marker is never held, so the error is Send and Sync.
    api: PhantomData<fn() -> A>,
}

#[derive(Debug)]
enum Refusal {
    AdminOnly,
    Invalid(String),
    Unavailable(String),
}

impl<A: AdminApi> AdminApiError<A> {
    /// A parameter the API cannot answer for; `message` says which and why.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Refusal::Invalid(message.into()))
    }

    /// The data is out of reach for now (a 503 with `Retry-After`).
    pub fn unavailable(reason: impl fmt::Display) -> Self {
        Self::new(Refusal::Unavailable(reason.to_string()))
    }

    fn new(refusal: Refusal) -> Self {
        Self {
            refusal,
            api: PhantomData,
        }
    }
}

impl<A: AdminApi> fmt::Display for AdminApiError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, verb) = (A::NAME, A::VERB);
        match &self.refusal {
            Refusal::AdminOnly => write!(f, "{name} {verb} read with an admin API key"),
            Refusal::Invalid(message) => f.write_str(message),
            Refusal::Unavailable(reason) => write!(f, "{name} {verb} unavailable: {reason}"),
        }
    }
}

impl<A: AdminApi> fmt::Debug for AdminApiError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApiError")
            .field("api", &A::NAME)
            .field("refusal", &self.refusal)
            .finish()
    }
}

impl<A: AdminApi> std::error::Error for AdminApiError<A> {}

impl<A: AdminApi> From<NotAdmin> for AdminApiError<A> {
    fn from(_: NotAdmin) -> Self {
        Self::new(Refusal::AdminOnly)
    }
}

impl<A: AdminApi> From<DatabaseFailure> for AdminApiError<A> {
    fn from(failure: DatabaseFailure) -> Self {
        Self::unavailable(failure)
    }
}

/// The gateway runs without `database.url`: every admin API answers 503.
#[derive(Debug, Clone, Copy)]
pub struct NoDatabase;

impl<A: AdminApi> From<NoDatabase> for AdminApiError<A> {
    fn from(_: NoDatabase) -> Self {
        Self::unavailable("the gateway's configuration has no database.url")
    }
}

/// The admin APIs' database, if the gateway has one.
pub fn database(database: &Option<AdminDatabase>) -> Result<&AdminDatabase, NoDatabase> {
    database.as_ref().ok_or(NoDatabase)
}

/// A refused parameter, whichever API it was given to.
#[derive(Debug, Clone)]
pub struct Invalid(pub String);

impl<A: AdminApi> From<Invalid> for AdminApiError<A> {
    fn from(Invalid(message): Invalid) -> Self {
        Self::invalid(message)
    }
}

/// A `YYYY-MM-DD` query parameter.
pub fn parse_day(name: &str, text: &str) -> Result<NaiveDate, Invalid> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        Invalid(format!(
            "{name} must be a date (YYYY-MM-DD), got {:?}",
            text.chars().take(40).collect::<String>()
        ))
    })
}

impl<A: AdminApi> IntoResponse for AdminApiError<A> {
    fn into_response(self) -> Response {
        let (status, code) = match &self.refusal {
            Refusal::AdminOnly => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, A::INVALID),
            Refusal::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, A::UNAVAILABLE),
        };
        let message = self.to_string();
        let mut response =
            (status, Json(json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(api = A::NAME, error = %message, "admin API unavailable");
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
