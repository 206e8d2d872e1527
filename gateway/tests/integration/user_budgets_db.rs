//! Budgets of one user on a real TimescaleDB: a user's usage counts toward
//! the user's budget and the tenant's together, the status takes a
//! `user_id`, and a reservation for a user holds against both.

use std::sync::Arc;

use crate::support::{app, key_ring, send_json, ACME_KEY, ADMIN_KEY};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use chrono::{SubsecRound, Utc};
use e2e::Database;
use gateway::budgets::{self, BudgetStore};
use gateway::config::DatabaseConfig;
use gateway::reservations::{self, ReservationsConfig};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

pub(crate) fn gateway(database: &Database) -> Router {
    let store = BudgetStore::connect_lazily(&DatabaseConfig {
        url: Some(database.url().into()),
        pool_size: 2,
        timeout_ms: 60_000,
    })
    .expect("pool builds");
    let keys = Arc::new(key_ring());
    let routes = budgets::routes(keys.clone(), store.clone()).merge(reservations::routes(
        keys,
        store,
        ReservationsConfig::default(),
    ));
    gateway::router_with(app().state, routes)
}

pub(crate) fn request(method: &str, path: &str, key: &str, body: Option<&Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request builds")
}

pub(crate) async fn create_budget(router: &Router, budget: Value) -> (u16, Value) {
    let (status, _, created) = send_json(
        router,
        request("POST", "/v1/budgets", ADMIN_KEY, Some(&budget)),
    )
    .await;
    (status, created)
}

/// One stored usage row of acme's `user` costing `cost` (what the processor
/// writes; the status computes spend from it).
pub(crate) async fn spent(database: &Database, user: &str, cost: Decimal) {
    let now = Utc::now().trunc_subsecs(6);
    database
        .client()
        .await
        .execute(
            "INSERT INTO gateway_mode_audit (id, tenant_id, user_id, provider, model,
                 prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at,
                 pricing_status, labels, received_at, payload_sha256, source_partition,
                 source_offset)
             VALUES ($1, 'acme', $2, 'openai', 'gpt-4o', 1, 1, 2, $3, $4, 'provided', '{}',
                     $4, '\\x00', 0, 0)",
            &[&Uuid::now_v7(), &user, &cost, &now],
        )
        .await
        .expect("audit row");
}

async fn status(router: &Router, query: &str) -> Vec<(String, String)> {
    let (status, _, shown) = send_json(
        router,
        request("GET", &format!("/v1/budgets/status{query}"), ACME_KEY, None),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    let mut budgets: Vec<(String, String)> = shown["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().expect("name").to_owned(),
                b["spend_usd"].as_str().expect("spend").to_owned(),
            )
        })
        .collect();
    budgets.sort();
    budgets
}

pub(crate) async fn reserve(router: &Router, body: Value) -> (u16, Value) {
    let (status, _, answer) = send_json(
        router,
        request("POST", "/v1/budgets/reservations", ACME_KEY, Some(&body)),
    )
    .await;
    (status, answer)
}

pub(crate) fn names(granted: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = granted["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn a_users_spend_counts_toward_the_user_budget_and_the_tenant_budget() {
    let database = Database::start().await;
    database.migrate().await;
    let router = gateway(&database);
    for budget in [
        json!({"name": "acme", "tenant_id": "acme", "period": "monthly", "amount_usd": "10",
               "hard_limit": true}),
        json!({"name": "acme-alice", "tenant_id": "acme", "user_id": "alice",
               "period": "monthly", "amount_usd": "3", "hard_limit": true}),
    ] {
        let (status, created) = create_budget(&router, budget).await;
        assert_eq!(status, 201, "{created}");
    }
    spent(&database, "alice", Decimal::new(2, 0)).await;
    spent(&database, "bob", Decimal::new(4, 0)).await;

    let pair = |name: &str, spend: &str| (name.to_owned(), spend.to_owned());
    assert_eq!(
        status(&router, "?user_id=alice").await,
        vec![pair("acme", "6"), pair("acme-alice", "2")]
    );
    assert_eq!(
        status(&router, "?user_id=bob").await,
        vec![pair("acme", "6")]
    );
    assert_eq!(
        status(&router, "").await,
        vec![pair("acme", "6"), pair("acme-alice", "2")]
    );

    let (code, refused) = reserve(&router, json!({"amount_usd": "1.5", "user_id": "alice"})).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["budget"]["name"], "acme-alice");
    let (code, granted) = reserve(&router, json!({"amount_usd": "1", "user_id": "alice"})).await;
    assert_eq!(code, 201, "{granted}");
    assert_eq!(names(&granted), ["acme", "acme-alice"]);
    // Bob's call is not held against alice's budget; the tenant's has $3.
    let (code, granted) = reserve(&router, json!({"amount_usd": "3", "user_id": "bob"})).await;
    assert_eq!(code, 201, "{granted}");
    assert_eq!(names(&granted), ["acme"]);
    // A call naming no user may be alice's: her budget holds it too.
    let (code, refused) = reserve(&router, json!({"amount_usd": "0.01"})).await;
    assert_eq!(code, 409, "{refused}");
}
