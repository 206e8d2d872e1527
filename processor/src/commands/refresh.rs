//! `processor refresh`: re-materializing the rollups over a range of days,
//! and the refresh windows of their policies.
//!
//! The policies refresh a window reaching back over the lateness the
//! gateway accepts plus an outage margin (`sql/V5__refresh_windows.sql`).
//! Rows stored later than that (after an outage longer than the margin, or
//! a backfill of older data) are never materialized by a policy, and
//! real-time aggregation does not show them either (it only adds rows after
//! a rollup's watermark). `--from/--to` materializes such a range; the
//! rollups are refreshed in hierarchy order, hourly first, in chunks of a
//! week so progress is visible and no single refresh runs for long.

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use clap::Args;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Days refreshed per call.
const CHUNK_DAYS: u64 = 7;
/// How long one refresh call waits out a policy job refreshing an overlapping window.
const CONCURRENT_REFRESH_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("--from {from} must be before --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error("a date past the calendar's end")]
    DateOverflow,
    #[error("cannot refresh {rollup} over {from}..{to}: {source}")]
    Refresh {
        rollup: &'static str,
        from: NaiveDate,
        to: NaiveDate,
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot set the refresh windows: {0} (they need TimescaleDB's continuous aggregates \
         and `processor migrate`)"
    )]
    Windows(tokio_postgres::Error),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// `processor refresh …`. Without options it prints the policies' windows.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// First UTC day to materialize (YYYY-MM-DD).
    #[arg(long, requires = "to", value_name = "DATE")]
    pub from: Option<NaiveDate>,
    /// The UTC day after the last one to materialize (exclusive).
    #[arg(long, requires = "from", value_name = "DATE")]
    pub to: Option<NaiveDate>,
    /// Set the policies' windows to the 35-day lateness plus this many days
    /// of outage margin (the default after migrating is 14).
    #[arg(long, value_name = "DAYS")]
    pub outage_margin_days: Option<u32>,
}

/// The `[from, to)` range cut into chunks of at most [`CHUNK_DAYS`].
pub fn chunks(from: NaiveDate, to: NaiveDate) -> Result<Vec<(NaiveDate, NaiveDate)>, RefreshError> {
    if from >= to {
        return Err(RefreshError::EmptyRange { from, to });
    }
    let mut chunks = Vec::new();
    let mut start = from;
    while start < to {
        let end = start
            .checked_add_days(Days::new(CHUNK_DAYS))
            .ok_or(RefreshError::DateOverflow)?
            .min(to);
        chunks.push((start, end));
        start = end;
    }
    Ok(chunks)
}

pub async fn run(
    client: &Client,
    args: &RefreshArgs,
    out: &mut impl Write,
) -> Result<(), RefreshError> {
    if let Some(days) = args.outage_margin_days {
        let windows =
            store::rollups::set_refresh_windows(client, i32::try_from(days).unwrap_or(i32::MAX))
                .await
                .map_err(|error| RefreshError::Windows(error.source))?;
        writeln!(out, "refresh windows set (lateness 35 days + {days} days):")?;
        for window in windows {
            let (rollup, start, end) = (
                window.rollup,
                window.start_offset.unwrap_or_default(),
                window.end_offset.unwrap_or_default(),
            );
            writeln!(out, "  {rollup:<14} [now - {start}, now - {end})")?;
        }
    }
    if let (Some(from), Some(to)) = (args.from, args.to) {
        materialize(client, from, to, out).await?;
    }
    if args.outage_margin_days.is_none() && args.from.is_none() {
        print_windows(client, out).await?;
    }
    Ok(())
}

/// Refreshes every rollup over `[from, to)` (UTC days), hourly first.
pub async fn materialize(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    out: &mut impl Write,
) -> Result<(), RefreshError> {
    let chunks = chunks(from, to)?;
    let started = Instant::now();
    // In hierarchy order: the daily rollups read `usage_hourly`.
    for (rollup, _) in store::rollups::CONTINUOUS_AGGREGATES {
        for (index, (start, end)) in chunks.iter().enumerate() {
            let step = Instant::now();
            let window = |day: &NaiveDate| Some(ledger::day::midnight(*day));
            refresh_waiting_out_policies(client, rollup, window(start), window(end))
                .await
                .map_err(|source| RefreshError::Refresh {
                    rollup,
                    from: *start,
                    to: *end,
                    source,
                })?;
            writeln!(
                out,
                "{rollup:<14} {start} .. {end}  ({}/{}) {:.1} s",
                index + 1,
                chunks.len(),
                step.elapsed().as_secs_f64()
            )?;
        }
    }
    writeln!(
        out,
        "materialized {from} .. {to} (exclusive) in every rollup in {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// One refresh call. A policy job refreshing an overlapping window makes TimescaleDB refuse
/// the call at once (SQLSTATE 55P03, "due to a concurrent refresh") rather than wait: the call
/// is repeated until the job is done, for at most [`CONCURRENT_REFRESH_WAIT`].
async fn refresh_waiting_out_policies(
    client: &Client,
    rollup: &str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    let deadline = Instant::now() + CONCURRENT_REFRESH_WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        let result = store::rollups::refresh(client, rollup, start, end)
            .await
            .map_err(|error| error.source);
        match result {
            Err(e)
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) && Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

async fn print_windows(client: &Client, out: &mut impl Write) -> Result<(), RefreshError> {
    let policies = store::rollups::policies(client)
        .await
        .map_err(|error| RefreshError::Windows(error.source))?;
    writeln!(out, "refresh policies:")?;
    for policy in policies {
        let (rollup, start, end, every) = (
            policy.window.rollup,
            policy.window.start_offset,
            policy.window.end_offset,
            policy.schedule_interval,
        );
        writeln!(
            out,
            "  {rollup:<14} [now - {}, now - {}) every {every}",
            start.unwrap_or_default(),
            end.unwrap_or_default()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().expect("a date")
    }

    #[test]
    fn a_range_is_cut_into_weeks_that_cover_it_exactly() {
        let cut = chunks(day("2026-01-01"), day("2026-01-20")).expect("a range");
        assert_eq!(
            cut,
            [
                (day("2026-01-01"), day("2026-01-08")),
                (day("2026-01-08"), day("2026-01-15")),
                (day("2026-01-15"), day("2026-01-20")),
            ]
        );
        assert_eq!(
            chunks(day("2026-03-01"), day("2026-03-02")).expect("one day"),
            [(day("2026-03-01"), day("2026-03-02"))]
        );
    }

    #[test]
    fn an_empty_or_reversed_range_is_refused() {
        assert!(chunks(day("2026-01-02"), day("2026-01-02")).is_err());
        assert!(chunks(day("2026-01-03"), day("2026-01-02")).is_err());
    }
}
