//! An HTTP request body read into usage events: the batch shape, each
//! field's parsing, and the `(id, created_at)` idempotency key a client's
//! retry must reproduce.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::{NoContext, Timestamp, Uuid};

use crate::pricebook::ServiceTier;

use super::native;
use super::rules::{
    check_calls, check_cost, check_id, check_identifier, check_labels, check_provider, printable,
    type_name,
};
use super::strict::StrictValue;
use super::{
    BatchError, EventError, FieldError, IndexedFieldError, UsageEvent, ValidationLimits,
    KNOWN_FIELDS, MAX_MODEL_CHARS, MAX_TENANT_ID_CHARS, MAX_TOKEN_COUNT, MAX_USER_ID_CHARS,
};

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
        let prompt_tokens = fields.optional("prompt_tokens", parse_u32);
        let completion_tokens = fields.optional("completion_tokens", parse_u32);
        let total_tokens = fields.optional("total_tokens", parse_u32);
        let cached_prompt_tokens = fields.optional("cached_prompt_tokens", parse_u32);
        let cache_write_tokens = fields.optional("cache_write_tokens", parse_u32);
        let cache_write_1h_tokens = fields.optional("cache_write_1h_tokens", parse_u32);
        let reasoning_tokens = fields.optional("reasoning_tokens", parse_u32);
        let service_tier = fields.optional("service_tier", parse_service_tier);
        let calls = fields.optional("calls", parse_calls);
        let estimated_cost = fields.optional("estimated_cost", parse_cost);
        let labels = fields.optional("labels", parse_labels);
        let reservation_id = fields.optional("reservation_id", parse_any_uuid);

        let native = native::read(object, &mut errors);
        let tokens = Tokens {
            prompt: prompt_tokens,
            completion: completion_tokens,
            cached: cached_prompt_tokens,
            cache_write: cache_write_tokens,
            cache_write_1h: cache_write_1h_tokens,
            reasoning: reasoning_tokens,
            service_tier,
            calls,
        }
        .resolve(native, &mut errors);

        let (id, created_at) = resolve_identity(id, created_at, now, &mut errors);
        if let Some(created_at) = created_at {
            check_window(created_at, now, limits, &mut errors);
        }

        let (Some(id), Some(created_at), Some(tenant_id), Some(provider), Some(model)) =
            (id, created_at, tenant_id, provider, model)
        else {
            return Err(EventError { errors });
        };
        let Some(tokens) = tokens else {
            return Err(EventError { errors });
        };
        if !errors.is_empty() {
            return Err(EventError { errors });
        }

        let computed_total = tokens.prompt.checked_add(tokens.completion);
        let event = Self {
            id,
            created_at,
            tenant_id,
            user_id: user_id.flatten(),
            provider,
            model,
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            total_tokens: total_tokens
                .flatten()
                .or(computed_total)
                .unwrap_or(u32::MAX),
            cached_prompt_tokens: tokens.cached,
            cache_write_tokens: tokens.cache_write,
            reasoning_tokens: tokens.reasoning,
            cache_write_1h_tokens: tokens.cache_write_1h,
            service_tier: tokens.service_tier,
            calls: tokens.calls,
            unpriced_tokens: tokens.unpriced,
            estimated_cost: estimated_cost.flatten(),
            labels: labels.flatten().unwrap_or_default(),
            received_at: now,
            request_id: None,
            call_identity: false,
            reservation_id: reservation_id.flatten(),
            api_key: None,
        };
        event.check_invariants()?;
        Ok(event)
    }
}

/// The token fields as sent (`Some(None)` absent, `None` invalid), before
/// the native usage object, if any, fills or checks them.
struct Tokens {
    prompt: Option<Option<u32>>,
    completion: Option<Option<u32>>,
    cached: Option<Option<u32>>,
    cache_write: Option<Option<u32>>,
    cache_write_1h: Option<Option<u32>>,
    reasoning: Option<Option<u32>>,
    service_tier: Option<Option<ServiceTier>>,
    calls: Option<Option<BTreeMap<String, u32>>>,
}

/// The event's token fields once resolved.
struct ResolvedTokens {
    prompt: u32,
    completion: u32,
    cached: u32,
    cache_write: u32,
    cache_write_1h: u32,
    reasoning: u32,
    service_tier: Option<ServiceTier>,
    calls: BTreeMap<String, u32>,
    unpriced: BTreeMap<String, u32>,
}

