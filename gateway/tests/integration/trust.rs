//! Each API key's trust policy at `POST /v1/usage`, through the router
//! without sockets: a tenant key cannot set its own cost nor write further
//! back than its lateness; service and admin keys may do both. Also the
//! policy's configuration: defaults, the older key form, `--print-config`.

use std::sync::Arc;

use crate::support::*;
use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Duration, Utc};
use figment::providers::Env;
use gateway::config::{AuthConfig, Config};
use gateway::{budgets, KeyRing, Settings};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

const SERVICE_KEY: &str = "service-key-0123456789abcdef";
const COSTLY_KEY: &str = "costly-key-0123456789abcdef";
const PATIENT_KEY: &str = "patient-key-0123456789abcdef";

const SIX_HOURS_MS: u64 = 6 * 60 * 60 * 1000;
const THIRTY_FIVE_DAYS_MS: u64 = 35 * 24 * 60 * 60 * 1000;

/// The keys of every kind, in the configuration form an operator writes:
/// `acme` and `globex` in the older form (no `kind`), which makes them
/// tenant keys under the default policy.
fn keys_toml() -> String {
    format!(
        r#"
[[keys]]
sha256 = "{acme}"
tenant_id = "acme"

[[keys]]
sha256 = "{globex}"
tenant_id = "globex"

[[keys]]
sha256 = "{admin}"
admin = true

[[keys]]
sha256 = "{service}"
kind = "service"
tenant_id = "acme"

[[keys]]
sha256 = "{costly}"
tenant_id = "acme"
allow_caller_cost = true

[[keys]]
sha256 = "{patient}"
kind = "tenant"
tenant_id = "acme"
max_lateness_ms = 259200000
"#,
        acme = gateway::auth::hash_key(ACME_KEY),
        globex = gateway::auth::hash_key(GLOBEX_KEY),
        admin = gateway::auth::hash_key(ADMIN_KEY),
        service = gateway::auth::hash_key(SERVICE_KEY),
        costly = gateway::auth::hash_key(COSTLY_KEY),
        patient = gateway::auth::hash_key(PATIENT_KEY),
    )
}

fn trust_ring() -> KeyRing {
    let auth: AuthConfig = toml::from_str(&keys_toml()).expect("the keys parse");
    KeyRing::from_config(&auth).expect("the keys are valid")
}

fn trust_app() -> TestApp {
    app_with(Settings::default(), trust_ring())
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn with_cost(tenant: &str, cost: &str) -> Value {
    let mut event = event(tenant);
    event["estimated_cost"] = json!(cost);
    event
}

fn created_ago(tenant: &str, ago: Duration) -> Value {
    let mut event = event(tenant);
    event["created_at"] = json!(rfc3339(Utc::now() - ago));
    event
}

/// `(index, field)` of every entry of `errors`, each with a message.
fn problems(body: &Value) -> Vec<(Option<u64>, String)> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors array in {body}"))
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            (
                e["index"].as_u64(),
                e["field"].as_str().expect("field").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_tenant_key_cannot_set_its_own_cost_even_to_zero() {
    let app = trust_app();
    for cost in ["0", "0.000001", "12.5"] {
        let (status, _, body) = send_json(
            &app.router,
            post_json(Some(ACME_KEY), &with_cost("acme", cost)),
        )
        .await;
        assert_eq!(status, 403, "cost {cost}: {body}");
        assert_eq!(body["error"], "caller_cost_not_allowed");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("estimated_cost"), "{message}");
        assert_eq!(problems(&body), vec![(None, "estimated_cost".to_owned())]);
    }
    assert!(app.appender.acknowledged().is_empty(), "nothing appended");

    // Without the field the same key is served, and the price book prices it.
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.appender.acknowledged()[0].estimated_cost, None);
}

