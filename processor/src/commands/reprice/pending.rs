//! The record of `processor reprice` runs (`reprice_runs`) and of the days
//! whose rollups a run changed but has not re-materialized yet
//! (`reprice_pending_days`, sql/V13__reprice_runs.sql).
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

use super::{db, RepriceArgs, RepriceError};
use crate::commands::refresh;

pub async fn start_run(
    client: &Client,
    run_id: Uuid,
    args: &RepriceArgs,
    book_version: &str,
) -> Result<(), RepriceError> {
    client
        .execute(
            "INSERT INTO reprice_runs (run_id, from_day, to_day, tenant_id, provider, model,
                                       price_book_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &run_id,
                &args.from,
                &args.to,
                &args.tenant,
                &args.provider,
                &args.model,
                &book_version,
            ],
        )
        .await
        .map_err(db("recording the run"))?;
    Ok(())
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
    transaction
        .execute(
            "INSERT INTO reprice_pending_days (run_id, day)
             SELECT $1, day FROM UNNEST($2::date[]) AS day
             ON CONFLICT DO NOTHING",
            &[&run_id, &days],
        )
        .await
        .map_err(db("recording the days to refresh"))?;
    Ok(())
}

/// Refreshes the rollups over every pending day, of this run and of any
/// run interrupted before (the optimization rollup rebuilt under `book`
/// first), then forgets those days; returns how many.
pub async fn refresh_pending(
    client: &mut Client,
    book: &PriceBook,
    out: &mut impl Write,
) -> Result<u64, RepriceError> {
    let pending: Vec<(Uuid, NaiveDate)> = client
        .query("SELECT run_id, day FROM reprice_pending_days", &[])
        .await
        .map_err(db("reading the days to refresh"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
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
    let runs: Vec<Uuid> = pending.iter().map(|(run, _)| *run).collect();
    let pending_days: Vec<NaiveDate> = pending.iter().map(|(_, day)| *day).collect();
    client
        .execute(
            "DELETE FROM reprice_pending_days AS p
             USING UNNEST($1::uuid[], $2::date[]) AS done(run_id, day)
             WHERE p.run_id = done.run_id AND p.day = done.day",
            &[&runs, &pending_days],
        )
        .await
        .map_err(db("forgetting the refreshed days"))?;
    Ok(days.len() as u64)
}

pub async fn finish_run(client: &Client, run_id: Uuid) -> Result<(), RepriceError> {
    client
        .execute(
            "UPDATE reprice_runs SET finished_at = now() WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .map_err(db("recording the run as finished"))?;
    Ok(())
}
