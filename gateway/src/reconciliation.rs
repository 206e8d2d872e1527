//! The reconciliation of the ledger against a provider's own reports, for
//! admin keys: `GET /v1/reconciliation?provider=&from=&to=[&tenant=]`
//! answers the JSON `processor reconcile … --format json` prints, computed
//! by `store::reconcile` from the reports the processor stored. The
//! gateway never calls a provider; a day not fetched yet is listed as not
//! compared.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use ledger::PriceBook;
use serde::Deserialize;
use store::reconcile::PROVIDERS;

use crate::admin::{require_admin, AdminDatabase, DatabaseFailure, NotAdmin};
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::ReconciliationConfig;

/// Why a reconciliation request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ReconciliationError {
    #[error("the reconciliation is read with an admin API key")]
    AdminOnly,
    #[error("{0}")]
    Invalid(String),
    #[error("the reconciliation is unavailable: {0}")]
    Unavailable(String),
}

impl From<NotAdmin> for ReconciliationError {
    fn from(_: NotAdmin) -> Self {
        Self::AdminOnly
    }
}

impl From<DatabaseFailure> for ReconciliationError {
    fn from(failure: DatabaseFailure) -> Self {
        Self::Unavailable(failure.to_string())
    }
}

impl IntoResponse for ReconciliationError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::AdminOnly => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_reconciliation"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "reconciliation_unavailable",
            ),
        };
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "reconciliation unavailable");
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// State of the reconciliation route.
#[derive(Debug, Clone)]
pub struct ReconciliationApi {
    keys: Arc<KeyRing>,
    database: Option<AdminDatabase>,
    book: Arc<PriceBook>,
    config: Arc<ReconciliationConfig>,
}

impl FromRef<ReconciliationApi> for Arc<KeyRing> {
    fn from_ref(api: &ReconciliationApi) -> Self {
        api.keys.clone()
    }
}

impl ReconciliationApi {
    /// The reconciliation on the admin APIs' database (`None` without
    /// `database.url`: it answers 503).
    pub fn new(
        keys: Arc<KeyRing>,
        database: Option<AdminDatabase>,
        config: &ReconciliationConfig,
    ) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&config.coverage_floor) {
            return Err("reconciliation.coverage_floor must be between 0 and 1".into());
        }
        if !config.variance_ceiling.is_finite() || config.variance_ceiling < 0.0 {
            return Err("reconciliation.variance_ceiling must be 0 or more".into());
        }
        Ok(Self {
            keys,
            database,
            book: Arc::new(config.price_book()?),
            config: Arc::new(config.clone()),
        })
    }

    fn database(&self) -> Result<&AdminDatabase, ReconciliationError> {
        self.database.as_ref().ok_or_else(|| {
            ReconciliationError::Unavailable(
                "it needs database.url in the gateway's configuration".into(),
            )
        })
    }
}

/// The route, merged into the API router so it shares its layers.
pub fn routes(api: ReconciliationApi) -> Router<AppState> {
    Router::new()
        .route("/v1/reconciliation", get(reconciliation))
        .with_state(api)
}

#[derive(Debug, Deserialize)]
pub struct ReconciliationQuery {
    provider: String,
    from: String,
    to: String,
    tenant: Option<String>,
}

fn shown(text: &str) -> String {
    text.chars().take(40).collect()
}

fn parse_day(name: &str, text: &str) -> Result<NaiveDate, ReconciliationError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ReconciliationError::Invalid(format!(
            "{name} must be a date (YYYY-MM-DD), got {:?}",
            shown(text)
        ))
    })
}

/// Longer ranges are split by the caller: a year of days is already more
/// groups than a response should carry.
const MAX_DAYS: i64 = 366;

async fn reconciliation(
    State(api): State<ReconciliationApi>,
    who: Authenticated,
    Query(query): Query<ReconciliationQuery>,
) -> Result<Response, ReconciliationError> {
    require_admin(&who)?;
    let provider = PROVIDERS
        .iter()
        .find(|known| **known == query.provider)
        .ok_or_else(|| {
            ReconciliationError::Invalid(format!(
                "provider must be one of {}, got {:?}",
                PROVIDERS.join(", "),
                shown(&query.provider)
            ))
        })?;
    let from = parse_day("from", &query.from)?;
    let to = parse_day("to", &query.to)?;
    if to <= from {
        return Err(ReconciliationError::Invalid(format!(
            "from {from} must be before to {to} (to is exclusive)"
        )));
    }
    if (to - from).num_days() > MAX_DAYS {
        return Err(ReconciliationError::Invalid(format!(
            "a reconciliation covers at most {MAX_DAYS} days"
        )));
    }
    let terms = api.config.terms(provider);
    let reconciliation = api
        .database()?
        .with_client(async |client| {
            store::reconcile::reconciliation(
                &***client,
                &api.book,
                &terms,
                provider,
                (from, to),
                query.tenant.as_deref(),
            )
            .await
            .map_err(|error| ReconciliationError::Unavailable(error.to_string()))
        })
        .await?;
    Ok(Json(reconciliation).into_response())
}