#[tokio::test]
async fn a_tenant_key_cannot_write_two_days_back() {
    let app = trust_app();
    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(ACME_KEY), &created_ago("acme", Duration::days(2))),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "too_late");
    assert_eq!(body["max_lateness_ms"], SIX_HOURS_MS);
    assert_eq!(problems(&body), vec![(None, "created_at".to_owned())]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("6 hours")),
        "the limit is named: {body}"
    );

    // The id's own time counts as created_at when created_at is left out.
    let two_days_ago = Utc::now() - Duration::days(2);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(two_days_ago.timestamp()).expect("after 1970"),
        0,
    );
    let mut by_id = event("acme");
    by_id["id"] = json!(Uuid::new_v7(ts).to_string());
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &by_id)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "too_late");
    assert!(app.appender.acknowledged().is_empty(), "nothing appended");

    // Within the lateness the tenant key is served.
    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(ACME_KEY), &created_ago("acme", Duration::hours(5))),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn service_and_admin_keys_may_set_cost_and_backfill_35_days() {
    let app = trust_app();
    for key in [SERVICE_KEY, ADMIN_KEY] {
        let mut event = with_cost("acme", "0");
        event["created_at"] = json!(rfc3339(Utc::now() - Duration::days(34)));
        let batch = json!([event, created_ago("acme", Duration::days(2))]);
        let (status, _, body) = send_json(&app.router, post_json(Some(key), &batch)).await;
        assert_eq!(status, 202, "{key}: {body}");
    }
    let appended = app.appender.acknowledged();
    assert_eq!(appended.len(), 4);
    assert_eq!(appended[0].estimated_cost, Some(Decimal::ZERO));

    // The global backfill window still binds them.
    for key in [SERVICE_KEY, ADMIN_KEY] {
        let (status, _, body) = send_json(
            &app.router,
            post_json(Some(key), &created_ago("acme", Duration::days(36))),
        )
        .await;
        assert_eq!(status, 400, "{key}: {body}");
        assert_eq!(body["error"], "invalid_events");
    }
}

#[tokio::test]
async fn a_batch_mixing_valid_and_refused_events_is_refused_whole_with_every_index() {
    let app = trust_app();
    let batch = json!([
        event("acme"),
        with_cost("acme", "0"),
        event("acme"),
        with_cost("acme", "0.01"),
    ]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "caller_cost_not_allowed");
    assert_eq!(
        problems(&body),
        vec![
            (Some(1), "estimated_cost".to_owned()),
            (Some(3), "estimated_cost".to_owned())
        ]
    );

    let batch = json!([
        created_ago("acme", Duration::days(2)),
        event("acme"),
        created_ago("acme", Duration::hours(7)),
        created_ago("acme", Duration::hours(1)),
    ]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "too_late");
    assert_eq!(
        problems(&body),
        vec![
            (Some(0), "created_at".to_owned()),
            (Some(2), "created_at".to_owned())
        ]
    );
    assert!(app.appender.acknowledged().is_empty(), "nothing appended");
}

#[tokio::test]
async fn a_key_policy_can_allow_caller_cost_or_a_longer_lateness() {
    let app = trust_app();
    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(COSTLY_KEY), &with_cost("acme", "0.5")),
    )
    .await;
    assert_eq!(status, 202, "allow_caller_cost: {body}");
    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(COSTLY_KEY), &created_ago("acme", Duration::days(2))),
    )
    .await;
    assert_eq!(
        status, 400,
        "cost allowed, lateness still the default: {body}"
    );

    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(PATIENT_KEY), &created_ago("acme", Duration::days(2))),
    )
    .await;
    assert_eq!(status, 202, "max_lateness_ms of 3 days: {body}");
    let (status, _, body) = send_json(
        &app.router,
        post_json(Some(PATIENT_KEY), &created_ago("acme", Duration::days(4))),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["max_lateness_ms"], 3 * 24 * 60 * 60 * 1000_u64);
    assert_eq!(app.appender.acknowledged().len(), 2);
}

