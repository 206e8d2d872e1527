use chrono::{TimeZone, Timelike};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

use super::*;
use crate::pricebook::ServiceTier;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 10, 30, 0)
        .single()
        .expect("test value")
}

fn span(trace: u8, start: DateTime<Utc>, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace; 8],
        name: "chat".into(),
        start_time_unix_nano: start.timestamp_nanos_opt().expect("test value") as u64,
        end_time_unix_nano: start.timestamp_nanos_opt().expect("test value") as u64 + 1_000_000,
        attributes,
        ..Default::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
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

fn map(request: &ExportTraceServiceRequest, tenant: Option<&str>) -> Mapped {
    map_request(
        request,
        Caller { tenant },
        &OtlpSettings {
            label_attributes: vec!["service.name".into(), "feature".into()],
            ..OtlpSettings::default()
        },
        &ValidationLimits::default(),
        now(),
    )
}

fn openai(extra: Vec<KeyValue>) -> Vec<KeyValue> {
    let mut attributes = vec![
        s("gen_ai.system", "openai"),
        s("gen_ai.request.model", "gpt-4o"),
        i("gen_ai.usage.input_tokens", 100),
        i("gen_ai.usage.output_tokens", 20),
    ];
    attributes.extend(extra);
    attributes
}

#[test]
fn current_convention_maps_onto_an_event() {
    let attributes = vec![
        s("gen_ai.provider.name", "anthropic"),
        s("gen_ai.request.model", "claude-x"),
        s("gen_ai.response.model", "claude-sonnet-4-5"),
        i("gen_ai.usage.input_tokens", 1000),
        i("gen_ai.usage.output_tokens", 300),
        i("gen_ai.usage.cache_read.input_tokens", 600),
        i("gen_ai.usage.cache_creation.input_tokens", 200),
        i("gen_ai.usage.reasoning.output_tokens", 100),
        s("feature", "search"),
    ];
    let mapped = map(
        &request(
            vec![s("service.name", "api")],
            vec![span(1, now(), attributes)],
        ),
        Some("acme"),
    );
    assert_eq!(mapped.refused, vec![]);
    let event = &mapped.events[0];
    assert_eq!(event.tenant_id, "acme");
    assert_eq!(event.provider, "anthropic");
    assert_eq!(event.model, "claude-sonnet-4-5", "response model first");
    assert_eq!(
        (
            event.prompt_tokens,
            event.completion_tokens,
            event.total_tokens
        ),
        (1000, 300, 1300)
    );
    assert_eq!(
        (
            event.cached_prompt_tokens,
            event.cache_write_tokens,
            event.reasoning_tokens
        ),
        (600, 200, 100)
    );
    assert_eq!(event.labels["service.name"], "api");
    assert_eq!(event.labels["feature"], "search");
    assert_eq!(event.id.get_version_num(), 8);
}

#[test]
fn older_names_are_understood() {
    let attributes = vec![
        s("gen_ai.system", "openai"),
        s("gen_ai.request.model", "gpt-4o"),
        kv(
            "gen_ai.usage.prompt_tokens",
            Value::StringValue("50".into()),
        ),
        kv("gen_ai.usage.completion_tokens", Value::DoubleValue(40.0)),
        i("gen_ai.usage.cache_read_input_tokens", 10),
        i("gen_ai.usage.cache_creation_input_tokens", 5),
        i("gen_ai.usage.reasoning_tokens", 30),
    ];
    let mapped = map(
        &request(vec![], vec![span(1, now(), attributes)]),
        Some("acme"),
    );
    let event = &mapped.events[0];
    assert_eq!((event.prompt_tokens, event.completion_tokens), (50, 40));
    assert_eq!(
        (
            event.cached_prompt_tokens,
            event.cache_write_tokens,
            event.reasoning_tokens
        ),
        (10, 5, 30)
    );
    for (name, value) in [
        ("gen_ai.usage.cache_write.input_tokens", 7),
        ("gen_ai.usage.input_tokens.cache_write", 7),
    ] {
        let mapped = map(
            &request(vec![], vec![span(1, now(), openai(vec![i(name, value)]))]),
            Some("acme"),
        );
        assert_eq!(mapped.events[0].cache_write_tokens, 7, "{name}");
    }
    let mapped = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                openai(vec![
                    i("gen_ai.usage.input_tokens.cached", 9),
                    i("gen_ai.usage.output_tokens.reasoning", 4),
                ]),
            )],
        ),
        Some("acme"),
    );
    assert_eq!(mapped.events[0].cached_prompt_tokens, 9);
    assert_eq!(mapped.events[0].reasoning_tokens, 4);
}

