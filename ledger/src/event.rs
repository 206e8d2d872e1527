//! The usage event: one LLM call's token usage, as the gateway accepts it
//! on the HTTP API and as it travels on Kafka to the processor.
//!
//! Validation is written field by field over a `serde_json::Value` rather
//! than through `#[derive(Deserialize)]` so that one bad request reports
//! *every* bad field of *every* bad event at once, instead of serde's first
//! error. The Kafka form is the derived serde form of [`UsageEvent`], which
//! the processor decodes and re-checks with [`UsageEvent::check_invariants`]
//! because anyone with topic access can write to it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::{NoContext, Timestamp, Uuid};

/// Value of the `schema` header on every Kafka record the gateway writes.
pub const KAFKA_SCHEMA: &str = "usage.v1";

pub const MAX_TENANT_ID_CHARS: usize = 255;
pub const MAX_USER_ID_CHARS: usize = 255;
pub const MAX_PROVIDER_CHARS: usize = 100;
pub const MAX_MODEL_CHARS: usize = 100;
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_CHARS: usize = 64;
pub const MAX_LABEL_VALUE_CHARS: usize = 255;
/// No single LLM call costs a million dollars; anything above is a unit
/// mistake (micro-dollars sent as dollars) and would poison every rollup.
pub const MAX_ESTIMATED_COST_USD: i64 = 1_000_000;
/// The audit column is NUMERIC(20,10).
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
    "estimated_cost",
    "labels",
];

/// One validated usage event.
///
/// Token conventions (the OpenAI ones, which the other providers' usage maps
/// onto): `prompt_tokens` *includes* `cached_prompt_tokens` and
/// `cache_write_tokens`; `completion_tokens` *includes* `reasoning_tokens`.
/// `created_at` is truncated to microseconds, the precision of the database,
/// so that `(id, created_at)` compares the same in memory and in storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub id: Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub estimated_cost: Option<Decimal>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the gateway accepted the event; the start of end-to-end latency.
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub received_at: DateTime<Utc>,
    /// The gateway's id for the HTTP request that carried the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
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

/// Parses and validates an HTTP request body: one event object or an array.
/// `now` is the gateway's receive time; it becomes every event's
/// `received_at` and anchors the `created_at` window.
pub fn parse_batch(
    body: &[u8],
    now: DateTime<Utc>,
    limits: &ValidationLimits,
) -> Result<Vec<UsageEvent>, BatchError> {
    let StrictValue(value) =
        serde_json::from_slice(body).map_err(|err| BatchError::Malformed(err.to_string()))?;
    let (items, single) = match value {
        Value::Array(items) => (items, false),
        object @ Value::Object(_) => (vec![object], true),
        _ => return Err(BatchError::WrongShape),
    };
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    if items.len() > limits.max_batch_events {
        return Err(BatchError::TooMany {
            count: items.len(),
            max: limits.max_batch_events,
        });
    }
    let mut events = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match UsageEvent::from_request_value(item, now, limits) {
            Ok(event) => events.push(event),
            Err(err) => problems.extend(err.errors.into_iter().map(|e| IndexedFieldError {
                index: (!single).then_some(index),
                field: e.field,
                message: e.message,
            })),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(BatchError::Invalid(problems))
    }
}

/// A JSON value whose objects refuse a key given twice. Parsers disagree on
/// what `{"prompt_tokens":1,"prompt_tokens":900}` means (first wins, last
/// wins, error); a ledger must not silently pick one, and a proxy in front
/// of the gateway may have read the other.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(deserializer).map(|StrictValue(value)| value)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "field {:?} appears twice in one object",
                    printable(&key)
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