#[tokio::test]
async fn a_service_key_is_bound_to_its_tenant_and_cannot_manage_budgets() {
    let app = trust_app();
    let (status, _, body) =
        send_json(&app.router, post_json(Some(SERVICE_KEY), &event("globex"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");

    let router = gateway::router_with(
        app.state.clone(),
        budgets::routes(Arc::new(trust_ring()), None),
    );
    let budget = json!({"name": "n", "tenant_id": "acme", "period": "monthly", "amount_usd": "1"});
    let request = Request::post("/v1/budgets")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SERVICE_KEY}"))
        .body(Body::from(budget.to_string()))
        .expect("request");
    let (status, _, body) = send_json(&router, request).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn trust_refusals_are_counted_by_reason_from_zero() {
    let app = trust_app();
    let metrics = |app: &TestApp| {
        let admin = app.admin.clone();
        async move {
            body_text(
                send(
                    &admin,
                    Request::get("/metrics").body(Body::empty()).expect("req"),
                )
                .await,
            )
            .await
        }
    };
    let before = metrics(&app).await;
    for reason in ["caller_cost", "too_late"] {
        let zero = format!("tokenledger_gateway_events_rejected_total{{reason=\"{reason}\"}} 0");
        assert!(before.contains(&zero), "missing {zero:?} in\n{before}");
    }
    let batch = json!([
        with_cost("acme", "0"),
        event("acme"),
        with_cost("acme", "1")
    ]);
    send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    let batch = json!([created_ago("acme", Duration::days(1)), event("acme")]);
    send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    let after = metrics(&app).await;
    for expected in [
        // The whole batch is refused, so every event of it counts.
        "tokenledger_gateway_events_rejected_total{reason=\"caller_cost\"} 3",
        "tokenledger_gateway_events_rejected_total{reason=\"too_late\"} 2",
    ] {
        assert!(after.contains(expected), "missing {expected:?} in\n{after}");
    }
}

/// A prefix nobody sets keeps these tests independent of the machine's own
/// `TOKENLEDGER_…` variables.
fn no_env() -> Env {
    Env::prefixed("TLGWTRUSTTEST_UNSET_")
}

#[test]
fn trust_policies_default_per_kind_and_show_in_print_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    let auth = keys_toml().replace("[[keys]]", "[[auth.keys]]");
    std::fs::write(&path, auth).expect("write config");
    let config = Config::load_from(Some(&path), no_env()).expect("loads");
    assert_eq!(config.auth.tenant_max_lateness_ms, SIX_HOURS_MS);
    assert_eq!(
        Config::default().auth.tenant_max_lateness_ms,
        SIX_HOURS_MS,
        "documented default"
    );

    let printed = config.to_redacted_toml().expect("renders");
    assert!(
        printed.contains(&format!("tenant_max_lateness_ms = {SIX_HOURS_MS}")),
        "{printed}"
    );
    assert!(
        !printed.contains(&gateway::auth::hash_key(ACME_KEY)),
        "{printed}"
    );
    let reparsed: Config = toml::from_str(&printed).expect("printed config parses back");
    let shown: Vec<(String, Option<String>, bool, u64)> = reparsed
        .auth
        .keys
        .iter()
        .map(|key| {
            (
                format!("{:?}", key.kind.expect("the effective kind is printed")).to_lowercase(),
                key.tenant_id.clone(),
                key.allow_caller_cost.expect("printed"),
                key.max_lateness_ms.expect("printed"),
            )
        })
        .collect();
    let acme = Some("acme".to_owned());
    assert_eq!(
        shown,
        vec![
            ("tenant".into(), acme.clone(), false, SIX_HOURS_MS),
            ("tenant".into(), Some("globex".into()), false, SIX_HOURS_MS),
            ("admin".into(), None, true, THIRTY_FIVE_DAYS_MS),
            ("service".into(), acme.clone(), true, THIRTY_FIVE_DAYS_MS),
            ("tenant".into(), acme.clone(), true, SIX_HOURS_MS),
            ("tenant".into(), acme, false, 3 * 24 * 60 * 60 * 1000),
        ]
    );
}

#[test]
fn the_tenant_lateness_default_is_configurable_and_must_be_positive() {
    std::env::set_var("TLGWTRUSTTEST_A_AUTH__TENANT_MAX_LATENESS_MS", "3600000");
    let config = Config::load_from(None, Env::prefixed("TLGWTRUSTTEST_A_")).expect("loads");
    assert_eq!(config.auth.tenant_max_lateness_ms, 3_600_000);

    let mut config = Config::default();
    config.auth.tenant_max_lateness_ms = 0;
    assert!(config.validate().is_err());
}

#[test]
fn inconsistent_key_kinds_are_refused() {
    let hash = gateway::auth::hash_key("k");
    for entry in [
        // A service key is bound to a tenant.
        format!("sha256 = \"{hash}\"\nkind = \"service\""),
        format!("sha256 = \"{hash}\"\nkind = \"tenant\""),
        // An admin key is not.
        format!("sha256 = \"{hash}\"\nkind = \"admin\"\ntenant_id = \"acme\""),
        // `admin = true` says admin; another kind contradicts it.
        format!("sha256 = \"{hash}\"\nkind = \"service\"\ntenant_id = \"acme\"\nadmin = true"),
        format!("sha256 = \"{hash}\"\ntenant_id = \"acme\"\nmax_lateness_ms = 0"),
        format!("sha256 = \"{hash}\"\nkind = \"root\"\ntenant_id = \"acme\""),
    ] {
        let text = format!("[[keys]]\n{entry}\n");
        let refused = toml::from_str::<AuthConfig>(&text)
            .map_err(|e| e.to_string())
            .and_then(|auth| KeyRing::from_config(&auth).map_err(|e| e.to_string()));
        assert!(refused.is_err(), "accepted: {entry}");
    }
    let text = format!("[[keys]]\nsha256 = \"{hash}\"\nkind = \"admin\"\nadmin = true\n");
    let auth: AuthConfig = toml::from_str(&text).expect("parses");
    assert!(KeyRing::from_config(&auth).is_ok(), "admin twice agrees");
}
