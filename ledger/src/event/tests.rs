//! Unit and property tests of the event contract.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::request::{new_v7_at, uuid_v7_time};
use super::*;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-10T12:00:00.123456789Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn limits() -> ValidationLimits {
    ValidationLimits::default()
}

fn minimal() -> Value {
    json!({
        "tenant_id": "acme",
        "provider": "OpenAI",
        "model": "gpt-4o",
        "prompt_tokens": 100,
        "completion_tokens": 20
    })
}

fn parse(value: &Value) -> Result<UsageEvent, EventError> {
    UsageEvent::from_request_value(value, now(), &limits())
}

fn fields_of(err: &EventError) -> Vec<&str> {
    err.errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn minimal_event_gets_id_time_and_total() {
    let event = parse(&minimal()).expect("valid");
    assert_eq!(event.provider, "openai", "provider is lower-cased");
    assert_eq!(event.total_tokens, 120);
    assert_eq!(event.id.get_version_num(), 7);
    assert_eq!(uuid_v7_time(event.id), Some(event.created_at));
    assert_eq!(event.received_at, now());
    assert!(event.created_at <= now());
}

#[test]
fn v7_id_without_created_at_takes_the_ids_time() {
    let time = now() - Duration::hours(1);
    let id = new_v7_at(time.trunc_subsecs(3));
    let mut value = minimal();
    value["id"] = json!(id.to_string());
    let event = parse(&value).expect("valid");
    assert_eq!(event.id, id);
    assert_eq!(event.created_at, time.trunc_subsecs(3));
}

#[test]
fn non_v7_id_requires_created_at() {
    let mut value = minimal();
    value["id"] = json!("6f1c2d0e-3b9a-4c1e-9f00-0123456789ab");
    let err = parse(&value).expect_err("v4 id without created_at");
    assert_eq!(fields_of(&err), vec!["created_at"]);
    value["created_at"] = json!("2026-03-10T11:00:00Z");
    let event = parse(&value).expect("with created_at");
    assert_eq!(event.id.get_version_num(), 4);
}

#[test]
fn created_at_window_is_enforced() {
    let mut value = minimal();
    value["created_at"] = json!("2026-03-10T12:06:00Z");
    assert_eq!(
        fields_of(&parse(&value).expect_err("future")),
        ["created_at"]
    );
    value["created_at"] = json!("2026-03-10T12:04:00Z");
    parse(&value).expect("within skew");
    value["created_at"] = json!("2026-02-01T00:00:00Z");
    assert_eq!(
        fields_of(&parse(&value).expect_err("too old")),
        ["created_at"]
    );
    value["created_at"] = json!("2026-02-10T00:00:00+01:00");
    parse(&value).expect("within backfill, with an offset");
}

#[test]
fn created_at_is_truncated_to_microseconds() {
    let mut value = minimal();
    value["created_at"] = json!("2026-03-10T11:00:00.123456789Z");
    let event = parse(&value).expect("valid");
    assert_eq!(event.created_at.timestamp_subsec_nanos(), 123_456_000);
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let value = json!({
        "tenant_id": "",
        "provider": "Open AI",
        "prompt_tokens": -1,
        "completion_tokens": 1.5,
        "total_tokens": "3",
        "estimated_cost": 0.01,
        "labels": {"use case": "x"},
        "colour": "blue"
    });
    let err = parse(&value).expect_err("invalid");
    let mut fields = fields_of(&err);
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "colour",
            "completion_tokens",
            "estimated_cost",
            "labels",
            "model",
            "prompt_tokens",
            "provider",
            "tenant_id",
            "total_tokens"
        ]
    );
}

#[test]
fn total_tokens_must_match() {
    let mut value = minimal();
    value["total_tokens"] = json!(121);
    assert_eq!(
        fields_of(&parse(&value).expect_err("mismatch")),
        ["total_tokens"]
    );
    value["total_tokens"] = json!(120);
    parse(&value).expect("match");
}

#[test]
fn token_overflow_is_rejected_not_wrapped() {
    let mut value = minimal();
    value["prompt_tokens"] = json!(super::MAX_TOKEN_COUNT);
    value["completion_tokens"] = json!(1);
    assert_eq!(
        fields_of(&parse(&value).expect_err("overflow")),
        ["total_tokens"]
    );
    value["prompt_tokens"] = json!(u64::from(u32::MAX) + 1);
    assert!(fields_of(&parse(&value).expect_err("too big")).contains(&"prompt_tokens"));
    value["prompt_tokens"] = json!(u64::from(super::MAX_TOKEN_COUNT) + 1);
    assert!(fields_of(&parse(&value).expect_err("beyond INTEGER")).contains(&"prompt_tokens"));
}

