//! The price file as written in TOML, and its checks. The same shape serves
//! the built-in book, an operator's file laid over it, and the output of
//! the LiteLLM catalog converter.
//!
//! ```toml
//! [[provider]]                      # defaults for every model of a provider
//! name = "anthropic"
//! source = "https://…/pricing"
//! service_tier.batch = { multiplier = "0.5" }
//! per_1k_calls = { web_search = "10" }
//!
//! [[price]]                         # one model's list price from a date
//! provider = "anthropic"
//! model = "claude-sonnet-4-5"
//! aliases = ["claude-sonnet-4-5-latest"]
//! effective_from = "2025-09-29T00:00:00Z"
//! effective_until = "2027-01-01T00:00:00Z"   # optional, exclusive
//! source = "https://…/pricing"
//! input = "3"                       # USD per million tokens
//! output = "15"
//! cache_read = "0.30"               # alias: cached_input
//! cache_write_5m = "3.75"           # alias: cache_write
//! cache_write_1h = "6"
//! reasoning = "15"
//! [[price.long_context]]            # every token of a longer request
//! above_input_tokens = 200000
//! input = "6"
//! output = "22.50"
//! [price.service_tier.priority]     # a multiplier or rates of its own
//! input = "5"
//! output = "20"
//!
//! [[tenant]]                        # a tenant's negotiated terms
//! tenant = "acme"
//! provider = "openai"               # default "*"
//! model = "*"                       # default "*"
//! effective_from = "2026-01-01T00:00:00Z"
//! contract = "MSA-2026-014"
//! multiplier = "0.85"               # or rates, as in [[price]]
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::entry::{
    ContextTier, Effective, Price, PriceEntry, ProviderDefaults, RateCard, ServiceTier, Tariff,
    TierPricing,
};
use super::tenant::{TenantRule, TenantTerms};
use super::PriceBookError;

/// A rate above this per million tokens is surely a unit mistake (a price
/// per token or per thousand typed as per million).
const MAX_RATE: Decimal = Decimal::from_parts(100_000, 0, 0, false, 0);
/// A service-tier or tenant multiplier above this is surely a typo.
const MAX_MULTIPLIER: Decimal = Decimal::from_parts(100, 0, 0, false, 0);

/// A USD amount written as a string, so no float ever touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Usd(#[serde(with = "rust_decimal::serde::str")] pub Decimal);

macro_rules! with_rates {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub input: Option<Decimal>,
            #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub output: Option<Decimal>,
            #[serde(default, alias = "cached_input", with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub cache_read: Option<Decimal>,
            #[serde(default, alias = "cache_write", with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub cache_write_5m: Option<Decimal>,
            #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub cache_write_1h: Option<Decimal>,
            #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
            pub reasoning: Option<Decimal>,
        }

        impl $name {
            // Only the lines that may hold a multiplier instead ask this.
            #[allow(dead_code)]
            fn has_rates(&self) -> bool {
                [self.input, self.output, self.cache_read, self.cache_write_5m,
                 self.cache_write_1h, self.reasoning].iter().any(Option::is_some)
            }

            /// The rates of this line; input and output must be given.
            fn price(&self) -> Result<Price, String> {
                let (Some(input), Some(output)) = (self.input, self.output) else {
                    return Err("input and output prices are required".into());
                };
                let price = Price {
                    input,
                    output,
                    cache_read: self.cache_read,
                    cache_write_5m: self.cache_write_5m,
                    cache_write_1h: self.cache_write_1h,
                    reasoning: self.reasoning,
                };
                check_rates(&price)?;
                Ok(price)
            }
        }
    };
}

with_rates! {
    /// Rates that apply above a prompt length.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ContextTierLine {
        pub above_input_tokens: u64,
    }
}

with_rates! {
    /// A service tier: `multiplier`, or rates (and tiers) of its own.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceTierLine {
        #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
        pub multiplier: Option<Decimal>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub long_context: Vec<ContextTierLine>,
    }
}

/// `[[provider]]`: defaults for every model of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderLine {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_1k_calls: BTreeMap<String, Usd>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_tier: BTreeMap<String, ServiceTierLine>,
}