#[test]
fn counts_reported_outside_input_or_output_are_added() {
    // Anthropic's raw input_tokens excludes the cache; Gemini's candidates
    // exclude thoughts.
    let attributes = vec![
        s("gen_ai.system", "anthropic"),
        s("gen_ai.request.model", "claude-sonnet-4-5"),
        i("gen_ai.usage.input_tokens", 10),
        i("gen_ai.usage.output_tokens", 5),
        i("gen_ai.usage.cache_read_input_tokens", 900),
        i("gen_ai.usage.reasoning.output_tokens", 8),
    ];
    let mapped = map(
        &request(vec![], vec![span(1, now(), attributes)]),
        Some("acme"),
    );
    let event = &mapped.events[0];
    assert_eq!((event.prompt_tokens, event.completion_tokens), (910, 13));
}

#[test]
fn provider_values_map_onto_tokenledgers() {
    for (system, model, expected) in [
        ("aws.bedrock", "anthropic.claude-3", "bedrock"),
        ("gcp.vertex_ai", "gemini-2.5-pro", "google"),
        ("gcp.vertex_ai", "claude-sonnet-4-5", "anthropic"),
        ("gcp.gemini", "gemini-2.5-pro", "google"),
        ("azure.ai.openai", "gpt-4o", "azure"),
        ("OpenAI", "gpt-4o", "openai"),
        ("mistral_ai", "mistral-large", "mistral"),
    ] {
        assert_eq!(provider_name(system, model), expected, "{system}");
    }
    let mapped = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                vec![
                    s("gen_ai.provider.name", "azure.ai.openai"),
                    s("gen_ai.system", "openai"),
                    s("gen_ai.request.model", "gpt-4o"),
                    i("gen_ai.usage.input_tokens", 1),
                ],
            )],
        ),
        Some("acme"),
    );
    assert_eq!(mapped.events[0].provider, "azure", "provider.name first");
}

#[test]
fn spans_without_usage_are_counted_not_refused() {
    let plain = span(1, now(), vec![s("http.method", "GET")]);
    let mapped = map(&request(vec![], vec![plain]), Some("acme"));
    assert_eq!(mapped.without_usage, 1);
    assert!(mapped.events.is_empty() && mapped.refused.is_empty());
}

#[test]
fn two_spans_of_one_call_in_two_traces_are_one_event() {
    let attributes = |extra: i64| {
        vec![
            s("gen_ai.system", "anthropic"),
            s("gen_ai.request.model", "claude-sonnet-4-5"),
            s("gen_ai.response.id", "msg_01XYZ"),
            i("gen_ai.usage.input_tokens", 100 + extra),
            i("gen_ai.usage.output_tokens", 20),
        ]
    };
    let first = span(1, now(), attributes(0));
    let second = span(2, now() + TimeDelta::milliseconds(37), attributes(0));
    let together = map(
        &request(vec![], vec![first.clone(), second.clone()]),
        Some("acme"),
    );
    assert_eq!(together.events.len(), 1);
    assert_eq!(together.duplicates, 1);
    // Across two requests (a second exporter, or a retry): the same call,
    // each at its own start time, with the same content.
    let alone = map(&request(vec![], vec![second]), Some("acme"));
    assert_eq!(alone.events[0].id, together.events[0].id);
    assert!(alone.events[0].call_identity && together.events[0].call_identity);
    assert_eq!(together.events[0].created_at, now());
    assert_eq!(
        alone.events[0].created_at,
        now() + TimeDelta::milliseconds(37)
    );
    assert_eq!(
        alone.events[0].content_sha256(),
        together.events[0].content_sha256()
    );
    // Another tenant's call with the same response id is another event.
    let other = map(&request(vec![], vec![first]), Some("globex"));
    assert_ne!(other.events[0].id, together.events[0].id);
}

