//! Optimization in the processor: storing what each batch's new rows add
//! to the optimization rollup inside the batch transaction ([`fold`],
//! [`record`]; the applier, `crate::stream::optimize_apply`, adds it to the
//! tables), and the commands `processor report optimize` and `processor
//! what-if`. The
//! figures are `store::optimize`'s, which the gateway's `/v1/reports/*`
//! serve too; this module prints them.

pub mod rebuild;
pub mod table;

use std::io::Write;

use chrono::{NaiveDate, Utc};
use clap::{Args, ValueEnum};
use deadpool_postgres::Transaction;
use ledger::{PriceBook, PricingStatus};
use store::attribution::Admitted;
use store::optimize::report::optimize_report;
use store::optimize::rollup::{Folded, Rolled, StoredRow};
use store::optimize::whatif::{what_if, WhatIfRequest};
use store::optimize::Range;
use tokio_postgres::GenericClient;

use crate::attribution::AttributionError;
use crate::prepare::PricedEvent;

/// What `rows` add to the optimization rollup before use cases are folded:
/// no database, so a batch computes it for all its rows before its
/// transaction starts.
pub fn rollup<'a>(book: &PriceBook, rows: impl IntoIterator<Item = &'a PricedEvent>) -> Rolled<'a> {
    let rows: Vec<StoredRow<'a>> = rows
        .into_iter()
        .map(|row| StoredRow {
            event: &row.event,
            cost: row.cost.usd,
            unpriced: row.cost.status == PricingStatus::Unpriced,
        })
        .collect();
    store::optimize::rollup::rollup(book, &rows)
}

/// What the batch's new rows add to the optimization rollup, in the
/// batch's transaction, after the attribution rollup, whose use-case bound
/// it follows: `admitted` is what that step returned for the same rows, and
/// tells which use cases it kept when `use_case` is one of its keys (else
/// one query asks the table). `rolled` is their [`rollup`] when the batch
/// computed it before the transaction for exactly these rows (every row of
/// the batch new: the usual case); otherwise it is computed here. Its
/// errors are the attribution step's: statements in the same transaction,
/// retried the same way.
pub async fn fold<'a>(
    transaction: &Transaction<'_>,
    book: &PriceBook,
    new_rows: &[&'a PricedEvent],
    rolled: Option<&Rolled<'a>>,
    admitted: &Admitted,
) -> Result<Folded<'a>, AttributionError> {
    let computed;
    let rolled = match rolled {
        Some(rolled) => rolled,
        None => {
            computed = rollup(book, new_rows.iter().copied());
            &computed
        }
    };
    Ok(store::optimize::rollup::fold_rolled(&**transaction, rolled, Some(admitted)).await?)
}

/// Stores `folded` as the batch's one pending row of deltas, which the
/// applier (`crate::stream::optimize_apply`) adds to the tables.
pub async fn record(
    transaction: &Transaction<'_>,
    folded: Folded<'_>,
) -> Result<(), AttributionError> {
    store::optimize::pending::insert(&**transaction, folded).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `processor report optimize`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `processor what-if`.
#[derive(Debug, Args)]
pub struct WhatIfArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
    /// The model to re-price at, as PROVIDER/MODEL.
    #[arg(long, value_name = "PROVIDER/MODEL")]
    pub model: String,
    /// Only usage with this `use_case` label (`(unlabelled)`: without one).
    #[arg(long)]
    pub use_case: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Prints the optimization report of `args`.
pub async fn run_report(
    client: &impl GenericClient,
    args: &OptimizeArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let range = Range {
        from: args.from,
        to: args.to,
        tenant: args.tenant.clone(),
    };
    let report = optimize_report(client, &range).await?;
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Format::Table => out.write_all(table::optimize(&report).as_bytes())?,
    }
    Ok(())
}

/// Prints the what-if of `args`, priced at the book's prices in force now.
pub async fn run_what_if(
    client: &impl GenericClient,
    book: &PriceBook,
    args: &WhatIfArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (provider, model) = WhatIfRequest::parse_target(&args.model)?;
    let request = WhatIfRequest {
        range: Range {
            from: args.from,
            to: args.to,
            tenant: args.tenant.clone(),
        },
        use_case: args.use_case.clone(),
        provider,
        model,
    };
    let report = what_if(client, book, &request, Utc::now()).await?;
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Format::Table => out.write_all(table::what_if(&report).as_bytes())?,
    }
    Ok(())
}