with_rates! {
    /// `[[price]]`: one model's list price from a date.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PriceLine {
        pub provider: String,
        pub model: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub aliases: Vec<String>,
        pub effective_from: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub effective_until: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub per_1k_calls: BTreeMap<String, Usd>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub long_context: Vec<ContextTierLine>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub service_tier: BTreeMap<String, ServiceTierLine>,
    }
}

with_rates! {
    /// `[[tenant]]`: a tenant's negotiated terms, a multiplier of the list
    /// price or rates that replace it.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TenantLine {
        pub tenant: String,
        #[serde(default = "any")]
        pub provider: String,
        #[serde(default = "any")]
        pub model: String,
        pub effective_from: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub effective_until: Option<DateTime<Utc>>,
        /// The agreement these terms come from, for provenance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub contract: Option<String>,
        #[serde(default, with = "rust_decimal::serde::str_option", skip_serializing_if = "Option::is_none")]
        pub multiplier: Option<Decimal>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub per_1k_calls: BTreeMap<String, Usd>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub long_context: Vec<ContextTierLine>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub service_tier: BTreeMap<String, ServiceTierLine>,
    }
}

fn any() -> String {
    "*".to_owned()
}

/// A whole price file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provider: Vec<ProviderLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub price: Vec<PriceLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant: Vec<TenantLine>,
}

impl PriceFile {
    pub fn parse(text: &str) -> Result<Self, PriceBookError> {
        Ok(toml::from_str(text)?)
    }

    pub fn to_toml(&self) -> Result<String, PriceBookError> {
        Ok(toml::to_string(self)?)
    }
}

/// The checked content of a file, ready to become a book.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub providers: BTreeMap<String, ProviderDefaults>,
    pub entries: Vec<PriceEntry>,
    pub tenants: Vec<TenantRule>,
}

impl PriceFile {
    pub(crate) fn check(self) -> Result<Checked, PriceBookError> {
        let mut checked = Checked::default();
        for line in self.provider {
            let name = line.name.to_ascii_lowercase();
            let fail = |message: String| PriceBookError::Provider {
                name: name.clone(),
                message,
            };
            if name.is_empty() {
                return Err(fail("name must not be empty".into()));
            }
            let defaults = ProviderDefaults {
                source: line.source,
                service_tiers: service_tiers(&line.service_tier).map_err(fail)?,
                per_1k_calls: call_rates(&line.per_1k_calls).map_err(fail)?,
            };
            if checked.providers.insert(name.clone(), defaults).is_some() {
                return Err(fail("listed twice".into()));
            }
        }
        for (index, line) in self.price.into_iter().enumerate() {
            let provider = line.provider.to_ascii_lowercase();
            let fail = |message: String| PriceBookError::Entry {
                index,
                provider: provider.clone(),
                model: line.model.clone(),
                message,
            };
            if provider.is_empty() || line.model.is_empty() {
                return Err(fail("provider and model must not be empty".into()));
            }
            let effective = effective(line.effective_from, line.effective_until).map_err(fail)?;
            let tariff = Tariff {
                standard: rate_card(line.price(), &line.long_context).map_err(fail)?,
                service_tiers: service_tiers(&line.service_tier).map_err(fail)?,
                per_1k_calls: call_rates(&line.per_1k_calls).map_err(fail)?,
            };
            if line
                .aliases
                .iter()
                .any(|alias| alias.is_empty() || *alias == line.model)
            {
                return Err(fail(
                    "an alias must be a non-empty name other than the model".into(),
                ));
            }
            checked.entries.push(PriceEntry {
                provider,
                model: line.model,
                aliases: line.aliases,
                effective,
                source: line.source,
                tariff,
            });
        }
        for (index, line) in self.tenant.into_iter().enumerate() {
            let fail = |message: String| PriceBookError::Tenant {
                index,
                tenant: line.tenant.clone(),
                message,
            };
            if line.tenant.is_empty() || line.provider.is_empty() || line.model.is_empty() {
                return Err(fail("tenant, provider and model must not be empty".into()));
            }
            let effective = effective(line.effective_from, line.effective_until).map_err(fail)?;
            let terms = match line.multiplier {
                Some(multiplier) => {
                    if line.has_rates()
                        || !line.long_context.is_empty()
                        || !line.service_tier.is_empty()
                        || !line.per_1k_calls.is_empty()
                    {
                        return Err(fail("give a multiplier or rates, not both".into()));
                    }
                    check_multiplier(multiplier).map_err(fail)?;
                    TenantTerms::Multiplier(multiplier)
                }
                None => TenantTerms::Tariff(Tariff {
                    standard: rate_card(line.price(), &line.long_context).map_err(fail)?,
                    service_tiers: service_tiers(&line.service_tier).map_err(fail)?,
                    per_1k_calls: call_rates(&line.per_1k_calls).map_err(fail)?,
                }),
            };
            checked.tenants.push(TenantRule {
                tenant: line.tenant,
                provider: line.provider.to_ascii_lowercase(),
                model: line.model,
                effective,
                contract: line.contract,
                terms,
            });
        }
        Ok(checked)
    }
}

