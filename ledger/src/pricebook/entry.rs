//! One price of the book: the rates of every billing dimension, the
//! long-context tiers and service tiers that change them, per-call charges,
//! and the dates and source that make the price auditable.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// USD per million tokens of each kind. A kind left out is billed as the
/// provider bills it when it publishes no separate price: cache reads and
/// 5-minute cache writes at the input rate, 1-hour cache writes at the
/// 5-minute write rate, reasoning at the output rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Price {
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Option<Decimal>,
    pub cache_write_5m: Option<Decimal>,
    pub cache_write_1h: Option<Decimal>,
    pub reasoning: Option<Decimal>,
}

impl Price {
    pub fn cache_read_rate(&self) -> Decimal {
        self.cache_read.unwrap_or(self.input)
    }

    pub fn cache_write_5m_rate(&self) -> Decimal {
        self.cache_write_5m.unwrap_or(self.input)
    }

    pub fn cache_write_1h_rate(&self) -> Decimal {
        self.cache_write_1h
            .unwrap_or_else(|| self.cache_write_5m_rate())
    }

    pub fn reasoning_rate(&self) -> Decimal {
        self.reasoning.unwrap_or(self.output)
    }

    /// Every rate that is set, for validation.
    pub(crate) fn rates(&self) -> impl Iterator<Item = Decimal> {
        [
            Some(self.input),
            Some(self.output),
            self.cache_read,
            self.cache_write_5m,
            self.cache_write_1h,
            self.reasoning,
        ]
        .into_iter()
        .flatten()
    }
}

/// The rates that apply once a request's prompt is longer than
/// `above_input_tokens`. Anthropic and Google bill *every* token of such a
/// request (input, cache, output) at these rates, not only the tokens past
/// the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextTier {
    pub above_input_tokens: u64,
    pub price: Price,
}

/// Base rates and the long-context tiers above them (sorted by threshold).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateCard {
    pub base: Price,
    pub long_context: Vec<ContextTier>,
}

impl RateCard {
    /// The rates for a request whose prompt (uncached input, cache reads
    /// and cache writes together) is `prompt_tokens` long, and the
    /// threshold it crossed, if any.
    pub fn for_prompt(&self, prompt_tokens: u64) -> (&Price, Option<u64>) {
        self.long_context
            .iter()
            .rev()
            .find(|tier| prompt_tokens > tier.above_input_tokens)
            .map_or((&self.base, None), |tier| {
                (&tier.price, Some(tier.above_input_tokens))
            })
    }
}

/// How a provider sells capacity besides its standard tier.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    /// On-demand, the list price.
    #[default]
    Standard,
    /// Asynchronous batch jobs (OpenAI Batch, Anthropic Message Batches,
    /// Gemini Batch Mode, Bedrock batch inference).
    Batch,
    /// Slower, interruptible processing at a discount (OpenAI flex, Gemini
    /// flex).
    Flex,
    /// Faster, reserved processing at a premium (OpenAI priority, Bedrock
    /// priority).
    Priority,
}

impl ServiceTier {
    pub const ALL: [ServiceTier; 4] = [Self::Standard, Self::Batch, Self::Flex, Self::Priority];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Batch => "batch",
            Self::Flex => "flex",
            Self::Priority => "priority",
        }
    }
}

impl fmt::Display for ServiceTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service tier {0:?}: expected standard, batch, flex or priority")]
pub struct UnknownServiceTier(pub String);

impl FromStr for ServiceTier {
    type Err = UnknownServiceTier;

    /// Accepts the names providers put in their responses too: OpenAI's
    /// `default`/`auto` are the standard tier, `scale` its reserved tier.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "standard" | "default" | "auto" | "on_demand" | "on-demand" => Ok(Self::Standard),
            "batch" | "batches" => Ok(Self::Batch),
            "flex" => Ok(Self::Flex),
            "priority" | "scale" => Ok(Self::Priority),
            _ => Err(UnknownServiceTier(text.to_owned())),
        }
    }
}

/// The price of a non-standard service tier: a multiplier of the standard
/// rates (Anthropic's and Google's batch: 0.5, every dimension) or rates of
/// its own (OpenAI's priority and flex tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierPricing {
    Multiplier(Decimal),
    Rates(RateCard),
}

/// Everything needed to price one request of one model: standard rates,
/// service tiers and per-call charges. A list entry and a tenant's
/// negotiated override share this shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tariff {
    pub standard: RateCard,
    pub service_tiers: BTreeMap<ServiceTier, TierPricing>,
    /// USD per 1,000 calls of a server-side tool, by the name the usage
    /// counts it under (`web_search`).
    pub per_1k_calls: BTreeMap<String, Decimal>,
}

