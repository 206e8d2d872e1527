//! How a [`Budget`] is stored in the `budgets` table (sql/V3__budgets.sql):
//! the one mapping between the two, shared by the gateway's admin API, which
//! writes budgets, and the processor, which reads them in every batch.
//!
//! Still no I/O here: these functions only convert values that a caller
//! reads or binds with its own connection.

use chrono_tz::Tz;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::budget::{Budget, LabelMatch, Period, Scope, TenantScope, EVERY_TENANT};

/// Deletes a budget's stored spend when the definition about to be written
/// changes what that spend depends on (scope, period, time zone): the rows
/// no longer describe the budget, and the processor rebuilds them from the
/// audit table at the next matching event. Run it before the write, with
/// [`BudgetColumns::scope_params`].
pub const RESET_SPEND_IF_SCOPE_CHANGED: &str = "
DELETE FROM budget_spend
WHERE budget_id = $1
  AND NOT EXISTS (
      SELECT 1 FROM budgets
      WHERE id = $1 AND tenant_id = $2 AND provider IS NOT DISTINCT FROM $3
        AND model IS NOT DISTINCT FROM $4 AND label_key IS NOT DISTINCT FROM $5
        AND label_value IS NOT DISTINCT FROM $6 AND period = $7 AND timezone = $8)";

/// A budget's values in the column types of `budgets`.
#[derive(Debug)]
pub struct BudgetColumns {
    pub tenant_id: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub label_key: Option<String>,
    pub label_value: Option<String>,
    pub period: &'static str,
    pub timezone: &'static str,
    pub thresholds: Vec<i16>,
}

impl BudgetColumns {
    pub fn of(budget: &Budget) -> Self {
        Self {
            tenant_id: budget.scope.tenant.as_str().to_owned(),
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
    pub fn scope_params<'a>(&'a self, id: &'a uuid::Uuid) -> [&'a (dyn ToSql + Sync); 8] {
        [
            id,
            &self.tenant_id,
            &self.provider,
            &self.model,
            &self.label_key,
            &self.label_value,
            &self.period,
            &self.timezone,
        ]
    }

    /// The parameters of an INSERT or UPDATE listing `id, name, tenant_id,
    /// provider, model, label_key, label_value, period, timezone,
    /// amount_usd, thresholds, hard_limit` as `$1..$12`.
    pub fn params<'a>(
        &'a self,
        id: &'a uuid::Uuid,
        budget: &'a Budget,
    ) -> [&'a (dyn ToSql + Sync); 12] {
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
        ]
    }
}

/// The budget a `budgets` row describes, or why the row is not one the API
/// would have written (say, a time zone typed in by hand). Callers skip such
/// a row with a warning rather than stop serving or ingesting.
pub fn budget_from_row(row: &Row) -> Result<Budget, String> {
    let period: String = row.try_get("period").map_err(|e| e.to_string())?;
    let timezone: String = row.try_get("timezone").map_err(|e| e.to_string())?;
    let period = period
        .parse::<Period>()
        .map_err(|_| format!("unknown period {period:?}"))?;
    let timezone = timezone
        .parse::<Tz>()
        .map_err(|_| format!("unknown time zone {timezone:?}"))?;
    let get_err = |e: tokio_postgres::Error| e.to_string();
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
            provider: row.try_get("provider").map_err(get_err)?,
            model: row.try_get("model").map_err(get_err)?,
            label,
        },
        period,
        timezone,
        amount_usd: row.try_get("amount_usd").map_err(get_err)?,
        thresholds,
        hard_limit: row.try_get("hard_limit").map_err(get_err)?,
    })
}
