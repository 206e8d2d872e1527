//! The usage event: one LLM call's token usage, as the gateway accepts it
//! on the HTTP API and as it travels on Kafka to the processor.
//!
//! Validation is written field by field over a `serde_json::Value` rather
//! than through `#[derive(Deserialize)]` so that one bad request reports
//! *every* bad field of *every* bad event at once, instead of serde's first
//! error. The Kafka form is the derived serde form of [`UsageEvent`], which
//! the processor decodes and re-checks with [`UsageEvent::check_invariants`]
//! because anyone with topic access can write to it.
//!
//! Layout:
//! - this file: the event type, its limits and its error types.
//! - `request`: an HTTP request body read into events, field by field.
//! - `strict`: the JSON reader that refuses a key given twice.
//! - `rules`: the invariants every event satisfies wherever it came from.
//! - `kafka`: the event's record value on Kafka.
//! - `hash`: the content hash that tells a retry from a conflicting reuse.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pricebook::ServiceTier;

mod hash;
mod kafka;
mod native;
mod request;
mod rules;
mod strict;

pub use kafka::{KAFKA_SCHEMA, PRODUCER_FIELDS};
pub use request::parse_batch;
pub(crate) use rules::{check_identifier, check_provider, is_invisible, printable, type_name};

pub const MAX_TENANT_ID_CHARS: usize = 255;
pub const MAX_USER_ID_CHARS: usize = 255;
pub const MAX_PROVIDER_CHARS: usize = 100;
pub const MAX_MODEL_CHARS: usize = 100;
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_CHARS: usize = 64;
pub const MAX_LABEL_VALUE_CHARS: usize = 255;

/// The label-key rule, for events, budgets and configured label keys alike:
/// 1-[`MAX_LABEL_KEY_CHARS`] ASCII letters, digits, `-`, `_` or `.`.
pub fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
/// The largest token count of any field. The audit table stores counts as
/// INTEGER; a larger count would be accepted here and refused by the
/// database, so the rules refuse it first, at the gateway and again in the
/// processor. No single call comes near two billion tokens.
pub const MAX_TOKEN_COUNT: u32 = i32::MAX as u32;
/// Kinds of per-call charge one event may count (`web_search`, ...).
pub const MAX_CALL_KINDS: usize = 8;
pub const MAX_CALL_KIND_CHARS: usize = 64;
/// Calls of one kind in one LLM request; providers cap server-side tool
/// use per request far below this, so more is a unit mistake.
pub const MAX_CALLS_PER_KIND: u32 = 100_000;
/// Unpriced token components one event may count; a usage object with more
/// count fields nobody knows is not one a provider sent.
pub const MAX_UNPRICED_COMPONENTS: usize = 8;
pub const MAX_UNPRICED_COMPONENT_CHARS: usize = 80;
/// No single LLM call costs a million dollars; anything above is a unit
/// mistake (micro-dollars sent as dollars) and would poison every rollup.
pub const MAX_ESTIMATED_COST_USD: i64 = 1_000_000;
/// The audit column is NUMERIC(20,10), which holds every cost up to
/// [`MAX_ESTIMATED_COST_USD`] at this scale.
pub const MAX_COST_SCALE: u32 = 10;

/// Every field a client may send; anything else is refused.
pub const KNOWN_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "tenant_id",
    "user_id",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "service_tier",
    "calls",
    "usage",
    "usage_format",
    "estimated_cost",
    "labels",
    "reservation_id",
];

/// One validated usage event.
///
/// Token conventions (the OpenAI ones, which the other providers' usage maps
/// onto): `prompt_tokens` *includes* `cached_prompt_tokens`,
/// `cache_write_tokens` and `cache_write_1h_tokens`; `completion_tokens`
/// *includes* `reasoning_tokens`. `cache_write_tokens` are 5-minute cache
/// writes (the only kind before 1-hour writes existed, so old events keep
/// their meaning); `cache_write_1h_tokens` are 1-hour writes.
///
/// The fields added for pricing (`cache_write_1h_tokens`, `service_tier`,
/// `calls`, `unpriced_tokens`) are left out of the Kafka form when zero, absent or empty, so an
/// event that does not use them serialises, and hashes, exactly as before
/// they existed, and records written before them still decode.
/// `created_at` is truncated to microseconds, the precision of the database,
/// so that `(id, created_at)` compares the same in memory and in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub id: Uuid,
    #[serde(
        serialize_with = "crate::timestamp::serialize",
        deserialize_with = "crate::timestamp::deserialize"
    )]
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(default)]
    pub cached_prompt_tokens: u32,
    #[serde(default)]
    pub cache_write_tokens: u32,
    #[serde(default)]
    pub reasoning_tokens: u32,
    /// Prompt tokens written to a cache with a 1-hour lifetime.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u32,
    /// The provider's service tier; absent means standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<ServiceTier>,
    /// Server-side tool calls billed per call, by kind (`web_search`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<String, u32>,
    /// Tokens the provider's usage object counted that the book has no rate
    /// for, by component (`input_audio`, `input_cache_write_12h`,
    /// `usage.<field>`); see [`crate::pricebook::UnpricedSide`] for which
    /// total each is part of. Filled from `usage` only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unpriced_tokens: BTreeMap<String, u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub estimated_cost: Option<Decimal>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the gateway accepted the event; the start of end-to-end latency.
    #[serde(
        serialize_with = "crate::timestamp::serialize",
        deserialize_with = "crate::timestamp::deserialize"
    )]
    pub received_at: DateTime<Utc>,
    /// The gateway's id for the HTTP request that carried the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The id names one LLM call by itself (a provider's response id, as
    /// OpenTelemetry spans report it): another event of the tenant with this
    /// id is the same call reported again, whatever its `created_at`, and is
    /// stored once. Absent (false) for every other event, whose key stays
    /// `(tenant_id, id, created_at)`. Not accepted on the HTTP API.
    #[serde(default, skip_serializing_if = "is_false")]
    pub call_identity: bool,
    /// The budget reservation this call was made under: recording the
    /// event's cost releases it, in the same transaction. Left out of the
    /// Kafka form when absent, so other events hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<Uuid>,
    /// The name (never the hash) of the API key that appended the event,
    /// stamped by the gateway from the key that authenticated the request;
    /// never accepted from the client (not a field of the HTTP API). What
    /// per-key budgets count. Left out of the Kafka form when absent and
    /// out of the content hash (who sent an event is not what it says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Limits that depend on configuration rather than on the event contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// How far in the future `created_at` may lie (clock skew allowance).
    pub max_future_skew: Duration,
    /// How far in the past `created_at` may lie (late delivery, backfills).
    pub backfill_window: Duration,
    /// Most events in one request.
    pub max_batch_events: usize,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::minutes(5),
            backfill_window: Duration::days(35),
            max_batch_events: 1000,
        }
    }
}

/// One problem with one field of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found with one event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid usage event: {}", join_fields(.errors))]
pub struct EventError {
    pub errors: Vec<FieldError>,
}

fn join_fields(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One problem with one event of a request, located by its index in the
/// array (`None` when the request body was a single object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexedFieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

/// Why a whole request body was refused. A batch is all-or-nothing: any
/// error refuses every event in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("request body must be a usage event object or an array of them")]
    WrongShape,
    #[error("request body holds no events")]
    Empty,
    #[error("request body holds {count} events; at most {max} are accepted per request")]
    TooMany { count: usize, max: usize },
    #[error("{} invalid field(s) in the request", .0.len())]
    Invalid(Vec<IndexedFieldError>),
}

#[cfg(test)]
mod tests;
