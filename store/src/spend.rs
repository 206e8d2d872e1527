//! Budget spend: one row of `budget_spend` per budget, tenant, user (for a
//! budget with `user_id = "*"`; `""` for every other) and period, and the
//! spend rule in SQL.
//!
//! The spend rule says which audit rows count toward a budget's spend for
//! a tenant in a period: the tenant's rows created in `[start, end)` that
//! the budget's scope matches (user, API key, provider, model, one label
//! value; each only when the budget names it). In Rust it is `ledger::budget::Scope::matches`
//! plus `PeriodBounds::contains`; here it is [`SPEND_FROM_AUDIT`], the only
//! copy in SQL. store/tests/integration/spend_rule.rs proves the two agree.
//!
//! The batch transaction (the processor's budget spend step) keeps spend
//! exact with the statements below: lock the budgets it adds to `FOR
//! SHARE`, add its deltas to the rows that exist, and create the missing
//! rows from the audit table for their whole period.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use ledger::budget::{PeriodBounds, Scope};
use ledger::{Budget, PriceBook};
use rust_decimal::Decimal;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::{db, DbError};

/// The spend rule but for the model: for each key (tenant, period, scope
/// narrowing), the matching audit rows' cost by provider and model name, by
/// the key's ordinal. Which names count toward a model budget is
/// `Scope::matches_model` (the price book's names of a model), applied in
/// Rust to these groups, so the rule exists once.
const SPEND_FROM_AUDIT: &str = "
SELECT k.ord, a.provider, a.model, sum(a.estimated_cost)
FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS k(tenant_id, period_start, period_end, provider, label_key,
                          label_value, user_id, api_key, ord)
JOIN gateway_mode_audit AS a
  ON a.tenant_id = k.tenant_id
 AND a.created_at >= k.period_start AND a.created_at < k.period_end
 AND (k.provider IS NULL OR a.provider = k.provider)
 AND (k.user_id IS NULL OR coalesce(a.user_id, '') = k.user_id)
 AND (k.api_key IS NULL OR a.api_key = k.api_key)
 AND (k.label_key IS NULL OR a.labels ->> k.label_key = k.label_value)
GROUP BY k.ord, a.provider, a.model";

const SPEND_FOR_PERIODS: &str = "
SELECT s.budget_id, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($2::uuid[], $3::timestamptz[], $4::text[]) AS k(budget_id, period_start, user_id)
  ON s.budget_id = k.budget_id AND s.period_start = k.period_start AND s.user_id = k.user_id
WHERE s.tenant_id = $1";

const USERS_WITH_SPEND: &str = "
SELECT s.budget_id, s.user_id, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($2::uuid[], $3::timestamptz[]) AS k(budget_id, period_start)
  ON s.budget_id = k.budget_id AND s.period_start = k.period_start
WHERE s.tenant_id = $1
ORDER BY s.budget_id, s.spend_usd DESC, s.user_id
";

const LOAD_VERSIONS: &str = "SELECT id, updated_at FROM budgets";

const LOCK_FOR_BATCH: &str = "
SELECT id, updated_at FROM budgets WHERE id = ANY($1) ORDER BY id FOR SHARE";

// The rows are locked in key order before they are updated: two batch
// transactions in flight at once (`batch.writers`) that add to the same
// rows then queue behind each other instead of deadlocking, whatever order
// the join would visit them in.
const ADD_TO_SPEND: &str = "
WITH d AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::numeric[])
        AS d(budget_id, tenant_id, user_id, period_start, delta)
), locked AS MATERIALIZED (
    SELECT s.budget_id, s.tenant_id, s.user_id, s.period_start, d.delta
    FROM budget_spend AS s
    JOIN d ON s.budget_id = d.budget_id AND s.tenant_id = d.tenant_id
          AND s.user_id = d.user_id AND s.period_start = d.period_start
    ORDER BY s.budget_id, s.tenant_id, s.user_id, s.period_start
    FOR UPDATE OF s
)
UPDATE budget_spend AS s
SET spend_usd = s.spend_usd + locked.delta, updated_at = now()
FROM locked
WHERE s.budget_id = locked.budget_id AND s.tenant_id = locked.tenant_id
  AND s.user_id = locked.user_id AND s.period_start = locked.period_start
