//! Budget definitions in the `budgets` table: the column list and the row
//! mapping (the one mapping between a [`Budget`] and its row), the reads
//! both binaries make, and the edits.
//!
//! An edit that changes what a budget's stored spend depends on (scope,
//! period, time zone) deletes that spend: the rows no longer describe the
//! budget, and the next batch with a matching event rebuilds them from the
//! audit table. Every edit locks the budget's row before it deletes spend,
//! the order the batch transaction takes its locks in (see the crate docs):
//! a batch that holds the budget `FOR SHARE` finishes first and its spend is
//! then deleted, and a batch that comes later waits for the edit and sees
//! the new definition. Deleting spend first would let a batch that already
//! holds its lock insert a row computed under the old scope after the
//! delete, and that row would stand for the rest of the period.

use std::collections::BTreeMap;

use chrono_tz::Tz;
use ledger::budget::{LabelMatch, Period, Scope, TenantScope, UserScope, EVERY_TENANT};
use ledger::Budget;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::{db, DbError};

/// The columns of a budget, in the order [`BudgetColumns::params`] binds
/// them and [`budget_from_row`] reads them.
const COLUMNS: &str = "id, name, tenant_id, provider, model, label_key, label_value, period, \
                       timezone, amount_usd, thresholds, hard_limit, forecast_alert, user_id, \
                       api_key";

const INSERT: &str = "
INSERT INTO budgets (id, name, tenant_id, provider, model, label_key, label_value, period,
                     timezone, amount_usd, thresholds, hard_limit, forecast_alert, user_id,
                     api_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

const UPDATE: &str = "
UPDATE budgets SET name = $2, tenant_id = $3, provider = $4, model = $5, label_key = $6,
       label_value = $7, period = $8, timezone = $9, amount_usd = $10, thresholds = $11,
       hard_limit = $12, forecast_alert = $13, user_id = $14, api_key = $15,
       updated_at = now()
WHERE id = $1";

/// `processor budgets apply`: by name; a row that would not change is left
/// alone (no `updated_at` bump, so batches need not evaluate again).
const UPSERT_BY_NAME: &str = "
INSERT INTO budgets (id, name, tenant_id, provider, model, label_key, label_value, period,
                     timezone, amount_usd, thresholds, hard_limit, forecast_alert, user_id,
                     api_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (name) DO UPDATE SET
    tenant_id = EXCLUDED.tenant_id, provider = EXCLUDED.provider, model = EXCLUDED.model,
    label_key = EXCLUDED.label_key, label_value = EXCLUDED.label_value,
    period = EXCLUDED.period, timezone = EXCLUDED.timezone, amount_usd = EXCLUDED.amount_usd,
    thresholds = EXCLUDED.thresholds, hard_limit = EXCLUDED.hard_limit,
    forecast_alert = EXCLUDED.forecast_alert, user_id = EXCLUDED.user_id,
    api_key = EXCLUDED.api_key, updated_at = now()
WHERE (budgets.tenant_id, budgets.provider, budgets.model, budgets.label_key,
       budgets.label_value, budgets.period, budgets.timezone, budgets.amount_usd,
       budgets.thresholds, budgets.hard_limit, budgets.forecast_alert, budgets.user_id,
       budgets.api_key)
      IS DISTINCT FROM
      (EXCLUDED.tenant_id, EXCLUDED.provider, EXCLUDED.model, EXCLUDED.label_key,
       EXCLUDED.label_value, EXCLUDED.period, EXCLUDED.timezone, EXCLUDED.amount_usd,
       EXCLUDED.thresholds, EXCLUDED.hard_limit, EXCLUDED.forecast_alert, EXCLUDED.user_id,
       EXCLUDED.api_key)
RETURNING id, (xmax = 0) AS inserted";

/// The edit lock of one budget, and of every budget (in id order, the order
/// a batch locks them in).
const LOCK_FOR_EDIT: &str = "SELECT id FROM budgets WHERE id = $1 FOR UPDATE";
const LOCK_ALL_FOR_EDIT: &str = "SELECT name, id FROM budgets ORDER BY id FOR UPDATE";

/// Deletes a budget's stored spend when the definition about to be written
/// changes what that spend depends on (scope, period, time zone). Runs under
/// the edit lock, before the write, with [`BudgetColumns::scope_params`].
const RESET_SPEND_IF_SCOPE_CHANGED: &str = "
DELETE FROM budget_spend
WHERE budget_id = $1
  AND NOT EXISTS (
      SELECT 1 FROM budgets
      WHERE id = $1 AND tenant_id = $2 AND provider IS NOT DISTINCT FROM $3
        AND model IS NOT DISTINCT FROM $4 AND label_key IS NOT DISTINCT FROM $5
        AND label_value IS NOT DISTINCT FROM $6 AND period = $7 AND timezone = $8
        AND user_id IS NOT DISTINCT FROM $9 AND api_key IS NOT DISTINCT FROM $10)";

/// SQLSTATE of a unique violation (a budget name taken).
const UNIQUE_VIOLATION: &str = "23505";

/// Why an edit of one budget did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no budget with id {0}")]
    NotFound(Uuid),
    #[error("a budget named {0:?} already exists")]
    DuplicateName(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// What `apply` did, by budget name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
}

/// Every budget, by name. A row the API would not have written (say, an
/// unknown time zone typed in by hand) is skipped with a warning: the
/// status endpoint keeps answering and ingestion keeps going.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Budget>, DbError> {
    let rows = client
        .query(&format!("SELECT {COLUMNS} FROM budgets ORDER BY name"), &[])
        .await
        .map_err(db("reading budgets"))?;
    Ok(valid_budgets(&rows))
}

/// The budgets that apply to `tenant`: its own and the every-tenant ones,
/// by name.
pub async fn covering_tenant(
    client: &impl GenericClient,
    tenant: &str,
) -> Result<Vec<Budget>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM budgets WHERE tenant_id = $1 OR tenant_id = $2 \
                 ORDER BY name"
            ),
            &[&tenant, &EVERY_TENANT],
        )
        .await
        .map_err(db("reading budgets"))?;
    Ok(valid_budgets(&rows))
}

