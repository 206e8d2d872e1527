//! Budgets of one API key: the gateway stamps the name (never the hash) of
//! the key that authenticated an append on its events, refuses an
//! `api_key` the client sends, and a reservation made with a key holds
//! against that key's budget only (on a real TimescaleDB).

use std::sync::Arc;

use crate::support::{app_with, event, post_json, send_json, ACME_KEY};
use axum::body::Body;
use axum::http::Request;
use e2e::Database;
use gateway::auth::hash_key;
use gateway::budgets::{self, BudgetStore};
use gateway::config::{AuthConfig, DatabaseConfig, KeyConfig};
use gateway::reservations::{self, ReservationsConfig};
use gateway::{KeyRing, Settings};
use serde_json::{json, Value};

const BATCH_KEY: &str = "acme-batch-key-0123456789abcdef";
const ADMIN: &str = "key-budgets-admin-0123456789abcdef";

fn keys() -> KeyRing {
    KeyRing::from_config(&AuthConfig {
        enabled: true,
        keys: vec![
            KeyConfig {
                name: Some("acme-batch".into()),
                ..KeyConfig::tenant(hash_key(BATCH_KEY), "acme")
            },
            KeyConfig::tenant(hash_key(ACME_KEY), "acme"),
            KeyConfig::admin(hash_key(ADMIN)),
        ],
        ..AuthConfig::default()
    })
    .expect("key ring")
}

#[tokio::test]
async fn an_appended_event_carries_its_keys_name_and_a_client_cannot_send_one() {
    let app = app_with(Settings::default(), keys());
    let (status, _, body) =
        send_json(&app.router, post_json(Some(BATCH_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "{body}");
    let appended = app.appender.acknowledged();
    let names: Vec<Option<&str>> = appended.iter().map(|e| e.api_key.as_deref()).collect();
    assert_eq!(names, vec![Some("acme-batch"), None]);
    let on_kafka = serde_json::to_string(&appended[0]).expect("serialises");
    assert!(
        on_kafka.contains("\"api_key\":\"acme-batch\""),
        "{on_kafka}"
    );
    assert!(!on_kafka.contains(&hash_key(BATCH_KEY)), "{on_kafka}");

    // A client naming a key (its own or another's) is refused, nothing appended.
    let mut claimed = event("acme");
    claimed["api_key"] = json!("acme-batch");
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &claimed)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("api_key"), "{body}");
    assert_eq!(app.appender.acknowledged().len(), 2);
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

#[tokio::test]
async fn a_reservation_holds_against_the_budget_of_the_key_that_makes_it() {
    let database = Database::start().await;
    database.migrate().await;
    let store = BudgetStore::connect_lazily(&DatabaseConfig {
        url: Some(database.url().into()),
        pool_size: 2,
        timeout_ms: 60_000,
    })
    .expect("pool builds");
    let keys = Arc::new(keys());
    let routes = budgets::routes(keys.clone(), store.clone()).merge(reservations::routes(
        keys,
        store,
        ReservationsConfig::default(),
    ));
    let router = gateway::router_with(app_with(Settings::default(), self::keys()).state, routes);
    let (status, _, created) = send_json(
        &router,
        request(
            "POST",
            "/v1/budgets",
            ADMIN,
            Some(
                &json!({"name": "batch-key", "tenant_id": "acme", "api_key": "acme-batch",
                         "period": "monthly", "amount_usd": "2", "hard_limit": true}),
            ),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["api_key"], "acme-batch");

    let reserve = |key: &'static str, amount: &'static str| {
        let router = router.clone();
        async move {
            send_json(
                &router,
                request(
                    "POST",
                    "/v1/budgets/reservations",
                    key,
                    Some(&json!({"amount_usd": amount})),
                ),
            )
            .await
        }
    };
    let (status, _, granted) = reserve(BATCH_KEY, "1.5").await;
    assert_eq!(status, 201, "{granted}");
    assert_eq!(granted["budgets"][0]["name"], "batch-key");
    // The key's budget has $0.50 left.
    let (status, _, refused) = reserve(BATCH_KEY, "1").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["budget"]["name"], "batch-key");
    // Another key's calls never count toward it: nothing to hold.
    let (status, _, granted) = reserve(ACME_KEY, "1").await;
    assert_eq!(status, 201, "{granted}");
    assert_eq!(granted["budgets"], json!([]));

    // The status narrowed to a key shows that key's budget, not other keys'.
    for (key, shown) in [("acme-batch", 1), ("acme-web", 0)] {
        let (status, _, body) = send_json(
            &router,
            request(
                "GET",
                &format!("/v1/budgets/status?tenant_id=acme&api_key={key}"),
                ADMIN,
                None,
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["budgets"].as_array().map(Vec::len),
            Some(shown),
            "{body}"
        );
    }

    // A budget of a key no configured key is named would count nothing: refused, created or
    // replaced, and nothing stored.
    let typo = json!({"name": "typo-key", "tenant_id": "acme", "api_key": "acme-btach",
                      "period": "monthly", "amount_usd": "2", "hard_limit": true});
    let (status, _, refused) =
        send_json(&router, request("POST", "/v1/budgets", ADMIN, Some(&typo))).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_budget", "{refused}");
    assert!(refused.to_string().contains("acme-btach"), "{refused}");
    let path = format!("/v1/budgets/{}", created["id"].as_str().expect("id"));
    let (status, _, refused) = send_json(&router, request("PUT", &path, ADMIN, Some(&typo))).await;
    assert_eq!(status, 400, "{refused}");
    let (status, _, listed) = send_json(&router, request("GET", "/v1/budgets", ADMIN, None)).await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["budgets"]
        .as_array()
        .expect("budgets")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, vec!["batch-key"]);
}
