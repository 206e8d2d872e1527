//! The price book: what one million tokens of each kind cost, per provider
//! and model, from a given date; and the cost of one usage event.
//!
//! Money is `rust_decimal` end to end. A float would drift by cents per
//! million events, and finance teams reconcile this table against invoices.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::event::{UsageEvent, MAX_COST_SCALE};

/// The book that ships with tokenledger: list prices of the models people
/// use most, as published by the providers.
const BUILTIN_TOML: &str = include_str!("pricebook.toml");

const TOKENS_PER_PRICE_UNIT: u32 = 1_000_000;

/// Providers that bill at another provider's list price.
const PROVIDER_ALIASES: &[(&str, &str)] = &[
    ("azure", "openai"),
    ("azure-openai", "openai"),
    ("azure_openai", "openai"),
    ("gemini", "google"),
    ("vertex", "google"),
    ("vertex_ai", "google"),
    ("vertexai", "google"),
    ("google-ai", "google"),
];

/// Bedrock's cross-region inference profiles prefix the model id with a
/// geography; the price is the model's.
const BEDROCK_REGION_PREFIXES: &[&str] = &["us.", "eu.", "apac.", "global.", "us-gov."];

#[derive(Debug, thiserror::Error)]
pub enum PriceBookError {
    #[error("price book is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("price book entry {index} ({provider}/{model}): {message}")]
    Entry {
        index: usize,
        provider: String,
        model: String,
        message: String,
    },
}

/// USD per million tokens. Optional kinds fall back to the plain input or
/// output price when a model does not price them separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(with = "rust_decimal::serde::str")]
    pub input: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub output: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub cached_input: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub cache_write: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub reasoning: Option<Decimal>,
}

/// One line of the book as written in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub provider: String,
    /// A model name, or `*` for every model of the provider.
    pub model: String,
    pub effective_from: DateTime<Utc>,
    #[serde(flatten)]
    pub price: Price,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBookFile {
    #[serde(default)]
    price: Vec<PriceEntry>,
}

/// How an event's cost was arrived at; stored with the row so that free
/// usage and unknown usage are never confused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PricingStatus {
    /// The caller sent `estimated_cost`, which wins over the book.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub usd: Decimal,
    pub status: PricingStatus,
}

/// Prices keyed by provider and model, each with its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook {
    /// (provider, model) → entries sorted by `effective_from` ascending.
    entries: HashMap<(String, String), Vec<PriceEntry>>,
}

impl PriceBook {
    /// The built-in book. It is compiled in and checked by a unit test, so
    /// failing to parse it is a build defect, not a runtime condition.
    pub fn builtin() -> Self {
        Self::from_toml(BUILTIN_TOML).unwrap_or_default()
    }

    /// Parses a book written as `[[price]]` tables.
    pub fn from_toml(text: &str) -> Result<Self, PriceBookError> {
        let file: PriceBookFile = toml::from_str(text)?;
        let mut book = Self::default();
        for (index, mut entry) in file.price.into_iter().enumerate() {
            entry.provider = entry.provider.to_ascii_lowercase();
            validate_entry(index, &entry)?;
            book.entries
                .entry((entry.provider.clone(), entry.model.clone()))
                .or_default()
                .push(entry);
        }
        for history in book.entries.values_mut() {
            history.sort_by_key(|entry| entry.effective_from);
        }
        Ok(book)
    }