impl UsageEvent {
    /// Validates one event as a client sent it, filling in `id`,
    /// `created_at`, `total_tokens` and `received_at`.
    pub fn from_request_value(
        value: &Value,
        now: DateTime<Utc>,
        limits: &ValidationLimits,
    ) -> Result<Self, EventError> {
        let Value::Object(object) = value else {
            return Err(EventError {
                errors: vec![FieldError::new("", "each event must be a JSON object")],
            });
        };
        let mut errors = Vec::new();
        for key in object.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    printable(key),
                    "unknown field (fields are never dropped silently)",
                ));
            }
        }
        let mut fields = Fields {
            object,
            errors: &mut errors,
        };

        let id = fields.optional("id", parse_uuid);
        let created_at = fields.optional("created_at", parse_timestamp);
        let tenant_id = fields.required("tenant_id", |v| parse_identifier(v, MAX_TENANT_ID_CHARS));
        let user_id = fields.optional("user_id", |v| parse_identifier(v, MAX_USER_ID_CHARS));
        let provider = fields.required("provider", parse_provider);
        let model = fields.required("model", |v| parse_identifier(v, MAX_MODEL_CHARS));
        let prompt_tokens = fields.required("prompt_tokens", parse_u32);
        let completion_tokens = fields.required("completion_tokens", parse_u32);
        let total_tokens = fields.optional("total_tokens", parse_u32);
        let cached_prompt_tokens = fields.optional("cached_prompt_tokens", parse_u32);
        let cache_write_tokens = fields.optional("cache_write_tokens", parse_u32);
        let reasoning_tokens = fields.optional("reasoning_tokens", parse_u32);
        let estimated_cost = fields.optional("estimated_cost", parse_cost);
        let labels = fields.optional("labels", parse_labels);

        let (id, created_at) = resolve_identity(id, created_at, now, &mut errors);
        if let Some(created_at) = created_at {
            check_window(created_at, now, limits, &mut errors);
        }

        let (Some(id), Some(created_at), Some(tenant_id), Some(provider), Some(model)) =
            (id, created_at, tenant_id, provider, model)
        else {
            return Err(EventError { errors });
        };
        let (Some(prompt_tokens), Some(completion_tokens)) = (prompt_tokens, completion_tokens)
        else {
            return Err(EventError { errors });
        };
        if !errors.is_empty() {
            return Err(EventError { errors });
        }

        let computed_total = prompt_tokens.checked_add(completion_tokens);
        let event = Self {
            id,
            created_at,
            tenant_id,
            user_id: user_id.flatten(),
            provider,
            model,
            prompt_tokens,
            completion_tokens,
            total_tokens: total_tokens
                .flatten()
                .or(computed_total)
                .unwrap_or(u32::MAX),
            cached_prompt_tokens: cached_prompt_tokens.flatten().unwrap_or(0),
            cache_write_tokens: cache_write_tokens.flatten().unwrap_or(0),
            reasoning_tokens: reasoning_tokens.flatten().unwrap_or(0),
            estimated_cost: estimated_cost.flatten(),
            labels: labels.flatten().unwrap_or_default(),
            received_at: now,
            request_id: None,
        };
        event.check_invariants()?;
        Ok(event)
    }

    /// The rules every event must satisfy wherever it came from, including
    /// records on Kafka that did not pass through the gateway. Time windows
    /// are not among them: a replay legitimately carries old events.
    pub fn check_invariants(&self) -> Result<(), EventError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, result: Result<(), String>| {
            if let Err(message) = result {
                errors.push(FieldError::new(field, message));
            }
        };
        check("id", check_id(self.id));
        check(
            "tenant_id",
            check_identifier(&self.tenant_id, MAX_TENANT_ID_CHARS),
        );
        if let Some(user_id) = &self.user_id {
            check("user_id", check_identifier(user_id, MAX_USER_ID_CHARS));
        }
        check("provider", check_provider(&self.provider));
        check("model", check_identifier(&self.model, MAX_MODEL_CHARS));
        match self.prompt_tokens.checked_add(self.completion_tokens) {
            None => check(
                "total_tokens",
                Err("prompt_tokens + completion_tokens overflows a 32-bit count".into()),
            ),
            Some(sum) if sum != self.total_tokens => check(
                "total_tokens",
                Err(format!(
                    "must equal prompt_tokens + completion_tokens ({sum}), got {}",
                    self.total_tokens
                )),
            ),
            Some(_) => {}
        }
        let cached = u64::from(self.cached_prompt_tokens) + u64::from(self.cache_write_tokens);
        if cached > u64::from(self.prompt_tokens) {
            check(
                "cached_prompt_tokens",
                Err(format!(
                    "cached_prompt_tokens + cache_write_tokens ({cached}) cannot exceed prompt_tokens ({}), which includes them",
                    self.prompt_tokens
                )),
            );
        }
        if self.reasoning_tokens > self.completion_tokens {
            check(
                "reasoning_tokens",
                Err(format!(
                    "cannot exceed completion_tokens ({}), which includes them",
                    self.completion_tokens
                )),
            );
        }
        if let Some(cost) = self.estimated_cost {
            check("estimated_cost", check_cost(cost));
        }
        check("labels", check_labels(&self.labels));
        if self.created_at.trunc_subsecs(6) != self.created_at {
            check(
                "created_at",
                Err("must be truncated to microseconds".into()),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EventError { errors })
        }
    }

    /// The Kafka record value.
    pub fn to_kafka_value(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers and maps of strings
        // cannot fail; an empty value would be dead-lettered, never lost.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a Kafka record value.
    pub fn from_kafka_value(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes).map_err(|err| EventError {
            errors: vec![FieldError::new("", format!("undecodable record: {err}"))],
        })?;
        event.check_invariants()?;
        Ok(event)
    }

    /// SHA-256 of what the client asserted about the call, excluding what
    /// the gateway added (`received_at`, `request_id`). Two deliveries with
    /// the same `(id, created_at)` and the same hash are one event retried;
    /// a different hash is a conflicting reuse of the id.
    ///
    /// The hashed bytes are the Kafka form of the event with `received_at`
    /// at the epoch and no `request_id`. They are serialised from a
    /// borrowed view into a per-thread buffer and hashed in one call: this
    /// runs once per record in the processor's hot path, and streaming
    /// serde's many small writes into the hash cost twice as much.
    pub fn content_sha256(&self) -> [u8; 32] {
        let content = Content {
            id: &self.id,
            created_at: &self.created_at,
            tenant_id: &self.tenant_id,
            user_id: self.user_id.as_deref(),
            provider: &self.provider,
            model: &self.model,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_prompt_tokens: self.cached_prompt_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            estimated_cost: self.estimated_cost,
            labels: &self.labels,
            received_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            // Serialising strings, integers and maps of strings into a
            // Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buffer, &content);
            Sha256::digest(buffer.as_slice()).into()
        })
    }
}

