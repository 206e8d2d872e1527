//! The refusals of the admin APIs that read the processor's database
//! (exports, reports, reconciliation), through the router without a
//! database: each names the API that refused, in its message and its code.

use std::sync::Arc;

use crate::support::{app, key_ring, send_json, ACME_KEY, ADMIN_KEY};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use gateway::config::{ExportsConfig, ReconciliationConfig};

fn admin_router() -> Router {
    let keys = Arc::new(key_ring());
    let exports = ExportsConfig::default();
    let routes = gateway::exports::routes(
        gateway::exports::ExportApi::new(keys.clone(), None, &exports).expect("exports"),
    )
    .merge(gateway::reports::routes(
        gateway::reports::ReportApi::new(keys.clone(), None, &exports).expect("reports"),
    ))
    .merge(gateway::reconciliation::routes(
        gateway::reconciliation::ReconciliationApi::new(
            keys,
            None,
            &ReconciliationConfig::default(),
        )
        .expect("reconciliation"),
    ));
    gateway::router_with(app().state, routes)
}

fn get(path: &str, key: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request builds")
}

/// (path, what the messages call the API, the stem of its error codes)
const APIS: [(&str, &str, &str); 4] = [
    (
        "/v1/exports/focus?from=2026-01-01&to=2026-01-31",
        "exports",
        "export",
    ),
    (
        "/v1/reports/optimize?from=2026-01-01&to=2026-01-31",
        "reports",
        "report",
    ),
    (
        "/v1/reports/what-if?from=2026-01-01&to=2026-01-31&model=openai/gpt-4o-mini",
        "reports",
        "report",
    ),
    (
        "/v1/reconciliation?provider=openai&from=2026-01-01&to=2026-01-31",
        "the reconciliation",
        "reconciliation",
    ),
];

#[tokio::test]
async fn a_tenant_key_is_refused_by_the_api_it_asked() {
    let router = admin_router();
    for (path, name, _) in APIS {
        let (status, _, answer) = send_json(&router, get(path, ACME_KEY)).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["error"], "forbidden", "{path}");
        let message = answer["message"].as_str().expect("a message");
        assert!(
            message.starts_with(&format!("{name} ")) && message.ends_with("with an admin API key"),
            "{path}: {message}"
        );
    }
}

#[tokio::test]
async fn without_a_database_each_api_says_it_is_unavailable() {
    let router = admin_router();
    for (path, name, code) in APIS {
        let (status, headers, answer) = send_json(&router, get(path, ADMIN_KEY)).await;
        assert_eq!(status, 503, "{path}: {answer}");
        assert_eq!(headers["retry-after"], "5", "{path}");
        let plural = if code == "reconciliation" {
            code.to_owned()
        } else {
            format!("{code}s")
        };
        assert_eq!(answer["error"], format!("{plural}_unavailable"), "{path}");
        let message = answer["message"].as_str().expect("a message");
        assert!(
            message.starts_with(&format!("{name} ")) && message.contains("database.url"),
            "{path}: {message}"
        );
    }
}
