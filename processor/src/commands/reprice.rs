//! `processor reprice`: stored usage re-priced under the current price
//! book, with an audit trail, and everything derived from cost made
//! consistent again.
//!
//! A price fix or a newly listed model changes no stored row by itself:
//! which price a finance team has already reconciled against is an
//! operator's decision, so re-pricing is a command, run over a chosen
//! range, that leaves a `cost_corrections` row for every cost it changed.
//! Unpriced rows become priced this way once their model has a price.
//!
//! Runs take turns on an advisory lock ([`REPRICE_LOCK_KEY`]); pages are
//! read without `FOR UPDATE`, which compressed chunks refuse.
//!
//! One run:
//! 1. Records itself in `reprice_runs`, and first re-materializes the days
//!    an interrupted earlier run left pending ([`pending`]).
//! 2. Reads the matching rows in `(created_at, tenant_id, id)` order (the
//!    table's unique key; `--tenant` bounds every statement), a page of at
//!    most `--batch-rows` per transaction, so no transaction holds many
//!    locks or runs for long. Each page rates its rows as ingestion does
//!    ([`PriceBook::rate_event`]) and, in the page's one transaction:
//!    updates the cost and provenance of the rows that changed, records
//!    the corrections (which the running processor exports as
//!    `tokenledger_cost_corrections_usd_total`), adds the cost changes to
//!    budget spend and records the thresholds the spend now reaches (a
//!    crossing already recorded stays: its alert went out), applies them to
//!    the use-case rollup `usage_attribution_daily`, and records the days
//!    it changed as pending.
//! 3. Rebuilds the optimization rollup from the raw table for each pending
//!    (day, tenant) whose cost changed ([`optimize_days`]), re-materializes
//!    the continuous aggregates over the pending days, and forgets them.
//!
//! Interrupted runs: everything of step 2 commits or rolls back together,
//! so a stop at any point leaves rows, corrections, spend and use-case
//! rollup in agreement, and running the command again re-prices only the
//! rows not yet changed (idempotent). The continuous aggregates and the
//! optimization rollup (rebuilt per whole day, so once per run rather than
//! once per page) are the figures refreshed outside the page's
//! transaction; their pending days survive the stop and the next run
//! refreshes them first (resumable).
//!
//! `--dry-run` reads and rates only, and prints the totals before and after
//! per tenant and model.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use chrono::NaiveDate;
use clap::Args;
use ledger::{Budget, PeriodBounds, PriceBook, PricingStatus};
use rust_decimal::Decimal;
use store::attribution::CostChange;
use store::{db, SpendKey};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::budget_spend::{BudgetOutcome, BudgetSpendError};
use crate::commands::refresh::RefreshError;
use crate::stream::prepare::Pricing;

mod optimize_days;
mod pending;
mod rows;

/// Held by a run from start to end: runs take turns ([`store::reprice::LOCK_KEY`]).
pub use store::reprice::LOCK_KEY as REPRICE_LOCK_KEY;