    /// This book with `overrides` laid over it: a (provider, model) present
    /// in `overrides` takes its whole price history from there, so an
    /// operator's negotiated prices replace list prices rather than mix.
    pub fn with_overrides(mut self, overrides: Self) -> Self {
        for (key, history) in overrides.entries {
            self.entries.insert(key, history);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price in force for `provider`/`model` at `at`.
    ///
    /// Model names are matched exactly first, then by the longest listed
    /// name that the requested one extends at a separator (`gpt-4o` prices
    /// `gpt-4o-2024-08-06`), then by the provider's `*` entry.
    pub fn lookup(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        let provider = PROVIDER_ALIASES
            .iter()
            .find(|(alias, _)| *alias == provider)
            .map_or(provider, |(_, canonical)| canonical);
        let mut candidates = vec![model];
        if provider == "bedrock" {
            if let Some(stripped) = BEDROCK_REGION_PREFIXES
                .iter()
                .find_map(|prefix| model.strip_prefix(prefix))
            {
                candidates.push(stripped);
            }
        }
        for candidate in candidates {
            if let Some(price) = self.history_price(provider, candidate, at) {
                return Some(price);
            }
            if let Some(price) = self.prefix_price(provider, candidate, at) {
                return Some(price);
            }
        }
        self.history_price(provider, "*", at)
    }

    fn history_price(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.entries
            .get(&(provider.to_owned(), model.to_owned()))?
            .iter()
            .rev()
            .find(|entry| entry.effective_from <= at)
            .map(|entry| &entry.price)
    }

    fn prefix_price(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.entries
            .keys()
            .filter(|(listed_provider, listed_model)| {
                listed_provider == provider
                    && listed_model != "*"
                    && model.len() > listed_model.len()
                    && model.starts_with(listed_model.as_str())
                    && model[listed_model.len()..].starts_with(['-', ':', '@', '.', '/'])
            })
            .max_by_key(|(_, listed_model)| listed_model.len())
            .and_then(|(listed_provider, listed_model)| {
                self.history_price(listed_provider, listed_model, at)
            })
    }

    /// The cost of one event: its own `estimated_cost` when given, else the
    /// book's price at `created_at`, else zero marked unpriced.
    pub fn cost(&self, event: &UsageEvent) -> Cost {
        if let Some(usd) = event.estimated_cost {
            return Cost {
                usd,
                status: PricingStatus::Provided,
            };
        }
        match self.lookup(&event.provider, &event.model, event.created_at) {
            Some(price) => Cost {
                usd: price_event(price, event),
                status: PricingStatus::Priced,
            },
            None => Cost {
                usd: Decimal::ZERO,
                status: PricingStatus::Unpriced,
            },
        }
    }
}

/// Token counts are at most 2^32 and prices a few hundred dollars, so every
/// product stays far inside Decimal's 96-bit mantissa.
fn price_event(price: &Price, event: &UsageEvent) -> Decimal {
    let cached = event.cached_prompt_tokens;
    let cache_write = event.cache_write_tokens;
    let plain_input = event
        .prompt_tokens
        .saturating_sub(cached)
        .saturating_sub(cache_write);
    let reasoning = event.reasoning_tokens;
    let plain_output = event.completion_tokens.saturating_sub(reasoning);
    let per_million = Decimal::from(plain_input) * price.input
        + Decimal::from(cached) * price.cached_input.unwrap_or(price.input)
        + Decimal::from(cache_write) * price.cache_write.unwrap_or(price.input)
        + Decimal::from(plain_output) * price.output
        + Decimal::from(reasoning) * price.reasoning.unwrap_or(price.output);
    (per_million / Decimal::from(TOKENS_PER_PRICE_UNIT))
        .round_dp_with_strategy(MAX_COST_SCALE, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

fn validate_entry(index: usize, entry: &PriceEntry) -> Result<(), PriceBookError> {
    let fail = |message: &str| PriceBookError::Entry {
        index,
        provider: entry.provider.clone(),
        model: entry.model.clone(),
        message: message.to_owned(),
    };
    if entry.provider.is_empty() || entry.model.is_empty() {
        return Err(fail("provider and model must not be empty"));
    }
    let price = &entry.price;
    let all = [
        Some(price.input),
        Some(price.output),
        price.cached_input,
        price.cache_write,
        price.reasoning,
    ];
    if all.into_iter().flatten().any(|p| p.is_sign_negative()) {
        return Err(fail("prices must not be negative"));
    }
    if all
        .into_iter()
        .flatten()
        .any(|p| p > Decimal::from(100_000))
    {
        return Err(fail(
            "prices are per million tokens; above $100,000 is surely a unit mistake",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
