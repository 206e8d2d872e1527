//! The GenAI semantic conventions' attribute names, current and older, and
//! the token semantics each one carries.
//!
//! Token semantics: the current conventions say
//! `gen_ai.usage.cache_read.input_tokens` and
//! `gen_ai.usage.cache_creation.input_tokens` SHOULD be included in
//! `gen_ai.usage.input_tokens`, and `gen_ai.usage.reasoning.output_tokens`
//! in `gen_ai.usage.output_tokens`, which is tokenledger's own convention.
//! The older names (`gen_ai.usage.prompt_tokens`, the underscore cache
//! names of OpenLLMetry's Anthropic instrumentation, which adds the cache
//! counts into the prompt count) carry the same meaning. A span whose
//! cache counts exceed its input count (an instrumentation that copied
//! Anthropic's raw `input_tokens`, which excludes the cache) evidently
//! reported input without them, and the cache counts are added; likewise
//! reasoning tokens above the output count (Gemini's thoughts) are added to
//! the output.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

use crate::pricebook::ServiceTier;

const INPUT: &[&str] = &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"];
const OUTPUT: &[&str] = &[
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
];
const CACHE_READ: &[&str] = &[
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
];
const CACHE_WRITE: &[&str] = &[
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
];
/// Anthropic's split of cache writes by lifetime (`usage.cache_creation`),
/// flattened as instrumentations record nested usage objects. Both counts
/// are inside the cache-write total.
const CACHE_WRITE_1H: &[&str] = &[
    "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens",
    "anthropic.usage.cache_creation.ephemeral_1h_input_tokens",
];
const CACHE_WRITE_5M: &[&str] = &[
    "gen_ai.usage.cache_creation.ephemeral_5m_input_tokens",
    "anthropic.usage.cache_creation.ephemeral_5m_input_tokens",
];
/// The tier that served the call, then the one asked for (`auto` asked
/// for is standard unless the response says otherwise).
const SERVICE_TIER: &[&str] = &[
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "anthropic.response.service_tier",
    "openai.request.service_tier",
    "gen_ai.openai.request.service_tier",
];
const REASONING: &[&str] = &[
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.output_tokens.reasoning",
];

/// The value of attribute `key`, if present.
pub(super) fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
}

/// A scalar attribute as text (labels, tenant, model, ids).
pub(super) fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        Value::BoolValue(flag) => Some(flag.to_string()),
        Value::DoubleValue(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A token count: an integer, an integral double or a decimal string
/// (instrumentations disagree), non-negative and within 32 bits.
fn count(key: &str, value: &AnyValue) -> Result<u32, String> {
    let number: Option<i128> = match value.value.as_ref() {
        Some(Value::IntValue(number)) => Some(i128::from(*number)),
        Some(Value::DoubleValue(number)) if number.fract() == 0.0 && number.is_finite() => {
            // Bounded by the range check below; the cast saturates.
            Some(*number as i128)
        }
        Some(Value::StringValue(text)) => text.trim().parse::<i128>().ok(),
        _ => None,
    };
    let number = number.ok_or_else(|| format!("{key} is not a whole number of tokens"))?;
    u32::try_from(number).map_err(|_| format!("{key} must be between 0 and {}", u32::MAX))
}

/// The first of `keys` present on the span, as a token count.
fn first_count(attributes: &[KeyValue], keys: &[&str]) -> Result<Option<u32>, String> {
    for key in keys {
        if let Some(value) = find(attributes, key) {
            return count(key, value).map(Some);
        }
    }
    Ok(None)
}

/// A span's usage in tokenledger's conventions (input includes the cache
/// counts, output includes reasoning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u32,
    pub output: u32,
    pub cache_read: u32,
    /// All cache writes, 1-hour ones included.
    pub cache_write: u32,
    /// Cache writes with a 1-hour lifetime.
    pub cache_write_1h: u32,
    pub reasoning: u32,
}

impl Tokens {
    /// `Ok(None)` when the span reports neither input nor output tokens.
    pub fn read(attributes: &[KeyValue]) -> Result<Option<Self>, String> {
        let input = first_count(attributes, INPUT)?;
        let output = first_count(attributes, OUTPUT)?;
        if input.is_none() && output.is_none() {
            return Ok(None);
        }
        let cache_read = first_count(attributes, CACHE_READ)?.unwrap_or(0);
        let cache_write_1h = first_count(attributes, CACHE_WRITE_1H)?.unwrap_or(0);
        let split = first_count(attributes, CACHE_WRITE_5M)?
            .map(|five_minutes| {
                five_minutes
                    .checked_add(cache_write_1h)
                    .ok_or("cache write token counts overflow a 32-bit count")
            })
            .transpose()?;
        let cache_write = match (first_count(attributes, CACHE_WRITE)?, split) {
            (Some(total), Some(split)) if total != split => {
                return Err(format!(
                    "cache writes by lifetime ({split}) do not add up to the cache writes reported ({total})"
                ))
            }
            (Some(total), _) if total < cache_write_1h => {
                return Err(format!(
                    "1-hour cache writes ({cache_write_1h}) exceed the cache writes reported ({total})"
                ))
            }
            (Some(total), _) => total,
            (None, Some(split)) => split,
            (None, None) => cache_write_1h,
        };
        let reasoning = first_count(attributes, REASONING)?.unwrap_or(0);
        let mut input = input.unwrap_or(0);
        let mut output = output.unwrap_or(0);
        let cached = cache_read
            .checked_add(cache_write)
            .ok_or("cache token counts overflow a 32-bit count")?;
        if cached > input {
            input = input
                .checked_add(cached)
                .ok_or("input tokens overflow a 32-bit count")?;
        }
        if reasoning > output {
            output = output
                .checked_add(reasoning)
                .ok_or("output tokens overflow a 32-bit count")?;
        }
        Ok(Some(Self {
            input,
            output,
            cache_read,
            cache_write,
            cache_write_1h,
            reasoning,
        }))
    }
}

/// The service tier an instrumentation reported; None for standard (so
/// the event reads as one without a tier). A tier tokenledger does not know
/// refuses the span: pricing it at standard would misstate its cost.
pub(super) fn service_tier(attributes: &[KeyValue]) -> Result<Option<ServiceTier>, String> {
    let Some((key, value)) = SERVICE_TIER
        .iter()
        .find_map(|key| Some((*key, text(find(attributes, key)?)?)))
    else {
        return Ok(None);
    };
    match value.parse::<ServiceTier>() {
        Ok(ServiceTier::Standard) => Ok(None),
        Ok(tier) => Ok(Some(tier)),
        Err(error) => Err(format!("{key}: {error}")),
    }
}

/// tokenledger's provider for a `gen_ai.provider.name` / `gen_ai.system`
/// value. Vertex AI serves Anthropic's models as well as Google's, so the
/// model tells which list prices apply there.
pub fn provider_name(system: &str, model: &str) -> String {
    let system = system.trim().to_ascii_lowercase();
    let mapped = match system.as_str() {
        "aws.bedrock" | "aws_bedrock" => "bedrock",
        "gcp.vertex_ai" | "vertex_ai" | "gcp.gen_ai" if model.starts_with("claude") => "anthropic",
        "gcp.vertex_ai" | "vertex_ai" | "gcp.gen_ai" | "gcp.gemini" | "gemini" => "google",
        "azure.ai.openai" | "az.ai.openai" => "azure",
        "mistral_ai" => "mistral",
        "x_ai" => "xai",
        other => other,
    };
    mapped.to_owned()
}
