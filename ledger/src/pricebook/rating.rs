//! Rating: the quantities one request used, the question asked of the book
//! (who, which model, when, which service tier), and the answer: the cost,
//! the list cost, whether it is priced, and the provenance that explains it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::entry::{Price, ProviderDefaults, RateCard, ServiceTier, Tariff, TierPricing};
use super::resolve::MatchKind;

/// Costs are stored with this many decimal places (`NUMERIC(20,10)`).
pub const COST_DECIMAL_PLACES: u32 = 10;

const TOKENS_PER_PRICE_UNIT: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
const CALLS_PER_PRICE_UNIT: Decimal = Decimal::from_parts(1_000, 0, 0, false, 0);

/// What one request consumed, in tokenledger's convention: **every token
/// field is disjoint from the others**, so their sum is every token billed
/// and none is billed twice.
///
/// - `input_uncached`: prompt tokens read neither from nor into a cache
///   (OpenAI: `prompt_tokens - cached_tokens`; Anthropic: `input_tokens`).
/// - `cache_read`: prompt tokens served from a cache.
/// - `cache_write_5m` / `cache_write_1h`: prompt tokens written to a cache
///   with a 5-minute / 1-hour lifetime (Anthropic's cache creation).
/// - `output`: generated tokens *excluding* reasoning tokens.
/// - `reasoning`: hidden reasoning/thinking tokens (OpenAI
///   `reasoning_tokens`, Gemini `thoughtsTokenCount`). A provider that
///   reports thinking inside its output count (Anthropic) leaves this 0.
/// - `calls`: server-side tool calls billed per call, by name
///   (`web_search`).
/// - `unpriced`: tokens the book has no rate for, by component (see
///   [`UnpricedSide`]): OpenAI audio, 12-hour cache writes, a count field no
///   format knows yet (`usage.<field>`). They are counted, never charged, and
///   the rating names them.
///
/// The prompt length that decides a long-context tier is
/// `input_uncached + cache_read + cache_write_5m + cache_write_1h` and the
/// unpriced prompt components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageQuantities {
    pub input_uncached: u64,
    pub cache_read: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    pub reasoning: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unpriced: BTreeMap<String, u64>,
}

/// Which of a usage's totals an unpriced component is part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpricedSide {
    /// Inside the prompt (`input_audio`, `input_cache_write_12h`).
    Input,
    /// Inside the completion (`output_audio`).
    Output,
    /// Neither, as far as anyone can tell: a field no format knows.
    Apart,
}

/// The unpriced components tokenledger knows, by the total they are part of.
pub const UNPRICED_INPUT: &[&str] = &["input_audio", "input_cache_write_12h"];
pub const UNPRICED_OUTPUT: &[&str] = &["output_audio"];

impl UnpricedSide {
    pub fn of(component: &str) -> Self {
        if UNPRICED_INPUT.contains(&component) {
            Self::Input
        } else if UNPRICED_OUTPUT.contains(&component) {
            Self::Output
        } else {
            Self::Apart
        }
    }
}

impl UsageQuantities {
    /// Every prompt token, cached or not: what long-context tiers measure.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_uncached
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
            .saturating_add(self.unpriced_on(UnpricedSide::Input))
    }

    /// Every generated token, reasoning included.
    pub fn completion_tokens(&self) -> u64 {
        self.output
            .saturating_add(self.reasoning)
            .saturating_add(self.unpriced_on(UnpricedSide::Output))
    }

    /// The unpriced tokens inside one total.
    pub fn unpriced_on(&self, side: UnpricedSide) -> u64 {
        self.unpriced
            .iter()
            .filter(|(component, _)| UnpricedSide::of(component) == side)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
    }
}

/// One question to the book.
#[derive(Debug, Clone, Copy)]
pub struct RatingRequest<'a> {
    pub tenant: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    /// When the usage happened; selects the price in force.
    pub at: DateTime<Utc>,
    pub service_tier: ServiceTier,
    pub quantities: &'a UsageQuantities,
    /// A cost the caller computed itself; it is then the cost, and the book
    /// still reports its list cost beside it for reconciliation.
    pub supplied_cost: Option<Decimal>,
}

/// How an event's cost was arrived at; stored with the row so that free
/// usage and unknown usage are never confused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PricingStatus {
    /// The caller supplied the cost (`estimated_cost`).
    Provided,
    /// Priced from the book.
    Priced,
    /// No price known: stored at 0 and counted, so it is visible.
    Unpriced,
}

impl PricingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provided => "provided",
            Self::Priced => "priced",
            Self::Unpriced => "unpriced",
        }
    }
}

