//! Provider-native usage objects as the providers' SDKs serialise them:
//! every spelling a format's SDK produces is read, an object of the wrong
//! format or an empty one is refused naming the format, and a count the
//! book cannot price is never dropped silently.

use chrono::{DateTime, Utc};
use ledger::pricebook::PricingStatus;
use ledger::{PriceBook, UsageEvent, ValidationLimits};
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn event(provider: &str, model: &str, format: &str, usage: Value) -> Value {
    json!({
        "id": "0195d1a0-0000-7000-8000-000000000001",
        "created_at": "2026-03-10T11:00:00Z",
        "tenant_id": "acme",
        "provider": provider,
        "model": model,
        "usage_format": format,
        "usage": usage,
    })
}

fn parse(value: &Value) -> Result<UsageEvent, ledger::EventError> {
    UsageEvent::from_request_value(value, now(), &ValidationLimits::default())
}

fn usage_error(value: &Value) -> String {
    let err = parse(value).expect_err("refused");
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["usage"], "{err}");
    err.errors[0].message.clone()
}

fn per_million(tokens: u64, rate: &str) -> Decimal {
    Decimal::from(tokens) * rate.parse::<Decimal>().expect("rate") / Decimal::from(1_000_000)
}

/// `GenerateContentResponseUsageMetadata.model_dump()`: snake_case, every
/// unset field present as null.
#[test]
fn gemini_sdk_snake_case_dump_is_read() {
    let usage = json!({
        "cache_tokens_details": null,
        "cached_content_token_count": 2_000,
        "candidates_token_count": 300,
        "candidates_tokens_details": null,
        "prompt_token_count": 10_000,
        "prompt_tokens_details": null,
        "thoughts_token_count": 700,
        "tool_use_prompt_token_count": null,
        "tool_use_prompt_tokens_details": null,
        "total_token_count": 11_000,
        "traffic_type": null
    });
    let event = parse(&event(
        "google",
        "gemini-2.5-pro",
        "gemini.generate_content",
        usage,
    ))
    .expect("valid");
    assert_eq!(event.prompt_tokens, 10_000);
    assert_eq!(event.cached_prompt_tokens, 2_000);
    assert_eq!(event.completion_tokens, 1_000);
    assert_eq!(event.reasoning_tokens, 700);
    assert_eq!(event.total_tokens, 11_000);
}

#[test]
fn gemini_spelled_both_ways_must_agree() {
    let usage =
        json!({"promptTokenCount": 10, "prompt_token_count": 11, "candidatesTokenCount": 1});
    let message = usage_error(&event("google", "gemini-2.5-pro", "gemini", usage));
    assert!(message.contains("promptTokenCount"), "{message}");
}

#[test]
fn anthropic_usage_sent_as_openai_chat_is_refused_naming_both_formats() {
    let usage = json!({"input_tokens": 1_000, "output_tokens": 50, "cache_read_input_tokens": 200});
    let message = usage_error(&event("openai", "gpt-5", "openai.chat_completions", usage));
    assert!(message.contains("openai.chat_completions"), "{message}");
    assert!(message.contains("anthropic.messages"), "{message}");
}

#[test]
fn anthropic_usage_sent_as_openai_responses_is_refused() {
    // input_tokens and output_tokens are spelled alike in both; Anthropic's
    // cache fields are not Responses fields.
    let usage = json!({"input_tokens": 1_000, "output_tokens": 50, "cache_read_input_tokens": 200,
                       "cache_creation_input_tokens": 0});
    let message = usage_error(&event("openai", "gpt-5", "openai.responses", usage));
    assert!(message.contains("anthropic.messages"), "{message}");
}

#[test]
fn chat_usage_sent_as_responses_is_refused() {
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12});
    let message = usage_error(&event("openai", "gpt-5", "openai.responses", usage));
    assert!(message.contains("openai.responses"), "{message}");
    assert!(message.contains("openai.chat_completions"), "{message}");
}

#[test]
fn an_empty_usage_object_is_refused() {
    for format in [
        "openai.chat_completions",
        "openai.responses",
        "anthropic.messages",
        "gemini.generate_content",
        "bedrock.converse",
    ] {
        let message = usage_error(&event("openai", "gpt-5", format, json!({})));
        assert!(message.contains(format), "{format}: {message}");
        assert!(message.contains("empty"), "{format}: {message}");
    }
}

#[test]
fn an_object_with_only_null_counts_is_refused() {
    let usage = json!({"prompt_token_count": null, "candidates_token_count": null});
    let message = usage_error(&event("google", "gemini-2.5-pro", "gemini", usage));
    assert!(message.contains("gemini.generate_content"), "{message}");
}