#[test]
fn a_calls_time_is_its_start_to_the_microsecond() {
    let start = Utc
        .with_ymd_and_hms(2026, 12, 4, 10, 18, 12)
        .single()
        .expect("test value")
        + TimeDelta::nanoseconds(345_678_901);
    let attributes = openai(vec![s("gen_ai.response.id", "chatcmpl-48")]);
    let mapped = map(
        &request(vec![], vec![span(1, start, attributes)]),
        Some("acme"),
    );
    let event = &mapped.events[0];
    assert_eq!(
        event.created_at,
        start - TimeDelta::nanoseconds(901),
        "the span's start, truncated to the microsecond"
    );
    assert_eq!(
        (event.created_at.minute(), event.created_at.second()),
        (18, 12)
    );
    assert!(event.call_identity);
}

#[test]
fn one_call_reported_on_both_sides_of_an_hour_is_one_call() {
    let before = Utc
        .with_ymd_and_hms(2026, 12, 4, 9, 59, 59)
        .single()
        .expect("test value")
        + TimeDelta::milliseconds(990);
    let after = before + TimeDelta::milliseconds(25);
    let attributes = || openai(vec![s("gen_ai.response.id", "chatcmpl-hour")]);
    let first = map(
        &request(vec![], vec![span(1, before, attributes())]),
        Some("acme"),
    );
    let second = map(
        &request(vec![], vec![span(2, after, attributes())]),
        Some("acme"),
    );
    let (first, second) = (&first.events[0], &second.events[0]);
    assert_ne!(first.created_at.hour(), second.created_at.hour());
    assert_eq!(first.id, second.id);
    assert!(first.call_identity && second.call_identity);
    assert_eq!(first.content_sha256(), second.content_sha256());
    // In one request, the second span is the same call.
    let both = map(
        &request(
            vec![],
            vec![span(1, before, attributes()), span(2, after, attributes())],
        ),
        Some("acme"),
    );
    assert_eq!((both.events.len(), both.duplicates), (1, 1));
}

#[test]
fn service_tier_and_one_hour_cache_writes_are_read() {
    let flex = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                openai(vec![s("openai.response.service_tier", "flex")]),
            )],
        ),
        Some("acme"),
    );
    assert_eq!(flex.events[0].service_tier, Some(ServiceTier::Flex));
    let older = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                openai(vec![s("gen_ai.openai.response.service_tier", "priority")]),
            )],
        ),
        Some("acme"),
    );
    assert_eq!(older.events[0].service_tier, Some(ServiceTier::Priority));
    let standard = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                openai(vec![s("openai.response.service_tier", "default")]),
            )],
        ),
        Some("acme"),
    );
    assert_eq!(standard.events[0].service_tier, None);
    let unknown = map(
        &request(
            vec![],
            vec![span(
                1,
                now(),
                openai(vec![s("openai.response.service_tier", "turbo")]),
            )],
        ),
        Some("acme"),
    );
    assert!(unknown.events.is_empty());
    assert!(
        unknown.refused[0].reason.contains("turbo"),
        "{:?}",
        unknown.refused
    );

    let anthropic = |extra: Vec<KeyValue>| {
        let mut attributes = vec![
            s("gen_ai.system", "anthropic"),
            s("gen_ai.request.model", "claude-sonnet-4-5"),
            i("gen_ai.usage.input_tokens", 3000),
            i("gen_ai.usage.output_tokens", 20),
        ];
        attributes.extend(extra);
        map(
            &request(vec![], vec![span(1, now(), attributes)]),
            Some("acme"),
        )
    };
    let split = anthropic(vec![
        i("gen_ai.usage.cache_creation.input_tokens", 2000),
        i("gen_ai.usage.cache_creation.ephemeral_5m_input_tokens", 500),
        i(
            "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens",
            1500,
        ),
    ]);
    let event = &split.events[0];
    assert_eq!(
        (
            event.prompt_tokens,
            event.cache_write_tokens,
            event.cache_write_1h_tokens
        ),
        (3000, 500, 1500)
    );
    // The split alone gives the total.
    let split_only = anthropic(vec![
        i("gen_ai.usage.cache_creation.ephemeral_5m_input_tokens", 0),
        i(
            "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens",
            1500,
        ),
    ]);
    let event = &split_only.events[0];
    assert_eq!(
        (event.cache_write_tokens, event.cache_write_1h_tokens),
        (0, 1500)
    );
    let contradiction = anthropic(vec![
        i("gen_ai.usage.cache_creation.input_tokens", 2000),
        i("gen_ai.usage.cache_creation.ephemeral_5m_input_tokens", 100),
        i("gen_ai.usage.cache_creation.ephemeral_1h_input_tokens", 100),
    ]);
    assert!(contradiction.events.is_empty());
    assert_eq!(contradiction.refused.len(), 1);
}

