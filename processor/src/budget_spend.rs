//! Budget spend and threshold crossings, inside the batch transaction.
//!
//! The writer calls [`record`] with exactly the rows the transaction
//! inserted (never duplicates), so every event's cost is added to every
//! budget it falls under once, and the crossings it causes commit together
//! with the rows, the spend and the offsets: a crash before the commit
//! loses all of it, redelivery then redoes all of it, a crash after it
//! redoes none of it.
//!
//! Per batch:
//! 1. Load the budgets (an edit applies to the next batch) and add each new
//!    row's cost to its `(budget, tenant, period of created_at)` key, so a
//!    late event counts toward its own period.
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
//!    (`ON CONFLICT DO NOTHING`): the primary key (budget, tenant, period
//!    start, threshold) makes each crossing exactly once, a jump from 40 %
//!    to 95 % records 50, 75 and 90 together, and a lowered amount records
//!    the thresholds it newly puts behind the spend.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use ledger::budget::reached;
use ledger::{Budget, PeriodBounds};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::budgets;
use crate::prepare::PricedEvent;

/// How often a batch re-evaluates when budgets change under it before it
/// goes ahead with what it locked.
const MAX_EVALUATIONS: usize = 3;

const LOCK_BUDGETS: &str = "
SELECT id, updated_at FROM budgets WHERE id = ANY($1) ORDER BY id FOR SHARE";

const LOAD_VERSIONS: &str = "SELECT id, updated_at FROM budgets";

const ADD_TO_SPEND: &str = "
UPDATE budget_spend AS s
SET spend_usd = s.spend_usd + d.delta, updated_at = now()
FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::numeric[])
     AS d(budget_id, tenant_id, period_start, delta)
WHERE s.budget_id = d.budget_id AND s.tenant_id = d.tenant_id AND s.period_start = d.period_start
RETURNING s.budget_id, s.tenant_id, s.period_start, s.spend_usd";

/// The spend of each key over its whole period, from the audit table (the
/// same predicate as `Scope::matches`).
const SPEND_FROM_AUDIT: &str = "
SELECT k.ord, COALESCE((
    SELECT sum(a.estimated_cost)
    FROM gateway_mode_audit AS a
    WHERE a.tenant_id = k.tenant_id
      AND a.created_at >= k.period_start AND a.created_at < k.period_end
      AND (k.provider IS NULL OR a.provider = k.provider)
      AND (k.model IS NULL OR a.model = k.model)
      AND (k.label_key IS NULL OR a.labels ->> k.label_key = k.label_value)
), 0)
FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::text[])
     WITH ORDINALITY AS k(tenant_id, period_start, period_end, provider, model, label_key,
                          label_value, ord)";

const INSERT_SPEND: &str = "
INSERT INTO budget_spend (budget_id, tenant_id, period_start, period_end, spend_usd)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::numeric[])
ON CONFLICT DO NOTHING
RETURNING budget_id, tenant_id, period_start, spend_usd";

const RECORD_CROSSINGS: &str = "
INSERT INTO budget_alerts (budget_id, tenant_id, period_start, threshold, period_end,
                           budget_name, period, timezone, narrowing, amount_usd, spend_usd)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int2[], $5::timestamptz[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::numeric[],
                     $11::numeric[])
ON CONFLICT DO NOTHING
RETURNING budget_id, threshold";

#[derive(Debug, thiserror::Error)]
#[error("database error during budgets ({step}): {source}")]
pub struct BudgetSpendError {
    step: &'static str,
    source: tokio_postgres::Error,
}

fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> BudgetSpendError {
    move |source| BudgetSpendError { step, source }
}

/// One budget's spend for one tenant in one period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpendKey {
    pub budget_id: Uuid,
    pub tenant_id: String,
    pub period_start: DateTime<Utc>,
}

/// What a batch did to budgets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetOutcome {
    /// The spend of every key the batch touched, after the batch.
    pub spend: BTreeMap<SpendKey, Decimal>,
    /// Crossings recorded by this batch: (budget id, threshold).
    pub crossings: Vec<(Uuid, u16)>,
}

