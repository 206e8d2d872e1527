//! Forecast alerts in the alert outbox on a real TimescaleDB: a budget with
//! `forecast_alert` gets one `kind = 'forecast'` row per user (of an
//! each-user budget) and period when its forecast exceeds the amount; the
//! row is resolved, and put back in the outbox, when the forecast drops
//! back, and raised again when it rises above once more.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use ledger::PriceBook;
use store::forecast_alerts::ForecastChanges;

use crate::budgets_db::{event, Fixture};

fn budget(amount: &str) -> String {
    format!(
        r#"
[[budgets]]
name = "forecast-per-user"
tenant_id = "acme"
user_id = "*"
period = "monthly"
amount_usd = "{amount}"
forecast_alert = true
"#
    )
}

async fn sync(fixture: &Fixture) -> ForecastChanges {
    let client = fixture.database.client().await;
    let now = Utc::now();
    let book = PriceBook::builtin().expect("the built-in book parses");
    let forecasts = store::forecasts::alerting(&client, now, Duration::hours(24), &book)
        .await
        .expect("forecasts");
    store::forecast_alerts::sync(&client, &forecasts, now)
        .await
        .expect("sync")
}

/// Forecast rows: (user, resolved, delivered to Alertmanager).
async fn forecast_rows(fixture: &Fixture) -> Vec<(String, bool, bool)> {
    fixture
        .database
        .client()
        .await
        .query(
            "SELECT user_id, resolved_at IS NOT NULL AS resolved,
                    alertmanager_delivered_at IS NOT NULL AS delivered
             FROM budget_alerts WHERE kind = 'forecast' ORDER BY user_id",
            &[],
        )
        .await
        .expect("forecast rows")
        .iter()
        .map(|row| {
            (
                row.get("user_id"),
                row.get("resolved"),
                row.get("delivered"),
            )
        })
        .collect()
}

fn row(user: &str, resolved: bool, delivered: bool) -> (String, bool, bool) {
    (user.to_owned(), resolved, delivered)
}

#[tokio::test]
async fn a_forecast_above_the_budget_raises_one_alert_per_user_and_period_and_resolves_it() {
    let mut fixture = Fixture::start().await;
    fixture.apply_budgets(&budget("10"), false).await;
    // Spend above the amount: the forecast is above it whatever the time
    // of the month. Bob's is far below.
    let just_now: DateTime<Utc> = (Utc::now() - Duration::seconds(1)).trunc_subsecs(6);
    let mut alice = event("acme", "11", just_now);
    alice.user_id = Some("alice".into());
    let mut bob = event("acme", "0.001", just_now);
    bob.user_id = Some("bob".into());
    fixture.write(&[alice, bob]).await;

    assert_eq!(
        sync(&fixture).await,
        ForecastChanges {
            raised: 1,
            resolved: 0
        }
    );
    assert_eq!(
        forecast_rows(&fixture).await,
        vec![row("alice", false, false)]
    );
    // Once per period: computing again raises nothing new.
    assert_eq!(sync(&fixture).await, ForecastChanges::default());

    // Delivered; then the budget is raised far above the forecast.
    fixture
        .database
        .client()
        .await
        .execute(
            "UPDATE budget_alerts SET alertmanager_delivered_at = now() WHERE kind = 'forecast'",
            &[],
        )
        .await
        .expect("deliver");
    fixture.apply_budgets(&budget("1000000"), false).await;
    assert_eq!(
        sync(&fixture).await,
        ForecastChanges {
            raised: 0,
            resolved: 1
        }
    );
    // Resolved and back in the outbox, to push the resolution.
    assert_eq!(
        forecast_rows(&fixture).await,
        vec![row("alice", true, false)]
    );
    assert_eq!(sync(&fixture).await, ForecastChanges::default());

    // Above again: the same alert (one per period) fires again.
    fixture.apply_budgets(&budget("10"), false).await;
    assert_eq!(
        sync(&fixture).await,
        ForecastChanges {
            raised: 1,
            resolved: 0
        }
    );
    assert_eq!(
        forecast_rows(&fixture).await,
        vec![row("alice", false, false)]
    );
}
