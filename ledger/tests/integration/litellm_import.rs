//! LiteLLM's catalog format converted into a price file: per-token floats
//! become exact per-million decimals, `_above_<N>k_tokens` keys become
//! long-context tiers, `_batches`/`_flex`/`_priority` keys service tiers.

use ledger::pricebook::litellm::{convert, Converted, ImportOptions};
use ledger::pricebook::{
    PriceBook, PricingStatus, RatingRequest, ServiceTier, TierPricing, UsageQuantities,
};
use rust_decimal_macros::dec;

const CATALOG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/litellm_excerpt.json"
));
const WHEN: &str = "2026-12-01T00:00:00Z";

fn converted() -> Converted {
    let options = ImportOptions {
        effective_from: WHEN.parse().expect("time"),
        source: "litellm model_prices_and_context_window.json".into(),
    };
    convert(CATALOG, &options).expect("excerpt converts")
}

/// The converted file, written as TOML and read back as a book.
fn book() -> PriceBook {
    let text = converted().file.to_toml().expect("writes TOML");
    PriceBook::from_toml(&text).unwrap_or_else(|err| panic!("{err}\n{text}"))
}

#[test]
fn entries_that_cannot_be_priced_per_token_are_reported() {
    let converted = converted();
    let mut skipped: Vec<&str> = converted.skipped.iter().map(|s| s.key.as_str()).collect();
    skipped.sort_unstable();
    assert_eq!(
        skipped,
        [
            "bedrock/us-east-1/anthropic.claude-3-haiku-20240307-v1:0",
            "dall-e-3"
        ]
    );
    let names: Vec<String> = converted
        .file
        .price
        .iter()
        .map(|line| format!("{}/{}", line.provider, line.model))
        .collect();
    assert_eq!(
        names,
        [
            "anthropic/claude-sonnet-4-5-20250929",
            "azure/gpt-4o",
            "deepseek/deepseek-chat",
            "google/gemini-1.5-pro",
            "openai/gpt-4o",
            "openai/o3",
            "openai/text-embedding-3-small",
            "xai/grok-4-0709",
        ]
    );
    let gemini = &converted.file.price[3];
    assert_eq!(
        gemini.source.as_deref(),
        Some("https://ai.google.dev/pricing"),
        "its own source wins"
    );
}

#[test]
fn per_token_floats_become_exact_per_million_prices() {
    let book = book();
    let at = WHEN.parse().expect("time");
    let gpt = book.lookup("openai", "gpt-4o", at).expect("gpt-4o");
    assert_eq!(
        (gpt.input, gpt.output, gpt.cache_read),
        (dec!(2.5), dec!(10), Some(dec!(1.25)))
    );
    let ds = book
        .lookup("deepseek", "deepseek-chat", at)
        .expect("deepseek");
    assert_eq!(
        (ds.input, ds.output, ds.cache_read),
        (dec!(0.28), dec!(0.42), Some(dec!(0.028)))
    );
    let claude = book
        .lookup("anthropic", "claude-sonnet-4-5-20250929", at)
        .expect("claude");
    assert_eq!(
        (claude.cache_write_5m, claude.cache_write_1h),
        (Some(dec!(3.75)), Some(dec!(6)))
    );
    let embedding = book
        .lookup("openai", "text-embedding-3-small", at)
        .expect("embedding");
    assert_eq!((embedding.input, embedding.output), (dec!(0.02), dec!(0)));
    // Azure is listed under its own name and wins over the OpenAI list price.
    assert_eq!(
        book.lookup("azure", "gpt-4o", at).map(|p| p.input),
        Some(dec!(2.75))
    );
}

#[test]
fn tier_keys_become_service_tiers_and_long_context() {
    let book = book();
    let at = WHEN.parse().expect("time");
    let tariff = |provider: &str, model: &str| {
        book.resolve(provider, model, at)
            .expect(model)
            .entry
            .tariff
            .clone()
    };
    let gpt = tariff("openai", "gpt-4o");
    assert_eq!(
        gpt.service_tiers.get(&ServiceTier::Batch),
        Some(&TierPricing::Multiplier(dec!(0.5)))
    );
    // Priority: 1.7x input and output; its cache price is 1.7x too, so a multiplier.
    assert_eq!(
        gpt.service_tiers.get(&ServiceTier::Priority),
        Some(&TierPricing::Multiplier(dec!(1.7)))
    );
    let o3 = tariff("openai", "o3");
    assert_eq!(
        o3.service_tiers.get(&ServiceTier::Flex),
        Some(&TierPricing::Multiplier(dec!(0.5)))
    );
    let gemini = tariff("google", "gemini-1.5-pro");
    let tier = gemini.standard.long_context.first().expect("128k tier");
    assert_eq!(
        (tier.above_input_tokens, tier.price.input, tier.price.output),
        (128_000, dec!(2.5), dec!(10))
    );
    let claude = tariff("anthropic", "claude-sonnet-4-5-20250929");
    let tier = claude.standard.long_context.first().expect("200k tier");
    assert_eq!(tier.above_input_tokens, 200_000);
    assert_eq!(tier.price.cache_write_1h, Some(dec!(12)));
}

#[test]
fn converted_prices_rate_like_the_builtin_book() {
    let imported = book();
    let builtin = PriceBook::builtin().expect("the built-in book parses");
    let long = UsageQuantities {
        input_uncached: 50_000,
        cache_read: 150_000,
        cache_write_5m: 10_000,
        cache_write_1h: 5_000,
        output: 3_000,
        ..Default::default()
    };
    for (provider, model, tier) in [
        (
            "anthropic",
            "claude-sonnet-4-5-20250929",
            ServiceTier::Standard,
        ),
        (
            "anthropic",
            "claude-sonnet-4-5-20250929",
            ServiceTier::Batch,
        ),
        ("google", "gemini-1.5-pro", ServiceTier::Standard),
        ("xai", "grok-4-0709", ServiceTier::Standard),
        ("openai", "o3", ServiceTier::Flex),
    ] {
        let rate = |book: &PriceBook| {
            book.rate(&RatingRequest {
                tenant: "t",
                provider,
                model,
                at: "2026-12-04T00:00:00Z".parse().expect("time"),
                service_tier: tier,
                quantities: &long,
                supplied_cost: None,
            })
        };
        let (a, b) = (rate(&imported), rate(&builtin));
        assert_eq!(
            a.status,
            PricingStatus::Priced,
            "{model}: {}",
            a.provenance.rule
        );
        assert_eq!(a.cost, b.cost, "{provider}/{model} {tier}");
    }
}

#[test]
fn malformed_catalogs_are_refused_or_entries_skipped() {
    let options = ImportOptions {
        effective_from: WHEN.parse().expect("time"),
        source: "x".into(),
    };
    assert!(convert("[1]", &options).is_err());
    assert!(convert("{", &options).is_err());
    let converted = convert(
        r#"{"m": {"litellm_provider": "openai", "input_cost_per_token": -1, "output_cost_per_token": 1},
            "n": {"litellm_provider": "openai", "output_cost_per_token": 1},
            "o": 3}"#,
        &options,
    )
    .expect("an object");
    assert!(converted.file.price.is_empty());
    assert_eq!(converted.skipped.len(), 3);
}
