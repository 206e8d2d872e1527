//! Rating through the public API: every billing dimension, long-context and
//! service tiers, per-call charges, and the provenance of each answer.

use chrono::{DateTime, Utc};
use ledger::pricebook::{
    MatchKind, PriceBook, PricingStatus, Rating, RatingRequest, ServiceTier, UnpricedReason,
    UsageQuantities,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use sha2::{Digest, Sha256};

const BOOK: &str = r#"
[[provider]]
name = "anthropic"
source = "https://example.test/anthropic-pricing"
service_tier.batch = { multiplier = "0.5" }
per_1k_calls = { web_search = "10" }

[[price]]
provider = "anthropic"
model = "claude-sonnet-4"
aliases = ["claude-sonnet-4-0"]
effective_from = "2025-05-22T00:00:00Z"
input = "3"
output = "15"
cache_read = "0.30"
cache_write_5m = "3.75"
cache_write_1h = "6"
[[price.long_context]]
above_input_tokens = 200000
input = "6"
output = "22.50"
cache_read = "0.60"
cache_write_5m = "7.50"
cache_write_1h = "12"

[[price]]
provider = "openai"
model = "o3"
effective_from = "2025-06-10T00:00:00Z"
effective_until = "2026-06-01T00:00:00Z"
source = "https://example.test/openai-pricing"
input = "2"
output = "8"
cache_read = "0.50"
reasoning = "8"
service_tier.flex = { input = "1", output = "4", cache_read = "0.25" }
service_tier.priority = { input = "3.50", output = "14", cache_read = "0.875" }

[[price]]
provider = "openai"
model = "o3-2025-04-16"
effective_from = "2025-04-16T00:00:00Z"
input = "10"
output = "40"

[[price]]
provider = "bedrock"
model = "anthropic.claude-sonnet-4-5"
effective_from = "2025-09-29T00:00:00Z"
input = "3.30"
output = "16.50"

[[price]]
provider = "bedrock"
model = "global.anthropic.claude-sonnet-4-5"
effective_from = "2025-09-29T00:00:00Z"
input = "3"
output = "15"
"#;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("timestamp")
}

fn book() -> PriceBook {
    PriceBook::from_toml(BOOK).expect("test book parses")
}

fn rate(
    book: &PriceBook,
    provider: &str,
    model: &str,
    tier: ServiceTier,
    q: &UsageQuantities,
) -> Rating {
    book.rate(&RatingRequest {
        tenant: "acme",
        provider,
        model,
        at: at("2026-03-01T00:00:00Z"),
        service_tier: tier,
        quantities: q,
        supplied_cost: None,
    })
}

fn sonnet(q: &UsageQuantities, tier: ServiceTier) -> Rating {
    rate(&book(), "anthropic", "claude-sonnet-4-20250514", tier, q)
}

#[test]
fn every_token_kind_has_its_own_rate() {
    let q = UsageQuantities {
        input_uncached: 1_000,
        cache_read: 10_000,
        cache_write_5m: 2_000,
        cache_write_1h: 3_000,
        output: 500,
        ..Default::default()
    };
    // 1,000×3 + 10,000×0.30 + 2,000×3.75 + 3,000×6 + 500×15
    // = 3,000 + 3,000 + 7,500 + 18,000 + 7,500 = 39,000 per million
    let rating = sonnet(&q, ServiceTier::Standard);
    assert_eq!(rating.status, PricingStatus::Priced);
    assert_eq!(rating.cost, dec!(0.039));
    assert_eq!(rating.list_cost, Some(dec!(0.039)));
    assert_eq!(rating.provenance.matched_by, Some(MatchKind::Snapshot));
    assert_eq!(
        rating.provenance.entry_id.as_deref(),
        Some("anthropic/claude-sonnet-4@2025-05-22")
    );
    assert_eq!(
        rating.provenance.source.as_deref(),
        Some("https://example.test/anthropic-pricing"),
        "the provider's source stands in for an entry without one"
    );
}

