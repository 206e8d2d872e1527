//! What each format's usage object looks like: the keys its providers' SDKs
//! serialise, which of them carry counts, and the details objects inside it.
//! A usage object is recognised before it is read, so that an object of
//! another format, an empty one, or one without a single count is refused
//! instead of being read as a free call, and a count field nobody knows yet
//! is reported rather than ignored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{UsageFormat, UsageFormatError};

struct Shape {
    /// Top-level keys that carry a count; at least one must be present.
    counts: &'static [&'static str],
    /// Top-level keys that carry anything else (details, tier, region).
    others: &'static [&'static str],
    /// Details objects and the count keys known inside each.
    nested: &'static [(&'static str, &'static [&'static str])],
}

const CHAT_PROMPT_DETAILS: &[&str] = &[
    "cached_tokens",
    "cache_write_tokens",
    "audio_tokens",
    "image_tokens",
    "text_tokens",
];
const CHAT_COMPLETION_DETAILS: &[&str] = &[
    "reasoning_tokens",
    "audio_tokens",
    "accepted_prediction_tokens",
    "rejected_prediction_tokens",
    "text_tokens",
];

fn shape(format: UsageFormat) -> Shape {
    match format {
        UsageFormat::OpenAiChatCompletions => Shape {
            counts: &["prompt_tokens", "completion_tokens", "total_tokens"],
            // DeepSeek's OpenAI-compatible API splits the prompt into cache
            // hits and misses as well; both are inside prompt_tokens.
            others: &[
                "prompt_tokens_details",
                "completion_tokens_details",
                "prompt_cache_hit_tokens",
                "prompt_cache_miss_tokens",
            ],
            nested: &[
                ("prompt_tokens_details", CHAT_PROMPT_DETAILS),
                ("completion_tokens_details", CHAT_COMPLETION_DETAILS),
            ],
        },
        UsageFormat::OpenAiResponses => Shape {
            counts: &["input_tokens", "output_tokens", "total_tokens"],
            others: &["input_tokens_details", "output_tokens_details"],
            nested: &[
                (
                    "input_tokens_details",
                    &[
                        "cached_tokens",
                        "cache_write_tokens",
                        "cache_write_tokens_details",
                    ],
                ),
                (
                    "input_tokens_details.cache_write_tokens_details",
                    &["ttl_30m_tokens", "ttl_12h_tokens"],
                ),
                ("output_tokens_details", &["reasoning_tokens"]),
            ],
        },
        UsageFormat::AnthropicMessages => Shape {
            counts: &[
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ],
            others: &[
                "cache_creation",
                "server_tool_use",
                "output_tokens_details",
                "service_tier",
                "inference_geo",
                "speed",
            ],
            nested: &[
                (
                    "cache_creation",
                    &["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"],
                ),
                (
                    "server_tool_use",
                    &["web_search_requests", "web_fetch_requests"],
                ),
                ("output_tokens_details", &["thinking_tokens"]),
            ],
        },
        UsageFormat::GeminiGenerateContent => Shape {
            counts: &[
                "promptTokenCount",
                "candidatesTokenCount",
                "totalTokenCount",
                "cachedContentTokenCount",
                "thoughtsTokenCount",
                "toolUsePromptTokenCount",
                "prompt_token_count",
                "candidates_token_count",
                "total_token_count",
                "cached_content_token_count",
                "thoughts_token_count",
                "tool_use_prompt_token_count",
            ],
            others: &[
                "promptTokensDetails",
                "cacheTokensDetails",
                "candidatesTokensDetails",
                "toolUsePromptTokensDetails",
                "trafficType",
                "prompt_tokens_details",
                "cache_tokens_details",
                "candidates_tokens_details",
                "tool_use_prompt_tokens_details",
                "traffic_type",
            ],
            nested: &[],
        },
        UsageFormat::BedrockConverse => Shape {
            counts: &[
                "inputTokens",
                "outputTokens",
                "totalTokens",
                "cacheReadInputTokens",
                "cacheWriteInputTokens",
            ],
            others: &["cacheDetails"],
            nested: &[],
        },
    }
}

fn knows(shape: &Shape, key: &str) -> bool {
    shape.counts.contains(&key) || shape.others.contains(&key)
}

/// Refuses an object that cannot be `format`'s usage: empty, carrying
/// another format's fields, or without one count.
pub(super) fn recognise(
    format: UsageFormat,
    object: &Map<String, Value>,
) -> Result<(), UsageFormatError> {
    let own = shape(format);
    if object.is_empty() {
        return Err(UsageFormatError::Empty {
            format,
            expected: own.counts.join(", "),
        });
    }
    let foreign: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|key| !knows(&own, key))
        .collect();
    let mut best: Option<(UsageFormat, Vec<&str>)> = None;
    for other in UsageFormat::ALL.into_iter().filter(|f| *f != format) {
        let theirs = shape(other);
        let matched: Vec<&str> = foreign
            .iter()
            .copied()
            .filter(|key| knows(&theirs, key))
            .collect();
        if !matched.is_empty() && best.as_ref().is_none_or(|(_, b)| matched.len() > b.len()) {
            best = Some((other, matched));
        }
    }
    if let Some((looks_like, fields)) = best {
        return Err(UsageFormatError::OtherFormat {
            format,
            looks_like,
            fields: fields.join(", "),
        });
    }
    let has_count = own
        .counts
        .iter()
        .any(|key| object.get(*key).is_some_and(|v| !v.is_null()));
    if !has_count {
        return Err(UsageFormatError::NoCounts {
            format,
            expected: own.counts.join(", "),
        });
    }
    Ok(())
}

/// Integer fields no format knows, by path (`usage.<path>`), with their
/// counts: the top level and inside the details objects a format defines.
/// Zero counts are left out: there is nothing to price.
pub(super) fn unknown_counts(
    format: UsageFormat,
    object: &Map<String, Value>,
) -> BTreeMap<String, u64> {
    let own = shape(format);
    let mut unknown = BTreeMap::new();
    let mut note = |path: String, value: &Value| {
        if let Some(n) = value.as_u64().filter(|n| *n > 0) {
            unknown.insert(format!("usage.{path}"), n);
        }
    };
    for (key, value) in object {
        if !knows(&own, key) {
            note(key.clone(), value);
        }
    }
    for (parent, children) in own.nested {
        let mut inner = Some(object);
        for part in parent.split('.') {
            inner = inner.and_then(|o| o.get(part)).and_then(Value::as_object);
        }
        for (key, value) in inner.into_iter().flatten() {
            if !children.contains(&key.as_str()) {
                note(format!("{parent}.{key}"), value);
            }
        }
    }
    unknown
}
