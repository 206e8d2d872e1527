//! Unit and property tests of pricing.

use super::*;
use crate::event::{UsageEvent, ValidationLimits};
use proptest::prelude::*;
use rust_decimal_macros::dec;
use serde_json::json;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn event(provider: &str, model: &str, prompt: u32, completion: u32) -> UsageEvent {
    let now = at("2026-03-10T12:00:00Z");
    UsageEvent::from_request_value(
        &json!({
            "tenant_id": "acme",
            "provider": provider,
            "model": model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "created_at": "2026-03-10T11:00:00Z",
        }),
        now,
        &ValidationLimits::default(),
    )
    .unwrap_or_else(|err| panic!("test event invalid: {err}"))
}

#[test]
fn builtin_book_parses_and_covers_the_big_providers() {
    let book = PriceBook::from_toml(BUILTIN_TOML).expect("built-in book parses");
    assert!(book.len() > 50);
    let when = at("2026-01-01T00:00:00Z");
    for (provider, model) in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-5"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-sonnet"),
        ("bedrock", "anthropic.claude-3-5-sonnet"),
        ("google", "gemini-2.5-pro"),
        ("ollama", "llama3.1:70b"),
    ] {
        assert!(
            book.lookup(provider, model, when).is_some(),
            "{provider}/{model}"
        );
    }
}

#[test]
fn gpt_4o_cost_is_exact() {
    let book = PriceBook::builtin().expect("the built-in book parses");
    // 1,000 input at $2.50/M + 500 output at $10/M = 0.0025 + 0.005
    let cost = book.cost(&event("openai", "gpt-4o", 1000, 500));
    assert_eq!(cost.status, PricingStatus::Priced);
    assert_eq!(cost.usd, dec!(0.0075));
}

#[test]
fn cached_and_reasoning_tokens_are_priced_separately() {
    let book = PriceBook::builtin().expect("the built-in book parses");
    let mut e = event("anthropic", "claude-sonnet-4-5", 10_000, 1_000);
    e.cached_prompt_tokens = 6_000;
    e.cache_write_tokens = 2_000;
    // plain 2,000 x 3.00 + cached 6,000 x 0.30 + write 2,000 x 3.75 + out 1,000 x 15
    // = 6,000 + 1,800 + 7,500 + 15,000 = 30,300 per million = 0.0303
    assert_eq!(book.cost(&e).usd, dec!(0.0303));

    let custom = PriceBook::from_toml(
        r#"
        [[price]]
        provider = "openai"
        model = "o-think"
        effective_from = "2024-01-01T00:00:00Z"
        input = "1"
        output = "4"
        reasoning = "8"
        "#,
    )
    .expect("valid");
    let mut e = event("openai", "o-think", 1_000_000, 1_000_000);
    e.reasoning_tokens = 250_000;
    assert_eq!(custom.cost(&e).usd, dec!(1) + dec!(3) + dec!(2));
}

#[test]
fn dated_and_regional_model_names_find_their_price() {
    let book = PriceBook::builtin().expect("the built-in book parses");
    let when = at("2026-01-01T00:00:00Z");
    let base = book.lookup("openai", "gpt-4o", when).copied();
    assert_eq!(
        book.lookup("openai", "gpt-4o-2024-08-06", when).copied(),
        base
    );
    assert_ne!(
        book.lookup("openai", "gpt-4o-mini-2024-07-18", when)
            .copied(),
        base
    );
    assert!(book.lookup("openai", "gpt-4oz", when).is_none());
    assert!(book
        .lookup(
            "bedrock",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            when
        )
        .is_some());
    assert_eq!(
        book.lookup("azure", "gpt-4o", when).copied(),
        base,
        "azure bills OpenAI list prices"
    );
}

#[test]
fn price_history_follows_created_at() {
    let book = PriceBook::builtin().expect("the built-in book parses");
    let before = book
        .lookup("openai", "o3", at("2025-05-01T00:00:00Z"))
        .copied();
    let after = book
        .lookup("openai", "o3", at("2025-07-01T00:00:00Z"))
        .copied();
    assert_eq!(before.map(|p| p.input), Some(dec!(10.00)));
    assert_eq!(after.map(|p| p.input), Some(dec!(2.00)));
    assert!(book
        .lookup("openai", "o3", at("2025-01-01T00:00:00Z"))
        .is_none());
}

#[test]
fn unknown_models_are_unpriced_and_provided_cost_wins() {
    let book = PriceBook::builtin().expect("the built-in book parses");
    let cost = book.cost(&event("openai", "totally-new-model", 10, 10));
    assert_eq!(cost.status, PricingStatus::Unpriced);
    assert_eq!(cost.usd, Decimal::ZERO);

    let mut e = event("openai", "gpt-4o", 10, 10);
    e.estimated_cost = Some(dec!(1.23));
    let cost = book.cost(&e);
    assert_eq!(
        (cost.usd, cost.status),
        (dec!(1.23), PricingStatus::Provided)
    );

    let cost = book.cost(&event("ollama", "llama3.1:8b", 1000, 1000));
    assert_eq!(
        (cost.usd, cost.status),
        (Decimal::ZERO, PricingStatus::Priced)
    );
}

