//! The list price of variants of one request: the entry resolved and the
//! rate card chosen once, then any token counts priced on that card. This
//! is what splitting a request's list price by token kind needs (each part
//! is the price of the request less the price of a variant), without
//! resolving the model, applying tenant terms and writing provenance once
//! per variant as [`PriceBook::rate`] does.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::entry::{Price, PriceEntry, ProviderDefaults, ServiceTier};
use super::rating::{card_of, charge, round_cost, tier_pricing, Tokens};
use super::{PriceBook, Resolution};

/// One request's list-price card: the entry in force, the service tier's
/// pricing, and the long-context tier its prompt length picked.
#[derive(Debug, Clone, Copy)]
pub struct ListPricer<'b> {
    entry: &'b PriceEntry,
    defaults: Option<&'b ProviderDefaults>,
    price: &'b Price,
    multiplier: Decimal,
}

impl PriceBook {
    /// The card the book lists `provider`/`model` at, at `at`, in `tier`,
    /// for a request whose prompt (every priced and unpriced prompt token,
    /// as [`super::UsageQuantities::prompt_tokens`] counts it) is
    /// `prompt_tokens` long; `None` when the book has no list price for it.
    pub fn list_pricer(
        &self,
        provider: &str,
        model: &str,
        at: DateTime<Utc>,
        tier: ServiceTier,
        prompt_tokens: u64,
    ) -> Option<ListPricer<'_>> {
        let resolution = self.resolve(provider, model, at).ok()?;
        ListPricer::new(resolution, tier, prompt_tokens)
    }
}

impl<'b> ListPricer<'b> {
    /// [`PriceBook::list_pricer`] for the entry `resolution` found (by
    /// [`PriceBook::resolve`] or a [`super::Listing`] kept for many events).
    pub fn new(resolution: Resolution<'b>, tier: ServiceTier, prompt_tokens: u64) -> Option<Self> {
        let tariff = &resolution.entry.tariff;
        let pricing = tier_pricing(tariff, resolution.defaults, tier).ok()?;
        let (card, multiplier) = card_of(tariff, pricing);
        Some(ListPricer {
            entry: resolution.entry,
            defaults: resolution.defaults,
            price: card.for_prompt(prompt_tokens).0,
            multiplier,
        })
    }
}

impl ListPricer<'_> {
    /// The list cost of `tokens` and `calls` on this card, rounded as
    /// stored: exactly [`PriceBook::rate`]'s `list_cost` for a request of
    /// the same model, time, tier and prompt length with these counts.
    /// `None` when a call kind has no price or the sum overflows.
    pub fn list_cost(&self, tokens: &Tokens, calls: &BTreeMap<String, u64>) -> Option<Decimal> {
        charge(
            self.price,
            self.multiplier,
            &self.entry.tariff,
            self.defaults,
            tokens,
            calls,
        )
        .ok()
        .map(round_cost)
    }

    /// The list entry in force.
    pub fn entry(&self) -> &PriceEntry {
        self.entry
    }
}
