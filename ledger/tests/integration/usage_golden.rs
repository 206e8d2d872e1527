//! Golden conformance: response bodies shaped as the providers' API
//! references show them (tests/golden/*.json), read by each provider's
//! conventions, priced by the built-in book. Every expected cost is worked
//! out by hand from the published price table in the comment beside it.

use std::collections::BTreeMap;

use ledger::pricebook::{PriceBook, PricingStatus, RatingRequest, ServiceTier, UsageQuantities};
use ledger::usage_format::{self, NativeUsage, UsageFormat, UsageFormatError};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{json, Value};

fn golden(name: &str) -> Value {
    // The directory cargo names at run time: a binary reused from a build in another checkout
    // (a shared target directory) still has that checkout's path compiled in.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = format!("{manifest_dir}/tests/golden/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn read(format: UsageFormat, name: &str) -> NativeUsage {
    usage_format::from_response(format, &golden(name)).expect("golden body reads")
}

/// The cost of `usage` under the built-in book on the day it was checked.
fn cost(provider: &str, model: &str, usage: &NativeUsage) -> Decimal {
    let rating = PriceBook::builtin()
        .expect("the built-in book parses")
        .rate(&RatingRequest {
            tenant: "golden",
            provider,
            model,
            at: "2026-12-04T12:00:00Z".parse().expect("time"),
            service_tier: usage.service_tier.unwrap_or_default(),
            quantities: &usage.quantities,
            supplied_cost: None,
        });
    assert_eq!(
        rating.status,
        PricingStatus::Priced,
        "{}",
        rating.provenance.rule
    );
    rating.cost
}

fn q(
    input_uncached: u64,
    cache_read: u64,
    cache_write_5m: u64,
    cache_write_1h: u64,
    output: u64,
    reasoning: u64,
) -> UsageQuantities {
    UsageQuantities {
        input_uncached,
        cache_read,
        cache_write_5m,
        cache_write_1h,
        output,
        reasoning,
        calls: BTreeMap::new(),
        unpriced: BTreeMap::new(),
    }
}

#[test]
fn openai_chat_completions_counts_cached_inside_prompt() {
    let usage = read(
        UsageFormat::OpenAiChatCompletions,
        "openai_chat_completions.json",
    );
    // prompt 2,006 of which 1,920 cached; completion 300 of which 192 reasoning
    assert_eq!(usage.quantities, q(86, 1_920, 0, 0, 108, 192));
    assert_eq!(
        usage.service_tier,
        Some(ServiceTier::Standard),
        "\"default\""
    );
    let model = usage.model.clone().expect("model");
    assert_eq!(model, "o4-mini-2025-04-16");
    // o4-mini: $1.10 input, $0.275 cached, $4.40 output (reasoning as output)
    // 86×1.10 + 1,920×0.275 + 108×4.40 + 192×4.40
    // = 94.6 + 528 + 475.2 + 844.8 = 1,942.6 per million
    assert_eq!(cost("openai", &model, &usage), dec!(0.0019426));
}

#[test]
fn openai_responses_flex_tier() {
    let usage = read(UsageFormat::OpenAiResponses, "openai_responses.json");
    // input 12,000 of which 8,192 cached; output 1,500 of which 1,024 reasoning
    assert_eq!(usage.quantities, q(3_808, 8_192, 0, 0, 476, 1_024));
    assert_eq!(usage.service_tier, Some(ServiceTier::Flex));
    // gpt-5 flex = half of $1.25 input, $0.125 cached, $10 output:
    // (3,808×1.25 + 8,192×0.125 + 476×10 + 1,024×10) × 0.5
    // = (4,760 + 1,024 + 4,760 + 10,240) × 0.5 = 10,392 per million
    let model = usage.model.clone().expect("model");
    assert_eq!(cost("openai", &model, &usage), dec!(0.010392));
}

#[test]
fn anthropic_messages_cache_lifetimes_and_web_search() {
    let usage = read(UsageFormat::AnthropicMessages, "anthropic_messages.json");
    // input_tokens excludes the cache: 1,200 plain, 18,000 read,
    // 1,000 written for 5 minutes and 3,000 for an hour
    let mut expected = q(1_200, 18_000, 1_000, 3_000, 850, 0);
    expected.calls.insert("web_search".into(), 2);
    assert_eq!(usage.quantities, expected);
    // Sonnet 4.5: $3 input, $0.30 hits, $3.75 5m writes, $6 1h writes, $15 output
    // 1,200×3 + 18,000×0.30 + 1,000×3.75 + 3,000×6 + 850×15
    // = 3,600 + 5,400 + 3,750 + 18,000 + 12,750 = 43,500 per million = 0.0435
    // + 2 searches × $10 / 1,000 = 0.02
    let model = usage.model.clone().expect("model");
    assert_eq!(cost("anthropic", &model, &usage), dec!(0.0635));
}

