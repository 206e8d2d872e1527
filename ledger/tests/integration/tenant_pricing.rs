//! Negotiated prices: a tenant's terms set its cost, effective-dated and by
//! specificity, while the list cost is still reported beside them.

use chrono::{DateTime, Utc};
use ledger::pricebook::{
    PriceBook, PricingStatus, Rating, RatingRequest, ServiceTier, UsageQuantities,
};
use rust_decimal_macros::dec;

const LIST: &str = r#"
[[provider]]
name = "openai"
service_tier.batch = { multiplier = "0.5" }

[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2024-01-01T00:00:00Z"
input = "2.50"
output = "10"
cache_read = "1.25"

[[price]]
provider = "openai"
model = "gpt-4o-mini"
effective_from = "2024-01-01T00:00:00Z"
input = "0.15"
output = "0.60"
"#;

const TERMS: &str = r#"
# 20% off everything at OpenAI for acme during 2026.
[[tenant]]
tenant = "acme"
provider = "openai"
effective_from = "2026-01-01T00:00:00Z"
effective_until = "2027-01-01T00:00:00Z"
contract = "MSA-2026-014"
multiplier = "0.8"

# A rate card of its own for gpt-4o from March.
[[tenant]]
tenant = "acme"
provider = "openai"
model = "gpt-4o"
effective_from = "2026-03-01T00:00:00Z"
contract = "MSA-2026-014 amendment 1"
input = "2"
output = "6"

# A fine-tuned model only this tenant has, and no list price.
[[tenant]]
tenant = "acme"
provider = "openai"
model = "ft:gpt-4o-mini:acme::abc123"
effective_from = "2026-01-01T00:00:00Z"
input = "0.30"
output = "1.20"

# 10% off for globex, tenant-wide.
[[tenant]]
tenant = "globex"
effective_from = "2025-01-01T00:00:00Z"
multiplier = "0.9"
"#;

fn book() -> PriceBook {
    PriceBook::from_toml(LIST)
        .expect("list")
        .with_overrides(PriceBook::from_toml(TERMS).expect("terms"))
}

const HUNDRED_THOUSAND_EACH: UsageQuantities = UsageQuantities {
    input_uncached: 100_000,
    cache_read: 0,
    cache_write_5m: 0,
    cache_write_1h: 0,
    output: 100_000,
    reasoning: 0,
    calls: std::collections::BTreeMap::new(),
    unpriced: std::collections::BTreeMap::new(),
};

fn rate(tenant: &str, model: &str, when: &str, tier: ServiceTier) -> Rating {
    let at: DateTime<Utc> = when.parse().expect("timestamp");
    book().rate(&RatingRequest {
        tenant,
        provider: "openai",
        model,
        at,
        service_tier: tier,
        quantities: &HUNDRED_THOUSAND_EACH,
        supplied_cost: None,
    })
}

#[test]
fn a_multiplier_scales_the_list_cost() {
    // list: 100,000 × 2.50 + 100,000 × 10 = 1.25; contracted × 0.8 = 1.00
    let rating = rate(
        "acme",
        "gpt-4o-2024-08-06",
        "2026-02-01T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(
        (rating.status, rating.cost, rating.list_cost),
        (PricingStatus::Priced, dec!(1), Some(dec!(1.25)))
    );
    assert_eq!(
        rating.provenance.tenant_rule.as_deref(),
        Some("tenant:acme:openai/*@2026-01-01")
    );
    assert_eq!(rating.provenance.tenant_multiplier, Some(dec!(0.8)));
    assert!(
        rating.provenance.rule.contains("×0.8 (MSA-2026-014)"),
        "{}",
        rating.provenance.rule
    );
    assert_eq!(rating.provenance.contract.as_deref(), Some("MSA-2026-014"));
    // The multiplier applies after the batch discount: 1.25 × 0.5 × 0.8
    let batch = rate("acme", "gpt-4o", "2026-02-01T00:00:00Z", ServiceTier::Batch);
    assert_eq!(
        (batch.cost, batch.list_cost),
        (dec!(0.5), Some(dec!(0.625)))
    );
}

#[test]
fn the_most_specific_rule_in_force_wins() {
    // From March gpt-4o has its own rates: 100,000 × 2 + 100,000 × 6 = 0.8
    let rating = rate(
        "acme",
        "gpt-4o",
        "2026-03-02T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(
        (rating.cost, rating.list_cost),
        (dec!(0.8), Some(dec!(1.25)))
    );
    assert!(
        rating.provenance.rule.contains("amendment 1"),
        "{}",
        rating.provenance.rule
    );
    // Own rates without a batch price fall back to the provider's batch rule.
    let batch = rate("acme", "gpt-4o", "2026-03-02T00:00:00Z", ServiceTier::Batch);
    assert_eq!(batch.cost, dec!(0.4));
    // Other models still get the provider-wide multiplier: (0.015 + 0.06) × 0.8
    let mini = rate(
        "acme",
        "gpt-4o-mini",
        "2026-03-02T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(mini.cost, dec!(0.06));
}

#[test]
fn terms_apply_only_while_in_force_and_only_to_their_tenant() {
    let before = rate(
        "acme",
        "gpt-4o",
        "2025-12-31T23:59:59Z",
        ServiceTier::Standard,
    );
    assert_eq!(
        (before.cost, before.provenance.tenant_rule),
        (dec!(1.25), None)
    );
    // The model rule has no end; the provider rule ended with 2026.
    let after = rate(
        "acme",
        "gpt-4o-mini",
        "2027-01-01T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(after.cost, dec!(0.075));
    let other = rate(
        "initech",
        "gpt-4o",
        "2026-02-01T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(other.cost, dec!(1.25));
    let globex = rate(
        "globex",
        "gpt-4o",
        "2026-02-01T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(globex.cost, dec!(1.125));
}

#[test]
fn a_tenant_only_model_is_priced_by_its_contract() {
    let rating = rate(
        "acme",
        "ft:gpt-4o-mini:acme::abc123",
        "2026-02-01T00:00:00Z",
        ServiceTier::Standard,
    );
    // 100,000 × 0.30 + 100,000 × 1.20 = 0.15; no list price exists
    assert_eq!(
        (rating.status, rating.cost, rating.list_cost),
        (PricingStatus::Priced, dec!(0.15), None)
    );
    let stranger = rate(
        "globex",
        "ft:gpt-4o-mini:acme::abc123",
        "2026-02-01T00:00:00Z",
        ServiceTier::Standard,
    );
    assert_eq!(stranger.status, PricingStatus::Unpriced);
}

#[test]
fn a_supplied_cost_leaves_tenant_terms_out() {
    let at: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().expect("timestamp");
    let rating = book().rate(&RatingRequest {
        tenant: "acme",
        provider: "openai",
        model: "gpt-4o",
        at,
        service_tier: ServiceTier::Standard,
        quantities: &HUNDRED_THOUSAND_EACH,
        supplied_cost: Some(dec!(9.99)),
    });
    assert_eq!(
        (rating.status, rating.cost, rating.list_cost),
        (PricingStatus::Provided, dec!(9.99), Some(dec!(1.25)))
    );
    assert_eq!(rating.provenance.tenant_rule, None);
}

#[test]
fn bad_tenant_lines_are_refused() {
    for bad in [
        "multiplier = \"0.8\"\ninput = \"1\"\noutput = \"1\"",
        "multiplier = \"-1\"",
        "input = \"1\"",
        "",
    ] {
        let text = format!(
            "[[tenant]]\ntenant = \"t\"\neffective_from = \"2026-01-01T00:00:00Z\"\n{bad}\n"
        );
        let err = PriceBook::from_toml(&text).expect_err(bad);
        assert!(err.to_string().contains("tenant rule 0 (t)"), "{err}");
    }
}
