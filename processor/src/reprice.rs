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
//! One run:
//! 1. Reads the matching rows in `(created_at, id)` order, a page of at
//!    most `--batch-rows` per transaction, so no transaction holds many
//!    locks or runs for long; each page rates its rows as ingestion does
//!    ([`PriceBook::rate_event`]), updates the cost and provenance of the
//!    rows that changed, records the corrections, and commits.
//! 2. Recomputes the spend of every `budget_spend` row a changed cost falls
//!    under from the audit table (the spend rule of the `store` crate),
//!    under a row lock so a concurrent batch's delta is neither lost nor
//!    counted twice, and records the thresholds the corrected spend has now
//!    reached. A crossing already recorded stays: its alert went out.
//! 3. Re-materializes the rollups over the days that changed.
//!
//! `--dry-run` reads and rates only, and prints the totals before and after
//! per tenant and model.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use chrono::{DateTime, Days, NaiveDate, Utc};
use clap::Args;
use ledger::pricebook::ServiceTier;
use ledger::{Budget, PeriodBounds, PriceBook, PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use store::alerts::Crossing;
use store::spend::AuditKey;
use store::SpendKey;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::prepare::Pricing;
use crate::refresh::{self, RefreshError};

const PAGE: &str = "
SELECT id, created_at, tenant_id, user_id, provider, model,
       prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
       reasoning_tokens, COALESCE(cache_write_1h_tokens, 0), service_tier, calls,
       estimated_cost, pricing_status, list_cost, price_entry, price_book_version, pricing_rule,
       cost_source, labels, received_at
FROM gateway_mode_audit
WHERE created_at >= $1 AND created_at < $2
  AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::text IS NULL OR provider = $4)
  AND ($5::text IS NULL OR model = $5)
  AND (created_at > $6 OR (created_at = $6 AND id > $7))
ORDER BY created_at, id
LIMIT $8
FOR UPDATE";

const UPDATE_ROWS: &str = "
UPDATE gateway_mode_audit AS a
SET estimated_cost = u.cost, pricing_status = u.status, list_cost = u.list_cost,
    price_entry = u.entry, price_book_version = u.version, pricing_rule = u.rule,
    cost_source = u.source,
    repriced_at = CASE WHEN a.estimated_cost <> u.cost OR a.pricing_status <> u.status
                       THEN now() ELSE a.repriced_at END
FROM UNNEST($1::uuid[], $2::timestamptz[], $3::numeric[], $4::text[], $5::numeric[],
            $6::text[], $7::text[], $8::text[], $9::text[])
     AS u(id, created_at, cost, status, list_cost, entry, version, rule, source)
WHERE a.id = u.id AND a.created_at = u.created_at";

const INSERT_CORRECTIONS: &str = "
INSERT INTO cost_corrections (run_id, id, created_at, tenant_id, provider, model, old_cost,
                              new_cost, old_status, new_status, old_price_book_version,
                              new_price_book_version, new_pricing_rule)