#[test]
fn a_prompt_above_the_threshold_bills_every_token_at_the_higher_tier() {
    let at_threshold = UsageQuantities {
        input_uncached: 150_000,
        cache_read: 50_000,
        output: 1_000,
        ..Default::default()
    };
    // exactly 200,000 prompt tokens is not above: 150,000×3 + 50,000×0.3 + 1,000×15
    // = 450,000 + 15,000 + 15,000 = 480,000 per million
    let rating = sonnet(&at_threshold, ServiceTier::Standard);
    assert_eq!(rating.cost, dec!(0.48));
    assert_eq!(rating.provenance.long_context_above, None);

    let above = UsageQuantities {
        cache_write_1h: 1,
        ..at_threshold
    };
    // 200,001 tokens: 150,000×6 + 50,000×0.6 + 1×12 + 1,000×22.5
    // = 900,000 + 30,000 + 12 + 22,500 = 952,512 per million
    let rating = sonnet(&above, ServiceTier::Standard);
    assert_eq!(rating.cost, dec!(0.952512));
    assert_eq!(rating.provenance.long_context_above, Some(200_000));
    assert!(
        rating.provenance.rule.contains("long context >200000"),
        "{}",
        rating.provenance.rule
    );
}

#[test]
fn batch_halves_every_dimension_including_long_context() {
    let q = UsageQuantities {
        input_uncached: 250_000,
        output: 2_000,
        ..Default::default()
    };
    // (250,000×6 + 2,000×22.5) × 0.5 = (1,500,000 + 45,000) × 0.5 per million
    let rating = sonnet(&q, ServiceTier::Batch);
    assert_eq!(rating.cost, dec!(0.7725));
    assert!(
        rating.provenance.rule.contains("batch ×0.5"),
        "{}",
        rating.provenance.rule
    );
    // No flex tier is published for Claude: unpriced, never standard.
    let rating = sonnet(&q, ServiceTier::Flex);
    assert_eq!(
        (rating.status, rating.cost),
        (PricingStatus::Unpriced, Decimal::ZERO)
    );
    assert_eq!(
        rating.provenance.unpriced,
        Some(UnpricedReason::ServiceTierNotPriced(ServiceTier::Flex))
    );
}

#[test]
fn explicit_tier_rates_and_reasoning() {
    let q = UsageQuantities {
        input_uncached: 1_000_000,
        cache_read: 1_000_000,
        output: 1_000_000,
        reasoning: 1_000_000,
        ..Default::default()
    };
    let b = book();
    let standard = rate(&b, "openai", "o3", ServiceTier::Standard, &q);
    assert_eq!(standard.cost, dec!(2) + dec!(0.5) + dec!(8) + dec!(8));
    let flex = rate(&b, "openai", "o3", ServiceTier::Flex, &q);
    // reasoning falls back to the tier's output rate
    assert_eq!(flex.cost, dec!(1) + dec!(0.25) + dec!(4) + dec!(4));
    let priority = rate(&b, "openai", "o3", ServiceTier::Priority, &q);
    assert_eq!(priority.cost, dec!(3.5) + dec!(0.875) + dec!(14) + dec!(14));
    assert_eq!(priority.provenance.service_tier, ServiceTier::Priority);
}

#[test]
fn per_call_charges_need_a_price() {
    let mut q = UsageQuantities {
        input_uncached: 1_000,
        ..Default::default()
    };
    q.calls.insert("web_search".into(), 3);
    // 1,000×3 per million + 3 × $10 / 1,000 = 0.003 + 0.03
    assert_eq!(sonnet(&q, ServiceTier::Standard).cost, dec!(0.033));
    // batch does not discount tool calls: 0.0015 + 0.03
    assert_eq!(sonnet(&q, ServiceTier::Batch).cost, dec!(0.0315));

    let b = book();
    let rating = rate(&b, "openai", "o3", ServiceTier::Standard, &q);
    assert_eq!(rating.status, PricingStatus::Unpriced);
    assert_eq!(
        rating.provenance.unpriced,
        Some(UnpricedReason::CallNotPriced("web_search".into()))
    );
    q.calls.insert("web_search".into(), 0);
    assert_eq!(
        rate(&b, "openai", "o3", ServiceTier::Standard, &q).status,
        PricingStatus::Priced
    );
}