#[test]
fn anthropic_long_context_in_a_batch() {
    let usage = read(
        UsageFormat::AnthropicMessages,
        "anthropic_messages_long_context_batch.json",
    );
    assert_eq!(usage.quantities, q(50_000, 160_000, 0, 0, 2_000, 0));
    assert_eq!(usage.service_tier, Some(ServiceTier::Batch));
    // 210,000 prompt tokens > 200K: every token at the long-context rates
    // ($6 input, $0.60 hits, $22.50 output), then the batch half:
    // (50,000×6 + 160,000×0.60 + 2,000×22.50) × 0.5
    // = (300,000 + 96,000 + 45,000) × 0.5 = 220,500 per million
    let model = usage.model.clone().expect("model");
    assert_eq!(cost("anthropic", &model, &usage), dec!(0.2205));
}

#[test]
fn gemini_prompt_includes_cache_and_thoughts_are_apart() {
    let usage = read(
        UsageFormat::GeminiGenerateContent,
        "gemini_generate_content.json",
    );
    // prompt 250,300 includes 200,000 cached; thoughts 800 beside 1,200 candidates
    assert_eq!(usage.quantities, q(50_300, 200_000, 0, 0, 1_200, 800));
    // 250,300 > 200K: Gemini 2.5 Pro's higher tier for the whole request,
    // $2.50 input, $0.25 cached, $15 output (thinking included)
    // 50,300×2.50 + 200,000×0.25 + 1,200×15 + 800×15
    // = 125,750 + 50,000 + 18,000 + 12,000 = 205,750 per million
    let model = usage.model.clone().expect("model");
    assert_eq!(cost("google", &model, &usage), dec!(0.20575));

    let flash = read(
        UsageFormat::GeminiGenerateContent,
        "gemini_generate_content_flash.json",
    );
    assert_eq!(flash.quantities, q(1_000, 0, 0, 0, 200, 300));
    // Gemini 2.5 Flash: 1,000×0.30 + 200×2.50 + 300×2.50 = 300 + 500 + 750
    let model = flash.model.clone().expect("model");
    assert_eq!(cost("gemini", &model, &flash), dec!(0.00155));
}

#[test]
fn bedrock_converse_input_excludes_cache() {
    let usage = read(UsageFormat::BedrockConverse, "bedrock_converse.json");
    assert_eq!(usage.quantities, q(1_250, 6_000, 2_000, 0, 400, 0));
    // A US cross-region profile of Haiku 4.5: 10% over the global price,
    // $1.10 input, $0.11 hits, $1.375 writes, $5.50 output
    // 1,250×1.10 + 6,000×0.11 + 2,000×1.375 + 400×5.50
    // = 1,375 + 660 + 2,750 + 2,200 = 6,985 per million
    let model = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    assert_eq!(cost("bedrock", model, &usage), dec!(0.006985));
}

#[test]
fn contradictory_or_malformed_usage_is_refused() {
    use UsageFormat::*;
    let cases = [
        (
            OpenAiChatCompletions,
            json!({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}),
        ),
        (
            OpenAiChatCompletions,
            json!({"completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}}),
        ),
        (
            OpenAiChatCompletions,
            json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 3}),
        ),
        (OpenAiResponses, json!({"input_tokens": -1})),
        (OpenAiResponses, json!({"input_tokens": "12"})),
        (OpenAiResponses, json!({"input_tokens": 1.5})),
        (
            AnthropicMessages,
            json!({"cache_creation_input_tokens": 10, "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 5}}),
        ),
        (AnthropicMessages, json!({"server_tool_use": 3})),
        (
            GeminiGenerateContent,
            json!({"promptTokenCount": 5, "cachedContentTokenCount": 6}),
        ),
        (BedrockConverse, json!([1, 2])),
    ];
    for (format, usage) in cases {
        assert!(
            usage_format::quantities(format, &usage).is_err(),
            "{format}: {usage}"
        );
    }
    assert!(matches!(
        "openai.completions".parse::<UsageFormat>(),
        Err(UsageFormatError::UnknownFormat(_))
    ));
    for format in UsageFormat::ALL {
        assert_eq!(format.as_str().parse::<UsageFormat>(), Ok(format));
        // An empty usage object is a mistake (a wrong key, a dropped
        // object), not a free call.
        assert!(matches!(
            usage_format::quantities(format, &json!({})),
            Err(UsageFormatError::Empty { .. })
        ));
    }
}

#[test]
fn older_anthropic_responses_without_the_lifetime_split_are_5_minute_writes() {
    let usage = json!({"input_tokens": 10, "cache_creation_input_tokens": 40, "output_tokens": 5});
    let quantities = usage_format::quantities(UsageFormat::AnthropicMessages, &usage);
    assert_eq!(quantities, Ok(q(10, 0, 40, 0, 5, 0)));
}
