//! `POST /v1/usage` and the health routes through the router, without
//! sockets, over the in-memory appender.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use crate::support::*;
use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use gateway::append::{AppendError, AppendReport, Appender};
use gateway::memory::Script;
use gateway::{AppState, KeyRing, Settings};
use ledger::UsageEvent;
use serde_json::{json, Value};
use uuid::Uuid;

fn ids_of(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is an array in {body}"))
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_owned())
        .collect()
}

#[tokio::test]
async fn single_event_is_accepted_with_its_generated_id() {
    let app = app();
    let (status, headers, body) =
        send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    let ids = ids_of(&body, "ids");
    let appended = app.appender.acknowledged();
    assert_eq!(appended.len(), 1);
    assert_eq!(appended[0].id.to_string(), ids[0]);
    assert_eq!(appended[0].tenant_id, "acme");
    assert_eq!(appended[0].total_tokens, 120);
    let request_id = headers
        .get("x-request-id")
        .expect("x-request-id echoed")
        .to_str()
        .expect("ascii");
    assert_eq!(appended[0].request_id.as_deref(), Some(request_id));
}

#[tokio::test]
async fn batch_ids_come_back_in_request_order_and_keep_client_ids() {
    let app = app();
    let client_id = Uuid::now_v7();
    let mut second = event("acme");
    second["id"] = json!(client_id.to_string());
    let batch = json!([event("acme"), second, event("acme")]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3);
    let ids = ids_of(&body, "ids");
    assert_eq!(ids[1], client_id.to_string());
    let appended: Vec<String> = app
        .appender
        .acknowledged()
        .iter()
        .map(|event| event.id.to_string())
        .collect();
    assert_eq!(appended, ids);
}

#[tokio::test]
async fn a_retry_with_the_returned_id_carries_the_same_idempotency_key() {
    let app = app();
    let (_, _, first) = send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    let id = ids_of(&first, "ids").remove(0);
    let mut retry = event("acme");
    retry["id"] = json!(id);
    let (status, _, second) = send_json(&app.router, post_json(Some(ACME_KEY), &retry)).await;
    assert_eq!(status, 202, "{second}");
    let appended = app.appender.acknowledged();
    assert_eq!(appended.len(), 2);
    assert_eq!(
        (appended[0].id, appended[0].created_at),
        (appended[1].id, appended[1].created_at),
        "(id, created_at) is the dedup key downstream"
    );
}

#[tokio::test]
async fn request_id_header_is_propagated_to_events_and_response() {
    let app = app();
    let mut request = post_json(Some(ACME_KEY), &json!([event("acme"), event("acme")]));
    request
        .headers_mut()
        .insert("x-request-id", "trace-abc-123".parse().expect("header"));
    let (status, headers, _) = send_json(&app.router, request).await;
    assert_eq!(status, 202);
    assert_eq!(headers["x-request-id"], "trace-abc-123");
    for event in app.appender.acknowledged() {
        assert_eq!(event.request_id.as_deref(), Some("trace-abc-123"));
    }

    let mut request = post_json(Some(ACME_KEY), &event("acme"));
    request
        .headers_mut()
        .insert("x-request-id", "not sane; at all".parse().expect("header"));
    let (_, headers, _) = send_json(&app.router, request).await;
    let generated = headers["x-request-id"].to_str().expect("ascii");
    assert!(Uuid::parse_str(generated).is_ok(), "{generated}");
    assert_eq!(
        app.appender.acknowledged()[2].request_id.as_deref(),
        Some(generated)
    );
}

#[tokio::test]
async fn invalid_batch_lists_every_problem_and_appends_nothing() {
    let app = app();
    let mut bad_tokens = event("acme");
    bad_tokens["prompt_tokens"] = json!(-1);
    let mut bad_two = event("acme");
    bad_two["provider"] = json!("Open AI!");
    bad_two["surprise"] = json!(1);
    let batch = json!([event("acme"), bad_tokens, bad_two]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_events");
    assert!(body["message"].is_string());
    let problems: Vec<(u64, String)> = body["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| {
            assert!(e["message"].is_string(), "{e}");
            (
                e["index"].as_u64().expect("index"),
                e["field"].as_str().expect("field").to_owned(),
            )
        })
        .collect();
    assert!(
        problems.contains(&(1, "prompt_tokens".into())),
        "{problems:?}"
    );
    assert!(problems.contains(&(2, "provider".into())), "{problems:?}");
    assert!(problems.contains(&(2, "surprise".into())), "{problems:?}");
    assert!(
        problems.iter().all(|(index, _)| *index != 0),
        "{problems:?}"
    );
    assert!(app.appender.acknowledged().is_empty(), "all-or-nothing");
}