#[test]
fn detail_tokens_cannot_exceed_their_totals() {
    let mut value = minimal();
    value["cached_prompt_tokens"] = json!(80);
    value["cache_write_tokens"] = json!(30);
    assert_eq!(
        fields_of(&parse(&value).expect_err("cached > prompt")),
        ["cached_prompt_tokens"]
    );
    value["cache_write_tokens"] = json!(20);
    value["reasoning_tokens"] = json!(21);
    assert_eq!(
        fields_of(&parse(&value).expect_err("reasoning > completion")),
        ["reasoning_tokens"]
    );
}

#[test]
fn estimated_cost_rules() {
    let mut value = minimal();
    for (cost, ok) in [
        ("0.0042", true),
        ("0", true),
        ("12.50", true),
        ("-0.01", false),
        ("1000001", false),
        ("0.00000000001", false),
        ("abc", false),
        ("", false),
    ] {
        value["estimated_cost"] = json!(cost);
        assert_eq!(parse(&value).is_ok(), ok, "cost {cost:?}");
    }
    value["estimated_cost"] = json!("12.50");
    let event = parse(&value).expect("valid");
    assert_eq!(event.estimated_cost, Some(Decimal::new(125, 1)));
}

#[test]
fn identifiers_refuse_invisible_and_control_characters() {
    for tenant in [
        "acme\u{200B}",
        "ac\u{202E}me",
        "acme\n",
        " acme",
        "\u{0000}",
        "a\u{FEFF}",
    ] {
        let mut value = minimal();
        value["tenant_id"] = json!(tenant);
        assert_eq!(
            fields_of(&parse(&value).expect_err(tenant)),
            ["tenant_id"],
            "{tenant:?}"
        );
    }
    let mut value = minimal();
    value["tenant_id"] = json!("ünïcødé-テナント");
    parse(&value).expect("plain unicode is fine");
    value["tenant_id"] = json!("x".repeat(256));
    parse(&value).expect_err("too long");
    value["tenant_id"] = json!("é".repeat(255));
    parse(&value).expect("255 characters, more bytes");
}

#[test]
fn labels_are_bounded() {
    let mut value = minimal();
    let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    value["labels"] = Value::Object(many);
    parse(&value).expect_err("17 labels");
    value["labels"] = json!({"use_case": "support-bot", "team": "cx"});
    let event = parse(&value).expect("valid");
    assert_eq!(
        event.labels.get("use_case").map(String::as_str),
        Some("support-bot")
    );
    value["labels"] = json!({"n": 1});
    parse(&value).expect_err("non-string value");
}