#[test]
fn effective_dates_and_listed_snapshots_decide() {
    let b = book();
    let q = UsageQuantities {
        input_uncached: 1_000_000,
        ..Default::default()
    };
    let request = |model, when| {
        b.rate(&RatingRequest {
            tenant: "acme",
            provider: "openai",
            model,
            at: at(when),
            service_tier: ServiceTier::Standard,
            quantities: &q,
            supplied_cost: None,
        })
    };
    // A snapshot listed with its own price is not its base model.
    assert_eq!(
        request("o3-2025-04-16", "2026-01-01T00:00:00Z").cost,
        dec!(10)
    );
    assert_eq!(
        request("o3-2025-06-10", "2026-01-01T00:00:00Z").cost,
        dec!(2)
    );
    // Before the first entry and after effective_until: unpriced.
    let early = request("o3", "2025-01-01T00:00:00Z");
    assert_eq!(
        early.provenance.unpriced,
        Some(UnpricedReason::NoPriceInForce)
    );
    let late = request("o3", "2026-06-01T00:00:00Z");
    assert_eq!(late.status, PricingStatus::Unpriced);
    let unknown = request("o3-pro", "2026-01-01T00:00:00Z");
    assert_eq!(
        unknown.provenance.unpriced,
        Some(UnpricedReason::UnknownModel)
    );
    assert_eq!(unknown.list_cost, None);
}

#[test]
fn bedrock_profiles_aliases_and_vertex() {
    let b = book();
    let q = UsageQuantities {
        input_uncached: 100_000,
        ..Default::default()
    };
    let cost =
        |provider: &str, model: &str| rate(&b, provider, model, ServiceTier::Standard, &q).cost;
    let id = "anthropic.claude-sonnet-4-5-20250929-v1:0";
    assert_eq!(cost("bedrock", id), dec!(0.33));
    assert_eq!(cost("aws.bedrock", &format!("us.{id}")), dec!(0.33));
    assert_eq!(cost("bedrock", &format!("global.{id}")), dec!(0.3));
    assert_eq!(cost("anthropic", "claude-sonnet-4-0"), dec!(0.3));
    assert_eq!(cost("vertex_ai", "claude-sonnet-4@20250514"), dec!(0.3));
    assert_eq!(
        rate(
            &b,
            "anthropic",
            "claude-sonnet-4-0",
            ServiceTier::Standard,
            &q
        )
        .provenance
        .matched_by,
        Some(MatchKind::Alias)
    );
}

#[test]
fn supplied_cost_wins_and_the_list_cost_stays_beside_it() {
    let b = book();
    let q = UsageQuantities {
        input_uncached: 100_000,
        ..Default::default()
    };
    // 100,000 × $3 per million (below the long-context threshold)
    let rating = b.rate(&RatingRequest {
        tenant: "acme",
        provider: "anthropic",
        model: "claude-sonnet-4",
        at: at("2026-03-01T00:00:00Z"),
        service_tier: ServiceTier::Standard,
        quantities: &q,
        supplied_cost: Some(dec!(0)),
    });
    assert_eq!(
        (rating.status, rating.cost, rating.list_cost),
        (PricingStatus::Provided, dec!(0), Some(dec!(0.3)))
    );
    assert!(rating.provenance.rule.starts_with("caller-supplied"));
}

#[test]
fn book_version_is_the_files_sha256() {
    let b = book();
    let expected: String = Sha256::digest(BOOK.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(b.version(), expected);
    let q = UsageQuantities::default();
    assert_eq!(
        rate(&b, "openai", "o3", ServiceTier::Standard, &q)
            .provenance
            .book_version,
        expected
    );
    let layered = PriceBook::builtin()
        .expect("the built-in book parses")
        .with_overrides(book());
    let builtin = PriceBook::builtin().expect("the built-in book parses");
    assert_ne!(layered.version(), expected);
    assert_ne!(layered.version(), builtin.version());
}

#[test]
fn bad_tier_and_call_lines_are_refused() {
    for bad in [
        // a multiplier and rates at once
        "service_tier.batch = { multiplier = \"0.5\", input = \"1\", output = \"1\" }",
        // the standard tier is the entry itself
        "service_tier.standard = { multiplier = \"1\" }",
        "service_tier.turbo = { multiplier = \"1\" }",
        "per_1k_calls = { web_search = \"-1\" }",
        "effective_until = \"2020-01-01T00:00:00Z\"",
        "[[price.long_context]]\nabove_input_tokens = 0\ninput = \"1\"\noutput = \"1\"",
    ] {
        let text = format!(
            "[[price]]\nprovider = \"p\"\nmodel = \"m\"\neffective_from = \"2024-01-01T00:00:00Z\"\ninput = \"1\"\noutput = \"1\"\n{bad}\n"
        );
        assert!(PriceBook::from_toml(&text).is_err(), "accepted: {bad}");
    }
}
