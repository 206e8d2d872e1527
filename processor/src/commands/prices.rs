//! `processor prices import-litellm`: LiteLLM's community price catalog
//! (`model_prices_and_context_window.json`) converted into a tokenledger
//! price file, so new models can be priced without a release. The file is
//! checked by reading it back as a book before it is written, and what the
//! catalog holds that cannot be priced per token is listed, not dropped
//! silently.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use ledger::pricebook::litellm::{self, ImportOptions, LitellmError};
use ledger::{PriceBook, PriceBookError};

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Convert a LiteLLM catalog into a price file (for `pricing.pricebook_path`).
    ImportLitellm(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The catalog, e.g. a downloaded model_prices_and_context_window.json.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The price file to write (TOML).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// First UTC day the prices are in force (the catalog has no dates);
    /// today when not given.
    #[arg(long, value_name = "DATE")]
    pub effective_from: Option<NaiveDate>,
}

#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Catalog { path: PathBuf, source: LitellmError },
    #[error("the converted price file does not read back as a price book: {0}")]
    Invalid(#[from] PriceBookError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

pub fn run(command: &PricesCommand, out: &mut impl Write) -> Result<(), PricesError> {
    match command {
        PricesCommand::ImportLitellm(args) => import_litellm(args, out),
    }
}

fn import_litellm(args: &ImportArgs, out: &mut impl Write) -> Result<(), PricesError> {
    let catalog = std::fs::read_to_string(&args.input).map_err(|source| PricesError::Read {
        path: args.input.clone(),
        source,
    })?;
    let day = args
        .effective_from
        .unwrap_or_else(|| Utc::now().date_naive());
    let options = ImportOptions {
        effective_from: ledger::day::midnight(day),
        source: format!(
            "LiteLLM model_prices_and_context_window.json ({})",
            file_name(&args.input)
        ),
    };
    let converted =
        litellm::convert(&catalog, &options).map_err(|source| PricesError::Catalog {
            path: args.input.clone(),
            source,
        })?;
    let text = converted.file.to_toml()?;
    let book = PriceBook::from_toml(&text)?;
    std::fs::write(&args.output, &text).map_err(|source| PricesError::Write {
        path: args.output.clone(),
        source,
    })?;
    for skipped in &converted.skipped {
        writeln!(out, "skipped {}: {}", skipped.key, skipped.reason)?;
    }
    writeln!(
        out,
        "wrote {} price entries in force from {day} to {} (price book version {}); {} catalog entries skipped",
        book.len(),
        args.output.display(),
        book.version(),
        converted.skipped.len()
    )?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
