//! The optimization reports over HTTP, for admin keys:
//! `GET /v1/reports/optimize?from=&to=[&tenant=]` and
//! `GET /v1/reports/what-if?from=&to=&model=PROVIDER/MODEL[&use_case=][&tenant=]`,
//! answering the same JSON as `processor report optimize --format json` and
//! `processor what-if --format json` (the figures are `store::optimize`'s,
//! on the admin APIs' shared database;
//! the what-if uses the price book the exports are configured with,
//! `[exports] pricebook_path`). Refusals are [`ReportApiError`]s: 403 for
//! a tenant key, 400 for a bad parameter, 503 without a database.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use ledger::PriceBook;
use serde::Deserialize;
use store::optimize::report::optimize_report;
use store::optimize::whatif::{what_if, WhatIfRequest};
use store::optimize::{OptimizeError, Range};

use crate::admin::{self, require_admin, AdminApi, AdminApiError, AdminDatabase};
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::ExportsConfig;

/// The reports, as their refusals name them.
#[derive(Debug)]
pub enum Reports {}

impl AdminApi for Reports {
    const NAME: &'static str = "reports";
    const VERB: &'static str = "are";
    const INVALID: &'static str = "invalid_report";
    const UNAVAILABLE: &'static str = "reports_unavailable";
}

pub type ReportApiError = AdminApiError<Reports>;

/// State of the report routes.
#[derive(Debug, Clone)]
pub struct ReportApi {
    keys: Arc<KeyRing>,
    database: Option<AdminDatabase>,
    book: Arc<PriceBook>,
}

impl FromRef<ReportApi> for Arc<KeyRing> {
    fn from_ref(api: &ReportApi) -> Self {
        api.keys.clone()
    }
}

impl ReportApi {
    /// The reports on the admin APIs' database (`None` without
    /// `database.url`: every report answers 503).
    pub fn new(
        keys: Arc<KeyRing>,
        database: Option<AdminDatabase>,
        config: &ExportsConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            keys,
            database,
            book: Arc::new(config.price_book()?),
        })
    }
}

/// The report routes, merged into the API router so they share its layers.
pub fn routes(api: ReportApi) -> Router<AppState> {
    Router::new()
        .route("/v1/reports/optimize", get(optimize))
        .route("/v1/reports/what-if", get(whatif))
        .with_state(api)
}

#[derive(Debug, Deserialize)]
pub struct OptimizeQuery {
    from: String,
    to: String,
    tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WhatIfQuery {
    from: String,
    to: String,
    model: String,
    use_case: Option<String>,
    tenant: Option<String>,
}

fn refused(error: OptimizeError) -> ReportApiError {
    match error {
        OptimizeError::Invalid(message) => ReportApiError::invalid(message),
        other => ReportApiError::unavailable(other),
    }
}

fn range(from: &str, to: &str, tenant: Option<String>) -> Result<Range, ReportApiError> {
    let range = Range {
        from: Range::parse_day("from", from).map_err(refused)?,
        to: Range::parse_day("to", to).map_err(refused)?,
        tenant,
    };
    range.bounds().map_err(refused)?;
    Ok(range)
}

async fn optimize(
    State(api): State<ReportApi>,
    who: Authenticated,
    Query(query): Query<OptimizeQuery>,
) -> Result<Response, ReportApiError> {
    require_admin(&who)?;
    let range = range(&query.from, &query.to, query.tenant)?;
    let report = admin::database(&api.database)?
        .with_client(async |client| optimize_report(&***client, &range).await.map_err(refused))
        .await?;
    Ok(Json(report).into_response())
}

async fn whatif(
    State(api): State<ReportApi>,
    who: Authenticated,
    Query(query): Query<WhatIfQuery>,
) -> Result<Response, ReportApiError> {
    require_admin(&who)?;
    let (provider, model) = WhatIfRequest::parse_target(&query.model).map_err(refused)?;
    let request = WhatIfRequest {
        range: range(&query.from, &query.to, query.tenant)?,
        use_case: query.use_case,
        provider,
        model,
    };
    let report = admin::database(&api.database)?
        .with_client(async |client| {
            what_if(&***client, &api.book, &request, Utc::now())
                .await
                .map_err(refused)
        })
        .await?;
    Ok(Json(report).into_response())
}