RETURNING s.budget_id, s.tenant_id, s.user_id, s.period_start, s.spend_usd";

const INSERT_SPEND: &str = "
INSERT INTO budget_spend (budget_id, tenant_id, user_id, period_start, period_end, spend_usd)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                     $6::numeric[])
ON CONFLICT DO NOTHING
RETURNING budget_id, tenant_id, user_id, period_start, spend_usd";

/// One budget's spend for one tenant (and user, for an each-user budget)
/// in one period: a `budget_spend` key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpendKey {
    pub budget_id: Uuid,
    pub tenant_id: String,
    /// The user of an each-user budget's row (`UserScope::spend_key`); `""`
    /// for every other budget.
    pub user_id: String,
    pub period_start: DateTime<Utc>,
}

/// A question to the spend rule: the audit rows of `tenant_id` in `period`
/// that `scope` counts. The scope's own tenant is not consulted: an
/// every-tenant budget keeps spend per tenant, so the caller names it; the
/// same for the user of an each-user budget (`user_id`, `""` otherwise).
#[derive(Debug, Clone, Copy)]
pub struct AuditKey<'a> {
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub period: PeriodBounds,
    pub scope: &'a Scope,
}

/// The spend of each key from the audit table, in the order of `keys`.
pub async fn from_audit(
    client: &impl GenericClient,
    keys: &[AuditKey<'_>],
    book: &PriceBook,
) -> Result<Vec<Decimal>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.tenant_id).collect();
    let starts: Vec<DateTime<Utc>> = keys.iter().map(|k| k.period.start).collect();
    let ends: Vec<DateTime<Utc>> = keys.iter().map(|k| k.period.end).collect();
    let providers: Vec<Option<&str>> = keys.iter().map(|k| k.scope.provider.as_deref()).collect();
    let label_keys: Vec<Option<&str>> = keys
        .iter()
        .map(|k| k.scope.label.as_ref().map(|l| l.key.as_str()))
        .collect();
    let label_values: Vec<Option<&str>> = keys
        .iter()
        .map(|k| k.scope.label.as_ref().map(|l| l.value.as_str()))
        .collect();
    let users: Vec<Option<&str>> = keys
        .iter()
        .map(|k| k.scope.user.filter(k.user_id))
        .collect();
    let api_keys: Vec<Option<&str>> = keys.iter().map(|k| k.scope.api_key.as_deref()).collect();
    let rows = client
        .query(
            SPEND_FROM_AUDIT,
            &[
                &tenants,
                &starts,
                &ends,
                &providers,
                &label_keys,
                &label_values,
                &users,
                &api_keys,
            ],
        )
        .await
        .map_err(db("spend from the audit table"))?;
    let mut spend = vec![Decimal::ZERO; keys.len()];
    for row in &rows {
        // The unaliased columns are named after what they select: `ord`,
        // `provider`, `model`, `sum`.
        let read = || -> Result<(i64, &str, &str, Decimal), tokio_postgres::Error> {
            Ok((
                row.try_get("ord")?,
                row.try_get("provider")?,
                row.try_get("model")?,
                row.try_get("sum")?,
            ))
        };
        let (ordinal, provider, model, cost) = read().map_err(db("spend from the audit table"))?;
        let Some(index) = usize::try_from(ordinal - 1).ok() else {
            continue;
        };
        let (Some(key), Some(slot)) = (keys.get(index), spend.get_mut(index)) else {
            continue;
        };
        if key.scope.matches_model(provider, model, book) {
            *slot += cost;
        }
    }
    Ok(spend)
}

