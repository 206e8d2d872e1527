//! The built-in book against what the providers publish: every entry has a
//! source and sane dates, each provider's cache multipliers and long-context
//! rules hold on every line, and the current list prices of the main models
//! are what their pricing pages say.

use chrono::{DateTime, Utc};
use ledger::pricebook::{
    Price, PriceBook, PriceEntry, RatingRequest, ServiceTier, TierPricing, UsageQuantities,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// The day the book was last brought up to date.
const CHECKED: &str = "2026-12-04T00:00:00Z";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("timestamp")
}

fn book() -> PriceBook {
    PriceBook::from_toml(ledger::pricebook::BUILTIN_TOML).expect("built-in book parses")
}

fn entries(book: &PriceBook, provider: &str) -> Vec<PriceEntry> {
    let mut list: Vec<PriceEntry> = book
        .entries()
        .filter(|e| e.provider == provider)
        .cloned()
        .collect();
    list.sort_by_key(PriceEntry::id);
    assert!(!list.is_empty(), "no {provider} entries");
    list
}

/// Every price of an entry's standard card: base and long-context tiers.
fn prices(entry: &PriceEntry) -> Vec<&Price> {
    let card = &entry.tariff.standard;
    std::iter::once(&card.base)
        .chain(card.long_context.iter().map(|tier| &tier.price))
        .collect()
}

#[test]
fn every_entry_names_its_source_and_valid_dates() {
    let book = book();
    let domains = [
        ("openai", "https://developers.openai.com/"),
        ("anthropic", "https://docs.claude.com/"),
        ("google", "https://ai.google.dev/"),
        ("bedrock", "https://aws.amazon.com/bedrock/"),
        ("mistral", "https://mistral.ai/"),
        ("deepseek", "https://api-docs.deepseek.com/"),
        ("xai", "https://docs.x.ai/"),
        ("cohere", "https://cohere.com/"),
    ];
    let checked = at(CHECKED);
    for entry in book.entries() {
        let id = entry.id();
        let source = entry.source.as_deref().unwrap_or_default();
        assert!(!source.is_empty(), "{id} has no source");
        match domains.iter().find(|(p, _)| *p == entry.provider) {
            Some((_, prefix)) => assert!(source.starts_with(prefix), "{id}: {source}"),
            None => assert_eq!(
                entry.model, "*",
                "{id}: only self-hosted providers lack a page"
            ),
        }
        let effective = entry.effective;
        assert!(effective.from >= at("2023-01-01T00:00:00Z"), "{id}");
        assert!(
            effective.from <= checked,
            "{id} starts after the book was checked"
        );
        if let Some(until) = effective.until {
            assert!(until > effective.from, "{id}");
        }
        let base = &entry.tariff.standard.base;
        if entry.model != "*" {
            assert!(
                base.input > Decimal::ZERO,
                "{id}: a listed model is not free"
            );
        }
        for tier in &entry.tariff.standard.long_context {
            assert!(
                tier.price.input > base.input,
                "{id}: long context costs more"
            );
        }
    }
    // Every provider the guide's users name has current prices.
    for (provider, _) in &domains {
        let current = book
            .entries()
            .filter(|e| e.provider == *provider && e.effective.contains(checked));
        assert!(current.count() >= 2, "{provider} has no current entries");
    }
}

#[test]
fn anthropic_cache_multipliers_hold_on_every_line() {
    // Cache hits 0.1x, 5-minute writes 1.25x, 1-hour writes 2x the input
    // price, on base and long-context rates alike.
    for entry in entries(&book(), "anthropic") {
        if entry.model == "claude-3-sonnet" {
            continue; // retired before prompt caching existed
        }
        if entry.model == "claude-3-haiku" {
            continue; // published rates of its own, checked below
        }
        for price in prices(&entry) {
            let id = entry.id();
            assert_eq!(price.cache_read, Some(price.input * dec!(0.1)), "{id}");
            assert_eq!(price.cache_write_5m, Some(price.input * dec!(1.25)), "{id}");
            assert_eq!(price.cache_write_1h, Some(price.input * dec!(2)), "{id}");
        }
        // Long context: 2x input, 1.5x output.
        for tier in &entry.tariff.standard.long_context {
            let base = &entry.tariff.standard.base;
            assert_eq!(tier.above_input_tokens, 200_000);
            assert_eq!(tier.price.input, base.input * dec!(2), "{}", entry.id());
            assert_eq!(tier.price.output, base.output * dec!(1.5), "{}", entry.id());
        }
    }
}

