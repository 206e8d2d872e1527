//! The event contract's pricing fields: 1-hour cache writes, service tier,
//! per-call charges and provider-native usage, and that events without them
//! keep their meaning and their Kafka form.

use chrono::{DateTime, Utc};
use ledger::pricebook::{PricingStatus, ServiceTier};
use ledger::{PriceBook, UsageEvent, ValidationLimits};
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn parse(value: &Value) -> Result<UsageEvent, ledger::EventError> {
    UsageEvent::from_request_value(value, now(), &ValidationLimits::default())
}

fn fields(err: &ledger::EventError) -> Vec<&str> {
    err.errors.iter().map(|e| e.field.as_str()).collect()
}

fn base() -> Value {
    json!({
        "id": "0195d1a0-0000-7000-8000-000000000001",
        "created_at": "2026-03-10T11:00:00Z",
        "tenant_id": "acme",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
    })
}

#[test]
fn new_fields_parse_and_survive_kafka() {
    let mut value = base();
    value["prompt_tokens"] = json!(10_000);
    value["completion_tokens"] = json!(500);
    value["cache_write_tokens"] = json!(1_000);
    value["cache_write_1h_tokens"] = json!(2_000);
    value["service_tier"] = json!("batch");
    value["calls"] = json!({"web_search": 3, "unused": 0});
    let event = parse(&value).expect("valid");
    assert_eq!(event.cache_write_1h_tokens, 2_000);
    assert_eq!(event.service_tier, Some(ServiceTier::Batch));
    assert_eq!(event.calls.len(), 1, "zero counts are dropped");
    assert_eq!(event.calls.get("web_search"), Some(&3));
    let back = UsageEvent::from_kafka_value(&event.to_kafka_value()).expect("decodes");
    assert_eq!(back, event);
}

#[test]
fn an_old_kafka_record_decodes_with_old_meaning_and_old_form() {
    let old = br#"{"id":"0195d1a0-0000-7000-8000-000000000001","created_at":"2026-03-10T11:00:00Z","tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"cached_prompt_tokens":10,"cache_write_tokens":5,"reasoning_tokens":0,"received_at":"2026-03-10T11:00:00Z"}"#;
    let event = UsageEvent::from_kafka_value(old).expect("old record decodes");
    assert_eq!(event.cache_write_1h_tokens, 0);
    assert_eq!(event.service_tier, None);
    assert!(event.calls.is_empty());
    assert_eq!(
        event.to_kafka_value(),
        old.to_vec(),
        "an event without the new fields serialises (and so hashes) as before"
    );
}

#[test]
fn new_fields_are_validated() {
    let mut value = base();
    value["prompt_tokens"] = json!(100);
    value["completion_tokens"] = json!(1);
    value["cached_prompt_tokens"] = json!(50);
    value["cache_write_1h_tokens"] = json!(60);
    value["service_tier"] = json!("cheap");
    value["calls"] = json!({"Web Search": 1});
    let err = parse(&value).expect_err("invalid");
    let names = fields(&err);
    assert!(names.contains(&"service_tier"), "{err}");
    assert!(names.contains(&"calls"), "{err}");
    value["service_tier"] = json!("flex");
    value["calls"] = json!({"web_search": 1});
    let err = parse(&value).expect_err("cache counts exceed prompt");
    assert_eq!(fields(&err), vec!["cached_prompt_tokens"], "{err}");
    value["calls"] =
        json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "h": 1, "i": 1});
    value["cache_write_1h_tokens"] = json!(10);
    assert_eq!(
        fields(&parse(&value).expect_err("too many kinds")),
        vec!["calls"]
    );
}