/// The cost the batch adds to each key, with the key's period end.
pub fn deltas(
    budgets: &[Budget],
    new_rows: &[&PricedEvent],
) -> BTreeMap<SpendKey, (PeriodBounds, Decimal)> {
    let mut deltas: BTreeMap<SpendKey, (PeriodBounds, Decimal)> = BTreeMap::new();
    for row in new_rows {
        for budget in budgets.iter().filter(|budget| budget.matches(&row.event)) {
            let bounds = budget.period_of(row.event.created_at);
            let key = SpendKey {
                budget_id: budget.id,
                tenant_id: row.event.tenant_id.clone(),
                period_start: bounds.start,
            };
            deltas.entry(key).or_insert((bounds, Decimal::ZERO)).1 += row.cost.usd;
        }
    }
    deltas
}

/// Adds the new rows' cost to budget spend and records crossings, in the
/// batch's transaction.
pub async fn record(
    transaction: &Transaction<'_>,
    new_rows: &[&PricedEvent],
) -> Result<BudgetOutcome, BudgetSpendError> {
    if new_rows.is_empty() {
        return Ok(BudgetOutcome::default());
    }
    let mut budgets = budgets::load(&**transaction)
        .await
        .map_err(db("load budgets"))?;
    let mut versions = budget_versions(transaction, LOAD_VERSIONS, None).await?;
    let mut deltas_by_key = deltas(&budgets, new_rows);
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
        let locked = budget_versions(transaction, LOCK_BUDGETS, Some(&touched)).await?;
        let unchanged = touched
            .iter()
            .all(|id| locked.contains_key(id) && locked.get(id) == versions.get(id));
        if unchanged || evaluation == MAX_EVALUATIONS {
            break;
        }
        tracing::info!("budgets changed during the batch; evaluating again");
        budgets = budgets::load(&**transaction)
            .await
            .map_err(db("load budgets"))?;
        versions = budget_versions(transaction, LOAD_VERSIONS, None).await?;
        deltas_by_key = deltas(&budgets, new_rows);
    }

    let spend = add_spend(transaction, &budgets, &deltas_by_key).await?;
    let crossings = record_crossings(transaction, &budgets, &deltas_by_key, &spend).await?;
    if !crossings.is_empty() {
        tracing::info!(
            crossings = crossings.len(),
            "budget thresholds crossed; alerts recorded"
        );
    }
    Ok(BudgetOutcome { spend, crossings })
}

async fn budget_versions(
    transaction: &Transaction<'_>,
    statement: &str,
    ids: Option<&Vec<Uuid>>,
) -> Result<HashMap<Uuid, DateTime<Utc>>, BudgetSpendError> {
    let rows = match ids {
        Some(ids) => transaction.query(statement, &[ids]).await,
        None => transaction.query(statement, &[]).await,
    }
    .map_err(db("lock budgets"))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

type KeyColumns = (Vec<Uuid>, Vec<String>, Vec<DateTime<Utc>>);

fn key_columns<'a>(keys: impl Iterator<Item = &'a SpendKey>) -> KeyColumns {
    let mut columns: KeyColumns = (Vec::new(), Vec::new(), Vec::new());
    for key in keys {
        columns.0.push(key.budget_id);
        columns.1.push(key.tenant_id.clone());
        columns.2.push(key.period_start);
    }
    columns
}

fn spend_rows(rows: &[tokio_postgres::Row]) -> BTreeMap<SpendKey, Decimal> {
    rows.iter()
        .map(|row| {
            (
                SpendKey {
                    budget_id: row.get(0),
                    tenant_id: row.get(1),
                    period_start: row.get(2),
                },
                row.get(3),
            )
        })
        .collect()
}

