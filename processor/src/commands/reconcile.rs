//! `processor reconcile`: the ledger against the providers' own bills.
//! `processor reconcile openai|anthropic` does it all in one command (for
//! cron): fetch, store, compare, print, and exit 2 when out of bounds.
//! `fetch` pulls a provider's usage and cost reports for a range of days
//! and keeps what it said as immutable day revisions (`store::reconcile`);
//! `report` compares the latest revisions with the ledger per day, tenant
//! and model, says how much of the bill the ledger saw (coverage) and why
//! the rest differs (variance by cause, [`compare`]), and fails when a
//! tenant is below the coverage floor or above the variance ceiling, so
//! that it can run from cron.
//!
//! Nothing partial is recorded as complete: a fetch stores its days only
//! after every page of the report arrived, in the transaction that marks
//! the run complete.

use std::io::Write;
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};
use ledger::PriceBook;
use rust_decimal::Decimal;
use serde_json::Value;
use store::reconcile::{DayLines, DayOutcome, ReportKind};
use tokio_postgres::Client;
use uuid::Uuid;

pub mod anthropic;
pub mod config;
pub mod http;
pub mod openai;
pub mod render;

pub use config::ReconcileConfig;
use http::{FetchError, Fetcher};
pub use store::reconcile::{compare, Reconciliation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Range {
    /// Whose reports: `[reconcile.<provider>]` holds its admin key and
    /// tenant map.
    #[arg(long, value_enum)]
    pub provider: Provider,
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReconcileCommand {
    /// Fetch OpenAI's usage and cost reports over the range, store them and
    /// print the comparison with the ledger; exits 2 when a tenant is below
    /// the coverage floor or above the variance ceiling (for cron).
    Openai(RunArgs),
    /// Fetch Anthropic's usage and cost reports over the range, store them
    /// and print the comparison with the ledger; exits 2 when a tenant is
    /// below the coverage floor or above the variance ceiling (for cron).
    Anthropic(RunArgs),
    /// Pull the provider's usage and cost reports over the range and store
    /// them (a day that changed since the last fetch is a new revision).
    Fetch(Range),
    /// Compare the stored reports with the ledger; exits 2 when a tenant is
    /// below `reconcile.coverage_floor` or above `reconcile.variance_ceiling`.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub range: Range,
    /// Fetch the reports first (one cron line).
    #[arg(long)]
    pub fetch: bool,
    /// Only this tenant's groups and summary.
    #[arg(long)]
    pub tenant: Option<String>,
    /// `json` is the whole comparison, amounts as exact decimal strings.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write the coverage and variance gauges to this file in the
    /// Prometheus text format (for node_exporter's textfile collector),
    /// replaced atomically.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub bounds: Bounds,
}

/// `processor reconcile openai|anthropic`: one provider, fetched, stored
/// and compared in one command.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
    /// Only this tenant's groups and summary.
    #[arg(long)]
    pub tenant: Option<String>,
    /// `json` is the whole comparison, amounts as exact decimal strings.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write the coverage and variance gauges to this file in the
    /// Prometheus text format (for node_exporter's textfile collector).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub bounds: Bounds,
}

/// The floor and ceiling of one run, over `[reconcile]`'s.
#[derive(Debug, Clone, Default, Args)]
pub struct Bounds {
    /// Lowest coverage (ledger tokens / provider tokens, 0..1) a tenant may
    /// have; default `reconcile.coverage_floor` (0.99).
    #[arg(long, value_name = "RATIO")]
    pub coverage_floor: Option<f64>,
    /// Highest cost variance (|ledger − provider| / provider cost) a tenant
    /// may have; default `reconcile.variance_ceiling` (0.01).
    #[arg(long, value_name = "RATIO")]
    pub variance_ceiling: Option<f64>,
}

impl Bounds {
    /// `config` with these bounds laid over it, checked as the file's are.
    fn apply(&self, config: &ReconcileConfig) -> Result<ReconcileConfig, ReconcileError> {
        let mut config = config.clone();
        if let Some(floor) = self.coverage_floor {
            config.coverage_floor = floor;
        }
        if let Some(ceiling) = self.variance_ceiling {
            config.variance_ceiling = ceiling;
        }
        config.validate().map_err(ReconcileError::Invalid)?;
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Invalid(String),
    #[error("--from {from} must be before --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] store::DbError),
    #[error("database error while {step}: {source}")]
    Database {
        step: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("cannot write {what}: {source}")]
    Output {
        what: String,
        source: std::io::Error,
    },
}

/// The reconciliation ran and a tenant is below the coverage floor or
/// above the variance ceiling: `processor` exits 2.
#[derive(Debug, thiserror::Error)]
#[error("a tenant is below reconcile.coverage_floor or above reconcile.variance_ceiling")]
pub struct OutOfBounds;

/// Every page of one report, by day, not yet stored.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The first page's path and query, as recorded with the run.
    pub query: String,
    pub pages: i32,
    pub days: Vec<(NaiveDate, DayLines)>,
}

impl Fetched {
    fn new(query: String) -> Self {
        Self {
            query,
            pages: 0,
            days: Vec::new(),
        }
    }

    /// A day split over two pages (a page ends inside a day's results)
    /// keeps all of its lines.
    fn add_day(&mut self, day: NaiveDate, lines: DayLines) {
        if let Some((_, existing)) = self.days.iter_mut().find(|(known, _)| *known == day) {
            match (existing, lines) {
                (DayLines::Usage(into), DayLines::Usage(more)) => into.extend(more),
                (DayLines::Cost(into), DayLines::Cost(more)) => into.extend(more),
                _ => {}
            }
        } else {
            self.days.push((day, lines));
        }
    }
}

/// What one fetch stored.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub report: ReportKind,
    pub run_id: Uuid,
    pub pages: i32,
    pub days: Vec<DayOutcome>,
}