/// What [`UsageEvent::content_sha256`] hashes: serialises exactly like a
/// `UsageEvent` (same fields, order and attributes) without `request_id`.
#[derive(Serialize)]
struct Content<'a> {
    id: &'a Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    created_at: &'a DateTime<Utc>,
    tenant_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    provider: &'a str,
    model: &'a str,
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    cached_prompt_tokens: u32,
    cache_write_tokens: u32,
    reasoning_tokens: u32,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rust_decimal::serde::str_option::serialize"
    )]
    estimated_cost: Option<Decimal>,
    #[serde(skip_serializing_if = "no_labels")]
    labels: &'a BTreeMap<String, String>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    received_at: DateTime<Utc>,
}

fn no_labels(labels: &&BTreeMap<String, String>) -> bool {
    labels.is_empty()
}

/// Reads fields from the request object, recording every problem.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    errors: &'a mut Vec<FieldError>,
}

impl Fields<'_> {
    /// `Some(None)` when absent or null, `Some(Some(v))` when valid, `None`
    /// when invalid (the error is recorded).
    fn optional<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.object.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(value) => match parse(value) {
                Ok(parsed) => Some(Some(parsed)),
                Err(message) => {
                    self.errors.push(FieldError::new(name, message));
                    None
                }
            },
        }
    }

    fn required<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.optional(name, parse) {
            Some(Some(value)) => Some(value),
            Some(None) => {
                self.errors.push(FieldError::new(name, "is required"));
                None
            }
            None => None,
        }
    }
}

/// Works out `(id, created_at)`, the idempotency key, so that a client's
/// retry always produces the same key.
fn resolve_identity(
    id: Option<Option<Uuid>>,
    created_at: Option<Option<DateTime<Utc>>>,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> (Option<Uuid>, Option<DateTime<Utc>>) {
    let (Some(id), Some(created_at)) = (id, created_at) else {
        return (None, None);
    };
    match (id, created_at) {
        (Some(id), Some(created_at)) => (Some(id), Some(created_at)),
        (Some(id), None) => match uuid_v7_time(id) {
            Some(time) => (Some(id), Some(time)),
            None => {
                errors.push(FieldError::new(
                    "created_at",
                    "is required when id is not a UUIDv7 (a retry must carry the same id and created_at)",
                ));
                (None, None)
            }
        },
        (None, Some(created_at)) => (Some(new_v7_at(created_at)), Some(created_at)),
        (None, None) => {
            let created_at = now.trunc_subsecs(3);
            (Some(new_v7_at(created_at)), Some(created_at))
        }
    }
}

fn uuid_v7_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
}

fn new_v7_at(time: DateTime<Utc>) -> Uuid {
    let seconds = u64::try_from(time.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        seconds,
        time.timestamp_subsec_nanos(),
    ))
}

fn check_window(
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
    limits: &ValidationLimits,
    errors: &mut Vec<FieldError>,
) {
    if created_at > now + limits.max_future_skew {
        errors.push(FieldError::new(
            "created_at",
            format!(
                "is more than {} minutes in the future",
                limits.max_future_skew.num_minutes()
            ),
        ));
    } else if created_at < now - limits.backfill_window {
        errors.push(FieldError::new(
            "created_at",
            format!(
                "is older than the {}-day backfill window",
                limits.backfill_window.num_days()
            ),
        ));
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expect_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", type_name(value)))
}

fn parse_uuid(value: &Value) -> Result<Uuid, String> {
    let text = expect_str(value)?;
    let id = Uuid::parse_str(text).map_err(|_| "must be a UUID".to_string())?;
    check_id(id)?;
    Ok(id)
}

fn check_id(id: Uuid) -> Result<(), String> {
    if id.is_nil() || id.is_max() {
        return Err("must not be the nil or max UUID".into());
    }
    Ok(())
}

fn parse_timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let text = expect_str(value)?;
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc).trunc_subsecs(6))
        .map_err(|_| "must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z".to_string())
}

