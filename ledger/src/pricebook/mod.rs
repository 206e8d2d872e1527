//! The price book: what each billing dimension of each provider's models
//! costs, from which date, on whose published authority; tenants'
//! negotiated terms; and the rating of one request's usage against it.
//!
//! Layout:
//! - [`entry`]: one price — rates per dimension, long-context and service
//!   tiers, per-call charges, effective dates and source.
//! - [`file`]: the TOML price file and its checks.
//! - [`resolve`]: which listed model a model name is (exact, alias, dated
//!   snapshot, Bedrock inference profile), and provider aliases.
//! - [`rating`]: usage quantities in, cost, list cost, status and
//!   provenance out.
//! - [`list_pricer`]: the list price of variants of one request's token
//!   counts, the card chosen once (the optimization split).
//! - [`tenant`]: per-tenant negotiated terms.
//! - [`event_usage`]: today's usage event read as quantities.
//! - [`litellm`]: LiteLLM's community price catalog converted to a price
//!   file.
//!
//! Money is `rust_decimal` end to end. A float would drift by cents per
//! million events, and finance teams reconcile this table against invoices.

pub mod entry;
pub mod event_usage;
pub mod file;
pub mod list_pricer;
pub mod listing;
pub mod litellm;

pub mod rating;
pub mod resolve;
pub mod tenant;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::event::{UsageEvent, MAX_COST_SCALE};

pub use entry::{
    ContextTier, Effective, Price, PriceEntry, ProviderDefaults, RateCard, ServiceTier, Tariff,
    TierPricing, UnknownServiceTier,
};
pub use file::PriceFile;
pub use list_pricer::ListPricer;
pub use listing::{Listing, Listings};
pub use rating::{
    Cost, PricingStatus, Provenance, Rating, RatingRequest, Tokens, UnpricedReason, UnpricedSide,
    UsageQuantities, COST_DECIMAL_PLACES,
};
pub use resolve::MatchKind;
pub use tenant::{TenantRule, TenantTerms};

use rating::{describe, price_tariff, round_cost, Priced};

/// The book that ships with tokenledger: list prices of the models people
/// use most, as published by the providers.
pub const BUILTIN_TOML: &str = include_str!("../pricebook.toml");

const _: () = assert!(COST_DECIMAL_PLACES == MAX_COST_SCALE);

#[derive(Debug, thiserror::Error)]
pub enum PriceBookError {
    #[error("price book is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("price book cannot be written as TOML: {0}")]
    Write(#[from] toml::ser::Error),
    #[error("price book entry {index} ({provider}/{model}): {message}")]
    Entry {
        index: usize,
        provider: String,
        model: String,
        message: String,
    },
    #[error("price book provider {name}: {message}")]
    Provider { name: String, message: String },
    #[error("price book tenant rule {index} ({tenant}): {message}")]
    Tenant {
        index: usize,
        tenant: String,
        message: String,
    },
}

/// A listed model found for a usage's model name.
#[derive(Debug, Clone, Copy)]
pub struct Resolution<'a> {
    pub entry: &'a PriceEntry,
    pub matched_by: MatchKind,
    pub defaults: Option<&'a ProviderDefaults>,
}

/// Prices keyed by provider and model, each with its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook {
    /// (provider, model) → entries sorted by `effective.from` ascending.
    entries: HashMap<(String, String), Vec<PriceEntry>>,
    /// (provider, alias) → listed model.
    aliases: HashMap<(String, String), String>,
    providers: BTreeMap<String, ProviderDefaults>,
    tenants: Vec<TenantRule>,
    version: String,
}

impl PriceBook {
    /// The built-in book. It is compiled in and checked by a unit test; a
    /// build that fails to parse it anyway must refuse to start rather than
    /// price everything as unpriced, so the error is the caller's.
    pub fn builtin() -> Result<Self, PriceBookError> {
        Self::from_toml(BUILTIN_TOML)
    }

    /// Parses and checks a price file (see [`file`] for its shape).
    pub fn from_toml(text: &str) -> Result<Self, PriceBookError> {
        let checked = PriceFile::parse(text)?.check()?;
        let mut book = Self {
            providers: checked.providers,
            tenants: checked.tenants,
            version: sha256_hex(text.as_bytes()),
            ..Self::default()
        };
        for (index, entry) in checked.entries.into_iter().enumerate() {
            let key = (entry.provider.clone(), entry.model.clone());
            for alias in &entry.aliases {
                let alias_key = (entry.provider.clone(), alias.clone());
                let previous = book.aliases.insert(alias_key, entry.model.clone());
                if previous.is_some_and(|model| model != entry.model) {
                    return Err(entry_error(
                        index,
                        &entry,
                        format!("alias {alias} names two models"),
                    ));
                }
            }
            let history = book.entries.entry(key).or_default();
            if history
                .iter()
                .any(|e| e.effective.from == entry.effective.from)
            {
                return Err(entry_error(
                    index,
                    &entry,
                    "two entries start at the same time".into(),
                ));
            }
            history.push(entry);
        }
        for history in book.entries.values_mut() {
            history.sort_by_key(|entry| entry.effective.from);
        }
        if let Some(((provider, alias), _)) = book
            .aliases
            .iter()
            .find(|(key, _)| book.entries.contains_key(*key))
        {
            return Err(PriceBookError::Provider {
                name: provider.clone(),
                message: format!("{alias} is both a listed model and an alias"),
            });
        }
        Ok(book)
    }

