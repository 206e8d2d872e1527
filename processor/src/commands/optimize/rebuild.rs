//! `processor rebuild-optimize`: the optimization rollup recomputed from
//! the raw table over a range of UTC days, one (day, tenant) per
//! transaction, for usage stored before the rollup existed (V14) or after
//! any change to stored rows the rollup did not follow.

use std::io::Write;

use chrono::{Days, NaiveDate};
use clap::Args;
use ledger::PriceBook;
use store::optimize::rebuild::{rebuild_day, tenants_of_day};
use tokio_postgres::Client;

/// `processor rebuild-optimize …`.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    pub to: NaiveDate,
    /// Only this tenant (default: every tenant with usage on each day).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildSummary {
    /// (day, tenant) pairs rebuilt.
    pub days: u64,
    /// Stored rows read.
    pub rows: u64,
}

/// Rebuilds the range of `args`, printing a line per (day, tenant). Takes
/// turns with `processor reprice` (its lock): a re-pricing changes the
/// rows this reads.
pub async fn run(
    client: &mut Client,
    book: &PriceBook,
    args: &RebuildArgs,
    out: &mut impl Write,
) -> anyhow::Result<RebuildSummary> {
    anyhow::ensure!(
        args.from < args.to,
        "--from {} must be before --to {} (--to is exclusive)",
        args.from,
        args.to
    );
    store::reprice::take_turn(client).await?;
    let result = run_locked(client, book, args, out).await;
    // A connection that broke has released the lock with it.
    let _ = store::reprice::end_turn(client).await;
    result
}

async fn run_locked(
    client: &mut Client,
    book: &PriceBook,
    args: &RebuildArgs,
    out: &mut impl Write,
) -> anyhow::Result<RebuildSummary> {
    writeln!(
        out,
        "rebuilding the optimization rollup {}..{} under price book {}",
        args.from,
        args.to,
        book.version()
    )?;
    let mut summary = RebuildSummary::default();
    let mut day = args.from;
    while day < args.to {
        let tenants = match &args.tenant {
            Some(tenant) => vec![tenant.clone()],
            None => tenants_of_day(&*client, day).await?,
        };
        for tenant in tenants {
            let rows = rebuild_day(client, book, day, &tenant).await?;
            summary.days += 1;
            summary.rows += rows;
            writeln!(out, "  {day} {tenant}: {rows} rows")?;
        }
        day = day
            .checked_add_days(Days::new(1))
            .ok_or_else(|| anyhow::anyhow!("{day} is the last day there is"))?;
    }
    writeln!(
        out,
        "{} (day, tenant) rebuilt from {} stored rows",
        summary.days, summary.rows
    )?;
    Ok(summary)
}
