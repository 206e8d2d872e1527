//! The finance exports over HTTP, for admin keys: `GET /v1/exports/focus?
//! from=&to=[&tenant=]` (a FOCUS 1.0 CSV) and `GET /v1/exports/statement?
//! month=[&tenant=][&format=csv|json]`, so a scheduled job can pull them.
//! The bytes are `store::exports`', the same `processor export` writes
//! (given the same price file and attribution labels), streamed as they are
//! produced: the export writes into a pipe whose other end is the response
//! body. A failure after the first byte aborts the response instead of
//! ending it, so a client never takes a cut-off export for a whole one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::NaiveDate;
use deadpool_postgres::Pool;
use ledger::PriceBook;
use serde::{Deserialize, Serialize};
use store::exports::focus::{write_focus, FocusRequest};
use store::exports::statement::{write_statement, StatementFormat, StatementRequest};
use store::exports::ExportError;
use tokio::io::AsyncReadExt;

use crate::api::AppError;
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::DatabaseConfig;

/// Bytes in flight between the export and the response body.
const PIPE_BYTES: usize = 256 * 1024;

/// `[exports]`: what the exports need besides the database. Set both as
/// the processor has them (`pricing.pricebook_path`, `attribution.labels`)
/// and the gateway's exports equal `processor export`'s byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    /// The price file laid over the built-in book; it divides a day's cost
    /// between token types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricebook_path: Option<PathBuf>,
    /// The attribution label keys; the first is the statements' use case.
    pub attribution_labels: Vec<String>,
}

impl Default for ExportsConfig {
    fn default() -> Self {
        Self {
            pricebook_path: None,
            attribution_labels: vec!["use_case".to_owned()],
        }
    }
}