/// Budget `id`, or `None` when there is none (or its row is not valid).
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<Budget>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM budgets WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(db("reading a budget"))?;
    Ok(row.as_ref().and_then(valid_budget))
}

/// Stores a new budget.
pub async fn create(client: &impl GenericClient, budget: &Budget) -> Result<(), EditError> {
    let columns = BudgetColumns::of(budget);
    client
        .execute(INSERT, &columns.params(&budget.id, budget))
        .await
        .map_err(|error| duplicate_or(error, &budget.name, "creating a budget"))?;
    Ok(())
}

/// Replaces budget `budget.id`'s definition in one transaction: lock the
/// row, reset the spend if the scope changed, write.
pub async fn replace(client: &mut Client, budget: &Budget) -> Result<(), EditError> {
    let transaction = client.transaction().await.map_err(db("beginning"))?;
    let locked = transaction
        .query_opt(LOCK_FOR_EDIT, &[&budget.id])
        .await
        .map_err(db("locking the budget"))?;
    if locked.is_none() {
        return Err(EditError::NotFound(budget.id));
    }
    write_locked(&transaction, budget.id, budget, UPDATE)
        .await
        .map_err(|error| {
            if is_unique_violation(&error.source) {
                EditError::DuplicateName(budget.name.clone())
            } else {
                EditError::Database(error)
            }
        })?;
    transaction.commit().await.map_err(db("committing"))?;
    Ok(())
}

/// Deletes budget `id`; its spend goes with it (`ON DELETE CASCADE`), its
/// recorded crossings stay as history.
pub async fn delete(client: &impl GenericClient, id: Uuid) -> Result<(), EditError> {
    let deleted = client
        .execute("DELETE FROM budgets WHERE id = $1", &[&id])
        .await
        .map_err(db("deleting a budget"))?;
    if deleted == 0 {
        return Err(EditError::NotFound(id));
    }
    Ok(())
}