SELECT $1, * FROM UNNEST($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::numeric[], $8::numeric[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::text[])
ON CONFLICT DO NOTHING";

const LOCK_SPEND: &str = "
SELECT s.budget_id, s.tenant_id, s.period_start, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS k(budget_id, tenant_id, period_start)
  ON s.budget_id = k.budget_id AND s.tenant_id = k.tenant_id AND s.period_start = k.period_start
ORDER BY s.budget_id, s.tenant_id, s.period_start
FOR UPDATE OF s";

/// Budget keys corrected per transaction.
const SPEND_KEYS_PER_TRANSACTION: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RepriceError {
    #[error("--from {from} must be before --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error("--batch-rows must be at least 1")]
    NoRows,
    #[error("database error while {step}: {source}")]
    Database {
        step: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Store(#[from] store::DbError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> RepriceError {
    move |source| RepriceError::Database { step, source }
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

/// One stored row as read back: the event it was, and its pricing.
struct Stored {
    event: UsageEvent,
    cost: Decimal,
    status: String,
    pricing: Pricing,
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
    let from = midnight(args.from);
    let to = midnight(args.to);
    let budgets = store::budgets::list(&*client).await?;
    let mut summary = RepriceSummary {
        run_id: Uuid::now_v7(),
        ..RepriceSummary::default()
    };
    let mut spend_keys: BTreeMap<SpendKey, PeriodBounds> = BTreeMap::new();
    let mut changed_days: BTreeSet<NaiveDate> = BTreeSet::new();
    // Before every row of the range: the first page's keyset condition
    // then holds for all of them.
    let mut cursor: (DateTime<Utc>, Uuid) = (from - chrono::Duration::microseconds(1), Uuid::nil());
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
    loop {
        let transaction = client.transaction().await.map_err(db("begin"))?;
        let rows = transaction
            .query(
                PAGE,
                &[
                    &from,
                    &to,
                    &args.tenant,
                    &args.provider,
                    &args.model,
                    &cursor.0,
                    &cursor.1,
                    &i64::from(args.batch_rows),
                ],
            )
            .await
            .map_err(db("reading stored rows"))?;
        let Some(last) = rows.last() else {
            break;
        };
        cursor = (last.get(1), last.get(0));
        let mut updates = Vec::new();
        let mut corrections = Vec::new();
        for row in &rows {
            let stored = read_row(row);
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
            let cost_changed =
                stored.cost != rating.cost || stored.status != rating.status.as_str();
            if cost_changed {
                summary.corrected += 1;
                changed_days.insert(stored.event.created_at.date_naive());
                for budget in budgets.iter().filter(|b| b.matches(&stored.event)) {
                    let bounds = budget.period_of(stored.event.created_at);
                    spend_keys.insert(
                        SpendKey {
                            budget_id: budget.id,
                            tenant_id: stored.event.tenant_id.clone(),
                            period_start: bounds.start,
                        },
                        bounds,
                    );
                }
                corrections.push((
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
                updates.push((stored.event, rating.cost, rating.status, pricing));
            }
        }
        if !args.dry_run {
            update_rows(&transaction, &updates).await?;
            insert_corrections(&transaction, summary.run_id, &corrections).await?;
        }
        transaction.commit().await.map_err(db("commit"))?;
        writeln!(
            out,
            "  {} rows read, {} corrected so far (up to {})",
            summary.scanned,
            summary.corrected,
            cursor.0.to_rfc3339()
        )?;
        if rows.len() < args.batch_rows as usize {
            break;
        }
    }
    if !args.dry_run {
        let (corrected, crossings) = correct_spend(client, &budgets, &spend_keys).await?;
        summary.spend_rows_corrected = corrected;
        summary.crossings_recorded = crossings;
        if let (Some(first), Some(last)) = (changed_days.first(), changed_days.last()) {
            let end = last.checked_add_days(Days::new(1)).unwrap_or(*last);
            refresh::materialize(client, *first, end, out).await?;
        }
    }
    print_summary(&summary, args.dry_run, out)?;
    Ok(summary)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

fn read_row(row: &Row) -> Stored {
    let count = |index: usize| u32::try_from(row.get::<_, i32>(index)).unwrap_or(0);
    let status: String = row.get(16);
    let cost: Decimal = row.get(15);
    let calls: Option<Json<BTreeMap<String, u32>>> = row.get(14);
    let labels: Json<BTreeMap<String, String>> =
        row.try_get(22).unwrap_or_else(|_| Json(BTreeMap::new()));
    let tier: Option<String> = row.get(13);
    let event = UsageEvent {
        id: row.get(0),
        created_at: row.get(1),
        tenant_id: row.get(2),
        user_id: row.get(3),
        provider: row.get(4),
        model: row.get(5),
        prompt_tokens: count(6),
        completion_tokens: count(7),
        total_tokens: count(8),
        cached_prompt_tokens: count(9),
        cache_write_tokens: count(10),
        reasoning_tokens: count(11),
        cache_write_1h_tokens: count(12),
        service_tier: tier.and_then(|t| t.parse::<ServiceTier>().ok()),
        calls: calls.map(|Json(calls)| calls).unwrap_or_default(),
        // The caller's own cost stays the cost; the book restates only the
        // list cost beside it.
        estimated_cost: (status == PricingStatus::Provided.as_str()).then_some(cost),
        labels: labels.0,
        received_at: row.get(23),
        request_id: None,
        call_identity: false,
    };
    let source: Option<String> = row.get(21);
    Stored {
        event,
        cost,
        pricing: Pricing {
            list_cost: row.get(17),
            price_entry: row.get(18),
            price_book_version: row.get::<_, Option<String>>(19).unwrap_or_default(),
            pricing_rule: row.get::<_, Option<String>>(20).unwrap_or_default(),
            cost_source: match source.as_deref() {
                Some("book") => Some("book"),
                Some("tenant_contract") => Some("tenant_contract"),
                Some("caller") => Some("caller"),
                _ => None,
            },
        },
        status,
    }
}

type Update = (UsageEvent, Decimal, PricingStatus, Pricing);

async fn update_rows(
    transaction: &tokio_postgres::Transaction<'_>,
    updates: &[Update],
) -> Result<(), RepriceError> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.0.id).collect();
    let created: Vec<DateTime<Utc>> = updates.iter().map(|u| u.0.created_at).collect();
    let costs: Vec<Decimal> = updates.iter().map(|u| u.1).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.2.as_str()).collect();
    let list: Vec<Option<Decimal>> = updates.iter().map(|u| u.3.list_cost).collect();
    let entries: Vec<Option<&str>> = updates.iter().map(|u| u.3.price_entry.as_deref()).collect();
    let versions: Vec<&str> = updates
        .iter()
        .map(|u| u.3.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = updates.iter().map(|u| u.3.pricing_rule.as_str()).collect();
    let sources: Vec<Option<&str>> = updates.iter().map(|u| u.3.cost_source).collect();
    transaction
        .execute(
            UPDATE_ROWS,
            &[
                &ids, &created, &costs, &statuses, &list, &entries, &versions, &rules, &sources,
            ],
        )
        .await
        .map_err(db("updating rows"))?;
    Ok(())
}

type Correction = (
    UsageEvent,
    Decimal,
    String,
    String,
    Decimal,
    PricingStatus,
    Pricing,
);

async fn insert_corrections(
    transaction: &tokio_postgres::Transaction<'_>,
    run_id: Uuid,
    corrections: &[Correction],
) -> Result<(), RepriceError> {
    if corrections.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = corrections.iter().map(|c| c.0.id).collect();
    let created: Vec<DateTime<Utc>> = corrections.iter().map(|c| c.0.created_at).collect();
    let tenants: Vec<&str> = corrections.iter().map(|c| c.0.tenant_id.as_str()).collect();
    let providers: Vec<&str> = corrections.iter().map(|c| c.0.provider.as_str()).collect();
    let models: Vec<&str> = corrections.iter().map(|c| c.0.model.as_str()).collect();
    let old_costs: Vec<Decimal> = corrections.iter().map(|c| c.1).collect();
    let new_costs: Vec<Decimal> = corrections.iter().map(|c| c.4).collect();
    let old_statuses: Vec<&str> = corrections.iter().map(|c| c.2.as_str()).collect();
    let new_statuses: Vec<&str> = corrections.iter().map(|c| c.5.as_str()).collect();
    let old_versions: Vec<Option<&str>> = corrections
        .iter()
        .map(|c| (!c.3.is_empty()).then_some(c.3.as_str()))
        .collect();
    let new_versions: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.pricing_rule.as_str())
        .collect();
    transaction
        .execute(
            INSERT_CORRECTIONS,
            &[
                &run_id,
                &ids,
                &created,
                &tenants,
                &providers,
                &models,
                &old_costs,
                &new_costs,
                &old_statuses,
                &new_statuses,
                &old_versions,
                &new_versions,
                &rules,
            ],
        )
        .await
        .map_err(db("recording corrections"))?;
    Ok(())
}

/// Step 2 of the module docs; returns (spend rows corrected, crossings
/// recorded). Keys without a `budget_spend` row are left alone: the batch
/// that first needs one computes it from the (corrected) audit table.
async fn correct_spend(
    client: &mut Client,
    budgets: &[Budget],
    keys: &BTreeMap<SpendKey, PeriodBounds>,
) -> Result<(u64, u64), RepriceError> {
    let by_id: BTreeMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let all: Vec<(&SpendKey, &PeriodBounds)> = keys.iter().collect();
    let (mut corrected, mut recorded) = (0, 0);
    for chunk in all.chunks(SPEND_KEYS_PER_TRANSACTION) {
        let transaction = client.transaction().await.map_err(db("begin"))?;
        let ids: Vec<Uuid> = chunk.iter().map(|(k, _)| k.budget_id).collect();
        let tenants: Vec<&str> = chunk.iter().map(|(k, _)| k.tenant_id.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = chunk.iter().map(|(k, _)| k.period_start).collect();
        // Locked first: a batch that added to a row committed before the
        // lock was granted, so the audit sum below includes its rows.
        let current: BTreeMap<SpendKey, Decimal> = transaction
            .query(LOCK_SPEND, &[&ids, &tenants, &starts])
            .await
            .map_err(db("locking budget spend"))?
            .iter()
            .map(|row| {
                (
                    SpendKey {
                        budget_id: row.get(0),
                        tenant_id: row.get(1),
                        period_start: row.get(2),
                    },
                    row.get::<_, Decimal>(3),
                )
            })
            .collect();
        let present: Vec<(&SpendKey, &PeriodBounds, &Budget)> = chunk
            .iter()
            .filter(|(key, _)| current.contains_key(*key))
            .filter_map(|(key, bounds)| Some((*key, *bounds, *by_id.get(&key.budget_id)?)))
            .collect();
        let audit_keys: Vec<AuditKey<'_>> = present
            .iter()
            .map(|(key, bounds, budget)| AuditKey {
                tenant_id: &key.tenant_id,
                period: **bounds,
                scope: &budget.scope,
            })
            .collect();
        let recomputed = store::spend::from_audit(&transaction, &audit_keys).await?;
        let deltas: Vec<(&SpendKey, Decimal)> = present
            .iter()
            .zip(&recomputed)
            .filter_map(|((key, _, _), spend)| {
                let delta = *spend - current.get(*key)?;
                (!delta.is_zero()).then_some((*key, delta))
            })
            .collect();
        let spend = store::spend::add(&transaction, &deltas).await?;
        corrected += spend.len() as u64;
        let crossings: Vec<Crossing<'_>> = present
            .iter()
            .filter_map(|(key, bounds, budget)| Some((*key, *bounds, *budget, *spend.get(*key)?)))
            .flat_map(|(key, bounds, budget, spend_usd)| {
                ledger::budget::reached(spend_usd, budget.amount_usd, &budget.thresholds)
                    .into_iter()
                    .map(move |threshold| Crossing {
                        key,
                        budget,
                        period_end: bounds.end,
                        threshold,
                        spend_usd,
                    })
            })
            .collect();
        recorded += store::alerts::record_crossings(&transaction, &crossings)
            .await?
            .len() as u64;
        transaction.commit().await.map_err(db("commit"))?;
    }
    Ok((corrected, recorded))
}

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