/// Defaults a provider applies to all its models, so the book does not
/// repeat "batch is half price" on every line. An entry's own service
/// tiers and call charges take precedence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProviderDefaults {
    pub source: Option<String>,
    pub service_tiers: BTreeMap<ServiceTier, TierPricing>,
    pub per_1k_calls: BTreeMap<String, Decimal>,
}

/// When a price is in force: from `from` (inclusive) until `until`
/// (exclusive) or until the next entry of the same model takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

impl Effective {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && self.until.is_none_or(|until| at < until)
    }
}

/// One line of the list-price book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceEntry {
    /// Lower-case provider name as the book lists it (`openai`, `bedrock`).
    pub provider: String,
    /// The model name as listed, or `*` for every model of the provider.
    pub model: String,
    /// Other names the provider uses for exactly this model and price.
    pub aliases: Vec<String>,
    pub effective: Effective,
    /// Where the price was published (the provider's pricing page).
    pub source: Option<String>,
    pub tariff: Tariff,
}

impl PriceEntry {
    /// A stable key for this entry: provider, model and the first day it
    /// is in force, e.g. `anthropic/claude-sonnet-4-5@2025-09-29`. Unique
    /// in a book, so a stored row can name the price that made its cost.
    pub fn id(&self) -> String {
        entry_id(&self.provider, &self.model, self.effective.from)
    }
}

/// `provider/model@day`, or `@dayTtimeZ` for a price from a time of day.
/// Made for every rated event: written with integer formatting, the same
/// text chrono's `%Y-%m-%d` and `%H:%M:%S` write for years 0–9999 (chrono's
/// format-string interpreter was a quarter of rating an event).
pub(crate) fn entry_id(provider: &str, model: &str, from: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let mut id = String::with_capacity(provider.len() + model.len() + 24);
    let _ = write!(id, "{provider}/{model}@");
    // Writing to a String cannot fail.
    let _ = if (0..=9999).contains(&from.year()) {
        write!(
            id,
            "{:04}-{:02}-{:02}",
            from.year(),
            from.month(),
            from.day()
        )
    } else {
        write!(id, "{}", from.format("%Y-%m-%d"))
    };
    if from.time() != chrono::NaiveTime::MIN {
        // A leap second's `%S` is 60, as `second()` + 1.
        let second = from.second() + u32::from(from.nanosecond() >= 1_000_000_000);
        let _ = write!(
            id,
            "T{:02}:{:02}:{:02}Z",
            from.hour(),
            from.minute(),
            second
        );
    }
    id
}

#[cfg(test)]
mod entry_id_tests {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    /// What `entry_id` wrote before it stopped going through chrono's
    /// format strings.
    fn by_chrono(provider: &str, model: &str, from: DateTime<Utc>) -> String {
        let day = from.format("%Y-%m-%d");
        if from.time() == chrono::NaiveTime::MIN {
            format!("{provider}/{model}@{day}")
        } else {
            format!("{provider}/{model}@{}", from.format("%Y-%m-%dT%H:%M:%SZ"))
        }
    }

    #[test]
    fn the_edges_are_written_as_chrono_writes_them() {
        for from in [
            DateTime::<Utc>::UNIX_EPOCH,
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::from_timestamp(1_735_689_599, 1_500_000_000).expect("a leap second"),
            DateTime::from_timestamp(-62_167_219_200, 0).expect("year 0"),
            DateTime::from_timestamp(253_402_300_800, 0).expect("year 10000"),
        ] {
            assert_eq!(
                super::entry_id("openai", "gpt-4o", from),
                by_chrono("openai", "gpt-4o", from)
            );
        }
    }

    proptest! {
        #[test]
        fn any_start_is_written_as_chrono_writes_it(
            seconds in -300_000_000_000i64..300_000_000_000i64,
            nanos in prop_oneof![Just(0u32), 0u32..2_000_000_000],
            midnight in any::<bool>(),
        ) {
            let seconds = if midnight { seconds - seconds.rem_euclid(86_400) } else { seconds };
            let nanos = if midnight { 0 } else { nanos };
            if let Some(from) = DateTime::from_timestamp(seconds, nanos) {
                prop_assert_eq!(
                    super::entry_id("anthropic", "claude-sonnet-4-5", from),
                    by_chrono("anthropic", "claude-sonnet-4-5", from)
                );
            }
        }
    }
}