#[test]
fn bedrock_claude_multipliers_and_regional_premium() {
    let book = book();
    for entry in entries(&book, "bedrock") {
        if !entry.model.contains("anthropic.") || entry.tariff.standard.base.cache_read.is_none() {
            continue;
        }
        for price in prices(&entry) {
            assert_eq!(
                price.cache_read,
                Some(price.input * dec!(0.1)),
                "{}",
                entry.id()
            );
            assert_eq!(
                price.cache_write_5m,
                Some(price.input * dec!(1.25)),
                "{}",
                entry.id()
            );
        }
        // Regional endpoints of Claude 4.5 and later: 10% over global.
        if let Some(model) = entry.model.strip_prefix("global.") {
            let when = entry.effective.from;
            let regional = book.lookup("bedrock", model, when).expect("regional entry");
            let global = &entry.tariff.standard.base;
            assert_eq!(regional.input, global.input * dec!(1.1), "{model}");
            assert_eq!(regional.output, global.output * dec!(1.1), "{model}");
        }
    }
}

#[test]
fn openai_google_deepseek_xai_cache_ratios_are_as_published() {
    let book = book();
    let ratio = |price: &Price| price.cache_read.map(|read| read / price.input);
    let rules: [(&str, &[(&str, Decimal)]); 4] = [
        // OpenAI's cached-input column, by family.
        (
            "openai",
            &[
                ("gpt-5", dec!(0.1)),
                ("gpt-4.1", dec!(0.25)),
                ("o3", dec!(0.25)),
                ("o4-mini", dec!(0.25)),
                ("gpt-4o", dec!(0.5)),
                ("o1", dec!(0.5)),
                ("o3-mini", dec!(0.5)),
            ],
        ),
        // Gemini context caching: 10% from 2.5 on, 25% before.
        (
            "google",
            &[
                ("gemini-3", dec!(0.1)),
                ("gemini-2.5", dec!(0.1)),
                ("gemini-2.0", dec!(0.25)),
                ("gemini-1.5", dec!(0.25)),
                // Published rounded to the cent: $0.01 on $0.0375.
                ("gemini-1.5-flash-8b", dec!(0.01) / dec!(0.0375)),
            ],
        ),
        ("deepseek", &[("deepseek", dec!(0.1))]),
        (
            "xai",
            &[
                ("grok-4.20", dec!(0.1)),
                ("grok-code", dec!(0.1)),
                ("grok-4", dec!(0.25)),
                ("grok-3", dec!(0.25)),
            ],
        ),
    ];
    let checked = at(CHECKED);
    for (provider, families) in rules {
        for entry in entries(&book, provider) {
            // Superseded prices (o3 before its cut, DeepSeek V3) had other ratios.
            let in_force = book.resolve(provider, &entry.model, checked);
            if in_force.map(|r| r.entry.id()).ok() != Some(entry.id()) {
                continue;
            }
            // The longest family name the model belongs to (o3-mini, not o3).
            let Some((_, expected)) = families
                .iter()
                .filter(|(prefix, _)| {
                    entry.model == *prefix
                        || entry.model.starts_with(&format!("{prefix}-"))
                        || entry.model.starts_with(&format!("{prefix}."))
                })
                .max_by_key(|(prefix, _)| prefix.len())
            else {
                continue;
            };
            for price in prices(&entry) {
                if let Some(r) = ratio(price) {
                    assert_eq!(r, *expected, "{}", entry.id());
                }
            }
        }
    }
}

#[test]
fn batch_is_half_price_where_the_provider_says_so() {
    let book = book();
    for provider in ["openai", "anthropic", "google", "bedrock", "mistral"] {
        let defaults = book.provider_defaults(provider).expect(provider);
        assert_eq!(
            defaults.service_tiers.get(&ServiceTier::Batch),
            Some(&TierPricing::Multiplier(dec!(0.5))),
            "{provider}"
        );
    }
    assert!(book
        .provider_defaults("deepseek")
        .is_some_and(|d| d.service_tiers.is_empty()));
}