#[test]
fn a_real_zero_with_the_fields_present_is_accepted() {
    for (format, usage) in [
        (
            "openai.chat_completions",
            json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        ),
        (
            "openai.responses",
            json!({"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                   "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 0}}),
        ),
        (
            "anthropic.messages",
            json!({"input_tokens": 0, "output_tokens": 0}),
        ),
        ("gemini", json!({"prompt_token_count": 0})),
        (
            "bedrock.converse",
            json!({"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}),
        ),
    ] {
        let event = parse(&event("openai", "gpt-5", format, usage)).expect(format);
        assert_eq!(event.total_tokens, 0, "{format}");
    }
}

/// `ResponseUsage` with a cache write split by retention: the 30-minute
/// writes are priced as cache writes (the input rate on gpt-5, which lists
/// no write rate), the 12-hour writes have no price and are marked.
#[test]
fn openai_responses_cache_writes_are_counted_and_the_unpriced_lifetime_marked() {
    let usage = json!({
        "input_tokens": 10_000,
        "input_tokens_details": {
            "cached_tokens": 4_000,
            "cache_write_tokens": 3_000,
            "cache_write_tokens_details": {"ttl_30m_tokens": 1_000, "ttl_12h_tokens": 2_000}
        },
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 100},
        "total_tokens": 10_500
    });
    let event = parse(&event("openai", "gpt-5", "openai.responses", usage)).expect("valid");
    assert_eq!(event.prompt_tokens, 10_000);
    assert_eq!(event.cached_prompt_tokens, 4_000);
    assert_eq!(event.cache_write_tokens, 1_000);
    assert_eq!(event.total_tokens, 10_500);
    let rating = PriceBook::builtin()
        .expect("the built-in book parses")
        .rate_event(&event);
    assert_eq!(rating.status, PricingStatus::Priced);
    assert!(
        rating
            .provenance
            .rule
            .contains("not priced: input_cache_write_12h 2000 tokens"),
        "{}",
        rating.provenance.rule
    );
    // gpt-5: $1.25 in, $0.125 cached, $10 out; 12-hour writes left out.
    let expected = per_million(3_000, "1.25")
        + per_million(4_000, "0.125")
        + per_million(1_000, "1.25")
        + per_million(500, "10");
    assert_eq!(rating.cost, expected.normalize());
}

#[test]
fn openai_chat_cache_writes_are_counted() {
    let usage = json!({
        "prompt_tokens": 5_000, "completion_tokens": 10, "total_tokens": 5_010,
        "prompt_tokens_details": {"cached_tokens": 1_000, "cache_write_tokens": 2_500,
                                  "audio_tokens": null, "image_tokens": null, "text_tokens": null},
        "completion_tokens_details": null
    });
    let event = parse(&event("openai", "gpt-5", "openai.chat_completions", usage)).expect("valid");
    assert_eq!(event.cache_write_tokens, 2_500);
    assert_eq!(event.cached_prompt_tokens, 1_000);
    assert_eq!(event.prompt_tokens, 5_000);
}

#[test]
fn openai_audio_tokens_are_marked_unpriced_not_billed_as_text() {
    let usage = json!({
        "prompt_tokens": 1_000, "completion_tokens": 400, "total_tokens": 1_400,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 600},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 300}
    });
    let event = parse(&event("openai", "gpt-5", "openai.chat_completions", usage)).expect("valid");
    assert_eq!(event.prompt_tokens, 1_000);
    assert_eq!(event.completion_tokens, 400);
    let rating = PriceBook::builtin()
        .expect("the built-in book parses")
        .rate_event(&event);
    let rule = &rating.provenance.rule;
    assert!(rule.contains("input_audio 600 tokens"), "{rule}");
    assert!(rule.contains("output_audio 300 tokens"), "{rule}");
    let expected = per_million(400, "1.25") + per_million(100, "10");
    assert_eq!(rating.cost, expected.normalize());
    // The processor rates what it reads back from Kafka.
    let back = UsageEvent::from_kafka_value(&event.to_kafka_value()).expect("decodes");
    assert_eq!(back.unpriced_tokens, event.unpriced_tokens);
    assert_eq!(
        PriceBook::builtin()
            .expect("the built-in book parses")
            .rate_event(&back)
            .cost,
        rating.cost
    );
}

#[test]
fn a_count_field_unknown_to_tokenledger_is_marked_not_dropped() {
    let usage = json!({"input_tokens": 100, "output_tokens": 5, "hologram_tokens": 40});
    let event = parse(&event(
        "anthropic",
        "claude-sonnet-4-5",
        "anthropic.messages",
        usage,
    ))
    .expect("valid");
    let rating = PriceBook::builtin()
        .expect("the built-in book parses")
        .rate_event(&event);
    assert!(
        rating.provenance.rule.contains("hologram_tokens 40 tokens"),
        "{}",
        rating.provenance.rule
    );
}

#[test]
fn bedrock_cache_details_split_writes_by_lifetime() {
    let usage = json!({
        "inputTokens": 100, "outputTokens": 20, "totalTokens": 3_120,
        "cacheReadInputTokens": 0, "cacheWriteInputTokens": 3_000,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 2_000}, {"ttl": "5m", "inputTokens": 1_000}]
    });
    let event = parse(&event(
        "bedrock",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "bedrock.converse",
        usage,
    ))
    .expect("valid");
    assert_eq!(event.cache_write_tokens, 1_000);
    assert_eq!(event.cache_write_1h_tokens, 2_000);
    assert_eq!(event.prompt_tokens, 3_100);
}

#[test]
fn anthropic_thinking_tokens_are_reasoning() {
    let usage = json!({"input_tokens": 100, "output_tokens": 900,
                       "output_tokens_details": {"thinking_tokens": 600}});
    let event = parse(&event(
        "anthropic",
        "claude-sonnet-4-5",
        "anthropic.messages",
        usage,
    ))
    .expect("valid");
    assert_eq!(event.completion_tokens, 900);
    assert_eq!(event.reasoning_tokens, 600);
}