#[test]
fn batch_reports_indexes_and_is_all_or_nothing() {
    let mut bad = minimal();
    bad["prompt_tokens"] = json!("ten");
    let body =
        serde_json::to_vec(&json!([minimal(), bad, minimal(), {"x": 1}])).unwrap_or_default();
    match parse_batch(&body, now(), &limits()) {
        Err(BatchError::Invalid(errors)) => {
            let indexes: Vec<_> = errors.iter().map(|e| e.index).collect();
            assert!(indexes.contains(&Some(1)));
            assert!(indexes.contains(&Some(3)));
            assert!(!indexes.contains(&Some(0)));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn batch_shapes() {
    let l = limits();
    assert!(matches!(
        parse_batch(b"[]", now(), &l),
        Err(BatchError::Empty)
    ));
    assert!(matches!(
        parse_batch(b"42", now(), &l),
        Err(BatchError::WrongShape)
    ));
    assert!(matches!(
        parse_batch(b"{", now(), &l),
        Err(BatchError::Malformed(_))
    ));
    assert!(matches!(
        parse_batch(&[0xff, 0xfe], now(), &l),
        Err(BatchError::Malformed(_))
    ));
    let deep = "[".repeat(10_000);
    assert!(matches!(
        parse_batch(deep.as_bytes(), now(), &l),
        Err(BatchError::Malformed(_))
    ));
    let small = ValidationLimits {
        max_batch_events: 2,
        ..l
    };
    let body = serde_json::to_vec(&json!([minimal(), minimal(), minimal()])).unwrap_or_default();
    assert!(matches!(
        parse_batch(&body, now(), &small),
        Err(BatchError::TooMany { count: 3, max: 2 })
    ));
    let one = serde_json::to_vec(&minimal()).unwrap_or_default();
    assert_eq!(parse_batch(&one, now(), &l).map(|v| v.len()), Ok(1));
}

#[test]
fn a_key_given_twice_is_refused_at_any_depth() {
    let l = limits();
    for body in [
        r#"{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":1,"completion_tokens":1,"prompt_tokens":900}"#,
        r#"[{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":1,"completion_tokens":1,"labels":{"a":"x","a":"y"}}]"#,
    ] {
        match parse_batch(body.as_bytes(), now(), &l) {
            Err(BatchError::Malformed(message)) => {
                assert!(message.contains("appears twice"), "{message}");
            }
            other => panic!("expected Malformed for {body}, got {other:?}"),
        }
    }
    let once = r#"{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":1,"completion_tokens":1,"labels":{"a":"x"},"estimated_cost":null}"#;
    assert_eq!(
        parse_batch(once.as_bytes(), now(), &l).map(|v| v.len()),
        Ok(1)
    );
}

#[test]
fn kafka_round_trip_and_strict_decode() {
    let mut event = parse(&minimal()).expect("valid");
    event.request_id = Some("req-1".into());
    let bytes = event.to_kafka_value();
    assert_eq!(UsageEvent::from_kafka_value(&bytes), Ok(event.clone()));

    let mut tampered: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    tampered["total_tokens"] = json!(1);
    let err = UsageEvent::from_kafka_value(&serde_json::to_vec(&tampered).unwrap_or_default())
        .expect_err("invariant");
    assert_eq!(fields_of(&err), ["total_tokens"]);
    tampered["surprise"] = json!(true);
    UsageEvent::from_kafka_value(&serde_json::to_vec(&tampered).unwrap_or_default())
        .expect_err("unknown field");
    UsageEvent::from_kafka_value(b"not json").expect_err("garbage");
}

#[test]
fn content_hash_ignores_gateway_fields_only() {
    let event = parse(&minimal()).expect("valid");
    let mut retried = event.clone();
    retried.received_at += Duration::seconds(3);
    retried.request_id = Some("other".into());
    assert_eq!(event.content_sha256(), retried.content_sha256());
    retried.prompt_tokens += 1;
    retried.total_tokens += 1;
    assert_ne!(event.content_sha256(), retried.content_sha256());
}

fn arb_event() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9-]{0,20}",
        prop::option::of("[a-zA-Z0-9_@.]{1,30}"),
        prop::sample::select(vec!["openai", "anthropic", "bedrock", "google", "ollama"]),
        "[a-z0-9.:-]{1,40}",
        0u32..2_000_000,
        0u32..2_000_000,
        prop::option::of(0u32..1000),
        prop::option::of((0u64..1_000_000_000, 3u32..10)),
        prop::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,20}", 0..5),
    )
        .prop_map(
            |(tenant, user, provider, model, prompt, completion, cached, cost, labels)| {
                let mut value = json!({
                    "tenant_id": tenant,
                    "provider": provider,
                    "model": model,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "labels": labels,
                });
                if let Some(user) = user {
                    value["user_id"] = json!(user);
                }
                if let Some(cached) = cached {
                    value["cached_prompt_tokens"] = json!(cached.min(prompt));
                }
                if let Some((mantissa, scale)) = cost {
                    value["estimated_cost"] = json!(Decimal::new(
                        i64::try_from(mantissa).unwrap_or(0),
                        scale
                    )
                    .to_string());
                }
                value
            },
        )
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(KNOWN_FIELDS.to_vec()).prop_map(str::to_owned),
                inner,
                0..14
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn valid_events_survive_the_kafka_round_trip(value in arb_event()) {
        let event = parse(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(event.total_tokens, event.prompt_tokens + event.completion_tokens);
        let decoded = UsageEvent::from_kafka_value(&event.to_kafka_value());
        prop_assert_eq!(decoded, Ok(event));
    }

    #[test]
    fn content_hash_is_the_hash_of_the_kafka_form_without_gateway_fields(
        value in arb_event(),
        request_id in prop::option::of("[a-z0-9-]{1,20}"),
    ) {
        let mut event = parse(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        event.request_id = request_id;
        // The definition the stored payload_sha256 values were computed with.
        let reference = UsageEvent {
            received_at: DateTime::<Utc>::UNIX_EPOCH,
            request_id: None,
            ..event.clone()
        };
        let expected: [u8; 32] = Sha256::digest(reference.to_kafka_value()).into();
        prop_assert_eq!(event.content_sha256(), expected);
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_fields(value in arb_json()) {
        if let Err(err) = parse(&value) {
            prop_assert!(!err.errors.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_batch(&bytes, now(), &limits());
        let _ = UsageEvent::from_kafka_value(&bytes);
    }
}