/// (provider, model as sent, input, cached input, output) per million, in
/// force on the day the book was checked.
const CURRENT: &[(&str, &str, Decimal, Option<Decimal>, Decimal)] = &[
    ("openai", "gpt-5.4", dec!(2.5), Some(dec!(0.25)), dec!(15)),
    (
        "openai",
        "gpt-5-2025-08-07",
        dec!(1.25),
        Some(dec!(0.125)),
        dec!(10),
    ),
    (
        "openai",
        "gpt-4o-2024-11-20",
        dec!(2.5),
        Some(dec!(1.25)),
        dec!(10),
    ),
    ("openai", "gpt-4o-2024-05-13", dec!(5), None, dec!(15)),
    ("openai", "o1-pro", dec!(150), None, dec!(600)),
    ("openai", "o3-pro", dec!(20), None, dec!(80)),
    ("openai", "o3-2025-04-16", dec!(2), Some(dec!(0.5)), dec!(8)),
    (
        "anthropic",
        "claude-opus-4-5-20251101",
        dec!(5),
        Some(dec!(0.5)),
        dec!(25),
    ),
    (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        dec!(3),
        Some(dec!(0.3)),
        dec!(15),
    ),
    (
        "anthropic",
        "claude-haiku-4-5-20251001",
        dec!(1),
        Some(dec!(0.1)),
        dec!(5),
    ),
    (
        "anthropic",
        "claude-3-5-haiku-latest",
        dec!(0.8),
        Some(dec!(0.08)),
        dec!(4),
    ),
    (
        "vertex_ai",
        "claude-sonnet-4-5@20250929",
        dec!(3),
        Some(dec!(0.3)),
        dec!(15),
    ),
    (
        "google",
        "gemini-2.5-pro",
        dec!(1.25),
        Some(dec!(0.125)),
        dec!(10),
    ),
    (
        "gemini",
        "gemini-2.5-flash",
        dec!(0.3),
        Some(dec!(0.03)),
        dec!(2.5),
    ),
    (
        "google",
        "gemini-2.0-flash-001",
        dec!(0.1),
        Some(dec!(0.025)),
        dec!(0.4),
    ),
    (
        "bedrock",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        dec!(3.3),
        Some(dec!(0.33)),
        dec!(16.5),
    ),
    (
        "bedrock",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        dec!(3),
        Some(dec!(0.3)),
        dec!(15),
    ),
    (
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        dec!(3),
        Some(dec!(0.3)),
        dec!(15),
    ),
    (
        "aws.bedrock",
        "amazon.nova-pro-v1:0",
        dec!(0.8),
        Some(dec!(0.2)),
        dec!(3.2),
    ),
    (
        "mistral",
        "mistral-large-latest",
        dec!(0.5),
        None,
        dec!(1.5),
    ),
    ("mistral", "mistral-large-2411", dec!(2), None, dec!(6)),
    (
        "deepseek",
        "deepseek-reasoner",
        dec!(0.28),
        Some(dec!(0.028)),
        dec!(0.42),
    ),
    ("xai", "grok-4-0709", dec!(3), Some(dec!(0.75)), dec!(15)),
    (
        "xai",
        "grok-4-1-fast-reasoning",
        dec!(0.2),
        Some(dec!(0.05)),
        dec!(0.5),
    ),
];

#[test]
fn current_list_prices_of_the_main_models() {
    let book = book();
    let when = at(CHECKED);
    for (provider, model, input, cached, output) in CURRENT {
        let price = book
            .lookup(provider, model, when)
            .unwrap_or_else(|| panic!("{provider}/{model} unpriced"));
        assert_eq!(price.input, *input, "{provider}/{model}");
        assert_eq!(price.cache_read, *cached, "{provider}/{model}");
        assert_eq!(price.output, *output, "{provider}/{model}");
    }
}

#[test]
fn history_and_retirement_follow_the_published_dates() {
    let book = book();
    let input = |model: &str, when: &str| book.lookup("openai", model, at(when)).map(|p| p.input);
    assert_eq!(
        input("gpt-4.5-preview", "2025-05-01T00:00:00Z"),
        Some(dec!(75))
    );
    assert_eq!(
        input("gpt-4.5-preview", "2025-07-14T00:00:00Z"),
        None,
        "retired"
    );
    assert_eq!(input("gpt-4o", "2024-06-01T00:00:00Z"), Some(dec!(5)));
    assert_eq!(input("gpt-4o", "2024-10-02T00:00:00Z"), Some(dec!(2.5)));
    let ds = |when: &str| {
        book.lookup("deepseek", "deepseek-chat", at(when))
            .map(|p| p.input)
    };
    assert_eq!(ds("2025-09-05T15:59:59Z"), Some(dec!(0.27)));
    assert_eq!(ds("2025-09-05T16:00:00Z"), Some(dec!(0.56)));
    assert_eq!(ds("2025-10-01T00:00:00Z"), Some(dec!(0.28)));
}

