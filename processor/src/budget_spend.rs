//! Budget spend and threshold crossings, inside the batch transaction.
//!
//! The writer calls [`record`] with exactly the rows the transaction
//! inserted (never duplicates), so every event's cost is added to every
//! budget it falls under once, and the crossings it causes commit together
//! with the rows, the spend and the offsets: a crash before the commit
//! loses all of it, redelivery then redoes all of it, a crash after it
//! redoes none of it.
//!
//! The SQL is the `store` crate's ([`store::spend`], [`store::alerts`]);
//! this module decides what to run in which order. Per batch:
//! 1. Load the budgets (an edit applies to the next batch) and add each new
//!    row's cost to its `(budget, tenant, user, period of created_at)` key
//!    (the user only for an each-user budget, `""` otherwise), so a
//!    late event counts toward its own period (a rolling budget's: every
//!    window up to today's that holds it).
//! 2. Lock the budgets the batch touches (`FOR SHARE`), so an edit of a
//!    budget's scope waits for the batch instead of racing it; if one
//!    changed since step 1, evaluate again with the new definitions.
//! 3. `UPDATE budget_spend … + delta RETURNING spend` for the keys that
//!    exist. A key that does not exist yet is initialised from the audit
//!    table for its whole period, which already holds this batch's rows, so
//!    a budget created mid-period counts from the period's start and the
//!    batch is not added twice; `INSERT … ON CONFLICT DO NOTHING`, and a key
//!    that another transaction created meanwhile gets the delta added.
//! 4. Record every threshold the new spend has reached in `budget_alerts`
//!    (`ON CONFLICT DO NOTHING`): the primary key (budget, tenant, user,
//!    period start, kind, threshold) makes each crossing exactly once (per
//!    user of an each-user budget), a jump from 40 %
//!    to 95 % records 50, 75 and 90 together, and a lowered amount records
//!    the thresholds it newly puts behind the spend.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Transaction;
use ledger::budget::reached;
use ledger::{Budget, PeriodBounds, PriceBook};
use rust_decimal::Decimal;
use store::alerts::Crossing;
use store::spend::{AuditKey, NewSpend};
use uuid::Uuid;

use crate::stream::prepare::PricedEvent;

pub use store::SpendKey;

/// How often a batch re-evaluates when budgets change under it before it
/// goes ahead with what it locked.
const MAX_EVALUATIONS: usize = 3;

/// The store's step-tagged error, told as a budgets step.
#[derive(Debug, thiserror::Error)]
#[error("database error during budgets ({}): {}", .0.step, .0.source)]
pub struct BudgetSpendError(#[from] store::DbError);

/// What a batch did to budgets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetOutcome {
    /// The spend of every key the batch touched, after the batch.
    pub spend: BTreeMap<SpendKey, Decimal>,
    /// Crossings recorded by this batch: (budget id, threshold).
    pub crossings: Vec<(Uuid, u16)>,
}

/// The cost the batch adds to each key, with the key's period.
pub fn deltas(
    budgets: &[Budget],
    new_rows: &[&PricedEvent],
    book: &PriceBook,
) -> BTreeMap<SpendKey, (PeriodBounds, Decimal)> {
    let now = chrono::Utc::now();
    let mut deltas: BTreeMap<SpendKey, (PeriodBounds, Decimal)> = BTreeMap::new();
    for row in new_rows {
        for budget in budgets
            .iter()
            .filter(|budget| budget.matches(&row.event, book))
        {
            // One period, or for a rolling budget every window up to today's
            // that holds the event (a late event reaches today's too).
            for bounds in budget.periods_counting(row.event.created_at, now) {
                let key = SpendKey {
                    budget_id: budget.id,
                    tenant_id: row.event.tenant_id.clone(),
                    user_id: budget.scope.user.spend_key(row.event.user_id.as_deref()),
                    period_start: bounds.start,
                };
                deltas.entry(key).or_insert((bounds, Decimal::ZERO)).1 += row.cost.usd;
            }
        }
    }
    deltas
}

