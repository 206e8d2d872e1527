//! A budget for each user (`user_id = "*"`) on a real TimescaleDB: the
//! status reports it per user, and a reservation holds against the
//! reserving user's own remaining (and the tenant's budget) only.

use crate::support::{send_json, ACME_KEY};
use crate::user_budgets_db::{create_budget, gateway, names, request, reserve, spent};
use axum::Router;
use e2e::Database;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// (budget, whose spend, spend, reserved) of each status entry, sorted.
async fn status(router: &Router, query: &str) -> Vec<(String, String, String, String)> {
    let (status, _, shown) = send_json(
        router,
        request("GET", &format!("/v1/budgets/status{query}"), ACME_KEY, None),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    let mut entries: Vec<(String, String, String, String)> = shown["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .map(|b| {
            (
                text(&b["name"]),
                text(&b["spend_user_id"]),
                text(&b["spend_usd"]),
                text(&b["reserved_usd"]),
            )
        })
        .collect();
    entries.sort();
    entries
}

fn entry(name: &str, user: &str, spend: &str, reserved: &str) -> (String, String, String, String) {
    (name.into(), user.into(), spend.into(), reserved.into())
}

#[tokio::test]
async fn a_budget_for_each_user_reports_and_reserves_per_user() {
    let database = Database::start().await;
    database.migrate().await;
    let router = gateway(&database);
    for budget in [
        json!({"name": "acme", "tenant_id": "acme", "period": "monthly", "amount_usd": "10",
               "hard_limit": true}),
        json!({"name": "per-user", "tenant_id": "acme", "user_id": "*", "period": "monthly",
               "amount_usd": "3", "hard_limit": true}),
    ] {
        let (status, created) = create_budget(&router, budget).await;
        assert_eq!(status, 201, "{created}");
    }
    spent(&database, "alice", Decimal::new(2, 0)).await;
    spent(&database, "bob", Decimal::new(1, 0)).await;

    assert_eq!(
        status(&router, "?user_id=alice").await,
        vec![
            entry("acme", "-", "3", "0"),
            entry("per-user", "alice", "2", "0")
        ]
    );
    assert_eq!(
        status(&router, "?user_id=bob").await,
        vec![
            entry("acme", "-", "3", "0"),
            entry("per-user", "bob", "1", "0")
        ]
    );

    // Alice has $1 left of her own $3; bob's spend is not hers.
    let (code, refused) = reserve(&router, json!({"amount_usd": "1.5", "user_id": "alice"})).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["budget"]["name"], "per-user");
    assert_eq!(refused["budget"]["user_id"], "alice");
    let (code, granted) = reserve(&router, json!({"amount_usd": "1", "user_id": "alice"})).await;
    assert_eq!(code, 201, "{granted}");
    assert_eq!(names(&granted), ["acme", "per-user"]);
    // Alice's hold does not reduce bob's room: he has $2.
    let (code, granted) = reserve(&router, json!({"amount_usd": "1.5", "user_id": "bob"})).await;
    assert_eq!(code, 201, "{granted}");
    let (code, refused) = reserve(&router, json!({"amount_usd": "1", "user_id": "bob"})).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["budget"]["name"], "per-user");

    // Without a user, each user with spend this period is an entry.
    assert_eq!(
        status(&router, "").await,
        vec![
            entry("acme", "-", "3", "2.5"),
            entry("per-user", "alice", "2", "1"),
            entry("per-user", "bob", "1", "1.5"),
        ]
    );
}