#[test]
fn long_context_of_the_builtin_models() {
    let book = book();
    let rate = |provider: &str, model: &str, when: &str, q: &UsageQuantities| {
        book.rate(&RatingRequest {
            tenant: "t",
            provider,
            model,
            at: at(when),
            service_tier: ServiceTier::Standard,
            quantities: q,
            supplied_cost: None,
        })
        .cost
    };
    let long = UsageQuantities {
        input_uncached: 150_000,
        cache_read: 60_000,
        output: 10_000,
        ..Default::default()
    };
    // Sonnet 4.5, 210,000 prompt tokens: 150,000×6 + 60,000×0.6 + 10,000×22.5
    // = 900,000 + 36,000 + 225,000 = 1,161,000 per million
    assert_eq!(
        rate("anthropic", "claude-sonnet-4-5", CHECKED, &long),
        dec!(1.161)
    );
    // Sonnet 4.6 has no long-context premium since 2026-03-13:
    // 150,000×3 + 60,000×0.3 + 10,000×15 = 450,000 + 18,000 + 150,000
    assert_eq!(
        rate("anthropic", "claude-sonnet-4-6", CHECKED, &long),
        dec!(0.618)
    );
    // …but had it in its first weeks.
    assert_eq!(
        rate(
            "anthropic",
            "claude-sonnet-4-6",
            "2026-03-01T00:00:00Z",
            &long
        ),
        dec!(1.161)
    );
    // Gemini 2.5 Pro: 150,000×2.5 + 60,000×0.25 + 10,000×15
    // = 375,000 + 15,000 + 150,000 = 540,000 per million
    assert_eq!(rate("google", "gemini-2.5-pro", CHECKED, &long), dec!(0.54));
    // Gemini 1.5 Pro above 128K: 150,000×2.5 + 60,000×0.625 + 10,000×10
    // = 375,000 + 37,500 + 100,000 = 512,500 per million
    assert_eq!(
        rate("google", "gemini-1.5-pro-002", CHECKED, &long),
        dec!(0.5125)
    );
}

#[test]
fn claude_3_haiku_cache_rates_are_the_published_ones() {
    let book = book();
    let price = book
        .lookup("anthropic", "claude-3-haiku-20240307", at(CHECKED))
        .expect("priced");
    assert_eq!(price.cache_write_5m, Some(dec!(0.30)));
    assert_eq!(price.cache_read, Some(dec!(0.03)));
    assert_eq!(price.cache_write_1h, Some(dec!(0.50)));
}

#[test]
fn gpt_5_5_bills_a_whole_long_request_at_its_long_context_rates_in_every_tier() {
    let book = book();
    // 300,000 prompt tokens (50,000 of them cached) and 10,000 out.
    let long = UsageQuantities {
        input_uncached: 250_000,
        cache_read: 50_000,
        output: 10_000,
        ..Default::default()
    };
    let rate = |service_tier: ServiceTier, q: &UsageQuantities| {
        book.rate(&RatingRequest {
            tenant: "t",
            provider: "openai",
            model: "gpt-5.5",
            at: at(CHECKED),
            service_tier,
            quantities: q,
            supplied_cost: None,
        })
        .cost
    };
    // 250,000×10 + 50,000×1 + 10,000×45 = 3,000,000 per million
    assert_eq!(rate(ServiceTier::Standard, &long), dec!(3));
    assert_eq!(rate(ServiceTier::Batch, &long), dec!(1.5));
    assert_eq!(rate(ServiceTier::Flex, &long), dec!(1.5));
    // At 272,000 prompt tokens the base rates still apply:
    // 222,000×5 + 50,000×0.5 + 10,000×30 = 1,435,000 per million
    let at_threshold = UsageQuantities {
        input_uncached: 222_000,
        ..long
    };
    assert_eq!(rate(ServiceTier::Standard, &at_threshold), dec!(1.435));
}
