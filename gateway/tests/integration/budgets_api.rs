//! The budget API's authorization and validation, through the router
//! without sockets or a database (the end-to-end test tests/e2e/budgets.rs
//! covers it against a real database).

use std::sync::Arc;

use crate::support::{app, key_ring, send_json, ACME_KEY, ADMIN_KEY};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use gateway::budgets;
use serde_json::{json, Value};

fn budget_router() -> Router {
    let app = app();
    gateway::router_with(app.state, budgets::routes(Arc::new(key_ring()), None))
}

fn request(method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    builder.body(body).expect("request builds")
}

fn valid_budget() -> Value {
    json!({"name": "acme-monthly", "tenant_id": "acme", "period": "monthly", "amount_usd": "1000.00"})
}

const SOME_ID: &str = "/v1/budgets/0190d6a4-0000-7000-8000-000000000001";

#[tokio::test]
async fn tenant_keys_cannot_manage_budgets_and_anonymous_callers_are_refused() {
    let router = budget_router();
    let body = valid_budget();
    for (method, path, body) in [
        ("GET", "/v1/budgets", None),
        ("POST", "/v1/budgets", Some(&body)),
        ("GET", SOME_ID, None),
        ("PUT", SOME_ID, Some(&body)),
        ("DELETE", SOME_ID, None),
    ] {
        let (status, _, answer) =
            send_json(&router, request(method, path, Some(ACME_KEY), body)).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "forbidden");
        let (status, _, _) = send_json(&router, request(method, path, None, body)).await;
        assert_eq!(status, 401, "{method} {path} without a key");
    }
}

#[tokio::test]
async fn invalid_budgets_are_refused_with_every_field_named() {
    let router = budget_router();
    let (status, _, answer) = send_json(
        &router,
        request(
            "POST",
            "/v1/budgets",
            Some(ADMIN_KEY),
            Some(&json!({"name": "", "tenant_id": "acme", "period": "yearly", "amount_usd": -1, "thresholds": [0], "extra": 1})),
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_budget");
    let fields: Vec<&str> = answer["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["extra", "name", "period", "amount_usd", "thresholds"],
        "{answer}"
    );

    let malformed = Request::post("/v1/budgets")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Body::from("{not json"))
        .expect("request");
    let (status, _, answer) = send_json(&router, malformed).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("malformed_json"))
    );

    let (status, _, answer) = send_json(
        &router,
        request("GET", "/v1/budgets/not-a-uuid", Some(ADMIN_KEY), None),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_id"))
    );
}

#[tokio::test]
async fn without_a_database_valid_requests_answer_503_naming_the_setting() {
    let router = budget_router();
    let (status, headers, answer) = send_json(
        &router,
        request(
            "POST",
            "/v1/budgets",
            Some(ADMIN_KEY),
            Some(&valid_budget()),
        ),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("database.url")),
        "{answer}"
    );
    assert_eq!(headers["retry-after"], "5");
    let (status, _, _) = send_json(
        &router,
        request("GET", "/v1/budgets/status", Some(ACME_KEY), None),
    )
    .await;
    assert_eq!(status, 503, "a tenant may ask for its own status");
}

#[tokio::test]
async fn status_is_admin_or_the_keys_own_tenant() {
    let router = budget_router();
    let (status, _, answer) = send_json(
        &router,
        request(
            "GET",
            "/v1/budgets/status?tenant_id=globex",
            Some(ACME_KEY),
            None,
        ),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, _, answer) = send_json(
        &router,
        request("GET", "/v1/budgets/status", Some(ADMIN_KEY), None),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("missing_tenant_id"))
    );
}

/// A database error's text (host, port, the driver's words) stays in the gateway's log: a tenant
/// key gets a generic answer that names the request id the cause is logged under.
#[tokio::test]
async fn a_database_error_is_not_shown_to_the_caller() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let store = gateway::budgets::BudgetStore::connect_lazily(&gateway::config::DatabaseConfig {
        url: Some(format!("host=127.0.0.1 port={port} user=secret_db_user").into()),
        pool_size: 1,
        timeout_ms: 2_000,
    })
    .expect("pool builds");
    let app = app();
    let router = gateway::router_with(app.state, budgets::routes(Arc::new(key_ring()), store));
    let (status, headers, body) = send_json(
        &router,
        request("GET", "/v1/budgets/status", Some(ACME_KEY), None),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    for leak in [
        "127.0.0.1",
        &port.to_string(),
        "secret_db_user",
        "refused",
        "error connecting",
    ] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .expect("a request id");
    assert!(
        text.contains(request_id),
        "the answer names its request id: {text}"
    );
}
