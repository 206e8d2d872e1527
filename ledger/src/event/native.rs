//! An event's provider-native usage (`usage` + `usage_format`) mapped into
//! the event's own token fields by [`crate::usage_format`], so that clients
//! send what the provider returned and never translate it by hand.
//!
//! The mapping fills the fields the client left out. A field the client
//! did send must agree with the mapping: two counts for one thing is a
//! contradiction, and the request is refused naming the field rather than
//! one of them being picked silently. The usage object itself is not kept:
//! the event carries the mapped counts, which is all rating needs.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::rules::{check_unpriced, type_name};
use super::{FieldError, MAX_CALLS_PER_KIND};
use crate::pricebook::{ServiceTier, UsageQuantities};
use crate::usage_format::{self, UsageFormat};

/// Token counts, service tier and calls read from a native usage object,
/// in the event's convention (prompt includes cache reads and writes,
/// completion includes reasoning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mapped {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_prompt_tokens: u32,
    pub cache_write_tokens: u32,
    pub cache_write_1h_tokens: u32,
    pub reasoning_tokens: u32,
    pub service_tier: Option<ServiceTier>,
    pub calls: BTreeMap<String, u32>,
    pub unpriced_tokens: BTreeMap<String, u32>,
}

/// The names the event accepts for each format: tokenledger's own and the
/// short ones (`openai.chat`, `gemini`).
pub(super) fn parse_format(value: &Value) -> Result<UsageFormat, String> {
    let Value::String(text) = value else {
        return Err(format!("must be a string, got {}", type_name(value)));
    };
    match text.as_str() {
        "openai.chat" => Ok(UsageFormat::OpenAiChatCompletions),
        "gemini" => Ok(UsageFormat::GeminiGenerateContent),
        other => other.parse().map_err(|_| {
            "must be one of openai.chat, openai.responses, anthropic.messages, gemini, bedrock.converse"
                .to_string()
        }),
    }
}

/// Reads `usage` and `usage_format` from the request object: `None` when
/// neither is given; errors recorded for either field otherwise.
pub(super) fn read(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Mapped> {
    let present = |name: &str| object.get(name).filter(|v| !v.is_null());
    let (usage, format) = match (present("usage"), present("usage_format")) {
        (None, None) => return None,
        (Some(_), None) => {
            errors.push(FieldError::new(
                "usage_format",
                "is required when usage is given",
            ));
            return None;
        }
        (None, Some(_)) => {
            errors.push(FieldError::new(
                "usage",
                "is required when usage_format is given",
            ));
            return None;
        }
        (Some(usage), Some(format)) => (usage, format),
    };
    let format = match parse_format(format) {
        Ok(format) => format,
        Err(message) => {
            errors.push(FieldError::new("usage_format", message));
            return None;
        }
    };
    match map(format, usage) {
        Ok(mapped) => Some(mapped),
        Err(message) => {
            errors.push(FieldError::new("usage", message));
            None
        }
    }
}

fn map(format: UsageFormat, usage: &Value) -> Result<Mapped, String> {
    let q: UsageQuantities =
        usage_format::quantities(format, usage).map_err(|err| err.to_string())?;
    let count = |name: &str, value: u64| {
        u32::try_from(value).map_err(|_| format!("{name} ({value}) exceeds a 32-bit count"))
    };
    // Anthropic reports the tier inside the usage object; the others put it
    // beside `usage` in the response, where the client sends it as the
    // event's own `service_tier`.
    let service_tier = match (format, usage.get("service_tier")) {
        (UsageFormat::AnthropicMessages, Some(Value::String(tier))) => Some(
            tier.parse::<ServiceTier>()
                .map_err(|err| format!("service_tier: {err}"))?,
        ),
        _ => None,
    };
    let mut calls = BTreeMap::new();
    for (kind, n) in &q.calls {
        let n = count(kind, *n)?;
        if n > MAX_CALLS_PER_KIND {
            return Err(format!("{kind} ({n}) exceeds {MAX_CALLS_PER_KIND} calls"));
        }
        calls.insert(kind.clone(), n);
    }
    let mut unpriced_tokens = BTreeMap::new();
    for (component, n) in &q.unpriced {
        unpriced_tokens.insert(component.clone(), count(component, *n)?);
    }
    check_unpriced(&unpriced_tokens)?;
    Ok(Mapped {
        prompt_tokens: count("prompt tokens", q.prompt_tokens())?,
        completion_tokens: count("completion tokens", q.completion_tokens())?,
        cached_prompt_tokens: count("cache read tokens", q.cache_read)?,
        cache_write_tokens: count("5-minute cache write tokens", q.cache_write_5m)?,
        cache_write_1h_tokens: count("1-hour cache write tokens", q.cache_write_1h)?,
        reasoning_tokens: count("reasoning tokens", q.reasoning)?,
        service_tier,
        calls,
        unpriced_tokens,
    })
}

/// A field the client sent beside `usage` must say what `usage` says.
pub(super) fn agree<T: PartialEq + std::fmt::Debug>(
    field: &str,
    sent: Option<T>,
    mapped: T,
    errors: &mut Vec<FieldError>,
) -> T {
    match sent {
        Some(sent) if sent != mapped => {
            errors.push(FieldError::new(
                field,
                format!("is {sent:?}, but usage says {mapped:?}; send one or make them agree"),
            ));
            sent
        }
        _ => mapped,
    }
}

/// Calls sent beside `usage`: every kind both name must have one count.
pub(super) fn merge_calls(
    sent: BTreeMap<String, u32>,
    mapped: BTreeMap<String, u32>,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, u32> {
    let mut merged = sent;
    for (kind, count) in mapped {
        match merged.get(&kind) {
            Some(sent) if *sent != count => errors.push(FieldError::new(
                "calls",
                format!("{kind:?} is {sent}, but usage says {count}"),
            )),
            _ => {
                merged.insert(kind, count);
            }
        }
    }
    merged
}