use ledger::day::midnight;

fn midnight_unix(day: NaiveDate) -> i64 {
    midnight(day).timestamp()
}

fn show_query(path: &str, query: &[(String, String)]) -> String {
    let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", pairs.join("&"))
}

/// A token count: a JSON integer, or a string of one.
fn int_field(value: &Value, field: &str) -> Result<i64, String> {
    match value.get(field) {
        Some(Value::Number(number)) => number
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("`{field}` is not a count: {number}")),
        Some(Value::String(text)) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("`{field}` is not a count: {text:?}")),
        Some(Value::Null) | None => Err(format!("`{field}` is missing")),
        Some(other) => Err(format!("`{field}` is not a count: {other}")),
    }
}

/// An amount: a decimal string, or a JSON number read from its text (never
/// through a float).
fn decimal_field(value: &Value, field: &str) -> Result<Decimal, String> {
    let text = match value.get(field) {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(format!("`{field}` is missing or not an amount")),
    };
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| format!("`{field}` is not an amount: {text:?}"))
}

/// Fetches both reports of `range` and stores them, each in one
/// transaction with its run's completion.
pub async fn fetch(
    client: &mut Client,
    config: &ReconcileConfig,
    range: &Range,
) -> Result<Vec<FetchOutcome>, ReconcileError> {
    if range.to <= range.from {
        return Err(ReconcileError::EmptyRange {
            from: range.from,
            to: range.to,
        });
    }
    let fetcher = Fetcher::new(config)?;
    let provider = range.provider.as_str();
    let mut outcomes = Vec::new();
    for report in [ReportKind::Usage, ReportKind::Cost] {
        let run_id = Uuid::now_v7();
        let (path, query) = match range.provider {
            Provider::Openai => openai::request(report, range.from, range.to),
            Provider::Anthropic => anthropic::request(report, range.from, range.to),
        };
        store::reconcile::start_run(
            &*client,
            run_id,
            provider,
            report,
            range.from,
            range.to,
            &show_query(path, &query),
        )
        .await?;
        let fetched = match range.provider {
            Provider::Openai => {
                openai::fetch(&fetcher, &config.openai, report, range.from, range.to).await
            }
            Provider::Anthropic => {
                anthropic::fetch(&fetcher, &config.anthropic, report, range.from, range.to).await
            }
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                store::reconcile::fail_run(&*client, run_id, &error.to_string()).await?;
                return Err(error.into());
            }
        };
        let database = |step| move |source| ReconcileError::Database { step, source };
        let transaction = client
            .transaction()
            .await
            .map_err(database("starting the transaction of a fetch"))?;
        let days = store::reconcile::complete_run(
            &transaction,
            run_id,
            provider,
            fetched.pages,
            &fetched.days,
        )
        .await?;
        transaction
            .commit()
            .await
            .map_err(database("committing a fetch"))?;
        outcomes.push(FetchOutcome {
            report,
            run_id,
            pages: fetched.pages,
            days,
        });
    }
    Ok(outcomes)
}