#[test]
fn overrides_replace_whole_histories() {
    let overrides = PriceBook::from_toml(
        r#"
        [[price]]
        provider = "openai"
        model = "o3"
        effective_from = "2020-01-01T00:00:00Z"
        input = "1"
        output = "1"
        "#,
    )
    .expect("valid");
    let book = PriceBook::builtin()
        .expect("the built-in book parses")
        .with_overrides(overrides);
    let price = book.lookup("openai", "o3", at("2025-05-01T00:00:00Z"));
    assert_eq!(price.map(|p| p.input), Some(dec!(1)));
}

#[test]
fn bad_books_are_refused_with_the_entry_named() {
    let negative = r#"
        [[price]]
        provider = "x"
        model = "y"
        effective_from = "2024-01-01T00:00:00Z"
        input = "-1"
        output = "1"
    "#;
    let err = PriceBook::from_toml(negative).expect_err("negative");
    assert!(err.to_string().contains("x/y"), "{err}");
    assert!(PriceBook::from_toml("[[price]]\nprovider = 1").is_err());
    assert!(PriceBook::from_toml("[[price]]\nprovider=\"a\"\nmodel=\"b\"\neffective_from=\"2024-01-01T00:00:00Z\"\ninput=\"1\"\noutput=\"1\"\nextra=1").is_err());
}

proptest! {
    #[test]
    fn cost_is_linear_and_never_negative(
        prompt in 0u32..50_000_000,
        completion in 0u32..50_000_000,
    ) {
        let book = PriceBook::builtin().expect("the built-in book parses");
        let one = book.cost(&event("openai", "gpt-4o", prompt, completion)).usd;
        prop_assert!(!one.is_sign_negative() || one.is_zero());
        let input_only = book.cost(&event("openai", "gpt-4o", prompt, 0)).usd;
        let output_only = book.cost(&event("openai", "gpt-4o", 0, completion)).usd;
        // Each part is rounded to 10 places; their sum may differ by the
        // rounding of one part.
        prop_assert!((input_only + output_only - one).abs() <= dec!(0.0000000001));
        prop_assert!(one.scale() <= MAX_COST_SCALE);
    }
}

/// A book of three models only, so the names below have no entry of their own.
fn three_model_book() -> PriceBook {
    let entry = |model: &str, input: &str, output: &str| {
        format!(
            "[[price]]\nprovider = \"openai\"\nmodel = \"{model}\"\n\
             effective_from = \"2024-01-01T00:00:00Z\"\ninput = \"{input}\"\noutput = \"{output}\"\n"
        )
    };
    let text = [
        entry("o1", "15", "60"),
        entry("o3", "2", "8"),
        entry("gpt-4", "30", "60"),
    ]
    .concat();
    PriceBook::from_toml(&text).expect("valid")
}

#[test]
fn look_alike_names_are_unpriced_not_priced_as_another_model() {
    let book = three_model_book();
    // `-pro` and `.5-preview` name other models with other prices (o1-pro
    // lists at $150/M input, o1 at $15/M), not snapshots of the shorter name.
    for model in [
        "o1-pro",
        "o3-pro",
        "gpt-4.5-preview",
        "o1-mini",
        "gpt-4-turbo",
    ] {
        let cost = book.cost(&event("openai", model, 1_000_000, 0));
        assert_eq!(
            (cost.status, cost.usd),
            (PricingStatus::Unpriced, Decimal::ZERO),
            "{model}"
        );
    }
    // Dated snapshots of a listed model are that model.
    for model in ["o1-2024-12-17", "gpt-4-20240101", "o3@20250416"] {
        assert_eq!(
            book.cost(&event("openai", model, 1_000_000, 0)).status,
            PricingStatus::Priced,
            "{model}"
        );
    }
}

proptest! {
    /// Today's event fields follow OpenAI's Chat Completions convention, so
    /// an event and the same counts as a Chat Completions usage object are
    /// the same quantities and the same cost.
    #[test]
    fn event_fields_read_like_openai_chat_usage(
        prompt in 0u32..5_000_000,
        cached_share in 0u32..=100,
        completion in 0u32..5_000_000,
        reasoning_share in 0u32..=100,
    ) {
        use crate::usage_format::{self, UsageFormat};
        let cached = (u64::from(prompt) * u64::from(cached_share) / 100) as u32;
        let reasoning = (u64::from(completion) * u64::from(reasoning_share) / 100) as u32;
        let mut e = event("openai", "gpt-4.1", prompt, completion);
        e.cached_prompt_tokens = cached;
        e.reasoning_tokens = reasoning;
        let usage = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": u64::from(prompt) + u64::from(completion),
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        });
        let native = usage_format::quantities(UsageFormat::OpenAiChatCompletions, &usage);
        prop_assert_eq!(native.as_ref(), Ok(&event_usage::quantities(&e)));
        let book = PriceBook::builtin().expect("the built-in book parses");
        let rated = native.map(|q| book.rate(&RatingRequest {
            tenant: &e.tenant_id,
            provider: &e.provider,
            model: &e.model,
            at: e.created_at,
            service_tier: ServiceTier::Standard,
            quantities: &q,
            supplied_cost: None,
        }).cost);
        prop_assert_eq!(rated, Ok(book.cost(&e).usd));
    }
}
