//! Burn-rate forecasts of budgets (`ledger::budget::forecast`) from the
//! stored spend and the audit rows of a trailing window: for the status
//! endpoint (one tenant's budgets) and for the processor's forecast gauge
//! (every budget with `forecast_alert`, each tenant with a spend row in the
//! current period).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use ledger::budget::forecast::{forecast, trailing_window, Forecast};
use ledger::{Budget, PriceBook};
use rust_decimal::Decimal;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::spend::{from_audit, AuditKey};
use crate::{db, DbError};

const CURRENT_SPEND: &str = "
SELECT s.budget_id, s.tenant_id, s.user_id, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($1::uuid[], $2::timestamptz[]) AS k(budget_id, period_start)
  ON s.budget_id = k.budget_id AND s.period_start = k.period_start";

/// The forecast of each of `budgets` for `tenant` (and `user` on each-user
/// budgets), whose current spend is `spend`.
#[allow(clippy::too_many_arguments)]
pub async fn for_tenant(
    client: &impl GenericClient,
    tenant: &str,
    user: Option<&str>,
    budgets: &[Budget],
    spend: &HashMap<Uuid, Decimal>,
    now: DateTime<Utc>,
    window: Duration,
    book: &PriceBook,
) -> Result<HashMap<Uuid, Forecast>, DbError> {
    let users: Vec<String> = budgets
        .iter()
        .map(|b| b.scope.user.spend_key(user))
        .collect();
    let rows: Vec<(&Budget, &str, &str, Decimal)> = budgets
        .iter()
        .zip(&users)
        .map(|(b, user)| {
            (
                b,
                tenant,
                user.as_str(),
                spend.get(&b.id).copied().unwrap_or(Decimal::ZERO),
            )
        })
        .collect();
    let forecasts = compute(client, &rows, now, window, book).await?;
    Ok(budgets.iter().map(|b| b.id).zip(forecasts).collect())
}

/// One budget's forecast for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantForecast {
    pub budget: Budget,
    pub tenant_id: String,
    /// The user of an each-user budget's row; `""` otherwise.
    pub user_id: String,
    pub spend_usd: Decimal,
    pub forecast: Forecast,
}

/// The forecasts of every budget with `forecast_alert`, for each tenant
/// with spend in the budget's current period.
pub async fn alerting(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    window: Duration,
    book: &PriceBook,
) -> Result<Vec<TenantForecast>, DbError> {
    let budgets: Vec<Budget> = crate::budgets::list(client)
        .await?
        .into_iter()
        .filter(|b| b.forecast_alert)
        .collect();
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = budgets.iter().map(|b| b.id).collect();
    let starts: Vec<DateTime<Utc>> = budgets.iter().map(|b| b.period_of(now).start).collect();
    let by_id: HashMap<Uuid, &Budget> = budgets.iter().map(|b| (b.id, b)).collect();
    let spend_rows = client
        .query(CURRENT_SPEND, &[&ids, &starts])
        .await
        .map_err(db("reading current spend"))?;
    let mut owned: Vec<(Budget, String, String, Decimal)> = Vec::with_capacity(spend_rows.len());
    for row in &spend_rows {
        let get = db("reading current spend");
        let id: Uuid = row.try_get("budget_id").map_err(&get)?;
        if let Some(budget) = by_id.get(&id) {
            owned.push((
                (*budget).clone(),
                row.try_get("tenant_id").map_err(&get)?,
                row.try_get("user_id").map_err(&get)?,
                row.try_get("spend_usd").map_err(&get)?,
            ));
        }
    }
    let rows: Vec<(&Budget, &str, &str, Decimal)> = owned
        .iter()
        .map(|(b, tenant, user, spend)| (b, tenant.as_str(), user.as_str(), *spend))
        .collect();
    let forecasts = compute(client, &rows, now, window, book).await?;
    Ok(owned
        .into_iter()
        .zip(forecasts)
        .map(
            |((budget, tenant_id, user_id, spend_usd), forecast)| TenantForecast {
                budget,
                tenant_id,
                user_id,
                spend_usd,
                forecast,
            },
        )
        .collect())
}

async fn compute(
    client: &impl GenericClient,
    rows: &[(&Budget, &str, &str, Decimal)],
    now: DateTime<Utc>,
    window: Duration,
    book: &PriceBook,
) -> Result<Vec<Forecast>, DbError> {
    let keys: Vec<AuditKey<'_>> = rows
        .iter()
        .map(|(budget, tenant, user, _)| AuditKey {
            tenant_id: tenant,
            user_id: user,
            period: trailing_window(budget.period_of(now), now, window),
            scope: &budget.scope,
        })
        .collect();
    let window_spend = from_audit(client, &keys, book).await?;
    Ok(rows
        .iter()
        .zip(keys.iter().zip(window_spend))
        .map(|((budget, _, _, spend), (key, in_window))| {
            forecast(
                budget.amount_usd,
                *spend,
                in_window,
                key.period,
                budget.period_of(now),
                now,
            )
        })
        .collect())
}
