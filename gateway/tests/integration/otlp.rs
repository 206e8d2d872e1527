//! `POST /v1/traces` through the router over the in-memory appender:
//! encodings, gzip, authentication, limits, partial success, retries and
//! one event per call.

use std::io::Write;

use crate::support::*;
use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use gateway::append::AppendError;
use gateway::memory::Script;
use gateway::Settings;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Any::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Any::IntValue(value))
}

fn span(trace: u8, start: DateTime<Utc>, attributes: Vec<KeyValue>) -> Span {
    let nanos = start.timestamp_nanos_opt().expect("in range") as u64;
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace; 8],
        name: "chat claude".into(),
        start_time_unix_nano: nanos,
        end_time_unix_nano: nanos + 5_000_000,
        attributes,
        ..Default::default()
    }
}

fn usage(response_id: Option<&str>) -> Vec<KeyValue> {
    let mut attributes = vec![
        s("gen_ai.system", "anthropic"),
        s("gen_ai.request.model", "claude-sonnet-4-5"),
        i("gen_ai.usage.input_tokens", 1200),
        i("gen_ai.usage.output_tokens", 80),
        i("gen_ai.usage.cache_read_input_tokens", 1000),
    ];
    if let Some(id) = response_id {
        attributes.push(s("gen_ai.response.id", id));
    }
    attributes
}

fn export(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(key: Option<&str>, content_type: &str, gzip: bool, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::post("/v1/traces").header("content-type", content_type);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    let body = if gzip {
        builder = builder.header("content-encoding", "gzip");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&body).expect("gzip");
        encoder.finish().expect("gzip")
    } else {
        body
    };
    builder.body(Body::from(body)).expect("request builds")
}

fn protobuf(key: Option<&str>, request: &ExportTraceServiceRequest) -> Request<Body> {
    post(
        key,
        "application/x-protobuf",
        false,
        request.encode_to_vec(),
    )
}

fn json(key: Option<&str>, request: &ExportTraceServiceRequest) -> Request<Body> {
    let body = serde_json::to_vec(request).expect("serialises");
    post(key, "application/json", false, body)
}

async fn answer(app: &TestApp, request: Request<Body>) -> (u16, String, Vec<u8>) {
    let response = send(&app.router, request).await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, content_type, bytes.to_vec())
}

async fn metric(app: &TestApp, line: &str) -> f64 {
    let text = app.state.metrics.render().expect("renders");
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line} in\n{text}"))
}

