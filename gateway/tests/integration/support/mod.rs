//! Shared helpers for the gateway's integration tests: an app over the
//! in-memory appender, request builders and response decoding.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use gateway::auth::hash_key;
use gateway::config::{AuthConfig, KeyConfig};
use gateway::memory::MemoryAppender;
use gateway::{AppState, Appender, KeyRing, Settings};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const ACME_KEY: &str = "acme-key-0123456789abcdef";
pub const GLOBEX_KEY: &str = "globex-key-0123456789abcdef";
pub const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

pub fn key_ring() -> KeyRing {
    KeyRing::from_config(&AuthConfig {
        enabled: true,
        keys: vec![
            KeyConfig::tenant(hash_key(ACME_KEY), "acme"),
            KeyConfig::tenant(hash_key(GLOBEX_KEY), "globex"),
            KeyConfig::admin(hash_key(ADMIN_KEY)),
        ],
        ..AuthConfig::default()
    })
    .expect("test key ring is valid")
}

pub struct TestApp {
    pub appender: Arc<MemoryAppender>,
    pub state: AppState,
    pub router: Router,
    pub admin: Router,
}

pub fn app_with(settings: Settings, keys: KeyRing) -> TestApp {
    let appender = Arc::new(MemoryAppender::new());
    let dyn_appender: Arc<dyn Appender> = appender.clone();
    let state = AppState::new(dyn_appender, keys, settings).expect("app state builds");
    TestApp {
        appender,
        router: gateway::router(state.clone()),
        admin: gateway::admin_router(state.clone()),
        state,
    }
}

pub fn app() -> TestApp {
    app_with(Settings::default(), key_ring())
}

pub fn event(tenant: &str) -> Value {
    json!({
        "tenant_id": tenant,
        "provider": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 100,
        "completion_tokens": 20,
    })
}

pub fn post_usage(key: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post("/v1/usage").header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    builder.body(body.into()).expect("request builds")
}

pub fn post_json(key: Option<&str>, body: &Value) -> Request<Body> {
    post_usage(key, body.to_string())
}

pub async fn send(router: &Router, request: Request<Body>) -> Response<Body> {
    router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible")
}

/// Status, headers and the body parsed as JSON (`Value::Null` if it is not).
pub async fn send_json(
    router: &Router,
    request: Request<Body>,
) -> (u16, axum::http::HeaderMap, Value) {
    let response = send(router, request).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body collects")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body collects")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}