fn effective(from: DateTime<Utc>, until: Option<DateTime<Utc>>) -> Result<Effective, String> {
    if until.is_some_and(|until| until <= from) {
        return Err("effective_until must be after effective_from".into());
    }
    Ok(Effective { from, until })
}

fn check_rates(price: &Price) -> Result<(), String> {
    if price.rates().any(|rate| rate.is_sign_negative()) {
        return Err("prices must not be negative".into());
    }
    if price.rates().any(|rate| rate > MAX_RATE) {
        return Err(
            "prices are per million tokens; above $100,000 is surely a unit mistake".into(),
        );
    }
    Ok(())
}

fn check_multiplier(multiplier: Decimal) -> Result<(), String> {
    if multiplier.is_sign_negative() || multiplier > MAX_MULTIPLIER {
        return Err(format!("multiplier {multiplier} is outside 0..=100"));
    }
    Ok(())
}

fn rate_card(base: Result<Price, String>, tiers: &[ContextTierLine]) -> Result<RateCard, String> {
    let base = base?;
    let mut long_context = tiers
        .iter()
        .map(|tier| {
            if tier.above_input_tokens == 0 {
                return Err("a long-context tier needs above_input_tokens > 0".to_owned());
            }
            Ok(ContextTier {
                above_input_tokens: tier.above_input_tokens,
                price: tier.price()?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    long_context.sort_by_key(|tier| tier.above_input_tokens);
    if long_context
        .windows(2)
        .any(|pair| pair[0].above_input_tokens == pair[1].above_input_tokens)
    {
        return Err("two long-context tiers share a threshold".into());
    }
    Ok(RateCard { base, long_context })
}

fn service_tiers(
    lines: &BTreeMap<String, ServiceTierLine>,
) -> Result<BTreeMap<ServiceTier, TierPricing>, String> {
    let mut tiers = BTreeMap::new();
    for (name, line) in lines {
        let tier: ServiceTier = name.parse().map_err(|err| format!("{err}"))?;
        if tier == ServiceTier::Standard {
            return Err("the standard tier is the entry's own rates".into());
        }
        let pricing = match line.multiplier {
            Some(multiplier) if !line.has_rates() && line.long_context.is_empty() => {
                check_multiplier(multiplier)?;
                TierPricing::Multiplier(multiplier)
            }
            Some(_) => {
                return Err(format!(
                    "service tier {tier}: a multiplier or rates, not both"
                ))
            }
            None => TierPricing::Rates(
                rate_card(line.price(), &line.long_context)
                    .map_err(|message| format!("service tier {tier}: {message}"))?,
            ),
        };
        if tiers.insert(tier, pricing).is_some() {
            return Err(format!("service tier {tier} listed twice"));
        }
    }
    Ok(tiers)
}

fn call_rates(lines: &BTreeMap<String, Usd>) -> Result<BTreeMap<String, Decimal>, String> {
    lines
        .iter()
        .map(|(kind, Usd(rate))| {
            if kind.is_empty() || rate.is_sign_negative() || *rate > MAX_RATE {
                return Err(format!(
                    "per_1k_calls {kind:?} = {rate} is not a valid price"
                ));
            }
            Ok((kind.clone(), *rate))
        })
        .collect()
}