#[tokio::test]
async fn protobuf_json_and_gzip_bodies_become_events() {
    let now = Utc::now();
    let request = export(
        vec![s("service.name", "chat-api")],
        vec![
            span(1, now, usage(None)),
            span(2, now, vec![s("http.method", "GET")]),
        ],
    );
    for (encoding, gzip) in [
        ("protobuf", false),
        ("protobuf", true),
        ("json", false),
        ("json", true),
    ] {
        let app = app();
        let (content_type, body) = if encoding == "protobuf" {
            ("application/x-protobuf", request.encode_to_vec())
        } else {
            (
                "application/json",
                serde_json::to_vec(&request).expect("json"),
            )
        };
        let (status, reply_type, reply) =
            answer(&app, post(Some(ACME_KEY), content_type, gzip, body)).await;
        assert_eq!(
            status,
            200,
            "{encoding} gzip={gzip}: {}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(reply_type, content_type);
        let events = app.appender.acknowledged();
        assert_eq!(events.len(), 1, "{encoding} gzip={gzip}");
        let event = &events[0];
        assert_eq!(event.tenant_id, "acme");
        assert_eq!(event.provider, "anthropic");
        assert_eq!(
            (event.prompt_tokens, event.cached_prompt_tokens),
            (1200, 1000)
        );
        assert!(event.request_id.is_some());
        assert_eq!(
            metric(
                &app,
                "tokenledger_gateway_otlp_spans_total{outcome=\"without_usage\"}"
            )
            .await,
            1.0
        );
        assert_eq!(
            metric(&app, "tokenledger_gateway_events_accepted_total").await,
            1.0
        );
    }
}

#[tokio::test]
async fn two_spans_of_one_call_in_two_traces_are_one_event() {
    // Shaped like a third-party Anthropic instrumentation's output: two
    // traces, the same response id and usage, different timestamps.
    let app = app();
    let now = Utc::now();
    let first = export(vec![], vec![span(1, now, usage(Some("msg_01AbC")))]);
    let second = export(
        vec![],
        vec![span(
            9,
            now + TimeDelta::milliseconds(40),
            usage(Some("msg_01AbC")),
        )],
    );
    assert_eq!(answer(&app, protobuf(Some(ACME_KEY), &first)).await.0, 200);
    assert_eq!(answer(&app, json(Some(ACME_KEY), &second)).await.0, 200);
    let events = app.appender.acknowledged();
    assert_eq!(events.len(), 2, "both exports are appended");
    // One call: the same id and content, each at its own start; the
    // processor stores it once (processor/tests/integration/call_identity_db.rs).
    assert_eq!(events[0].id, events[1].id);
    assert!(events[0].call_identity && events[1].call_identity);
    assert_eq!(
        events[1].created_at - events[0].created_at,
        TimeDelta::milliseconds(40)
    );
    assert_eq!(events[0].content_sha256(), events[1].content_sha256());
    // In one request they are one event.
    let app = self::app();
    let both = export(
        vec![],
        vec![
            span(1, now, usage(Some("msg_01AbC"))),
            span(
                9,
                now + TimeDelta::milliseconds(40),
                usage(Some("msg_01AbC")),
            ),
        ],
    );
    assert_eq!(answer(&app, protobuf(Some(ACME_KEY), &both)).await.0, 200);
    assert_eq!(app.appender.acknowledged().len(), 1);
}

#[tokio::test]
async fn an_exporter_retry_carries_the_same_keys() {
    let app = app();
    let request = export(vec![], vec![span(3, Utc::now(), usage(None))]);
    app.appender
        .push_script(Script::FailAll(AppendError::QueueFull));
    let response = send(&app.router, protobuf(Some(ACME_KEY), &request)).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/x-protobuf",
        "an OTLP failure answers in the request's encoding"
    );
    assert_eq!(
        answer(&app, protobuf(Some(ACME_KEY), &request)).await.0,
        200
    );
    assert_eq!(
        answer(&app, protobuf(Some(ACME_KEY), &request)).await.0,
        200
    );
    let events = app.appender.acknowledged();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].id, events[0].created_at),
        (events[1].id, events[1].created_at)
    );
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_events_rejected_total{reason=\"queue_full\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn admin_keys_attribute_by_attribute_and_refuse_the_rest_in_partial_success() {
    let app = app();
    let now = Utc::now();
    let mut attributed = usage(None);
    attributed.push(s("tenant.id", "globex"));
    let request = export(
        vec![],
        vec![span(1, now, attributed), span(2, now, usage(None))],
    );
    let (status, _, body) = answer(&app, protobuf(Some(ADMIN_KEY), &request)).await;
    assert_eq!(status, 200);
    let reply = ExportTraceServiceResponse::decode(body.as_slice()).expect("protobuf answer");
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("no tenant"),
        "{}",
        partial.error_message
    );
    let events = app.appender.acknowledged();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].tenant_id, "globex");
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_events_rejected_total{reason=\"invalid\"}"
        )
        .await,
        1.0
    );

    // The same in JSON.
    let (status, _, body) = answer(&app, json(Some(ADMIN_KEY), &request)).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).expect("json answer");
    assert_eq!(
        reply["partialSuccess"]["rejectedSpans"]
            .to_string()
            .trim_matches('"'),
        "1"
    );
}

#[tokio::test]
async fn a_tenant_key_attributes_every_span_to_its_tenant() {
    let app = app();
    let mut attributes = usage(None);
    attributes.push(s("tenant.id", "globex"));
    let request = export(vec![], vec![span(1, Utc::now(), attributes)]);
    assert_eq!(
        answer(&app, protobuf(Some(ACME_KEY), &request)).await.0,
        200
    );
    assert_eq!(app.appender.acknowledged()[0].tenant_id, "acme");
}