/// Steps 3 of the module docs: the spend of every key after this batch.
async fn add_spend(
    transaction: &Transaction<'_>,
    budgets: &[Budget],
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
) -> Result<BTreeMap<SpendKey, Decimal>, BudgetSpendError> {
    let mut spend = add_deltas(transaction, deltas_by_key, deltas_by_key.keys().collect()).await?;
    let missing: Vec<&SpendKey> = deltas_by_key
        .keys()
        .filter(|key| !spend.contains_key(*key))
        .collect();
    if missing.is_empty() {
        return Ok(spend);
    }

    let by_id: HashMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let mut tenants = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut providers = Vec::new();
    let mut models = Vec::new();
    let mut label_keys = Vec::new();
    let mut label_values = Vec::new();
    for key in &missing {
        let budget = by_id[&key.budget_id];
        tenants.push(key.tenant_id.clone());
        starts.push(key.period_start);
        ends.push(deltas_by_key[*key].0.end);
        providers.push(budget.scope.provider.clone());
        models.push(budget.scope.model.clone());
        label_keys.push(budget.scope.label.as_ref().map(|l| l.key.clone()));
        label_values.push(budget.scope.label.as_ref().map(|l| l.value.clone()));
    }
    let initial_rows = transaction
        .query(
            SPEND_FROM_AUDIT,
            &[
                &tenants,
                &starts,
                &ends,
                &providers,
                &models,
                &label_keys,
                &label_values,
            ],
        )
        .await
        .map_err(db("spend from the audit table"))?;
    let mut initial = vec![Decimal::ZERO; missing.len()];
    for row in &initial_rows {
        let ordinal: i64 = row.get(0);
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| initial.get_mut(i))
        {
            *slot = row.get(1);
        }
    }
    let (ids, tenant_ids, period_starts) = key_columns(missing.iter().copied());
    let inserted_rows = transaction
        .query(
            INSERT_SPEND,
            &[&ids, &tenant_ids, &period_starts, &ends, &initial],
        )
        .await
        .map_err(db("insert spend"))?;
    let inserted = spend_rows(&inserted_rows);
    let raced: Vec<&SpendKey> = missing
        .iter()
        .copied()
        .filter(|key| !inserted.contains_key(*key))
        .collect();
    spend.extend(inserted);
    if !raced.is_empty() {
        // Another transaction created these keys after our UPDATE looked;
        // its initial spend cannot include our uncommitted rows, so ours
        // are added as a delta.
        spend.extend(add_deltas(transaction, deltas_by_key, raced).await?);
    }
    Ok(spend)
}

/// Adds the deltas of `keys` to their existing rows; returns the rows
/// that existed, with their new spend.
async fn add_deltas(
    transaction: &Transaction<'_>,
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    keys: Vec<&SpendKey>,
) -> Result<BTreeMap<SpendKey, Decimal>, BudgetSpendError> {
    let (ids, tenants, starts) = key_columns(keys.iter().copied());
    let amounts: Vec<Decimal> = keys.iter().map(|key| deltas_by_key[*key].1).collect();
    let rows = transaction
        .query(ADD_TO_SPEND, &[&ids, &tenants, &starts, &amounts])
        .await
        .map_err(db("add spend"))?;
    Ok(spend_rows(&rows))
}

/// Step 4 of the module docs.
async fn record_crossings(
    transaction: &Transaction<'_>,
    budgets: &[Budget],
    deltas_by_key: &BTreeMap<SpendKey, (PeriodBounds, Decimal)>,
    spend: &BTreeMap<SpendKey, Decimal>,
) -> Result<Vec<(Uuid, u16)>, BudgetSpendError> {
    let by_id: HashMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let mut ids = Vec::new();
    let mut tenants = Vec::new();
    let mut starts = Vec::new();
    let mut thresholds: Vec<i16> = Vec::new();
    let mut ends = Vec::new();
    let mut names = Vec::new();
    let mut periods = Vec::new();
    let mut timezones = Vec::new();
    let mut narrowings = Vec::new();
    let mut amounts = Vec::new();
    let mut spends = Vec::new();
    for (key, spend_usd) in spend {
        let (Some(budget), Some((bounds, _))) = (by_id.get(&key.budget_id), deltas_by_key.get(key))
        else {
            continue;
        };
        for threshold in reached(*spend_usd, budget.amount_usd, &budget.thresholds) {
            ids.push(key.budget_id);
            tenants.push(key.tenant_id.clone());
            starts.push(key.period_start);
            thresholds.push(i16::try_from(threshold).unwrap_or(i16::MAX));
            ends.push(bounds.end);
            names.push(budget.name.clone());
            periods.push(budget.period.as_str());
            timezones.push(budget.timezone.name());
            narrowings.push(budget.scope.narrowing());
            amounts.push(budget.amount_usd);
            spends.push(*spend_usd);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = transaction
        .query(
            RECORD_CROSSINGS,
            &[
                &ids,
                &tenants,
                &starts,
                &thresholds,
                &ends,
                &names,
                &periods,
                &timezones,
                &narrowings,
                &amounts,
                &spends,
            ],
        )
        .await
        .map_err(db("record crossings"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let threshold: i16 = row.get(1);
            (row.get(0), u16::try_from(threshold).unwrap_or(0))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
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
                estimated_cost: None,
                labels: Default::default(),
                received_at: at,
                request_id: None,
            },
            cost: Cost {
                usd: cost,
                status: PricingStatus::Priced,
            },
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
        let deltas = deltas(&[every_daily, acme_monthly], &rows);
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