/// Adds the new rows' cost to budget spend and records crossings, in the
/// batch's transaction.
pub async fn record(
    transaction: &Transaction<'_>,
    new_rows: &[&PricedEvent],
    book: &PriceBook,
) -> Result<BudgetOutcome, BudgetSpendError> {
    if new_rows.is_empty() {
        return Ok(BudgetOutcome::default());
    }
    let client = &**transaction;
    let mut budgets = store::budgets::list(client).await?;
    let mut versions = store::spend::budget_versions(client).await?;
    let mut deltas_by_key = deltas(&budgets, new_rows, book);
    for evaluation in 1..=MAX_EVALUATIONS {
        if deltas_by_key.is_empty() {
            return Ok(BudgetOutcome::default());
        }
        let touched: Vec<Uuid> = deltas_by_key
            .keys()
            .map(|key| key.budget_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let locked = store::spend::lock_for_batch(client, &touched).await?;
        let unchanged = touched
            .iter()
            .all(|id| locked.contains_key(id) && locked.get(id) == versions.get(id));
        if unchanged || evaluation == MAX_EVALUATIONS {
            break;
        }
        tracing::info!("budgets changed during the batch; evaluating again");
        budgets = store::budgets::list(client).await?;
        versions = store::spend::budget_versions(client).await?;
        deltas_by_key = deltas(&budgets, new_rows, book);
    }

    let spend = add_spend(client, &budgets, &deltas_by_key, book).await?;
    let crossings = record_crossings(client, &budgets, &deltas_by_key, &spend).await?;
    if !crossings.is_empty() {
        tracing::info!(
            crossings = crossings.len(),
            "budget thresholds crossed; alerts recorded"
        );
    }
    Ok(BudgetOutcome { spend, crossings })
}

/// Adds cost changes that are not new rows (a re-pricing's corrections) to
/// budget spend and records the crossings they cause, in the caller's
/// transaction, under the same lock order as a batch: the budgets touched
/// `FOR SHARE` first, then their spend rows.
pub async fn add_corrections(
    transaction: &tokio_postgres::Transaction<'_>,
    budgets: &[Budget],
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    book: &PriceBook,
) -> Result<BudgetOutcome, BudgetSpendError> {
    if deltas_by_key.is_empty() {
        return Ok(BudgetOutcome::default());
    }
    let mut touched: Vec<Uuid> = deltas_by_key.keys().map(|key| key.budget_id).collect();
    touched.dedup();
    store::spend::lock_for_batch(transaction, &touched).await?;
    let spend = add_spend(transaction, budgets, deltas_by_key, book).await?;
    let crossings = record_crossings(transaction, budgets, deltas_by_key, &spend).await?;
    Ok(BudgetOutcome { spend, crossings })
}

/// Step 3 of the module docs: the spend of every key after this batch.
async fn add_spend(
    client: &tokio_postgres::Transaction<'_>,
    budgets: &[Budget],
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    book: &PriceBook,
) -> Result<BTreeMap<SpendKey, Decimal>, BudgetSpendError> {
    let all: Vec<(&SpendKey, Decimal)> = deltas_by_key
        .iter()
        .map(|(key, (_, delta))| (key, *delta))
        .collect();
    let mut spend = store::spend::add(client, &all).await?;
    let by_id: HashMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let missing: Vec<(&SpendKey, &Budget, PeriodBounds)> = deltas_by_key
        .iter()
        .filter(|(key, _)| !spend.contains_key(*key))
        .filter_map(|(key, (bounds, _))| {
            let budget = by_id.get(&key.budget_id)?;
            Some((key, *budget, *bounds))
        })
        .collect();
    if missing.is_empty() {
        return Ok(spend);
    }

    let audit_keys: Vec<AuditKey<'_>> = missing
        .iter()
        .map(|(key, budget, bounds)| AuditKey {
            tenant_id: &key.tenant_id,
            user_id: &key.user_id,
            period: *bounds,
            scope: &budget.scope,
        })
        .collect();
    let initial = store::spend::from_audit(client, &audit_keys, book).await?;
    let new_rows: Vec<NewSpend<'_>> = missing
        .iter()
        .zip(initial)
        .map(|((key, _, bounds), spend_usd)| NewSpend {
            key,
            period_end: bounds.end,
            spend_usd,
        })
        .collect();
    let inserted = store::spend::insert(client, &new_rows).await?;
    let raced: Vec<(&SpendKey, Decimal)> = missing
        .iter()
        .filter(|(key, _, _)| !inserted.contains_key(*key))
        .map(|(key, _, _)| (*key, deltas_by_key[*key].1))
        .collect();
    spend.extend(inserted);
    if !raced.is_empty() {
        // Another transaction created these keys after our UPDATE looked;
        // its initial spend cannot include our uncommitted rows, so ours
        // are added as a delta.
        spend.extend(store::spend::add(client, &raced).await?);
    }
    Ok(spend)
}

/// Step 4 of the module docs.
async fn record_crossings(
    client: &tokio_postgres::Transaction<'_>,
    budgets: &[Budget],
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    spend: &BTreeMap<SpendKey, Decimal>,
) -> Result<Vec<(Uuid, u16)>, BudgetSpendError> {
    let by_id: HashMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let mut crossings = Vec::new();
    for (key, spend_usd) in spend {
        let (Some(budget), Some((bounds, _))) = (by_id.get(&key.budget_id), deltas_by_key.get(key))
        else {
            continue;
        };
        for threshold in reached(*spend_usd, budget.amount_usd, &budget.thresholds) {
            crossings.push(Crossing {
                key,
                budget,
                period_end: bounds.end,
                threshold,
                spend_usd: *spend_usd,
            });
        }
    }
    Ok(store::alerts::record_crossings(client, &crossings).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ledger::{Cost, PricingStatus, UsageEvent};
    use serde_json::json;

    fn row(tenant: &str, day: u32, cost: Decimal) -> PricedEvent {
        let at = Utc
            .with_ymd_and_hms(2026, 1, day, 12, 0, 0)
            .single()
            .expect("valid");
        PricedEvent {
            event: UsageEvent {
                id: Uuid::now_v7(),
                created_at: at,
                tenant_id: tenant.into(),
                user_id: None,
                provider: "openai".into(),
                model: "gpt-4o".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
                cached_prompt_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                cache_write_1h_tokens: 0,
                service_tier: None,
                calls: Default::default(),
                unpriced_tokens: Default::default(),
                estimated_cost: None,
                labels: Default::default(),
                received_at: at,
                request_id: None,
                call_identity: false,
                reservation_id: None,
                api_key: None,
            },
            cost: Cost {
                usd: cost,
                status: PricingStatus::Priced,
            },
            pricing: Default::default(),
            content_sha256: [0; 32],
            record_index: 0,
            source_partition: 0,
            source_offset: 0,
        }
    }

    #[test]
    fn deltas_are_per_budget_tenant_and_period_of_created_at() {
        let every_daily = Budget::from_json(
            Uuid::from_u128(1),
            &json!({"name": "d", "tenant_id": "*", "period": "daily", "amount_usd": "10"}),
        )
        .expect("valid");
        let acme_monthly = Budget::from_json(
            Uuid::from_u128(2),
            &json!({"name": "m", "tenant_id": "acme", "period": "monthly", "amount_usd": "10"}),
        )
        .expect("valid");
        let rows = [
            row("acme", 5, Decimal::new(1, 0)),
            row("acme", 5, Decimal::new(2, 0)),
            row("acme", 6, Decimal::new(4, 0)), // a later day: its own daily period
            row("globex", 5, Decimal::new(8, 0)),
        ];
        let rows: Vec<&PricedEvent> = rows.iter().collect();
        let deltas = deltas(
            &[every_daily, acme_monthly],
            &rows,
            &PriceBook::builtin().expect("the built-in book parses"),
        );
        let summary: Vec<(u128, &str, u32, Decimal)> = deltas
            .iter()
            .map(|(key, (_, delta))| {
                (
                    key.budget_id.as_u128(),
                    key.tenant_id.as_str(),
                    chrono::Datelike::day(&key.period_start),
                    *delta,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "acme", 5, Decimal::new(3, 0)),
                (1, "acme", 6, Decimal::new(4, 0)),
                (1, "globex", 5, Decimal::new(8, 0)),
                (2, "acme", 1, Decimal::new(7, 0)),
            ]
        );
    }
}
