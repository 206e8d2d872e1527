//! The finance exports over HTTP, for admin keys: `GET /v1/exports/focus?
//! from=&to=[&tenant=]` (a FOCUS 1.0 CSV) and `GET /v1/exports/statement?
//! month=[&tenant=][&format=csv|json]`, so a scheduled job can pull them.
//! The bytes are `store::exports`', the same `processor export` writes
//! (given the same price file and attribution labels), streamed as they are
//! produced: the export writes into a pipe whose other end is the response
//! body. A failure after the first byte aborts the response instead of
//! ending it, so a client never takes a cut-off export for a whole one.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::ClientWrapper;
use ledger::PriceBook;
use serde::Deserialize;
use store::exports::focus::{write_focus, FocusRequest};
use store::exports::statement::{write_statement, StatementFormat, StatementRequest};
use store::exports::ExportError;
use tokio::io::AsyncReadExt;

use crate::admin::{self, parse_day, require_admin, AdminDatabase};
use crate::app::AppState;
use crate::auth::{Authenticated, KeyRing};
use crate::config::ExportsConfig;

mod error;
pub use error::{ExportApiError, Exports};

/// Bytes in flight between the export and the response body.
const PIPE_BYTES: usize = 256 * 1024;

/// State of the export routes.
#[derive(Debug, Clone)]
pub struct ExportApi {
    keys: Arc<KeyRing>,
    database: Option<AdminDatabase>,
    book: Arc<PriceBook>,
    labels: Arc<Vec<String>>,
}

impl FromRef<ExportApi> for Arc<KeyRing> {
    fn from_ref(api: &ExportApi) -> Self {
        api.keys.clone()
    }
}

impl ExportApi {
    /// The exports on the admin APIs' database (`None` without
    /// `database.url`: every export answers 503).
    pub fn new(
        keys: Arc<KeyRing>,
        database: Option<AdminDatabase>,
        config: &ExportsConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            keys,
            database,
            book: Arc::new(config.price_book()?),
            labels: Arc::new(config.attribution_labels.clone()),
        })
    }

    /// Exports stream a month of rows as the client reads them: one
    /// statement that may rightly outlast the budget routes' bound, on a
    /// connection of its own.
    async fn client(&self) -> Result<ClientWrapper, ExportApiError> {
        Ok(admin::database(&self.database)?.detached_client().await?)
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

async fn focus(
    State(api): State<ExportApi>,
    who: Authenticated,
    Query(query): Query<FocusQuery>,
) -> Result<Response, ExportApiError> {
    require_admin(&who)?;
    let request = FocusRequest {
        from: parse_day("from", &query.from)?,
        to: parse_day("to", &query.to)?,
        tenant: query.tenant,
        label_keys: api.labels.as_ref().clone(),
    };
    request.validate()?;
    let client = api.client().await?;
    let name = format!("focus-{}-{}.csv", request.from, request.to);
    let book = api.book.clone();
    Ok(streamed(
        "text/csv; charset=utf-8",
        &name,
        move |mut pipe| async move {
            write_focus(&*client, &book, &request, &mut pipe)
                .await
                .map(drop)
        },
    ))
}

async fn statement(
    State(api): State<ExportApi>,
    who: Authenticated,
    Query(query): Query<StatementQuery>,
) -> Result<Response, ExportApiError> {
    require_admin(&who)?;
    let format = match query.format.as_deref().unwrap_or("csv") {
        "csv" => StatementFormat::Csv,
        "json" => StatementFormat::Json,
        other => {
            return Err(ExportApiError::invalid(format!(
                "format must be csv or json, got {:?}",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let request = StatementRequest {
        month: StatementRequest::parse_month(&query.month)?,
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
        write_statement(&*client, &request, &mut pipe)
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