/// Why the book could not price a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum UnpricedReason {
    /// Neither the name, an alias, nor a snapshot form of it is listed.
    UnknownModel,
    /// The model is listed, but no entry is in force at the usage's time.
    NoPriceInForce,
    /// The entry has no price for the requested service tier.
    ServiceTierNotPriced(ServiceTier),
    /// The usage counts calls of a tool the entry has no price for.
    CallNotPriced(String),
    /// Quantities so large the arithmetic would overflow.
    Overflow,
}

/// Enough to answer "why is this row $4.20".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Content hash of the book that rated the usage.
    pub book_version: String,
    /// The list entry used (`anthropic/claude-sonnet-4-5@2025-09-29`).
    pub entry_id: Option<String>,
    /// Where the entry's price was published.
    pub source: Option<String>,
    pub matched_by: Option<MatchKind>,
    pub service_tier: ServiceTier,
    /// The long-context threshold the prompt exceeded, if any.
    pub long_context_above: Option<u64>,
    /// The tenant rule that set the cost (`tenant:acme:openai/*@2026-01-01`).
    pub tenant_rule: Option<String>,
    /// The rule's multiplier of the list cost, when it is one.
    pub tenant_multiplier: Option<Decimal>,
    /// The agreement the tenant rule cites.
    pub contract: Option<String>,
    pub unpriced: Option<UnpricedReason>,
    /// Tokens counted but not priced, by component: the cost covers the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unpriced_tokens: BTreeMap<String, u64>,
    /// One line saying all of the above.
    pub rule: String,
}

/// The book's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    pub status: PricingStatus,
    /// What the usage costs the tenant: the supplied cost, the contracted
    /// cost, or the list cost; 0 when unpriced.
    pub cost: Decimal,
    /// The provider's list price of the usage, when the book knows it.
    pub list_cost: Option<Decimal>,
    pub provenance: Provenance,
}

/// The cost and status of one event, for callers that need no provenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub usd: Decimal,
    pub status: PricingStatus,
}

impl From<&Rating> for Cost {
    fn from(rating: &Rating) -> Self {
        Cost {
            usd: rating.cost,
            status: rating.status,
        }
    }
}

/// How a tariff priced a request, before rounding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Priced {
    pub usd: Decimal,
    pub long_context_above: Option<u64>,
    /// `batch ×0.5`, `priority rates`, or empty for standard.
    pub tier_rule: String,
}

/// Prices `quantities` under `tariff` at `tier`; `defaults` supply service
/// tiers and call prices the tariff does not list. Unrounded.
pub(crate) fn price_tariff(
    tariff: &Tariff,
    defaults: Option<&ProviderDefaults>,
    tier: ServiceTier,
    quantities: &UsageQuantities,
) -> Result<Priced, UnpricedReason> {
    let pricing = tier_pricing(tariff, defaults, tier)?;
    let (card, multiplier) = card_of(tariff, pricing);
    let (price, long_context_above) = card.for_prompt(quantities.prompt_tokens());
    let usd = charge(
        price,
        multiplier,
        tariff,
        defaults,
        &Tokens::of(quantities),
        &quantities.calls,
    )?;
    let tier_rule = match pricing {
        None => String::new(),
        Some(TierPricing::Multiplier(m)) => format!("{tier} ×{m}"),
        Some(TierPricing::Rates(_)) => format!("{tier} rates"),
    };
    Ok(Priced {
        usd,
        long_context_above,
        tier_rule,
    })
}

/// How `tier` is priced under `tariff`: `None` for standard.
pub(crate) fn tier_pricing<'t>(
    tariff: &'t Tariff,
    defaults: Option<&'t ProviderDefaults>,
    tier: ServiceTier,
) -> Result<Option<&'t TierPricing>, UnpricedReason> {
    if tier == ServiceTier::Standard {
        return Ok(None);
    }
    tariff
        .service_tiers
        .get(&tier)
        .or_else(|| defaults.and_then(|d| d.service_tiers.get(&tier)))
        .map(Some)
        .ok_or(UnpricedReason::ServiceTierNotPriced(tier))
}

/// The rate card and the multiplier of its rates a tier's pricing means.
pub(crate) fn card_of<'t>(
    tariff: &'t Tariff,
    pricing: Option<&'t TierPricing>,
) -> (&'t RateCard, Decimal) {
    match pricing {
        None => (&tariff.standard, Decimal::ONE),
        Some(TierPricing::Multiplier(m)) => (&tariff.standard, *m),
        Some(TierPricing::Rates(card)) => (card, Decimal::ONE),
    }
}

/// The token counts of a usage, by the kinds the book prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input_uncached: u64,
    pub cache_read: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Tokens {
    pub fn of(q: &UsageQuantities) -> Self {
        Self {
            input_uncached: q.input_uncached,
            cache_read: q.cache_read,
            cache_write_5m: q.cache_write_5m,
            cache_write_1h: q.cache_write_1h,
            output: q.output,
            reasoning: q.reasoning,
        }
    }
}