#[test]
fn spans_without_response_id_are_identified_by_trace_and_span() {
    let one = span(1, now(), openai(vec![]));
    let two = span(2, now(), openai(vec![]));
    let mapped = map(&request(vec![], vec![one.clone(), two]), Some("acme"));
    assert_eq!(mapped.events.len(), 2);
    let retried = map(&request(vec![], vec![one]), Some("acme"));
    assert_eq!(retried.events[0], mapped.events[0]);
    assert_eq!(mapped.events[0].created_at, now());
}

#[test]
fn admin_keys_take_the_tenant_from_the_span_then_the_resource() {
    let from_span = span(1, now(), openai(vec![s("tenant.id", "globex")]));
    let from_resource = span(2, now(), openai(vec![]));
    let mapped = map(
        &request(
            vec![s("tenant.id", "initech")],
            vec![from_span, from_resource],
        ),
        None,
    );
    let tenants: Vec<&str> = mapped.events.iter().map(|e| e.tenant_id.as_str()).collect();
    assert_eq!(tenants, ["globex", "initech"]);
}

#[test]
fn every_refusal_has_a_reason() {
    let cases: Vec<(Vec<KeyValue>, &str)> = vec![
        (openai(vec![]), "no tenant"),
        (
            vec![
                s("gen_ai.system", "openai"),
                i("gen_ai.usage.input_tokens", 1),
            ],
            "no model",
        ),
        (
            vec![
                s("gen_ai.request.model", "m"),
                i("gen_ai.usage.input_tokens", 1),
            ],
            "no provider",
        ),
        (
            vec![
                s("gen_ai.system", "openai"),
                s("gen_ai.request.model", "m"),
                i("gen_ai.usage.input_tokens", -1),
            ],
            "between 0 and",
        ),
        (
            vec![
                s("gen_ai.system", "openai"),
                s("gen_ai.request.model", "m"),
                s("gen_ai.usage.input_tokens", "many"),
            ],
            "not a whole number",
        ),
        (
            vec![
                s("gen_ai.system", "Open AI!"),
                s("gen_ai.request.model", "m"),
                i("gen_ai.usage.input_tokens", 1),
            ],
            "provider",
        ),
        (
            openai(vec![s("feature", &"x".repeat(300))]),
            "at most 255 characters",
        ),
    ];
    for (attributes, reason) in cases {
        let tenant = if reason == "no tenant" {
            None
        } else {
            Some("acme")
        };
        let mapped = map(&request(vec![], vec![span(1, now(), attributes)]), tenant);
        assert_eq!(mapped.refused.len(), 1, "{reason}");
        assert!(
            mapped.refused[0].reason.contains(reason),
            "{reason}: {}",
            mapped.refused[0].reason
        );
    }
    let old = span(1, now() - TimeDelta::days(40), openai(vec![]));
    let future = span(2, now() + TimeDelta::hours(1), openai(vec![]));
    let mut no_ids = span(3, now(), openai(vec![]));
    no_ids.trace_id.clear();
    let mapped = map(&request(vec![], vec![old, future, no_ids]), Some("acme"));
    let reasons: Vec<&str> = mapped.refused.iter().map(|r| r.reason.as_str()).collect();
    assert!(reasons[0].contains("backfill"), "{reasons:?}");
    assert!(reasons[1].contains("future"), "{reasons:?}");
    assert!(reasons[2].contains("no identity"), "{reasons:?}");
    assert!(refusal_message(&mapped.refused).starts_with("3 span(s)"));
}

#[test]
fn both_encodings_decode_to_the_same_request() {
    let original = request(
        vec![s("service.name", "api")],
        vec![span(
            1,
            now(),
            openai(vec![s("gen_ai.response.id", "chatcmpl-1")]),
        )],
    );
    let protobuf = original.encode_to_vec();
    assert_eq!(
        decode_request(&protobuf, Encoding::Protobuf).expect("test value"),
        original
    );
    let json = serde_json::to_vec(&original).expect("test value");
    assert_eq!(
        decode_request(&json, Encoding::Json).expect("test value"),
        original
    );
    assert_eq!(span_count(&original), 1);
    assert!(decode_request(b"{not json", Encoding::Json).is_err());
    assert!(decode_request(&[0xff, 0xff, 0xff], Encoding::Protobuf).is_err());
}