    /// This book with `overrides` laid over it: a (provider, model) present
    /// in `overrides` takes its whole price history from there, so an
    /// operator's negotiated prices replace list prices rather than mix;
    /// provider defaults are replaced per provider; tenant rules add up.
    pub fn with_overrides(mut self, overrides: Self) -> Self {
        for (key, history) in overrides.entries {
            self.entries.insert(key, history);
        }
        self.aliases.extend(overrides.aliases);
        self.providers.extend(overrides.providers);
        self.tenants.extend(overrides.tenants);
        self.version = sha256_hex(format!("{}\n{}", self.version, overrides.version).as_bytes());
        self
    }

    /// The content hash of the price file(s) this book was read from: the
    /// SHA-256 of the file for one file (so `sha256sum` checks it), and of
    /// the two versions for a book with overrides. Stored with each rating.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every list entry, for checks and listings.
    pub fn entries(&self) -> impl Iterator<Item = &PriceEntry> {
        self.entries.values().flatten()
    }

    pub fn provider_defaults(&self, provider: &str) -> Option<&ProviderDefaults> {
        self.providers.get(provider)
    }

    pub fn tenant_rules(&self) -> &[TenantRule] {
        &self.tenants
    }

    /// The standard base rates in force for `provider`/`model` at `at`.
    pub fn lookup(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.resolve(provider, model, at)
            .ok()
            .map(|resolution| &resolution.entry.tariff.standard.base)
    }

    /// Every name `model` sent to `provider` is, by the same rules
    /// [`PriceBook::resolve`] uses to find its entry: the name as sent,
    /// its dated-snapshot and Bedrock profile/version forms (for `provider`
    /// and each provider whose list prices it bills at), and the model each
    /// of those is an alias of. A budget narrowed to a model counts a usage
    /// when the budget's model is one of these (`ledger::budget`); unlike
    /// pricing, a snapshot listed with a price of its own is still a form
    /// of its base model.
    pub fn model_names(&self, provider: &str, model: &str) -> Vec<String> {
        let mut names = vec![model.to_owned()];
        for canonical in resolve::list_providers(provider) {
            for form in resolve::name_forms(&canonical, model) {
                if let Some(target) = self.aliases.get(&(canonical.clone(), form.clone())) {
                    if !names.contains(target) {
                        names.push(target.clone());
                    }
                }
                if !names.contains(&form) {
                    names.push(form);
                }
            }
        }
        names
    }

