//! The record of `processor reprice` runs and of the days whose rollups a
//! run changed but has not re-materialized yet ([`store::reprice`]).
//!
//! A page's row changes, its corrections, its budget spend and its
//! use-case rollup commit in one transaction, so they never disagree; the
//! continuous aggregates can only be refreshed outside a transaction, so
//! the page records its days in the same transaction and the run refreshes
//! them at its end. A run that stops between the two leaves the days
//! recorded, and every later run refreshes them before it starts.

use std::collections::BTreeSet;
use std::io::Write;

use chrono::{Days, NaiveDate};
use ledger::PriceBook;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::{RepriceArgs, RepriceError};
use crate::commands::refresh;

pub async fn start_run(
    client: &Client,
    run_id: Uuid,
    args: &RepriceArgs,
    book_version: &str,
) -> Result<(), RepriceError> {
    let run = store::reprice::Run {
        run_id,
        from: args.from,
        to: args.to,
        tenant: args.tenant.as_deref(),
        provider: args.provider.as_deref(),
        model: args.model.as_deref(),
        price_book_version: book_version,
    };
    Ok(store::reprice::start_run(client, &run).await?)
}

/// Records `days` as changed by `run_id`, in the page's transaction.
pub async fn record_days(
    transaction: &Transaction<'_>,
    run_id: Uuid,
    days: &BTreeSet<NaiveDate>,
) -> Result<(), RepriceError> {
    if days.is_empty() {
        return Ok(());
    }
    let days: Vec<NaiveDate> = days.iter().copied().collect();
    Ok(store::reprice::record_days(transaction, run_id, &days).await?)
}

/// Refreshes the rollups over every pending day, of this run and of any
/// run interrupted before (the optimization rollup rebuilt under `book`
/// first), then forgets those days; returns how many.
pub async fn refresh_pending(
    client: &mut Client,
    book: &PriceBook,
    out: &mut impl Write,
) -> Result<u64, RepriceError> {
    let pending: Vec<(Uuid, NaiveDate)> = store::reprice::pending_days(&*client).await?;
    let days: BTreeSet<NaiveDate> = pending.iter().map(|(_, day)| *day).collect();
    super::optimize_days::rebuild(client, book, &pending, out).await?;
    // A day at a time: on TimescaleDB 2.28.3 one refresh over several
    // days changed by separate transactions was seen to leave the last
    // day's invalidation unprocessed (reprice_db's interrupted-run test);
    // a refresh per changed day processes each.
    for day in &days {
        let end = day.checked_add_days(Days::new(1)).unwrap_or(*day);
        refresh::materialize(&*client, *day, end, out).await?;
    }
    store::reprice::forget_days(&*client, &pending).await?;
    Ok(days.len() as u64)
}

pub async fn finish_run(client: &Client, run_id: Uuid) -> Result<(), RepriceError> {
    Ok(store::reprice::finish_run(client, run_id).await?)
}