/// The unrounded charge of `tokens` at `price` × `multiplier` plus the
/// per-call charges: the one computation every list and contracted cost
/// goes through, so a caller pricing variants of a request gets exactly
/// the figure [`crate::PriceBook::rate`] would give each.
pub(crate) fn charge(
    price: &Price,
    multiplier: Decimal,
    tariff: &Tariff,
    defaults: Option<&ProviderDefaults>,
    tokens: &Tokens,
    calls: &BTreeMap<String, u64>,
) -> Result<Decimal, UnpricedReason> {
    let mut usd = token_cost(price, tokens)
        .and_then(|per_million| per_million.checked_mul(multiplier))
        .and_then(|per_million| per_million.checked_div(TOKENS_PER_PRICE_UNIT))
        .ok_or(UnpricedReason::Overflow)?;
    for (kind, count) in calls.iter().filter(|(_, count)| **count > 0) {
        let rate = tariff
            .per_1k_calls
            .get(kind)
            .or_else(|| defaults.and_then(|d| d.per_1k_calls.get(kind)))
            .ok_or_else(|| UnpricedReason::CallNotPriced(kind.clone()))?;
        usd = Decimal::from(*count)
            .checked_mul(*rate)
            .and_then(|c| c.checked_div(CALLS_PER_PRICE_UNIT))
            .and_then(|c| usd.checked_add(c))
            .ok_or(UnpricedReason::Overflow)?;
    }
    Ok(usd)
}

/// Σ tokens × USD per million, over the disjoint token kinds.
fn token_cost(price: &Price, q: &Tokens) -> Option<Decimal> {
    [
        (q.input_uncached, price.input),
        (q.cache_read, price.cache_read_rate()),
        (q.cache_write_5m, price.cache_write_5m_rate()),
        (q.cache_write_1h, price.cache_write_1h_rate()),
        (q.output, price.output),
        (q.reasoning, price.reasoning_rate()),
    ]
    .into_iter()
    .try_fold(Decimal::ZERO, |sum, (tokens, rate)| {
        Decimal::from(tokens)
            .checked_mul(rate)
            .and_then(|part| sum.checked_add(part))
    })
}

/// Rounded half-even to the stored scale, trailing zeros dropped.
pub(crate) fn round_cost(usd: Decimal) -> Decimal {
    usd.round_dp_with_strategy(COST_DECIMAL_PLACES, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

/// The one-line rule of a provenance, e.g.
/// `list anthropic/claude-sonnet-4-5@2025-09-29 (snapshot); long context >200000; batch ×0.5`.
pub(crate) fn describe(p: &Provenance, supplied: bool, tier_rule: &str) -> String {
    let mut rule = String::new();
    if supplied {
        rule.push_str("caller-supplied cost; ");
    }
    match (&p.entry_id, p.matched_by) {
        (Some(id), Some(kind)) => {
            let _ = write!(rule, "list {id} ({})", kind.as_str());
        }
        _ => rule.push_str("no list entry"),
    }
    if let Some(above) = p.long_context_above {
        let _ = write!(rule, "; long context >{above}");
    }
    if !tier_rule.is_empty() {
        let _ = write!(rule, "; {tier_rule}");
    }
    if let Some(tenant_rule) = &p.tenant_rule {
        let _ = write!(rule, "; {tenant_rule}");
        if let Some(m) = p.tenant_multiplier {
            let _ = write!(rule, " ×{m}");
        }
        if let Some(contract) = &p.contract {
            let _ = write!(rule, " ({contract})");
        }
    }
    if let Some(reason) = &p.unpriced {
        let _ = write!(rule, "; unpriced: {}", unpriced_text(reason));
    }
    let mut parts = p.unpriced_tokens.iter().filter(|(_, n)| **n > 0).peekable();
    if parts.peek().is_some() {
        rule.push_str("; not priced:");
        for (index, (component, n)) in parts.enumerate() {
            let sep = if index == 0 { " " } else { ", " };
            let _ = write!(rule, "{sep}{component} {n} tokens");
        }
    }
    rule
}

fn unpriced_text(reason: &UnpricedReason) -> String {
    match reason {
        UnpricedReason::UnknownModel => "unknown model".into(),
        UnpricedReason::NoPriceInForce => "no price in force at that time".into(),
        UnpricedReason::ServiceTierNotPriced(tier) => format!("no {tier} price"),
        UnpricedReason::CallNotPriced(kind) => format!("no price for {kind} calls"),
        UnpricedReason::Overflow => "quantities overflow".into(),
    }
}
