//! The reconciliation of the ledger against a provider's own reports, for
//! admin keys: `GET /v1/reconciliation?provider=&from=&to=[&tenant=]`
//! answers the JSON `processor reconcile … --format json` prints, computed
//! by `store::reconcile` from the reports the processor stored. The
//! gateway never calls a provider; a day not fetched yet is listed as not
//! compared.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger::PriceBook;
use serde::Deserialize;
use store::reconcile::PROVIDERS;

use crate::admin::{self, parse_day, require_admin, AdminApi, AdminApiError, AdminDatabase};
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::ReconciliationConfig;

/// The reconciliation, as its refusals name it.
#[derive(Debug)]
pub enum Reconciliation {}

impl AdminApi for Reconciliation {
    const NAME: &'static str = "the reconciliation";
    const VERB: &'static str = "is";
    const INVALID: &'static str = "invalid_reconciliation";
    const UNAVAILABLE: &'static str = "reconciliation_unavailable";
}

/// Why a reconciliation request was not answered.
pub type ReconciliationError = AdminApiError<Reconciliation>;

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
            ReconciliationError::invalid(format!(
                "provider must be one of {}, got {:?}",
                PROVIDERS.join(", "),
                shown(&query.provider)
            ))
        })?;
    let from = parse_day("from", &query.from)?;
    let to = parse_day("to", &query.to)?;
    if to <= from {
        return Err(ReconciliationError::invalid(format!(
            "from {from} must be before to {to} (to is exclusive)"
        )));
    }
    if (to - from).num_days() > MAX_DAYS {
        return Err(ReconciliationError::invalid(format!(
            "a reconciliation covers at most {MAX_DAYS} days"
        )));
    }
    let terms = api.config.terms(provider);
    let reconciliation = admin::database(&api.database)?
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
            .map_err(ReconciliationError::unavailable)
        })
        .await?;
    Ok(Json(reconciliation).into_response())
}