impl Tokens {
    /// Without native usage, `prompt_tokens` and `completion_tokens` are
    /// required and the rest default to zero; with it, every field comes
    /// from the usage object and a field also sent must agree with it.
    fn resolve(
        self,
        native: Option<native::Mapped>,
        errors: &mut Vec<FieldError>,
    ) -> Option<ResolvedTokens> {
        let prompt = self.prompt?;
        let completion = self.completion?;
        let cached = self.cached?;
        let cache_write = self.cache_write?;
        let cache_write_1h = self.cache_write_1h?;
        let reasoning = self.reasoning?;
        let service_tier = self.service_tier?;
        let calls = self.calls?.unwrap_or_default();
        let Some(m) = native else {
            let had_usage = errors
                .iter()
                .any(|e| e.field == "usage" || e.field == "usage_format");
            if !had_usage {
                for (name, value) in [("prompt_tokens", prompt), ("completion_tokens", completion)]
                {
                    if value.is_none() {
                        errors.push(FieldError::new(name, "is required"));
                    }
                }
            }
            return Some(ResolvedTokens {
                prompt: prompt?,
                completion: completion?,
                cached: cached.unwrap_or(0),
                cache_write: cache_write.unwrap_or(0),
                cache_write_1h: cache_write_1h.unwrap_or(0),
                reasoning: reasoning.unwrap_or(0),
                service_tier,
                calls,
                unpriced: BTreeMap::new(),
            });
        };
        let service_tier = match (service_tier, m.service_tier) {
            (sent, None) => sent,
            (sent, Some(mapped)) => Some(native::agree("service_tier", sent, mapped, errors)),
        };
        Some(ResolvedTokens {
            prompt: native::agree("prompt_tokens", prompt, m.prompt_tokens, errors),
            completion: native::agree("completion_tokens", completion, m.completion_tokens, errors),
            cached: native::agree(
                "cached_prompt_tokens",
                cached,
                m.cached_prompt_tokens,
                errors,
            ),
            cache_write: native::agree(
                "cache_write_tokens",
                cache_write,
                m.cache_write_tokens,
                errors,
            ),
            cache_write_1h: native::agree(
                "cache_write_1h_tokens",
                cache_write_1h,
                m.cache_write_1h_tokens,
                errors,
            ),
            reasoning: native::agree("reasoning_tokens", reasoning, m.reasoning_tokens, errors),
            service_tier,
            calls: native::merge_calls(calls, m.calls, errors),
            unpriced: m.unpriced_tokens,
        })
    }
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

pub(super) fn uuid_v7_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
}

pub(super) fn new_v7_at(time: DateTime<Utc>) -> Uuid {
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

fn expect_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", type_name(value)))
}

/// A reservation id: any UUID (the gateway makes v7 ones, but the id only
/// has to name the reservation).
fn parse_any_uuid(value: &Value) -> Result<Uuid, String> {
    let text = value
        .as_str()
        .ok_or_else(|| "must be a UUID string".to_string())?;
    Uuid::parse_str(text).map_err(|_| "must be a UUID".to_string())
}

fn parse_uuid(value: &Value) -> Result<Uuid, String> {
    let text = expect_str(value)?;
    let id = Uuid::parse_str(text).map_err(|_| "must be a UUID".to_string())?;
    check_id(id)?;
    Ok(id)
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
        // Anything beyond u32 is refused here with the same message the
        // rules give a count beyond MAX_TOKEN_COUNT.
        return u32::try_from(unsigned).map_err(|_| {
            format!("must be at most {MAX_TOKEN_COUNT} (the largest count stored), got {unsigned}")
        });
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

fn parse_provider(value: &Value) -> Result<String, String> {
    let provider = expect_str(value)?.to_ascii_lowercase();
    check_provider(&provider)?;
    Ok(provider)
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

fn parse_service_tier(value: &Value) -> Result<ServiceTier, String> {
    let text = expect_str(value)?;
    match text {
        "standard" => Ok(ServiceTier::Standard),
        "batch" => Ok(ServiceTier::Batch),
        "flex" => Ok(ServiceTier::Flex),
        "priority" => Ok(ServiceTier::Priority),
        _ => Err("must be one of standard, batch, flex, priority".into()),
    }
}

fn parse_calls(value: &Value) -> Result<BTreeMap<String, u32>, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "must be an object of call counts such as {{\"web_search\": 3}}, got {}",
            type_name(value)
        ));
    };
    let mut calls = BTreeMap::new();
    for (kind, count) in object {
        let count = parse_u32(count)
            .map_err(|message| format!("call count of {:?} {message}", printable(kind)))?;
        // A zero count bills nothing; leaving it out keeps one spelling
        // of "no calls" and so one content hash.
        if count > 0 {
            calls.insert(kind.clone(), count);
        }
    }
    check_calls(&calls)?;
    Ok(calls)
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