/// `tenant`'s spend in the period of each budget that contains `now`, from
/// the stored rows; for an each-user budget, `user`'s (`None`: the usage
/// naming no user). A budget with no row yet this period (new budget, a
/// narrowing the tenant never matched, a scope just edited) gets one: the
/// spend rule over the audit table once, stored (a zero too), so the next
/// call reads a row instead of scanning the tenant's period again.
///
/// The rows are created under the batch's lock order: the budgets `FOR
/// SHARE` (an edit that would reset their spend waits, and a definition that
/// changed since `budgets` was read is not stored under), then the rows,
/// inserted in key order with `ON CONFLICT DO NOTHING`. A batch whose audit
/// rows this call could not see either finds the row and adds its delta to
/// it, or inserts first and this call keeps the batch's row: no delta is
/// lost or counted twice. The caller commits `transaction`.
pub async fn current(
    transaction: &Transaction<'_>,
    tenant: &str,
    user: Option<&str>,
    budgets: &[Budget],
    now: DateTime<Utc>,
    book: &PriceBook,
) -> Result<HashMap<Uuid, Decimal>, DbError> {
    let mut spend = stored(transaction, tenant, user, budgets, now).await?;
    let mut missing: Vec<&Budget> = budgets
        .iter()
        .filter(|b| !spend.contains_key(&b.id))
        .collect();
    if missing.is_empty() {
        return Ok(spend);
    }
    missing.sort_by_key(|b| b.id);
    let ids: Vec<Uuid> = missing.iter().map(|b| b.id).collect();
    lock_for_batch(transaction, &ids).await?;
    // Under the lock the definitions cannot change; one that changed since
    // the caller read it is answered from the audit table, not stored.
    let now_defined: HashMap<Uuid, Budget> = crate::budgets::covering_tenant(transaction, tenant)
        .await?
        .into_iter()
        .map(|b| (b.id, b))
        .collect();
    let spend_keys: Vec<SpendKey> = missing
        .iter()
        .map(|budget| SpendKey {
            budget_id: budget.id,
            tenant_id: tenant.to_owned(),
            user_id: budget.scope.user.spend_key(user),
            period_start: budget.period_of(now).start,
        })
        .collect();
    let keys: Vec<AuditKey<'_>> = missing
        .iter()
        .zip(&spend_keys)
        .map(|(budget, key)| AuditKey {
            tenant_id: tenant,
            user_id: &key.user_id,
            period: budget.period_of(now),
            scope: &budget.scope,
        })
        .collect();
    let computed = from_audit(transaction, &keys, book).await?;
    let new_rows: Vec<NewSpend<'_>> = missing
        .iter()
        .zip(&spend_keys)
        .zip(&computed)
        .filter(|((budget, _), _)| now_defined.get(&budget.id) == Some(**budget))
        .map(|((budget, key), spend_usd)| NewSpend {
            key,
            period_end: budget.period_of(now).end,
            spend_usd: *spend_usd,
        })
        .collect();
    let inserted = insert(transaction, &new_rows).await?;
    spend.extend(missing.iter().map(|b| b.id).zip(computed));
    if inserted.len() < new_rows.len() {
        // A batch created these rows after our first read; its row holds
        // what our computation could not see.
        let raced: Vec<Budget> = new_rows
            .iter()
            .filter(|row| !inserted.contains_key(row.key))
            .filter_map(|row| now_defined.get(&row.key.budget_id).cloned())
            .collect();
        spend.extend(stored(transaction, tenant, user, &raced, now).await?);
    }
    Ok(spend)
}