/// Upserts `budgets` by name in one transaction; with `prune`, deletes the
/// budgets the list does not name. Locks every budget row first, then
/// resets and writes each budget as [`replace`] does.
pub async fn apply(
    client: &mut Client,
    budgets: &[Budget],
    prune: bool,
) -> Result<ApplyReport, DbError> {
    let transaction = client.transaction().await.map_err(db("beginning"))?;
    let existing: BTreeMap<String, Uuid> = transaction
        .query(LOCK_ALL_FOR_EDIT, &[])
        .await
        .map_err(db("reading budgets"))?
        .iter()
        .map(|row| Ok((row.try_get("name")?, row.try_get("id")?)))
        .collect::<Result<_, _>>()
        .map_err(db("reading budgets"))?;
    let mut report = ApplyReport::default();
    for budget in budgets {
        let id = existing.get(&budget.name).copied().unwrap_or(budget.id);
        let returned = write_locked(&transaction, id, budget, UPSERT_BY_NAME).await?;
        let list = match returned {
            None => &mut report.unchanged,
            Some(row)
                if row
                    .try_get::<_, bool>("inserted")
                    .map_err(db("writing a budget"))? =>
            {
                &mut report.created
            }
            Some(_) => &mut report.updated,
        };
        list.push(budget.name.clone());
    }
    if prune {
        let keep: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
        let rows = transaction
            .query(
                "DELETE FROM budgets WHERE NOT (name = ANY($1)) RETURNING name",
                &[&keep],
            )
            .await
            .map_err(db("pruning budgets"))?;
        report.deleted = rows
            .iter()
            .map(|row| row.try_get("name"))
            .collect::<Result<_, _>>()
            .map_err(db("pruning budgets"))?;
    }
    transaction.commit().await.map_err(db("committing"))?;
    Ok(report)
}

/// The one edit of an existing or new budget row `id`, run by a transaction
/// that holds `id`'s row lock when the row exists: reset the spend if the
/// scope changes, then `write` (an UPDATE or INSERT taking
/// [`BudgetColumns::params`]). Returns the row `write` returned, if any.
async fn write_locked(
    transaction: &Transaction<'_>,
    id: Uuid,
    budget: &Budget,
    write: &str,
) -> Result<Option<Row>, DbError> {
    let columns = BudgetColumns::of(budget);
    transaction
        .execute(RESET_SPEND_IF_SCOPE_CHANGED, &columns.scope_params(&id))
        .await
        .map_err(db("resetting spend"))?;
    let rows = transaction
        .query(write, &columns.params(&id, budget))
        .await
        .map_err(db("writing a budget"))?;
    Ok(rows.into_iter().next())
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code().map(|code| code.code()) == Some(UNIQUE_VIOLATION)
}

fn duplicate_or(error: tokio_postgres::Error, name: &str, step: &'static str) -> EditError {
    if is_unique_violation(&error) {
        EditError::DuplicateName(name.to_owned())
    } else {
        EditError::Database(DbError {
            step,
            source: error,
        })
    }
}

/// A budget's values in the column types of `budgets`.
#[derive(Debug)]
struct BudgetColumns {
    tenant_id: String,
    user_id: Option<String>,
    api_key: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    label_key: Option<String>,
    label_value: Option<String>,
    period: &'static str,
    timezone: &'static str,
    thresholds: Vec<i16>,
}

impl BudgetColumns {
    fn of(budget: &Budget) -> Self {
        Self {
            tenant_id: budget.scope.tenant.as_str().to_owned(),
            user_id: budget.scope.user.as_column().map(str::to_owned),
            api_key: budget.scope.api_key.clone(),
            provider: budget.scope.provider.clone(),
            model: budget.scope.model.clone(),
            label_key: budget.scope.label.as_ref().map(|l| l.key.clone()),
            label_value: budget.scope.label.as_ref().map(|l| l.value.clone()),
            period: budget.period.as_str(),
            timezone: budget.timezone.name(),
            thresholds: budget
                .thresholds
                .iter()
                .map(|t| i16::try_from(*t).unwrap_or(i16::MAX))
                .collect(),
        }
    }

