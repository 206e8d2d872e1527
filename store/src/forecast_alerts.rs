//! Forecast alerts in `budget_alerts` (`kind = 'forecast'`): a budget with
//! `forecast_alert` gets one row per tenant (and user, for an each-user
//! budget) and period when its burn-rate forecast first exceeds the amount,
//! resolved (`resolved_at`) when the forecast drops back to the amount or
//! below, and raised again if it rises above once more. Each change puts the
//! row back in the outbox (its delivery columns cleared), so the processor
//! pushes the alert, then its resolution, like a threshold crossing.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::forecasts::TenantForecast;
use crate::{db, DbError};

/// Threshold column of a forecast row: the amount, 100 %.
pub const FORECAST_THRESHOLD: i16 = 100;

// One statement: a row raised and resolved by two processors at once
// serialises on the row, and each transition happens once (`resolved_at IS
// NULL` / `IS NOT NULL` guard it).
const SYNC: &str = "
WITH f AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[],
                         $10::numeric[], $11::numeric[], $12::bool[])
        AS f(budget_id, tenant_id, user_id, period_start, period_end, budget_name, period,
             timezone, narrowing, amount_usd, forecast_usd, exceeded)
), raised AS (
    INSERT INTO budget_alerts AS a (budget_id, tenant_id, user_id, period_start, kind, threshold,
                                    period_end, budget_name, period, timezone, narrowing,
                                    amount_usd, spend_usd)
    SELECT budget_id, tenant_id, user_id, period_start, 'forecast', $13, period_end,
           budget_name, period, timezone, narrowing, amount_usd, forecast_usd
    FROM f WHERE exceeded
    ON CONFLICT (budget_id, tenant_id, user_id, period_start, kind, threshold) DO UPDATE
    SET resolved_at = NULL, crossed_at = now(), spend_usd = EXCLUDED.spend_usd,
        amount_usd = EXCLUDED.amount_usd, alertmanager_delivered_at = NULL,
        webhook_delivered_at = NULL, alertmanager_rejected_at = NULL,
        webhook_rejected_at = NULL, rejection = NULL, attempts = 0, next_attempt_at = now()
    WHERE a.resolved_at IS NOT NULL
    RETURNING 1
), resolved AS (
    UPDATE budget_alerts AS a
    SET resolved_at = now(), spend_usd = f.forecast_usd, alertmanager_delivered_at = NULL,
        webhook_delivered_at = NULL, alertmanager_rejected_at = NULL,
        webhook_rejected_at = NULL, rejection = NULL, attempts = 0, next_attempt_at = now()
    FROM f
    WHERE NOT f.exceeded AND a.kind = 'forecast' AND a.threshold = $13
      AND a.budget_id = f.budget_id AND a.tenant_id = f.tenant_id AND a.user_id = f.user_id
      AND a.period_start = f.period_start AND a.resolved_at IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM raised) AS raised, (SELECT count(*) FROM resolved) AS resolved";

/// What [`sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForecastChanges {
    /// Alerts raised now (new, or raised again after a resolution).
    pub raised: i64,
    pub resolved: i64,
}

/// Raises the forecast alert of each forecast above its budget's amount
/// that has none open, and resolves the open ones whose forecast is back at
/// or below it.
pub async fn sync(
    client: &impl GenericClient,
    forecasts: &[TenantForecast],
    now: DateTime<Utc>,
) -> Result<ForecastChanges, DbError> {
    if forecasts.is_empty() {
        return Ok(ForecastChanges::default());
    }
    let ids: Vec<Uuid> = forecasts.iter().map(|f| f.budget.id).collect();
    let tenants: Vec<&str> = forecasts.iter().map(|f| f.tenant_id.as_str()).collect();
    let users: Vec<&str> = forecasts.iter().map(|f| f.user_id.as_str()).collect();
    let bounds: Vec<_> = forecasts.iter().map(|f| f.budget.period_of(now)).collect();
    let starts: Vec<DateTime<Utc>> = bounds.iter().map(|b| b.start).collect();
    let ends: Vec<DateTime<Utc>> = bounds.iter().map(|b| b.end).collect();
    let names: Vec<&str> = forecasts.iter().map(|f| f.budget.name.as_str()).collect();
    let periods: Vec<&str> = forecasts.iter().map(|f| f.budget.period.as_str()).collect();
    let zones: Vec<&str> = forecasts.iter().map(|f| f.budget.timezone.name()).collect();
    let narrowings: Vec<String> = forecasts
        .iter()
        .map(|f| f.budget.scope.narrowing())
        .collect();
    let amounts: Vec<Decimal> = forecasts.iter().map(|f| f.budget.amount_usd).collect();
    let projected: Vec<Decimal> = forecasts.iter().map(|f| f.forecast.forecast_usd).collect();
    let exceeded: Vec<bool> = forecasts
        .iter()
        .map(|f| f.forecast.forecast_usd > f.budget.amount_usd)
        .collect();
    let row = client
        .query_one(
            SYNC,
            &[
                &ids,
                &tenants,
                &users,
                &starts,
                &ends,
                &names,
                &periods,
                &zones,
                &narrowings,
                &amounts,
                &projected,
                &exceeded,
                &FORECAST_THRESHOLD,
            ],
        )
        .await
        .map_err(db("syncing forecast alerts"))?;
    let get = db("reading forecast alert changes");
    Ok(ForecastChanges {
        raised: row.try_get("raised").map_err(&get)?,
        resolved: row.try_get("resolved").map_err(&get)?,
    })
}
