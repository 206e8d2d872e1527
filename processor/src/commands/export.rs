//! `processor export`: the finance exports (a FOCUS dataset, a monthly
//! statement) written to a file or stdout. The rows and their bytes are the
//! `store::exports` module's, which the gateway's `/v1/exports/*` serve too.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};
use store::exports::focus::{write_focus, FocusRequest};
use store::exports::statement::{write_statement, StatementFormat, StatementRequest};
use store::exports::ExportError;
use tokio::io::AsyncWrite;
use tokio_postgres::Client;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// A FOCUS 1.0 cost and usage dataset (CSV): one row per UTC day,
    /// tenant, provider, model and token type.
    Focus(FocusArgs),
    /// A tenant's monthly statement per provider, model and use case.
    Statement(StatementArgs),
}

#[derive(Debug, Args)]
pub struct FocusArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Where to write: a file, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct StatementArgs {
    /// The UTC month (YYYY-MM).
    #[arg(long)]
    pub month: String,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Where to write: a file, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub output: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportCommandError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    PriceBook(#[from] crate::stream::pipeline::RunError),
}

/// The label key a statement groups by: the first attribution key.
pub fn use_case_key(config: &Config) -> String {
    config
        .attribution
        .labels
        .first()
        .cloned()
        .unwrap_or_else(|| "use_case".to_owned())
}

pub fn focus_request(config: &Config, args: &FocusArgs) -> FocusRequest {
    FocusRequest {
        from: args.from,
        to: args.to,
        tenant: args.tenant.clone(),
        label_keys: config.attribution.labels.clone(),
    }
}

pub fn statement_request(
    config: &Config,
    args: &StatementArgs,
) -> Result<StatementRequest, ExportError> {
    Ok(StatementRequest {
        month: StatementRequest::parse_month(&args.month)?,
        tenant: args.tenant.clone(),
        use_case_key: use_case_key(config),
        format: match args.format {
            Format::Csv => StatementFormat::Csv,
            Format::Json => StatementFormat::Json,
        },
    })
}

/// Runs one export. A file is written under a temporary name and renamed
/// when complete, so a failed export never leaves a file that looks whole.
pub async fn run(
    config: &Config,
    client: &Client,
    command: &ExportCommand,
) -> Result<(), ExportCommandError> {
    let output = match command {
        ExportCommand::Focus(args) => &args.output,
        ExportCommand::Statement(args) => &args.output,
    };
    if output == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        return export(config, client, command, &mut stdout).await;
    }
    let partial = output.with_extension("partial");
    let file_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportCommandError::File { path, source }
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(file_error(&partial))?;
    let result = export(config, client, command, &mut file).await;
    if let Err(error) = result {
        drop(file);
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    file.sync_all().await.map_err(file_error(&partial))?;
    tokio::fs::rename(&partial, output)
        .await
        .map_err(file_error(output))?;
    Ok(())
}

async fn export<W: AsyncWrite + Unpin>(
    config: &Config,
    client: &Client,
    command: &ExportCommand,
    out: &mut W,
) -> Result<(), ExportCommandError> {
    match command {
        ExportCommand::Focus(args) => {
            let book = crate::stream::pipeline::load_price_book(&config.pricing)?;
            let summary = write_focus(client, &book, &focus_request(config, args), out).await?;
            tracing::info!(rows = summary.rows, billed_cost = %summary.billed_cost, "FOCUS export written");
        }
        ExportCommand::Statement(args) => {
            let request = statement_request(config, args)?;
            let total = write_statement(client, &request, out).await?;
            tracing::info!(billed_cost = %total.billed_cost, "statement written");
        }
    }
    Ok(())
}