fn parse_u32(value: &Value) -> Result<u32, String> {
    let Value::Number(number) = value else {
        return Err(format!(
            "must be a non-negative whole number, got {}",
            type_name(value)
        ));
    };
    if let Some(unsigned) = number.as_u64() {
        return u32::try_from(unsigned)
            .map_err(|_| format!("must be at most {} (a 32-bit count)", u32::MAX));
    }
    if number.as_i64().is_some() {
        return Err("must not be negative".into());
    }
    Err("must be a whole number".into())
}

fn parse_identifier(value: &Value, max_chars: usize) -> Result<String, String> {
    let text = expect_str(value)?;
    check_identifier(text, max_chars)?;
    Ok(text.to_owned())
}

/// Characters that render as nothing or reorder text: two identifiers that
/// look the same to a person must not be different tenants or models.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E0FFF}')
}

pub(crate) fn check_identifier(text: &str, max_chars: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(format!(
            "must be at most {max_chars} characters, got {chars}"
        ));
    }
    if text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err("must not contain control or invisible characters".into());
    }
    if text.trim() != text {
        return Err("must not start or end with whitespace".into());
    }
    Ok(())
}

fn parse_provider(value: &Value) -> Result<String, String> {
    let provider = expect_str(value)?.to_ascii_lowercase();
    check_provider(&provider)?;
    Ok(provider)
}

pub(crate) fn check_provider(provider: &str) -> Result<(), String> {
    if provider.is_empty() {
        return Err("must not be empty".into());
    }
    if provider.len() > MAX_PROVIDER_CHARS {
        return Err(format!("must be at most {MAX_PROVIDER_CHARS} characters"));
    }
    if !provider
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return Err("must be lower-case ASCII letters, digits, '-', '_' or '.' (e.g. openai, anthropic, bedrock)".into());
    }
    Ok(())
}

fn parse_cost(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        Value::String(text) => text,
        Value::Number(_) => {
            return Err(
                "must be a decimal string such as \"0.0042\" (JSON numbers lose precision)".into(),
            )
        }
        other => {
            return Err(format!(
                "must be a decimal string, got {}",
                type_name(other)
            ))
        }
    };
    let cost = Decimal::from_str(text.trim())
        .map_err(|_| "must be a decimal string such as \"0.0042\"".to_string())?;
    check_cost(cost)?;
    Ok(cost.normalize())
}

fn check_cost(cost: Decimal) -> Result<(), String> {
    if cost.is_sign_negative() && !cost.is_zero() {
        return Err("must not be negative".into());
    }
    if cost > Decimal::from(MAX_ESTIMATED_COST_USD) {
        return Err(format!(
            "must be at most {MAX_ESTIMATED_COST_USD} USD for one call"
        ));
    }
    if cost.normalize().scale() > MAX_COST_SCALE {
        return Err(format!("must have at most {MAX_COST_SCALE} decimal places"));
    }
    Ok(())
}

fn parse_labels(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "must be an object of string values, got {}",
            type_name(value)
        ));
    };
    let mut labels = BTreeMap::new();
    for (key, value) in object {
        let Value::String(text) = value else {
            return Err(format!(
                "label {:?} must be a string, got {}",
                printable(key),
                type_name(value)
            ));
        };
        labels.insert(key.clone(), text.clone());
    }
    check_labels(&labels)?;
    Ok(labels)
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels, got {}", labels.len()));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_CHARS
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !key_ok {
            return Err(format!(
                "label key {:?} must be 1-{MAX_LABEL_KEY_CHARS} ASCII letters, digits, '-', '_' or '.'",
                printable(key)
            ));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(format!(
                "label {key:?} must be at most {MAX_LABEL_VALUE_CHARS} characters"
            ));
        }
        if value.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(format!(
                "label {key:?} must not contain control or invisible characters"
            ));
        }
    }
    Ok(())
}

/// Echoing a hostile key back verbatim would put control characters into
/// clients' logs; escape them and cap the length.
pub(crate) fn printable(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() > 80 {
        let mut short: String = escaped.chars().take(77).collect();
        short.push_str("...");
        short
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests;
