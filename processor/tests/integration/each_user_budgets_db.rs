//! A budget for each user (`user_id = "*"`) on a real TimescaleDB: the
//! batch keeps its spend per tenant and user, records its crossings once
//! per user, and the tenant's budget counts the same events together.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger::UsageEvent;
use rust_decimal::Decimal;

use crate::budgets_db::{at, event, usd, Fixture};

const EACH_USER: &str = r#"
[[budgets]]
name = "per-user-daily"
tenant_id = "*"
user_id = "*"
period = "daily"
amount_usd = "10"
thresholds = [50, 100]

[[budgets]]
name = "acme-daily"
tenant_id = "acme"
period = "daily"
amount_usd = "100"
thresholds = [50]
"#;

fn of(user: Option<&str>, tenant: &str, cost: &str, when: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        user_id: user.map(str::to_owned),
        ..event(tenant, cost, when)
    }
}

/// Spend per (budget, tenant, user).
async fn spend(fixture: &Fixture) -> BTreeMap<(String, String, String), Decimal> {
    fixture
        .database
        .client()
        .await
        .query(
            "SELECT b.name, s.tenant_id, s.user_id, s.spend_usd
             FROM budget_spend s JOIN budgets b ON b.id = s.budget_id",
            &[],
        )
        .await
        .expect("spend")
        .iter()
        .map(|row| {
            (
                (row.get("name"), row.get("tenant_id"), row.get("user_id")),
                row.get("spend_usd"),
            )
        })
        .collect()
}

/// Crossings as (budget, tenant, user, threshold).
async fn alerts(fixture: &Fixture) -> Vec<(String, String, String, i16)> {
    fixture
        .database
        .client()
        .await
        .query(
            "SELECT budget_name, tenant_id, user_id, threshold FROM budget_alerts
             ORDER BY budget_name, tenant_id, user_id, threshold",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|row| {
            (
                row.get("budget_name"),
                row.get("tenant_id"),
                row.get("user_id"),
                row.get("threshold"),
            )
        })
        .collect()
}

fn key(budget: &str, tenant: &str, user: &str) -> (String, String, String) {
    (budget.to_owned(), tenant.to_owned(), user.to_owned())
}

#[tokio::test]
async fn a_budget_for_each_user_keeps_spend_and_alerts_per_user_beside_the_tenant_budget() {
    let mut fixture = Fixture::start().await;
    fixture.apply_budgets(EACH_USER, false).await;
    let day = at(2026, 1, 10, 12);
    let first = fixture.records(&[
        of(Some("alice"), "acme", "6", day),
        of(Some("bob"), "acme", "3", day),
        of(None, "acme", "1", day),
        of(Some("alice"), "globex", "2", day),
    ]);
    assert_eq!(fixture.write_records(first.clone()).await, 4);
    // Redelivered: nothing counts twice.
    assert_eq!(fixture.write_records(first).await, 0);
    let stored = spend(&fixture).await;
    assert_eq!(stored[&key("per-user-daily", "acme", "alice")], usd("6"));
    assert_eq!(stored[&key("per-user-daily", "acme", "bob")], usd("3"));
    // Usage naming no user is one more user, keyed "".
    assert_eq!(stored[&key("per-user-daily", "acme", "")], usd("1"));
    assert_eq!(stored[&key("per-user-daily", "globex", "alice")], usd("2"));
    // The tenant's budget counts every user's usage together.
    assert_eq!(stored[&key("acme-daily", "acme", "")], usd("10"));
    assert_eq!(stored.len(), 5, "{stored:?}");
    assert_eq!(
        alerts(&fixture).await,
        vec![(
            "per-user-daily".to_owned(),
            "acme".to_owned(),
            "alice".to_owned(),
            50
        )]
    );

    // Bob reaching 50 % is his own crossing, not lost to alice's; alice
    // reaching 100 % is hers.
    fixture
        .write(&[
            of(Some("bob"), "acme", "2", day),
            of(Some("alice"), "acme", "4", day),
        ])
        .await;
    let crossed: Vec<(String, i16)> = alerts(&fixture)
        .await
        .into_iter()
        .filter(|(budget, tenant, _, _)| budget == "per-user-daily" && tenant == "acme")
        .map(|(_, _, user, threshold)| (user, threshold))
        .collect();
    assert_eq!(
        crossed,
        vec![
            ("alice".to_owned(), 50),
            ("alice".to_owned(), 100),
            ("bob".to_owned(), 50)
        ]
    );
    assert_eq!(
        spend(&fixture).await[&key("acme-daily", "acme", "")],
        usd("16")
    );
}
