//! Forecast alerts end to end: the real gateway and processor binaries, a broker, TimescaleDB
//! and a real Alertmanager.
//!
//! - `a_forecast_alert_per_user_reaches_alertmanager_and_resolves`: a budget for each user with
//!   `forecast_alert`; one user's spend puts the forecast above the amount and the processor
//!   pushes one `LLMBudgetForecast` alert (`kind="forecast"`, `user_id`) through the alert
//!   outbox; raising the amount above the forecast resolves it, and Alertmanager stops showing
//!   it.

use std::time::Duration;

use e2e::wait_for_some;
use serde_json::{json, Value};

use crate::budgets::{event, Stack, ADMIN_KEY};

const ALERT_WAIT: Duration = Duration::from_secs(60);

/// The forecast alerts Alertmanager shows as active.
async fn forecast_alerts(stack: &Stack) -> Vec<Value> {
    stack
        .alertmanager
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "LLMBudgetForecast")
        .collect()
}

fn budget(amount: &str) -> Value {
    json!({
        "name": "acme-forecast", "tenant_id": "acme", "user_id": "*", "period": "monthly",
        "amount_usd": amount, "thresholds": [1000], "forecast_alert": true,
    })
}

#[tokio::test]
async fn a_forecast_alert_per_user_reaches_alertmanager_and_resolves() {
    let stack = Stack::start().await;
    let (mut processor, _) = stack
        .processor_with(
            &stack.alertmanager.url(),
            "",
            0,
            &[("TOKENLEDGER_ALERTING__FORECAST_INTERVAL_MS", "300")],
        )
        .await;
    let (status, created) = stack
        .call("POST", "/v1/budgets", ADMIN_KEY, Some(budget("5")))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    // Alice's spend is above the amount, so her forecast is whatever the hour; bob's is tiny.
    let mut alice = event("acme", "6");
    alice["user_id"] = json!("alice");
    let mut bob = event("acme", "0.0001");
    bob["user_id"] = json!("bob");
    stack.usage_events(vec![alice, bob]).await;

    let raised = wait_for_some(ALERT_WAIT, || async {
        let alerts = forecast_alerts(&stack).await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await
    .unwrap_or_else(|| {
        processor.assert_running();
        panic!(
            "no forecast alert in Alertmanager; processor log:\n{}",
            processor.log_tail()
        )
    });
    assert_eq!(raised.len(), 1, "{raised:?}");
    let labels = &raised[0]["labels"];
    assert_eq!(labels["kind"], "forecast");
    assert_eq!(labels["user_id"], "alice");
    assert_eq!(labels["tenant_id"], "acme");
    assert_eq!(labels["budget"], "acme-forecast");
    assert!(
        raised[0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("user alice")),
        "{raised:?}"
    );

    // The amount raised far above the forecast: the alert is resolved and pushed again, ended.
    let (status, edited) = stack
        .call(
            "PUT",
            &format!("/v1/budgets/{id}"),
            ADMIN_KEY,
            Some(budget("1000000")),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    let gone = wait_for_some(ALERT_WAIT, || async {
        forecast_alerts(&stack).await.is_empty().then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the forecast alert is still active; processor log:\n{}",
        processor.log_tail()
    );
    let row = stack
        .db
        .client()
        .await
        .query_one(
            "SELECT resolved_at IS NOT NULL AS resolved,
                    alertmanager_delivered_at IS NOT NULL AS delivered
             FROM budget_alerts WHERE kind = 'forecast'",
            &[],
        )
        .await
        .expect("one forecast row");
    assert!(row.get::<_, bool>("resolved"));
    assert!(row.get::<_, bool>("delivered"));
}
