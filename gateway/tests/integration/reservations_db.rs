//! Budget reservations on a real TimescaleDB (PostgreSQL + TimescaleDB
//! through the e2e harness): exact grants under concurrency from two
//! gateways with their own pools, idempotent retries, tenant isolation and
//! what a period change does to open reservations.

use std::sync::Arc;

use crate::support::{app, key_ring, send_json, ACME_KEY, ADMIN_KEY, GLOBEX_KEY};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use e2e::Database;
use gateway::budgets::{self, BudgetStore};
use gateway::config::DatabaseConfig;
use gateway::reservations::{self, ReservationsConfig};
use rust_decimal::Decimal;
use serde_json::{json, Value};

async fn migrated_database() -> Database {
    let database = Database::start().await;
    database.migrate().await;
    database
}

/// One gateway: its own pool on the shared database.
fn gateway(database: &Database, pool_size: usize) -> Router {
    let store = BudgetStore::connect_lazily(&DatabaseConfig {
        url: Some(database.url().into()),
        pool_size,
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

fn request(method: &str, path: &str, key: &str, body: Option<&Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request builds")
}

async fn create_budget(router: &Router, budget: Value) -> String {
    let (status, _, created) = send_json(
        router,
        request("POST", "/v1/budgets", ADMIN_KEY, Some(&budget)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("an id").to_owned()
}

async fn reserve(router: &Router, key: &str, body: Value) -> (u16, axum::http::HeaderMap, Value) {
    send_json(
        router,
        request("POST", "/v1/budgets/reservations", key, Some(&body)),
    )
    .await
}

async fn held(database: &Database) -> Decimal {
    database
        .client()
        .await
        .query_one(
            "SELECT coalesce(sum(amount_usd), 0) AS held FROM budget_reservation_holds",
            &[],
        )
        .await
        .expect("holds")
        .get("held")
}

/// Issue: nothing refused a call at a hard limit, and checking the status
/// first races (every concurrent caller sees room). 200 concurrent $1
/// reservations against a $50 hard budget, sent half to each of two
/// gateways with their own pools, grant exactly 50.
#[tokio::test]
async fn two_hundred_concurrent_reservations_against_fifty_dollars_grant_exactly_fifty() {
    let database = migrated_database().await;
    let first = gateway(&database, 8);
    let second = gateway(&database, 8);
    create_budget(
        &first,
        json!({"name": "acme-hard", "tenant_id": "acme", "period": "monthly",
               "amount_usd": "50", "hard_limit": true}),
    )
    .await;
    // A soft budget of the same tenant is held against but refuses nothing.
    create_budget(
        &first,
        json!({"name": "every-soft", "tenant_id": "*", "period": "daily", "amount_usd": "10"}),
    )
    .await;

    let calls = (0..200).map(|i| {
        let router = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tokio::spawn(async move {
            reserve(
                &router,
                ACME_KEY,
                json!({"amount_usd": "1", "model": "gpt-4o"}),
            )
            .await
        })
    });
    let answers = futures::future::join_all(calls).await;
    let mut granted = 0;
    let mut exhausted = 0;
    for answer in answers {
        let (status, _, body) = answer.expect("task completes");
        match status {
            201 => granted += 1,
            409 => {
                assert_eq!(body["error"], "budget_exhausted", "{body}");
                assert_eq!(body["budget"]["name"], "acme-hard", "{body}");
                assert_eq!(body["budget"]["remaining_usd"], "0", "{body}");
                exhausted += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((granted, exhausted), (50, 150));
    assert_eq!(
        held(&database).await,
        Decimal::new(100, 0),
        "50 on each budget"
    );
}

#[tokio::test]
async fn a_grant_names_every_budget_and_a_refusal_names_the_one_without_room() {
    let database = migrated_database().await;
    let router = gateway(&database, 2);
    create_budget(
        &router,
        json!({"name": "acme-hard", "tenant_id": "acme", "period": "monthly",
               "amount_usd": "5", "hard_limit": true}),
    )
    .await;
    create_budget(
        &router,
        json!({"name": "anthropic-only", "tenant_id": "acme", "provider": "anthropic",
               "period": "daily", "amount_usd": "1", "hard_limit": true}),
    )
    .await;

    let (status, _, granted) = reserve(
        &router,
        ACME_KEY,
        json!({"amount_usd": "2", "provider": "openai"}),
    )
    .await;
    assert_eq!(status, 201, "{granted}");
    let names: Vec<&str> = granted["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["acme-hard"],
        "a budget on another provider is not held"
    );
    assert_eq!(granted["budgets"][0]["remaining_usd"], "3");
    assert!(granted["expires_at"].is_string());

    // No provider named: the anthropic budget may count it, and has $1.
    let (status, _, refused) = reserve(&router, ACME_KEY, json!({"amount_usd": "2"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["budget"]["name"], "anthropic-only");
    assert_eq!(refused["budget"]["remaining_usd"], "1");
    assert_eq!(
        held(&database).await,
        Decimal::new(2, 0),
        "the refusal held nothing"
    );

    let (status, _, shown) = send_json(
        &router,
        request("GET", "/v1/budgets/status", ACME_KEY, None),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    let acme = shown["budgets"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "acme-hard"))
        .expect("acme-hard in the status");
    assert_eq!(acme["reserved_usd"], "2");
    assert_eq!(acme["available_usd"], "3");
    assert_eq!(
        acme["remaining_usd"], "5",
        "remaining is the amount less spend, as before"
    );
    assert_eq!(acme["forecast_usd"], "0", "no spend, no rate");
    assert_eq!(acme["projected_exhaustion_at"], Value::Null);
}

/// A retried POST gets the same reservation; a different request reusing
/// the key is refused; the key is per tenant.
#[tokio::test]
async fn an_idempotency_key_returns_the_same_reservation_and_refuses_a_different_body() {
    let database = migrated_database().await;
    let router = gateway(&database, 4);
    create_budget(
        &router,
        json!({"name": "acme-hard", "tenant_id": "acme", "period": "monthly",
               "amount_usd": "5", "hard_limit": true}),
    )
    .await;
    let body = json!({"amount_usd": "2", "idempotency_key": "call-1"});
    let retries = (0..4).map(|_| {
        let router = router.clone();
        let body = body.clone();
        tokio::spawn(async move { reserve(&router, ACME_KEY, body).await })
    });
    let answers: Vec<_> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|answer| answer.expect("task completes"))
        .collect();
    let ids: Vec<&Value> = answers.iter().map(|(_, _, body)| &body["id"]).collect();
    assert!(
        answers.iter().all(|(status, _, _)| *status == 201),
        "{answers:?}"
    );
    assert!(
        ids.iter().all(|id| *id == ids[0] && id.is_string()),
        "{ids:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|(_, headers, _)| headers.contains_key("idempotent-replayed"))
            .count(),
        3
    );
    assert_eq!(held(&database).await, Decimal::new(2, 0), "held once");

    let (status, _, refused) = reserve(
        &router,
        ACME_KEY,
        json!({"amount_usd": "3", "idempotency_key": "call-1"}),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "idempotency_key_reused");
    assert_eq!(refused["reservation_id"], *ids[0]);

    let (status, _, other_tenant) = reserve(
        &router,
        GLOBEX_KEY,
        json!({"amount_usd": "2", "idempotency_key": "call-1"}),
    )
    .await;
    assert_eq!(status, 201, "{other_tenant}");
    assert_ne!(other_tenant["id"], *ids[0]);
}

#[tokio::test]
async fn tenant_keys_reserve_and_release_only_their_own() {
    let database = migrated_database().await;
    let router = gateway(&database, 2);
    let (status, _, refused) = reserve(
        &router,
        GLOBEX_KEY,
        json!({"tenant_id": "acme", "amount_usd": "1"}),
    )
    .await;
    assert_eq!(status, 403, "{refused}");

    let (status, _, granted) = reserve(&router, ACME_KEY, json!({"amount_usd": "1"})).await;
    assert_eq!(status, 201, "{granted}");
    let path = format!(
        "/v1/budgets/reservations/{}",
        granted["id"].as_str().expect("id")
    );
    let (status, _, answer) = send_json(&router, request("DELETE", &path, GLOBEX_KEY, None)).await;
    assert_eq!(status, 404, "another tenant's id is not found: {answer}");
    let (status, _, _) = send_json(&router, request("DELETE", &path, ACME_KEY, None)).await;
    assert_eq!(status, 204);
    let (status, _, _) = send_json(&router, request("DELETE", &path, ACME_KEY, None)).await;
    assert_eq!(status, 204, "cancelling again changes nothing");
    let reason: String = database
        .client()
        .await
        .query_one(
            "SELECT release_reason FROM budget_reservations WHERE id = $1::text::uuid",
            &[&granted["id"].as_str()],
        )
        .await
        .expect("reservation")
        .get("release_reason");
    assert_eq!(reason, "cancelled");

    for bad in [
        json!({"amount_usd": "0"}),
        json!({"amount_usd": "1", "ttl_s": 999_999}),
        json!({"amount_usd": "1", "unknown": true}),
    ] {
        let (status, _, body) = reserve(&router, ACME_KEY, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_reservation");
    }
    let (status, _, _) = send_json(
        &router,
        request(
            "DELETE",
            "/v1/budgets/reservations/not-a-uuid",
            ACME_KEY,
            None,
        ),
    )
    .await;
    assert_eq!(status, 400);
}

/// A reservation is held against its budget, not against a period: when
/// the budget's period changes (an edit from monthly to weekly here, or the
/// period rolling over) its open reservations keep holding against the
/// new current period until they are settled, cancelled or expire.
#[tokio::test]
async fn open_reservations_keep_holding_across_a_period_change() {
    let database = migrated_database().await;
    let router = gateway(&database, 2);
    let budget = json!({"name": "acme-hard", "tenant_id": "acme", "period": "monthly",
                        "amount_usd": "5", "hard_limit": true});
    let id = create_budget(&router, budget.clone()).await;
    let (status, _, _) = reserve(&router, ACME_KEY, json!({"amount_usd": "4"})).await;
    assert_eq!(status, 201);

    let mut daily = budget;
    daily["period"] = json!("weekly");
    let (status, _, answer) = send_json(
        &router,
        request("PUT", &format!("/v1/budgets/{id}"), ADMIN_KEY, Some(&daily)),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let (status, _, refused) = reserve(&router, ACME_KEY, json!({"amount_usd": "2"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["budget"]["reserved_usd"], "4");
    assert_eq!(refused["budget"]["remaining_usd"], "1");
    let (status, _, granted) = reserve(&router, ACME_KEY, json!({"amount_usd": "1"})).await;
    assert_eq!(status, 201, "{granted}");
}