#[test]
fn anthropic_usage_maps_into_the_events_fields() {
    let mut value = base();
    value["usage_format"] = json!("anthropic.messages");
    value["usage"] = json!({
        "input_tokens": 2_000,
        "cache_creation_input_tokens": 3_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
        "cache_read_input_tokens": 4_000,
        "output_tokens": 500,
        "server_tool_use": {"web_search_requests": 2},
        "service_tier": "standard"
    });
    let event = parse(&value).expect("valid");
    assert_eq!(
        event.prompt_tokens, 9_000,
        "Anthropic's input excludes cache"
    );
    assert_eq!(event.cached_prompt_tokens, 4_000);
    assert_eq!(event.cache_write_tokens, 1_000);
    assert_eq!(event.cache_write_1h_tokens, 2_000);
    assert_eq!(event.completion_tokens, 500);
    assert_eq!(event.total_tokens, 9_500);
    assert_eq!(event.calls.get("web_search"), Some(&2));
    assert_eq!(event.service_tier, Some(ServiceTier::Standard));

    // Sonnet 4.5 list: $3 in, $15 out, reads 0.1×, 5m writes 1.25×, 1h 2×,
    // web search $10 per 1,000.
    let rating = PriceBook::builtin()
        .expect("the built-in book parses")
        .rate_event(&event);
    assert_eq!(rating.status, PricingStatus::Priced);
    let expected = (Decimal::from(2_000) * Decimal::new(3, 0)
        + Decimal::from(4_000) * Decimal::new(3, 1)
        + Decimal::from(1_000) * Decimal::new(375, 2)
        + Decimal::from(2_000) * Decimal::new(6, 0)
        + Decimal::from(500) * Decimal::new(15, 0))
        / Decimal::from(1_000_000)
        + Decimal::new(2, 0) * Decimal::new(10, 0) / Decimal::from(1_000);
    assert_eq!(rating.cost, expected.normalize());
}

#[test]
fn openai_and_gemini_usage_use_the_short_format_names() {
    let mut value = base();
    value["provider"] = json!("openai");
    value["model"] = json!("gpt-4o");
    value["usage_format"] = json!("openai.chat");
    value["usage"] = json!({
        "prompt_tokens": 1_000, "completion_tokens": 300, "total_tokens": 1_300,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 100}
    });
    let event = parse(&value).expect("valid");
    assert_eq!(
        (
            event.prompt_tokens,
            event.cached_prompt_tokens,
            event.completion_tokens,
            event.reasoning_tokens
        ),
        (1_000, 400, 300, 100),
        "OpenAI's prompt includes cached tokens"
    );

    value["provider"] = json!("google");
    value["model"] = json!("gemini-2.5-flash");
    value["usage_format"] = json!("gemini");
    value["usage"] = json!({
        "promptTokenCount": 1_000, "cachedContentTokenCount": 200,
        "candidatesTokenCount": 50, "thoughtsTokenCount": 70, "totalTokenCount": 1_120
    });
    let event = parse(&value).expect("valid");
    assert_eq!(
        (
            event.prompt_tokens,
            event.cached_prompt_tokens,
            event.completion_tokens,
            event.reasoning_tokens
        ),
        (1_000, 200, 120, 70),
        "Gemini's thinking is counted apart from candidates"
    );
}

#[test]
fn contradictions_with_usage_are_refused_naming_the_field() {
    let mut value = base();
    value["usage_format"] = json!("anthropic.messages");
    value["usage"] =
        json!({"input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 10});
    value["prompt_tokens"] = json!(150);
    value["completion_tokens"] = json!(10);
    parse(&value).expect("agreeing fields are accepted");
    value["prompt_tokens"] = json!(100);
    value["service_tier"] = json!("batch");
    value["usage"]["service_tier"] = json!("priority");
    let err = parse(&value).expect_err("contradiction");
    let names = fields(&err);
    assert!(names.contains(&"prompt_tokens"), "{err}");
    assert!(names.contains(&"service_tier"), "{err}");

    let mut value = base();
    value["usage"] = json!({"input_tokens": 1});
    assert_eq!(
        fields(&parse(&value).expect_err("no format")),
        vec!["usage_format"]
    );
    value["usage_format"] = json!("cohere");
    assert_eq!(
        fields(&parse(&value).expect_err("bad format")),
        vec!["usage_format"]
    );
    value["usage_format"] = json!("openai.responses");
    value["usage"] = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 1});
    assert_eq!(
        fields(&parse(&value).expect_err("inconsistent usage")),
        vec!["usage"]
    );
    value["usage"] = json!("lots");
    assert_eq!(
        fields(&parse(&value).expect_err("not an object")),
        vec!["usage"]
    );
}

#[test]
fn without_usage_the_token_counts_are_still_required() {
    let err = parse(&base()).expect_err("no counts");
    assert_eq!(fields(&err), vec!["prompt_tokens", "completion_tokens"]);
}