#[tokio::test]
async fn refusals_have_the_otlp_status_codes() {
    let app = app();
    let request = export(vec![], vec![span(1, Utc::now(), usage(None))]);
    let (status, content_type, _) = answer(&app, protobuf(None, &request)).await;
    assert_eq!(
        (status, content_type.as_str()),
        (401, "application/x-protobuf")
    );
    let (status, _, _) = answer(&app, protobuf(Some("wrong-key-0123456789"), &request)).await;
    assert_eq!(status, 401);
    let (status, _, _) = answer(
        &app,
        post(Some(ACME_KEY), "text/plain", false, request.encode_to_vec()),
    )
    .await;
    assert_eq!(status, 415);
    let (status, content_type, body) = answer(
        &app,
        post(
            Some(ACME_KEY),
            "application/json",
            false,
            b"{\"resourceSpans\": 7}".to_vec(),
        ),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    let body: Value = serde_json::from_slice(&body).expect("a Status in JSON");
    assert_eq!(body["code"], 3);
    let (status, _, _) = answer(
        &app,
        post(
            Some(ACME_KEY),
            "application/x-protobuf",
            false,
            vec![0xff, 0xff, 0xff],
        ),
    )
    .await;
    assert_eq!(status, 400);
    let mut bad_gzip = post(
        Some(ACME_KEY),
        "application/x-protobuf",
        false,
        b"xx".to_vec(),
    );
    bad_gzip
        .headers_mut()
        .insert("content-encoding", "gzip".parse().expect("header"));
    assert_eq!(answer(&app, bad_gzip).await.0, 400);
    let mut brotli = protobuf(Some(ACME_KEY), &request);
    brotli
        .headers_mut()
        .insert("content-encoding", "br".parse().expect("header"));
    assert_eq!(answer(&app, brotli).await.0, 415);
    assert!(app.appender.acknowledged().is_empty());
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_events_rejected_total{reason=\"unauthorized\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn limits_are_refused_with_413() {
    let defaults = Settings::default();
    let settings = Settings {
        max_body_bytes: 4096,
        limits: ledger::ValidationLimits {
            max_batch_events: 3,
            ..defaults.limits
        },
        ..defaults
    };
    let app = app_with(settings, key_ring());
    let now = Utc::now();
    let spans: Vec<Span> = (1..=4).map(|n| span(n, now, usage(None))).collect();
    let (status, _, body) = answer(&app, protobuf(Some(ACME_KEY), &export(vec![], spans))).await;
    assert_eq!(status, 413);
    let status_message = String::from_utf8_lossy(&body).to_string();
    assert!(status_message.contains("at most 3"), "{status_message}");

    let big = export(
        vec![s("padding", &"x".repeat(5000))],
        vec![span(1, now, usage(None))],
    );
    assert_eq!(answer(&app, protobuf(Some(ACME_KEY), &big)).await.0, 413);
    // Small on the wire, too large once inflated.
    let bomb = post(
        Some(ACME_KEY),
        "application/x-protobuf",
        true,
        big.encode_to_vec(),
    );
    assert_eq!(answer(&app, bomb).await.0, 413);
    assert!(app.appender.acknowledged().is_empty());
}

#[tokio::test]
async fn configured_attributes_become_labels() {
    let defaults = Settings::default();
    let settings = Settings {
        otlp: ledger::otlp::OtlpSettings {
            label_attributes: vec!["service.name".into(), "feature".into()],
            ..defaults.otlp.clone()
        },
        ..defaults
    };
    let app = app_with(settings, key_ring());
    let mut attributes = usage(None);
    attributes.push(s("feature", "summaries"));
    attributes.push(s("user.id", "u-42"));
    let request = export(
        vec![s("service.name", "chat-api")],
        vec![span(1, Utc::now(), attributes)],
    );
    assert_eq!(
        answer(&app, protobuf(Some(ACME_KEY), &request)).await.0,
        200
    );
    let event = &app.appender.acknowledged()[0];
    assert_eq!(event.labels["service.name"], "chat-api");
    assert_eq!(event.labels["feature"], "summaries");
    assert_eq!(event.user_id.as_deref(), Some("u-42"));
}

#[test]
fn the_otlp_section_is_read_and_checked() {
    let config: gateway::Config = toml::from_str(
        "[otlp]\ntenant_attribute = \"org.id\"\nlabel_attributes = [\"service.name\"]\n",
    )
    .expect("parses");
    config.validate().expect("valid");
    let settings = Settings::from_config(&config).otlp;
    assert_eq!(settings.tenant_attribute, "org.id");
    assert_eq!(settings.label_attributes, ["service.name"]);
    assert_eq!(settings.user_attributes, ["user.id", "enduser.id"]);

    let mut too_many = config.clone();
    too_many.otlp.label_attributes = (0..17).map(|n| format!("a{n}")).collect();
    let error = too_many.validate().expect_err("17 labels");
    assert!(error.to_string().contains("at most 16"), "{error}");
    let mut blank = config;
    blank.otlp.tenant_attribute = " ".into();
    assert!(blank.validate().is_err());
    let printed = gateway::Config::default()
        .to_redacted_toml()
        .expect("renders");
    assert!(printed.contains("[otlp]"), "{printed}");
}

#[tokio::test]
async fn a_late_span_is_refused_in_partial_success_and_the_others_are_kept() {
    let app = app();
    let now = Utc::now();
    // ACME_KEY is a tenant key: six hours of lateness.
    let late = span(1, now - TimeDelta::hours(7), usage(Some("msg_late")));
    let on_time = span(2, now - TimeDelta::seconds(60), usage(Some("msg_on_time")));
    let (status, _, body) = answer(
        &app,
        protobuf(Some(ACME_KEY), &export(vec![], vec![late, on_time])),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply = ExportTraceServiceResponse::decode(body.as_slice()).expect("a response");
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("created_at"),
        "{}",
        partial.error_message
    );
    let appended = app.appender.acknowledged();
    assert_eq!(appended.len(), 1);
    assert_eq!(
        appended[0].created_at,
        (now - TimeDelta::seconds(60))
            .duration_trunc(TimeDelta::microseconds(1))
            .expect("in range")
    );
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_events_rejected_total{reason=\"too_late\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_events_rejected_total{reason=\"invalid\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn a_call_a_minute_old_is_on_time_for_a_fifteen_minute_key() {
    const QUICK_KEY: &str = "quick-key-0123456789abcdef";
    let keys: gateway::config::AuthConfig = toml::from_str(&format!(
        "[[keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\nmax_lateness_ms = 900000\n",
        gateway::auth::hash_key(QUICK_KEY)
    ))
    .expect("the key parses");
    let app = app_with(
        Settings::default(),
        gateway::KeyRing::from_config(&keys).expect("valid"),
    );
    let started = Utc::now() - TimeDelta::seconds(60);
    let (status, _, body) = answer(
        &app,
        protobuf(
            Some(QUICK_KEY),
            &export(vec![], vec![span(1, started, usage(Some("msg_minute")))]),
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply = ExportTraceServiceResponse::decode(body.as_slice()).expect("a response");
    assert_eq!(reply.partial_success, None);
    let appended = app.appender.acknowledged();
    assert_eq!(appended.len(), 1);
    assert_eq!(
        appended[0].created_at,
        started
            .duration_trunc(TimeDelta::microseconds(1))
            .expect("in range"),
        "the call's own start, not the start of its hour"
    );
}

#[tokio::test]
async fn only_spans_with_usage_count_toward_the_limit() {
    let defaults = Settings::default();
    let settings = Settings {
        limits: ledger::ValidationLimits {
            max_batch_events: 1000,
            ..defaults.limits
        },
        ..defaults
    };
    let app = app_with(settings, key_ring());
    let now = Utc::now();
    let mut spans = vec![span(1, now, usage(Some("msg_collector")))];
    spans.extend((0..1500u32).map(|n| {
        let mut plain = span(2, now, vec![s("http.request.method", "GET")]);
        plain.span_id = n.to_be_bytes().repeat(2);
        plain
    }));
    let (status, _, body) = answer(&app, protobuf(Some(ACME_KEY), &export(vec![], spans))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(app.appender.acknowledged().len(), 1);
    assert_eq!(
        metric(
            &app,
            "tokenledger_gateway_otlp_spans_total{outcome=\"without_usage\"}"
        )
        .await,
        1500.0
    );
}