#[derive(Debug, thiserror::Error)]
pub enum RepriceError {
    #[error("--from {from} must be before --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error("--batch-rows must be at least 1")]
    NoRows,
    #[error(transparent)]
    Database(#[from] store::DbError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error(transparent)]
    Optimize(#[from] store::optimize::OptimizeError),
    #[error(transparent)]
    Spend(#[from] BudgetSpendError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// `processor reprice …`.
#[derive(Debug, Clone, Args)]
pub struct RepriceArgs {
    /// First UTC day whose rows are re-priced (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub from: NaiveDate,
    /// The UTC day after the last one (exclusive).
    #[arg(long, value_name = "DATE")]
    pub to: NaiveDate,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// Rate and print the totals before and after; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows re-priced per transaction.
    #[arg(long, default_value_t = 5_000, value_name = "ROWS")]
    pub batch_rows: u32,
}

/// Cost of one tenant's usage of one model, before and after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub rows: u64,
    pub before: Decimal,
    pub after: Decimal,
    pub unpriced_before: u64,
    pub unpriced_after: u64,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepriceSummary {
    pub run_id: Uuid,
    pub scanned: u64,
    /// Rows whose cost or pricing status changed.
    pub corrected: u64,
    /// Rows whose provenance alone changed (same cost, newer book).
    pub restated: u64,
    /// (tenant, provider/model) → totals.
    pub totals: BTreeMap<(String, String), Totals>,
    pub spend_rows_corrected: u64,
    pub crossings_recorded: u64,
}

pub async fn run(
    client: &mut Client,
    book: &PriceBook,
    args: &RepriceArgs,
    out: &mut impl Write,
) -> Result<RepriceSummary, RepriceError> {
    if args.from >= args.to {
        return Err(RepriceError::EmptyRange {
            from: args.from,
            to: args.to,
        });
    }
    if args.batch_rows == 0 {
        return Err(RepriceError::NoRows);
    }
    store::reprice::take_turn(client).await?;
    let result = run_locked(client, book, args, out).await;
    // A connection that broke has released the lock with it.
    let _ = store::reprice::end_turn(client).await;
    result
}

async fn run_locked(
    client: &mut Client,
    book: &PriceBook,
    args: &RepriceArgs,
    out: &mut impl Write,
) -> Result<RepriceSummary, RepriceError> {
    let range = (midnight(args.from), midnight(args.to));
    let budgets = store::budgets::list(&*client).await?;
    let mut summary = RepriceSummary {
        run_id: Uuid::now_v7(),
        ..RepriceSummary::default()
    };
    writeln!(
        out,
        "{} {}..{} under price book {}",
        if args.dry_run {
            "dry run:"
        } else {
            "repricing"
        },
        args.from,
        args.to,
        book.version()
    )?;
    if !args.dry_run {
        pending::start_run(client, summary.run_id, args, book.version()).await?;
        let finished = pending::refresh_pending(client, book, out).await?;
        if finished > 0 {
            writeln!(
                out,
                "  {finished} days an interrupted run left were refreshed"
            )?;
        }
    }
    let mut spend_keys: BTreeSet<SpendKey> = BTreeSet::new();
    let mut cursor = rows::Cursor::before(range.0);
    loop {
        let transaction = client.transaction().await.map_err(db("begin"))?;
        let stored_rows = rows::page(&transaction, args, range, &cursor).await?;
        let Some(last) = stored_rows.last() else {
            transaction.rollback().await.map_err(db("rollback"))?;
            break;
        };
        cursor = rows::Cursor {
            created_at: last.event.created_at,
            tenant_id: last.event.tenant_id.clone(),
            id: last.event.id,
        };
        let page = rate_page(book, &budgets, stored_rows, &mut summary);
        if !args.dry_run {
            let written = write_page(&transaction, summary.run_id, &budgets, &page, book).await?;
            spend_keys.extend(written.spend.into_keys());
            summary.crossings_recorded += written.crossings.len() as u64;
        }
        transaction.commit().await.map_err(db("commit"))?;
        writeln!(
            out,
            "  {} rows read, {} corrected so far (up to {})",
            summary.scanned,
            summary.corrected,
            cursor.created_at.to_rfc3339()
        )?;
        if page.read < args.batch_rows as usize {
            break;
        }
    }
    if !args.dry_run {
        summary.spend_rows_corrected = spend_keys.len() as u64;
        pending::refresh_pending(client, book, out).await?;
        pending::finish_run(client, summary.run_id).await?;
    }
    print_summary(&summary, args.dry_run, out)?;
    Ok(summary)
}

/// What one page changes.
struct Page {
    read: usize,
    updates: Vec<rows::Update>,
    corrections: Vec<rows::Correction>,
    spend_deltas: BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    days: BTreeSet<NaiveDate>,
}

/// Rates a page's rows and adds them to the summary's totals.
fn rate_page(
    book: &PriceBook,
    budgets: &[Budget],
    stored_rows: Vec<rows::Stored>,
    summary: &mut RepriceSummary,
) -> Page {
    let mut page = Page {
        read: stored_rows.len(),
        updates: Vec::new(),
        corrections: Vec::new(),
        spend_deltas: BTreeMap::new(),
        days: BTreeSet::new(),
    };
    for stored in stored_rows {
        let rating = book.rate_event(&stored.event);
        let pricing = Pricing::from(&rating);
        let totals = summary
            .totals
            .entry((
                stored.event.tenant_id.clone(),
                format!("{}/{}", stored.event.provider, stored.event.model),
            ))
            .or_default();
        totals.rows += 1;
        totals.before += stored.cost;
        totals.after += rating.cost;
        totals.unpriced_before += u64::from(stored.status == "unpriced");
        totals.unpriced_after += u64::from(rating.status == PricingStatus::Unpriced);
        summary.scanned += 1;
        let cost_changed = stored.cost != rating.cost || stored.status != rating.status.as_str();
        if cost_changed {
            summary.corrected += 1;
            page.days.insert(stored.event.created_at.date_naive());
            for budget in budgets.iter().filter(|b| b.matches(&stored.event, book)) {
                // A rolling budget's correction reaches every window holding the event.
                for bounds in budget.periods_counting(stored.event.created_at, chrono::Utc::now()) {
                    let key = SpendKey {
                        budget_id: budget.id,
                        tenant_id: stored.event.tenant_id.clone(),
                        user_id: budget.scope.user.spend_key(stored.event.user_id.as_deref()),
                        period_start: bounds.start,
                    };
                    page.spend_deltas
                        .entry(key)
                        .or_insert((bounds, Decimal::ZERO))
                        .1 += rating.cost - stored.cost;
                }
            }
            page.corrections.push((
                stored.event.clone(),
                stored.cost,
                stored.status.clone(),
                stored.pricing.price_book_version.clone(),
                rating.cost,
                rating.status,
                pricing.clone(),
            ));
        } else if stored.pricing != pricing {
            summary.restated += 1;
        }
        if cost_changed || stored.pricing != pricing {
            page.updates
                .push((stored.event, rating.cost, rating.status, pricing));
        }
    }
    page
}

/// Step 2 of the module docs, in the page's transaction.
async fn write_page(
    transaction: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    budgets: &[Budget],
    page: &Page,
    book: &PriceBook,
) -> Result<BudgetOutcome, RepriceError> {
    rows::update(transaction, &page.updates).await?;
    rows::insert_corrections(transaction, run_id, &page.corrections).await?;
    let changes: Vec<CostChange<'_>> = page
        .corrections
        .iter()
        .map(
            |(event, old_cost, old_status, _, new_cost, new_status, _)| CostChange {
                day: crate::attribution::utc_day(event.created_at),
                tenant_id: &event.tenant_id,
                provider: &event.provider,
                model: &event.model,
                labels: &event.labels,
                cost: new_cost - old_cost,
                unpriced_requests: i64::from(*new_status == PricingStatus::Unpriced)
                    - i64::from(old_status == PricingStatus::Unpriced.as_str()),
            },
        )
        .collect();
    store::attribution::apply_cost_changes(transaction, &changes).await?;
    let outcome =
        crate::budget_spend::add_corrections(transaction, budgets, &page.spend_deltas, book)
            .await?;
    pending::record_days(transaction, run_id, &page.days).await?;
    Ok(outcome)
}

use ledger::day::midnight;

fn print_summary(
    summary: &RepriceSummary,
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), RepriceError> {
    writeln!(
        out,
        "{:<24} {:<40} {:>8} {:>18} {:>18} {:>9} {:>9}",
        "tenant", "model", "rows", "cost before", "cost after", "unpriced", "after"
    )?;
    for ((tenant, model), t) in &summary.totals {
        writeln!(
            out,
            "{tenant:<24} {model:<40} {:>8} {:>18} {:>18} {:>9} {:>9}",
            t.rows, t.before, t.after, t.unpriced_before, t.unpriced_after
        )?;
    }
    writeln!(
        out,
        "{} rows read, {} {} in cost, {} restated with the current book's provenance{}",
        summary.scanned,
        summary.corrected,
        if dry_run { "would change" } else { "changed" },
        summary.restated,
        if dry_run {
            String::from(" (dry run: nothing written)")
        } else {
            format!(
                "; {} budget spend rows corrected, {} threshold crossings recorded; run {}",
                summary.spend_rows_corrected, summary.crossings_recorded, summary.run_id
            )
        }
    )?;
    Ok(())
}