async fn stored(
    client: &impl GenericClient,
    tenant: &str,
    user: Option<&str>,
    budgets: &[Budget],
    now: DateTime<Utc>,
) -> Result<HashMap<Uuid, Decimal>, DbError> {
    let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
    let starts: Vec<DateTime<Utc>> = budgets.iter().map(|b| b.period_of(now).start).collect();
    let users: Vec<String> = budgets
        .iter()
        .map(|b| b.scope.user.spend_key(user))
        .collect();
    client
        .query(SPEND_FOR_PERIODS, &[&tenant, &ids, &starts, &users])
        .await
        .map_err(db("reading spend"))?
        .iter()
        .map(|row| Ok((row.try_get("budget_id")?, row.try_get("spend_usd")?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading spend"))
}

/// The users with a spend row of each of `budgets` (each-user budgets) for
/// `tenant` in the period containing `now`, highest spend first.
pub async fn users_with_spend(
    client: &impl GenericClient,
    tenant: &str,
    budgets: &[&Budget],
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, String, Decimal)>, DbError> {
    let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
    let starts: Vec<DateTime<Utc>> = budgets.iter().map(|b| b.period_of(now).start).collect();
    client
        .query(USERS_WITH_SPEND, &[&tenant, &ids, &starts])
        .await
        .map_err(db("reading users' spend"))?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("budget_id")?,
                row.try_get("user_id")?,
                row.try_get("spend_usd")?,
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading users' spend"))
}

/// Every budget's version (`updated_at`), to tell whether a definition
/// changed between reading it and locking it.
pub async fn budget_versions(
    client: &impl GenericClient,
) -> Result<HashMap<Uuid, DateTime<Utc>>, DbError> {
    let rows = client
        .query(LOAD_VERSIONS, &[])
        .await
        .map_err(db("reading budget versions"))?;
    versions(&rows).map_err(db("reading budget versions"))
}

/// Locks budgets `ids` `FOR SHARE` until the transaction ends (edits wait;
/// other batches do not) and returns their versions. A budget deleted
/// meanwhile is missing from the answer.
pub async fn lock_for_batch(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DateTime<Utc>>, DbError> {
    let rows = client
        .query(LOCK_FOR_BATCH, &[&ids])
        .await
        .map_err(db("lock budgets"))?;
    versions(&rows).map_err(db("lock budgets"))
}

fn versions(rows: &[Row]) -> Result<HashMap<Uuid, DateTime<Utc>>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("updated_at")?)))
        .collect()
}

/// Adds each delta to its key's row; returns the keys whose row existed,
/// with their new spend.
pub async fn add(
    client: &impl GenericClient,
    deltas: &[(&SpendKey, Decimal)],
) -> Result<BTreeMap<SpendKey, Decimal>, DbError> {
    let (ids, tenants, users, starts) = key_columns(deltas.iter().map(|(key, _)| *key));
    let amounts: Vec<Decimal> = deltas.iter().map(|(_, delta)| *delta).collect();
    let rows = client
        .query(ADD_TO_SPEND, &[&ids, &tenants, &users, &starts, &amounts])
        .await
        .map_err(db("add spend"))?;
    spend_rows(&rows)
}

/// A spend row to create: its key, its period's end and its spend.
#[derive(Debug, Clone, Copy)]
pub struct NewSpend<'a> {
    pub key: &'a SpendKey,
    pub period_end: DateTime<Utc>,
    pub spend_usd: Decimal,
}

/// Creates the rows that no other transaction created first; returns the
/// ones it created.
pub async fn insert(
    client: &impl GenericClient,
    rows: &[NewSpend<'_>],
) -> Result<BTreeMap<SpendKey, Decimal>, DbError> {
    let (ids, tenants, users, starts) = key_columns(rows.iter().map(|row| row.key));
    let ends: Vec<DateTime<Utc>> = rows.iter().map(|row| row.period_end).collect();
    let spend: Vec<Decimal> = rows.iter().map(|row| row.spend_usd).collect();
    let inserted = client
        .query(
            INSERT_SPEND,
            &[&ids, &tenants, &users, &starts, &ends, &spend],
        )
        .await
        .map_err(db("insert spend"))?;
    spend_rows(&inserted)
}

type KeyColumns = (Vec<Uuid>, Vec<String>, Vec<String>, Vec<DateTime<Utc>>);

fn key_columns<'a>(keys: impl Iterator<Item = &'a SpendKey>) -> KeyColumns {
    let mut columns: KeyColumns = Default::default();
    for key in keys {
        columns.0.push(key.budget_id);
        columns.1.push(key.tenant_id.clone());
        columns.2.push(key.user_id.clone());
        columns.3.push(key.period_start);
    }
    columns
}

/// Rows of `budget_id, tenant_id, user_id, period_start, spend_usd`.
fn spend_rows(rows: &[Row]) -> Result<BTreeMap<SpendKey, Decimal>, DbError> {
    rows.iter()
        .map(|row| {
            Ok((
                SpendKey {
                    budget_id: row.try_get("budget_id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    user_id: row.try_get("user_id")?,
                    period_start: row.try_get("period_start")?,
                },
                row.try_get("spend_usd")?,
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db("reading spend rows"))
}
