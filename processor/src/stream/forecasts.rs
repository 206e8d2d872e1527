//! Burn-rate forecasts: every `alerting.forecast_interval_ms`, the forecast
//! of each budget with `forecast_alert` for each tenant (and user, for an
//! each-user budget) with spend in the current period (`store::forecasts`).
//!
//! - Pushed alerts: a forecast above the amount raises one
//!   `LLMBudgetForecast` alert (`kind="forecast"`) per budget, tenant, user
//!   and period in the alert outbox (`store::forecast_alerts`), resolved when
//!   the forecast drops back; the outbox delivers both like a crossing.
//! - The gauge `tokenledger_budget_forecast_ratio{tenant_id, budget,
//!   period}` (forecast / amount; an each-user budget's highest user), for
//!   the `TokenledgerBudgetForecastExceeded` rule (alerts/).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use ledger::PriceBook;
use prometheus::{GaugeVec, Opts, Registry};
use rust_decimal::prelude::ToPrimitive;
use tokio_util::sync::CancellationToken;

use crate::config::AlertingConfig;

/// Registers the gauge and spawns the loop that refreshes it until `stop`.
pub fn spawn(
    pool: Pool,
    config: &AlertingConfig,
    registry: &Registry,
    stop: CancellationToken,
    book: Arc<PriceBook>,
) -> Result<(), prometheus::Error> {
    let gauge = GaugeVec::new(
        Opts::new(
            "tokenledger_budget_forecast_ratio",
            "Projected spend at the end of the current period (the spend rate of the trailing \
             alerting.forecast_window_s carried forward) divided by the budget amount, for \
             budgets with forecast_alert, per tenant with spend this period.",
        ),
        &["tenant_id", "budget", "period"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    let window = chrono::Duration::seconds(i64::from(config.forecast_window_s));
    let every = Duration::from_millis(config.forecast_interval_ms.max(1));
    tokio::spawn(async move {
        // The names a model budget counts come from the stream's own book
        // (the operator's file over the built-in one), so a forecast counts
        // the spend the batch counted.
        loop {
            if let Err(error) = refresh(&pool, &gauge, window, &book).await {
                tracing::warn!(%error, "cannot refresh the budget forecasts");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok(())
}

async fn refresh(
    pool: &Pool,
    gauge: &GaugeVec,
    window: chrono::Duration,
    book: &PriceBook,
) -> Result<(), String> {
    let client = pool.get().await.map_err(|error| error.to_string())?;
    let forecasts = store::forecasts::alerting(&**client, Utc::now(), window, book)
        .await
        .map_err(|error| error.to_string())?;
    let changes = store::forecast_alerts::sync(&**client, &forecasts, Utc::now())
        .await
        .map_err(|error| error.to_string())?;
    if changes != store::forecast_alerts::ForecastChanges::default() {
        tracing::info!(
            raised = changes.raised,
            resolved = changes.resolved,
            "budget forecast alerts recorded"
        );
    }
    // Reset first: a budget deleted, renamed or in a new period must not
    // keep its last value.
    gauge.reset();
    // An each-user budget's series per tenant is its user nearest the
    // amount: users are not label values (their number is unbounded).
    let mut ratios: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
    for row in &forecasts {
        let ratio = ledger::budget::spend_ratio(row.forecast.forecast_usd, row.budget.amount_usd)
            .to_f64()
            .unwrap_or(0.0);
        let key = (
            row.tenant_id.as_str(),
            row.budget.name.as_str(),
            row.budget.period.as_str(),
        );
        let slot = ratios.entry(key).or_insert(ratio);
        *slot = slot.max(ratio);
    }
    for ((tenant, budget, period), ratio) in ratios {
        gauge
            .with_label_values(&[tenant, budget, period])
            .set(ratio);
    }
    Ok(())
}