    /// The entry that prices `model` at `provider` (or a provider whose
    /// list prices it bills at) at `at`. The most specific listed name
    /// decides: a snapshot listed with its own price is never priced as
    /// its base model, and a listed name with no entry in force at `at`
    /// is unpriced rather than priced as something else.
    pub fn resolve(
        &self,
        provider: &str,
        model: &str,
        at: DateTime<Utc>,
    ) -> Result<Resolution<'_>, UnpricedReason> {
        self.listing(provider, model).at(at)
    }

    /// Rates one request: its list cost from the entry in force, the
    /// tenant's cost under its negotiated terms, and how both were made.
    pub fn rate(&self, request: &RatingRequest<'_>) -> Rating {
        let resolution = self.resolve(request.provider, request.model, request.at);
        self.rate_resolved(request, resolution)
    }

    /// [`PriceBook::rate`] given what [`PriceBook::resolve`] gives for the
    /// request's provider, model and time.
    fn rate_resolved(
        &self,
        request: &RatingRequest<'_>,
        resolution: Result<Resolution<'_>, UnpricedReason>,
    ) -> Rating {
        let quantities = request.quantities;
        let tier = request.service_tier;
        let list: Result<Priced, UnpricedReason> = resolution
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| price_tariff(&r.entry.tariff, r.defaults, tier, quantities));

        // A caller-supplied cost is the cost; tenant terms play no part.
        let rule = match request.supplied_cost {
            Some(_) => None,
            None => self.tenant_rule(request, resolution.as_ref().ok()),
        };
        let contracted = rule.map(|rule| match &rule.terms {
            TenantTerms::Multiplier(m) => list.clone().and_then(|priced| {
                let usd = priced.usd.checked_mul(*m).ok_or(UnpricedReason::Overflow)?;
                Ok(Priced { usd, ..priced })
            }),
            TenantTerms::Tariff(tariff) => {
                let defaults = resolution
                    .as_ref()
                    .ok()
                    .and_then(|r| r.defaults)
                    .or_else(|| {
                        resolve::list_providers(request.provider)
                            .iter()
                            .find_map(|p| self.providers.get(p))
                    });
                price_tariff(tariff, defaults, tier, quantities)
            }
        });
        let charged = contracted.clone().unwrap_or_else(|| list.clone());

        let (entry_id, source, matched_by) = match &resolution {
            Ok(r) => (
                Some(r.entry.id()),
                r.entry
                    .source
                    .clone()
                    .or_else(|| r.defaults.and_then(|d| d.source.clone())),
                Some(r.matched_by),
            ),
            Err(_) => (None, None, None),
        };
        let (status, cost, unpriced) = match (request.supplied_cost, &charged) {
            (Some(usd), _) => (PricingStatus::Provided, usd, None),
            (None, Ok(priced)) => (PricingStatus::Priced, round_cost(priced.usd), None),
            (None, Err(reason)) => (PricingStatus::Unpriced, Decimal::ZERO, Some(reason.clone())),
        };
        let tier_rule = charged
            .as_ref()
            .map(|p| p.tier_rule.clone())
            .unwrap_or_default();
        let mut provenance = Provenance {
            book_version: self.version.clone(),
            entry_id,
            source,
            matched_by,
            service_tier: tier,
            long_context_above: charged.as_ref().ok().and_then(|p| p.long_context_above),
            tenant_rule: rule.map(TenantRule::id),
            tenant_multiplier: rule.and_then(|r| match r.terms {
                TenantTerms::Multiplier(m) => Some(m),
                TenantTerms::Tariff(_) => None,
            }),
            contract: rule.and_then(|r| r.contract.clone()),
            unpriced,
            unpriced_tokens: quantities
                .unpriced
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(component, n)| (component.clone(), *n))
                .collect(),
            rule: String::new(),
        };
        provenance.rule = describe(&provenance, request.supplied_cost.is_some(), &tier_rule);
        Rating {
            status,
            cost,
            list_cost: list.ok().map(|priced| round_cost(priced.usd)),
            provenance,
        }
    }

    /// The tenant rule in force for this request. Rules name the provider
    /// as the usage does and a model by any name it is known by (as sent,
    /// its snapshot forms, or the listed model it resolved to).
    fn tenant_rule(
        &self,
        request: &RatingRequest<'_>,
        resolution: Option<&Resolution<'_>>,
    ) -> Option<&TenantRule> {
        // Most tenants have no terms: say so before listing every name the
        // model is known by, which cost as much as resolving it.
        if !self
            .tenants
            .iter()
            .any(|rule| rule.tenant == request.tenant)
        {
            return None;
        }
        let provider = request.provider.to_ascii_lowercase();
        let mut names: Vec<String> = resolve::list_providers(&provider)
            .iter()
            .flat_map(|canonical| resolve::name_forms(canonical, request.model))
            .collect();
        names.extend(resolution.map(|r| r.entry.model.clone()));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        tenant::applicable(&self.tenants, request.tenant, &provider, &names, request.at)
    }

    /// The cost of one event: its own `estimated_cost` when given, else the
    /// book's price at `created_at` (the tenant's terms applied), else zero
    /// marked unpriced.
    pub fn cost(&self, event: &UsageEvent) -> Cost {
        Cost::from(&self.rate_event(event))
    }

    /// [`PriceBook::rate`] for a usage event (see [`event_usage`]); an
    /// event without a service tier is standard.
    pub fn rate_event(&self, event: &UsageEvent) -> Rating {
        self.rate_event_listed(event, &self.listing(&event.provider, &event.model))
    }

    /// [`PriceBook::rate_event`] with the book's [`Listing`] of the event's
    /// provider and model already found (by a caller rating many events of
    /// the same few models).
    pub fn rate_event_listed(&self, event: &UsageEvent, listing: &Listing<'_>) -> Rating {
        let quantities = event_usage::quantities(event);
        let request = RatingRequest {
            tenant: &event.tenant_id,
            provider: &event.provider,
            model: &event.model,
            at: event.created_at,
            service_tier: event.service_tier.unwrap_or_default(),
            quantities: &quantities,
            supplied_cost: event.estimated_cost,
        };
        self.rate_resolved(&request, listing.at(event.created_at))
    }
}

fn entry_error(index: usize, entry: &PriceEntry, message: String) -> PriceBookError {
    PriceBookError::Entry {
        index,
        provider: entry.provider.clone(),
        model: entry.model.clone(),
        message,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