    /// The parameters of [`RESET_SPEND_IF_SCOPE_CHANGED`] for budget `id`.
    fn scope_params<'a>(&'a self, id: &'a Uuid) -> [&'a (dyn ToSql + Sync); 10] {
        [
            id,
            &self.tenant_id,
            &self.provider,
            &self.model,
            &self.label_key,
            &self.label_value,
            &self.period,
            &self.timezone,
            &self.user_id,
            &self.api_key,
        ]
    }

    /// `$1..$15` in the order of [`COLUMNS`].
    fn params<'a>(&'a self, id: &'a Uuid, budget: &'a Budget) -> [&'a (dyn ToSql + Sync); 15] {
        [
            id,
            &budget.name,
            &self.tenant_id,
            &self.provider,
            &self.model,
            &self.label_key,
            &self.label_value,
            &self.period,
            &self.timezone,
            &budget.amount_usd,
            &self.thresholds,
            &budget.hard_limit,
            &budget.forecast_alert,
            &self.user_id,
            &self.api_key,
        ]
    }
}

/// The budgets of `rows` (selected with [`COLUMNS`]) that are valid.
fn valid_budgets(rows: &[Row]) -> Vec<Budget> {
    rows.iter().filter_map(valid_budget).collect()
}

fn valid_budget(row: &Row) -> Option<Budget> {
    budget_from_row(row)
        .map_err(|problem| tracing::warn!(problem, "skipping a budgets row"))
        .ok()
}

/// The budget a `budgets` row describes, or why the row is not one the API
/// would have written.
fn budget_from_row(row: &Row) -> Result<Budget, String> {
    let get_err = |e: tokio_postgres::Error| e.to_string();
    let period: String = row.try_get("period").map_err(get_err)?;
    let timezone: String = row.try_get("timezone").map_err(get_err)?;
    let period = period
        .parse::<Period>()
        .map_err(|_| format!("unknown period {period:?}"))?;
    let timezone = timezone
        .parse::<Tz>()
        .map_err(|_| format!("unknown time zone {timezone:?}"))?;
    let tenant: String = row.try_get("tenant_id").map_err(get_err)?;
    let label = match (
        row.try_get::<_, Option<String>>("label_key")
            .map_err(get_err)?,
        row.try_get::<_, Option<String>>("label_value")
            .map_err(get_err)?,
    ) {
        (Some(key), Some(value)) => Some(LabelMatch { key, value }),
        _ => None,
    };
    let mut thresholds: Vec<u16> = row
        .try_get::<_, Vec<i16>>("thresholds")
        .map_err(get_err)?
        .into_iter()
        .filter_map(|t| u16::try_from(t).ok())
        .collect();
    thresholds.sort_unstable();
    thresholds.dedup();
    Ok(Budget {
        id: row.try_get("id").map_err(get_err)?,
        name: row.try_get("name").map_err(get_err)?,
        scope: Scope {
            tenant: if tenant == EVERY_TENANT {
                TenantScope::Every
            } else {
                TenantScope::One(tenant)
            },
            user: UserScope::from_column(row.try_get("user_id").map_err(get_err)?),
            api_key: row.try_get("api_key").map_err(get_err)?,
            provider: row.try_get("provider").map_err(get_err)?,
            model: row.try_get("model").map_err(get_err)?,
            label,
        },
        period,
        timezone,
        amount_usd: row.try_get("amount_usd").map_err(get_err)?,
        thresholds,
        hard_limit: row.try_get("hard_limit").map_err(get_err)?,
        forecast_alert: row.try_get("forecast_alert").map_err(get_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_store_every_tenant_as_a_star() {
        let budget = Budget::from_json(
            Uuid::nil(),
            &serde_json::json!({"name": "x", "tenant_id": "*", "period": "daily", "amount_usd": "1"}),
        )
        .expect("valid");
        let columns = BudgetColumns::of(&budget);
        assert_eq!(columns.tenant_id, "*");
        assert_eq!(columns.thresholds, vec![50, 75, 90, 100]);
        assert_eq!(columns.timezone, "UTC");
        assert_eq!(
            COLUMNS.split(',').count(),
            columns.params(&budget.id, &budget).len(),
            "one parameter per column"
        );
    }
}