#[tokio::test]
async fn malformed_empty_and_wrongly_shaped_bodies_are_400() {
    let app = app();
    for (body, code) in [
        ("{not json", "malformed_json"),
        ("", "empty_body"),
        ("  \n", "empty_body"),
        ("[]", "empty_batch"),
        ("42", "invalid_body"),
    ] {
        let (status, _, json) = send_json(&app.router, post_usage(Some(ACME_KEY), body)).await;
        assert_eq!(status, 400, "{body:?} → {json}");
        assert_eq!(json["error"], code, "{body:?}");
    }
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn too_many_events_is_400() {
    let app = app_with(
        Settings {
            limits: ledger::ValidationLimits {
                max_batch_events: 2,
                ..Default::default()
            },
            ..Settings::default()
        },
        key_ring(),
    );
    let batch = json!([event("acme"), event("acme"), event("acme")]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "too_many_events");
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn missing_or_unknown_keys_are_401_with_www_authenticate() {
    let app = app();
    let requests = [
        post_json(None, &event("acme")),
        post_json(Some("wrong-key"), &event("acme")),
        Request::post("/v1/usage")
            .header("content-type", "application/json")
            .header("authorization", format!("Basic {ACME_KEY}"))
            .body(Body::from(event("acme").to_string()))
            .expect("request"),
    ];
    for request in requests {
        let (status, headers, body) = send_json(&app.router, request).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(
            headers["connection"], "close",
            "the unread body spoils the connection"
        );
        assert_eq!(body["error"], "unauthorized");
        assert!(!body.to_string().contains(ACME_KEY));
    }
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn a_tenant_key_cannot_write_another_tenants_events_even_inside_a_batch() {
    let app = app();
    let batch = json!([
        event("acme"),
        event("globex"),
        event("acme"),
        event("initech")
    ]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let indexes: Vec<u64> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            assert_eq!(e["field"], "tenant_id");
            e["index"].as_u64().expect("index")
        })
        .collect();
    assert_eq!(indexes, vec![1, 3]);
    assert!(app.appender.acknowledged().is_empty(), "nothing appended");

    let (status, _, _) = send_json(&app.router, post_json(Some(GLOBEX_KEY), &event("acme"))).await;
    assert_eq!(status, 403);
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn an_admin_key_writes_any_tenant() {
    let app = app();
    let batch = json!([event("acme"), event("globex")]);
    let (status, _, body) = send_json(&app.router, post_json(Some(ADMIN_KEY), &batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.appender.acknowledged().len(), 2);
}

#[tokio::test]
async fn explicitly_disabled_auth_accepts_requests_without_a_key() {
    let app = app_with(Settings::default(), KeyRing::disabled());
    let batch = json!([event("acme"), event("globex")]);
    let (status, _, body) = send_json(&app.router, post_json(None, &batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.appender.acknowledged().len(), 2);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_whether_or_not_the_length_is_declared() {
    let app = app_with(
        Settings {
            max_body_bytes: 1024,
            ..Settings::default()
        },
        key_ring(),
    );
    let batch = Value::Array((0..40).map(|_| event("acme")).collect());
    let text = batch.to_string();
    assert!(text.len() > 1024);

    let (status, _, body) = send_json(&app.router, post_usage(Some(ACME_KEY), text.clone())).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");

    // A streamed body has no Content-Length; the limit must hold anyway.
    let chunks: Vec<Result<String, std::io::Error>> = text
        .as_bytes()
        .chunks(100)
        .map(|chunk| Ok(String::from_utf8_lossy(chunk).into_owned()))
        .collect();
    let streamed = Body::from_stream(futures::stream::iter(chunks));
    let (status, _, body) = send_json(&app.router, post_usage(Some(ACME_KEY), streamed)).await;
    assert_eq!(status, 413, "{body}");
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn non_json_content_types_are_415() {
    let app = app();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut builder =
            Request::post("/v1/usage").header("authorization", format!("Bearer {ACME_KEY}"));
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let request = builder
            .body(Body::from(event("acme").to_string()))
            .expect("request");
        let (status, _, body) = send_json(&app.router, request).await;
        assert_eq!(status, 415, "{content_type:?}");
        assert_eq!(body["error"], "unsupported_media_type");
    }
    let request = Request::post("/v1/usage")
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(event("acme").to_string()))
        .expect("request");
    let (status, _, _) = send_json(&app.router, request).await;
    assert_eq!(status, 202, "parameters after the media type are fine");
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after_and_the_acknowledged_ids() {
    let app = app();
    app.appender.push_script(Script::AcknowledgeFirst {
        n: 2,
        error: AppendError::QueueFull,
    });
    let batch = Value::Array((0..4).map(|_| event("acme")).collect());
    let (status, headers, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["reason"], "queue_full");
    let ids = ids_of(&body, "ids");
    assert_eq!(ids.len(), 4);
    assert_eq!(ids_of(&body, "acknowledged"), ids[..2].to_vec());
    assert_eq!(ids_of(&body, "not_acknowledged"), ids[2..].to_vec());
    let appended: Vec<String> = app
        .appender
        .acknowledged()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(
        appended,
        ids[..2].to_vec(),
        "exactly the reported ones were appended"
    );

    // Retrying the whole batch with the returned ids is safe and succeeds.
    let retry: Vec<Value> = ids
        .iter()
        .map(|id| {
            let mut event = event("acme");
            event["id"] = json!(id);
            event
        })
        .collect();
    let (status, _, body) =
        send_json(&app.router, post_json(Some(ACME_KEY), &Value::Array(retry))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(ids_of(&body, "ids"), ids);
}

#[tokio::test]
async fn a_broker_timeout_is_503_and_nothing_is_reported_acknowledged() {
    let app = app();
    app.appender
        .push_script(Script::FailAll(AppendError::TimedOut(Duration::from_secs(
            5,
        ))));
    let (status, headers, body) = send_json(
        &app.router,
        post_json(Some(ACME_KEY), &json!([event("acme"), event("acme")])),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(body["reason"], "timeout");
    assert_eq!(ids_of(&body, "ids").len(), 2);
    assert!(ids_of(&body, "acknowledged").is_empty());
    assert_eq!(ids_of(&body, "not_acknowledged").len(), 2);
}

/// Never answers, like a producer whose broker vanished without an error.
struct HangingAppender;

#[async_trait]
impl Appender for HangingAppender {
    async fn append(&self, _events: &[UsageEvent]) -> AppendReport {
        std::future::pending().await
    }
    async fn check_ready(&self) -> Result<(), AppendError> {
        Ok(())
    }
    async fn close(&self, _timeout: Duration) -> Result<(), AppendError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_outlives_the_request_timeout_is_503() {
    let state = AppState::new(
        Arc::new(HangingAppender),
        key_ring(),
        Settings {
            request_timeout: Duration::from_secs(2),
            ..Settings::default()
        },
    )
    .expect("state");
    let router = gateway::router(state.clone());
    let (status, headers, body) =
        send_json(&router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "timeout");
    assert!(headers.contains_key("retry-after"));
    assert!(headers.contains_key("x-request-id"));
    let metrics = state.metrics.render().expect("metrics");
    assert!(
        metrics.contains("tokenledger_gateway_events_rejected_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenledger_gateway_inflight_requests 0"),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_request_lists_the_ids_it_minted_as_not_acknowledged() {
    let state = AppState::new(
        Arc::new(HangingAppender),
        key_ring(),
        Settings {
            request_timeout: Duration::from_secs(2),
            ..Settings::default()
        },
    )
    .expect("state");
    let router = gateway::router(state.clone());
    let client_id = Uuid::now_v7();
    let mut second = event("acme");
    second["id"] = json!(client_id.to_string());
    let (status, _, body) = send_json(
        &router,
        post_json(Some(ACME_KEY), &json!([event("acme"), second])),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let ids = ids_of(&body, "ids");
    assert_eq!(ids.len(), 2, "{body}");
    assert_eq!(ids[1], client_id.to_string());
    assert!(ids_of(&body, "acknowledged").is_empty(), "{body}");
    assert_eq!(ids_of(&body, "not_acknowledged"), ids);
    let metrics = state.metrics.render().expect("metrics");
    assert!(
        metrics.contains("tokenledger_gateway_events_rejected_total{reason=\"timeout\"} 2"),
        "both events are counted: {metrics}"
    );
}

#[tokio::test]
async fn health_routes_answer_on_both_ports_and_readyz_follows_the_broker() {
    let app = app();
    for router in [&app.router, &app.admin] {
        let (status, _, body) = send_json(
            router,
            Request::get("/healthz").body(Body::empty()).expect("req"),
        )
        .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        let (status, _, _) = send_json(
            router,
            Request::get("/readyz").body(Body::empty()).expect("req"),
        )
        .await;
        assert_eq!(status, 200);
    }

    let unready = support::app();
    unready
        .appender
        .set_not_ready(Some(AppendError::Unreachable("no broker".into())));
    let (status, _, body) = send_json(
        &unready.router,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_ready");

    let stopping = support::app();
    stopping.state.shutdown.cancel();
    let (status, _, _) = send_json(
        &stopping.admin,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 503, "not ready once shutdown begins");
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_metrics_are_not_on_the_api_port() {
    let app = app();
    let (status, _, body) = send_json(
        &app.router,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn metrics_count_requests_events_and_rejections_with_bounded_labels() {
    let app = app();
    send_json(
        &app.router,
        post_json(Some(ACME_KEY), &json!([event("acme"), event("acme")])),
    )
    .await;
    send_json(&app.router, post_json(None, &event("acme"))).await;
    send_json(&app.router, post_json(Some(ACME_KEY), &event("globex"))).await;
    let mut bad = event("acme");
    bad["model"] = json!("");
    send_json(&app.router, post_json(Some(ACME_KEY), &bad)).await;
    send_json(
        &app.router,
        Request::get("/no/such/path/12345")
            .body(Body::empty())
            .expect("req"),
    )
    .await;

    let response = send(
        &app.admin,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = body_text(response).await;
    for expected in [
        "tokenledger_gateway_requests_total{route=\"/v1/usage\",status=\"202\"} 1",
        "tokenledger_gateway_requests_total{route=\"/v1/usage\",status=\"401\"} 1",
        "tokenledger_gateway_requests_total{route=\"/v1/usage\",status=\"403\"} 1",
        "tokenledger_gateway_requests_total{route=\"/v1/usage\",status=\"400\"} 1",
        "tokenledger_gateway_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "tokenledger_gateway_events_accepted_total 2",
        "tokenledger_gateway_events_rejected_total{reason=\"unauthorized\"} 1",
        "tokenledger_gateway_events_rejected_total{reason=\"forbidden\"} 1",
        "tokenledger_gateway_events_rejected_total{reason=\"invalid\"} 1",
        "tokenledger_gateway_request_duration_seconds_count{route=\"/v1/usage\"} 4",
        "tokenledger_gateway_produce_duration_seconds_count 1",
        // The scrape itself is in flight while it renders.
        "tokenledger_gateway_inflight_requests 1",
        "tokenledger_gateway_up 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    for secret in ["acme", ACME_KEY, "globex", "12345"] {
        assert!(!text.contains(secret), "{secret:?} leaked into metrics");
    }
}

#[tokio::test]
async fn an_accepted_request_says_how_long_kafka_took_and_what_the_gateway_added() {
    let app = app();
    let (status, headers, body) =
        send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "{body}");
    let timing = headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a Server-Timing header in {headers:?}"));
    let durations: Vec<(&str, f64)> = timing
        .split(", ")
        .map(|metric| {
            let (name, duration) = metric.split_once(";dur=").expect("name;dur=ms");
            (name, duration.parse().expect("milliseconds"))
        })
        .collect();
    let names: Vec<&str> = durations.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["kafka", "gateway"], "{timing}");
    assert!(durations.iter().all(|(_, ms)| *ms >= 0.0), "{timing}");
}