/// The comparison of `range` from what is stored (`store::reconcile`,
/// which the gateway's `GET /v1/reconciliation` answers from too).
pub async fn reconcile(
    client: &Client,
    config: &ReconcileConfig,
    book: &PriceBook,
    range: &Range,
    tenant: Option<&str>,
) -> Result<Reconciliation, ReconcileError> {
    if range.to <= range.from {
        return Err(ReconcileError::EmptyRange {
            from: range.from,
            to: range.to,
        });
    }
    let terms = config.terms(range.provider);
    Ok(store::reconcile::reconciliation(
        client,
        book,
        &terms,
        range.provider.as_str(),
        (range.from, range.to),
        tenant,
    )
    .await?)
}

/// `processor reconcile …`: returns whether the floor and ceiling held.
pub async fn run(
    client: &mut Client,
    config: &ReconcileConfig,
    book: &PriceBook,
    command: &ReconcileCommand,
    out: &mut impl Write,
) -> Result<bool, ReconcileError> {
    let one_command = |provider: Provider, args: &RunArgs| ReportArgs {
        range: Range {
            provider,
            from: args.from,
            to: args.to,
        },
        fetch: true,
        tenant: args.tenant.clone(),
        format: args.format,
        metrics_file: args.metrics_file.clone(),
        bounds: args.bounds.clone(),
    };
    match command {
        ReconcileCommand::Openai(args) => {
            report(
                client,
                config,
                book,
                &one_command(Provider::Openai, args),
                out,
            )
            .await
        }
        ReconcileCommand::Anthropic(args) => {
            report(
                client,
                config,
                book,
                &one_command(Provider::Anthropic, args),
                out,
            )
            .await
        }
        ReconcileCommand::Fetch(range) => {
            let outcomes = fetch(client, config, range).await?;
            render::write_fetch(out, range.provider, &outcomes).map_err(output)?;
            Ok(true)
        }
        ReconcileCommand::Report(args) => report(client, config, book, args, out).await,
    }
}

fn output(source: std::io::Error) -> ReconcileError {
    ReconcileError::Output {
        what: "the output".into(),
        source,
    }
}

async fn report(
    client: &mut Client,
    config: &ReconcileConfig,
    book: &PriceBook,
    args: &ReportArgs,
    out: &mut impl Write,
) -> Result<bool, ReconcileError> {
    let config = args.bounds.apply(config)?;
    if args.range.to <= args.range.from {
        return Err(ReconcileError::EmptyRange {
            from: args.range.from,
            to: args.range.to,
        });
    }
    if args.fetch {
        let outcomes = fetch(client, &config, &args.range).await?;
        if args.format == Format::Table {
            render::write_fetch(out, args.range.provider, &outcomes).map_err(output)?;
        }
    }
    let reconciliation =
        reconcile(client, &config, book, &args.range, args.tenant.as_deref()).await?;
    match args.format {
        Format::Table => render::write_table(&reconciliation, out).map_err(output)?,
        Format::Json => {
            let json = serde_json::to_string_pretty(&reconciliation)
                .map_err(|error| output(std::io::Error::other(error)))?;
            writeln!(out, "{json}").map_err(output)?;
        }
    }
    if let Some(path) = &args.metrics_file {
        render::write_metrics_file(path, &reconciliation).map_err(|source| {
            ReconcileError::Output {
                what: path.display().to_string(),
                source,
            }
        })?;
    }
    Ok(reconciliation.within_bounds)
}