impl ExportsConfig {
    /// The built-in price book with the configured file laid over it.
    pub fn price_book(&self) -> Result<PriceBook, String> {
        let builtin = PriceBook::builtin()
            .map_err(|error| format!("the built-in price book does not parse: {error}"))?;
        let Some(path) = &self.pricebook_path else {
            return Ok(builtin);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let overrides = PriceBook::from_toml(&text)
            .map_err(|error| format!("invalid price file {}: {error}", path.display()))?;
        Ok(builtin.with_overrides(overrides))
    }
}

/// State of the export routes.
#[derive(Debug, Clone)]
pub struct ExportApi {
    keys: Arc<KeyRing>,
    pool: Option<Pool>,
    timeout: Duration,
    book: Arc<PriceBook>,
    labels: Arc<Vec<String>>,
}

impl FromRef<ExportApi> for Arc<KeyRing> {
    fn from_ref(api: &ExportApi) -> Self {
        api.keys.clone()
    }
}

impl ExportApi {
    /// Connections are made lazily, as for the budget API: a database that
    /// is down only fails export requests.
    pub fn new(
        keys: Arc<KeyRing>,
        database: &DatabaseConfig,
        config: &ExportsConfig,
    ) -> Result<Self, String> {
        let pool = match database.settings() {
            Some(settings) => {
                // Exports (admin keys only) stream a month of rows as the
                // client reads them: one statement that may rightly outlast
                // the budget routes' bound.
                let settings = infra::database::DatabaseSettings {
                    statement_timeout: None,
                    ..settings
                };
                Some(infra::database::pool(&settings).map_err(|error| error.to_string())?)
            }
            None => None,
        };
        Ok(Self {
            keys,
            pool,
            timeout: database.timeout(),
            book: Arc::new(config.price_book()?),
            labels: Arc::new(config.attribution_labels.clone()),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, AppError> {
        let pool = self.pool.as_ref().ok_or_else(|| {
            AppError::ExportsUnavailable(
                "exports need database.url in the gateway's configuration".into(),
            )
        })?;
        tokio::time::timeout(self.timeout, pool.get())
            .await
            .map_err(|_| AppError::ExportsUnavailable("no database connection in time".into()))?
            .map_err(|error| AppError::ExportsUnavailable(error.to_string()))
    }
}

/// The export routes, merged into the API router so they share its layers.
pub fn routes(api: ExportApi) -> Router<AppState> {
    Router::new()
        .route("/v1/exports/focus", get(focus))
        .route("/v1/exports/statement", get(statement))
        .with_state(api)
}

#[derive(Debug, Deserialize)]
pub struct FocusQuery {
    from: String,
    to: String,
    tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StatementQuery {
    month: String,
    tenant: Option<String>,
    format: Option<String>,
}

fn parse_day(name: &str, text: &str) -> Result<NaiveDate, AppError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        AppError::InvalidExport(format!(
            "{name} must be a date (YYYY-MM-DD), got {:?}",
            text.chars().take(40).collect::<String>()
        ))
    })
}

fn invalid(error: ExportError) -> AppError {
    match error {
        ExportError::Invalid(message) => AppError::InvalidExport(message),
        other => AppError::ExportsUnavailable(other.to_string()),
    }
}

fn require_admin(who: &Authenticated) -> Result<(), AppError> {
    if who.admin {
        Ok(())
    } else {
        Err(AppError::ExportAdminOnly)
    }
}

async fn focus(
    State(api): State<ExportApi>,
    who: Authenticated,
    Query(query): Query<FocusQuery>,
) -> Result<Response, AppError> {
    require_admin(&who)?;
    let request = FocusRequest {
        from: parse_day("from", &query.from)?,
        to: parse_day("to", &query.to)?,
        tenant: query.tenant,
        label_keys: api.labels.as_ref().clone(),
    };
    request.validate().map_err(invalid)?;
    let client = api.client().await?;
    let name = format!("focus-{}-{}.csv", request.from, request.to);
    let book = api.book.clone();
    Ok(streamed(
        "text/csv; charset=utf-8",
        &name,
        move |mut pipe| async move {
            write_focus(&**client, &book, &request, &mut pipe)
                .await
                .map(drop)
        },
    ))
}

async fn statement(
    State(api): State<ExportApi>,
    who: Authenticated,
    Query(query): Query<StatementQuery>,
) -> Result<Response, AppError> {
    require_admin(&who)?;
    let format = match query.format.as_deref().unwrap_or("csv") {
        "csv" => StatementFormat::Csv,
        "json" => StatementFormat::Json,
        other => {
            return Err(AppError::InvalidExport(format!(
                "format must be csv or json, got {:?}",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let request = StatementRequest {
        month: StatementRequest::parse_month(&query.month).map_err(invalid)?,
        tenant: query.tenant,
        use_case_key: api
            .labels
            .first()
            .cloned()
            .unwrap_or_else(|| "use_case".to_owned()),
        format,
    };
    let client = api.client().await?;
    let (content_type, extension) = match format {
        StatementFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        StatementFormat::Json => ("application/json", "json"),
    };
    let name = format!("statement-{}.{extension}", request.month.format("%Y-%m"));
    Ok(streamed(content_type, &name, move |mut pipe| async move {
        write_statement(&**client, &request, &mut pipe)
            .await
            .map(drop)
    }))
}

/// A response whose body is what `export` writes into its pipe. The export
/// runs on its own task; its error, if any, becomes a body error.
fn streamed<F, Fut>(content_type: &'static str, file_name: &str, export: F) -> Response
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ExportError>> + Send + 'static,
{
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let task = tokio::spawn(export(writer));
    let body = futures::stream::unfold((reader, Some(task)), |(mut reader, task)| async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        match reader.read(&mut buffer).await {
            Ok(0) => {
                let outcome = match task {
                    Some(task) => task.await,
                    None => return None,
                };
                let error = match outcome {
                    Ok(Ok(())) => return None,
                    Ok(Err(error)) => error.to_string(),
                    Err(join) => join.to_string(),
                };
                tracing::warn!(%error, "export failed while streaming; response aborted");
                Some((Err(std::io::Error::other(error)), (reader, None)))
            }
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(Bytes::from(buffer)), (reader, task)))
            }
            Err(error) => Some((Err(error), (reader, None))),
        }
    });
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_DISPOSITION, disposition),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
