//! The rules every usage event satisfies, whether it arrived on the HTTP
//! API or was read back from Kafka, and how their messages quote a value.

use std::collections::BTreeMap;

use chrono::SubsecRound;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::{
    EventError, FieldError, UsageEvent, MAX_CALLS_PER_KIND, MAX_CALL_KINDS, MAX_CALL_KIND_CHARS,
    MAX_COST_SCALE, MAX_ESTIMATED_COST_USD, MAX_LABELS, MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS,
    MAX_MODEL_CHARS, MAX_PROVIDER_CHARS, MAX_TENANT_ID_CHARS, MAX_TOKEN_COUNT,
    MAX_UNPRICED_COMPONENTS, MAX_UNPRICED_COMPONENT_CHARS, MAX_USER_ID_CHARS,
};
use crate::pricebook::UnpricedSide;

impl UsageEvent {
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
        let counts = [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("total_tokens", self.total_tokens),
            ("cached_prompt_tokens", self.cached_prompt_tokens),
            ("cache_write_tokens", self.cache_write_tokens),
            ("reasoning_tokens", self.reasoning_tokens),
            ("cache_write_1h_tokens", self.cache_write_1h_tokens),
        ];
        for (field, count) in counts {
            check(field, check_count(count));
        }
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
        let cached = u64::from(self.cached_prompt_tokens)
            + u64::from(self.cache_write_tokens)
            + u64::from(self.cache_write_1h_tokens);
        if cached > u64::from(self.prompt_tokens) {
            check(
                "cached_prompt_tokens",
                Err(format!(
                    "cached_prompt_tokens + cache_write_tokens + cache_write_1h_tokens ({cached}) cannot exceed prompt_tokens ({}), which includes them",
                    self.prompt_tokens
                )),
            );
        }
        let unpriced = |side| {
            self.unpriced_tokens
                .iter()
                .filter(|(component, _)| UnpricedSide::of(component) == side)
                .map(|(_, n)| u64::from(*n))
                .sum::<u64>()
        };
        let unpriced_in = unpriced(UnpricedSide::Input);
        if unpriced_in > 0 && cached + unpriced_in > u64::from(self.prompt_tokens) {
            check(
                "unpriced_tokens",
                Err(format!(
                    "cached and cache-write tokens with the unpriced prompt tokens ({}) cannot exceed prompt_tokens ({}), which includes them",
                    cached + unpriced_in,
                    self.prompt_tokens
                )),
            );
        }
        let unpriced_out = unpriced(UnpricedSide::Output);
        if unpriced_out > 0
            && u64::from(self.reasoning_tokens) + unpriced_out > u64::from(self.completion_tokens)
        {
            check(
                "unpriced_tokens",
                Err(format!(
                    "reasoning tokens with the unpriced completion tokens ({}) cannot exceed completion_tokens ({}), which includes them",
                    u64::from(self.reasoning_tokens) + unpriced_out,
                    self.completion_tokens
                )),
            );
        }
        check("unpriced_tokens", check_unpriced(&self.unpriced_tokens));
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
        check("calls", check_calls(&self.calls));
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

pub(super) fn check_id(id: Uuid) -> Result<(), String> {
    if id.is_nil() || id.is_max() {
        return Err("must not be the nil or max UUID".into());
    }
    Ok(())
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

/// One bound for every token count, so the gateway, the processor and the
/// INTEGER columns agree on what can be stored.
pub(super) fn check_count(count: u32) -> Result<(), String> {
    if count > MAX_TOKEN_COUNT {
        return Err(format!(
            "must be at most {MAX_TOKEN_COUNT} (the largest count stored), got {count}"
        ));
    }
    Ok(())
}

pub(super) fn check_cost(cost: Decimal) -> Result<(), String> {
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

pub(super) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels, got {}", labels.len()));
    }
    for (key, value) in labels {
        if !super::is_label_key(key) {
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

/// Per-call charges: a few kinds, named like label keys, each a bounded
/// positive count (a zero count is left out rather than stored).
pub(super) fn check_calls(calls: &BTreeMap<String, u32>) -> Result<(), String> {
    if calls.len() > MAX_CALL_KINDS {
        return Err(format!(
            "at most {MAX_CALL_KINDS} kinds of call, got {}",
            calls.len()
        ));
    }
    for (kind, count) in calls {
        let kind_ok = !kind.is_empty()
            && kind.len() <= MAX_CALL_KIND_CHARS
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !kind_ok {
            return Err(format!(
                "call kind {:?} must be 1-{MAX_CALL_KIND_CHARS} lower-case ASCII letters, digits, '-', '_' or '.' (e.g. web_search)",
                printable(kind)
            ));
        }
        if *count == 0 || *count > MAX_CALLS_PER_KIND {
            return Err(format!(
                "call count of {kind:?} must be 1-{MAX_CALLS_PER_KIND}, got {count}"
            ));
        }
    }
    Ok(())
}

/// Unpriced components: a few, named by tokenledger or after the usage
/// field they came from, each a positive count.
pub(super) fn check_unpriced(unpriced: &BTreeMap<String, u32>) -> Result<(), String> {
    if unpriced.len() > MAX_UNPRICED_COMPONENTS {
        return Err(format!(
            "at most {MAX_UNPRICED_COMPONENTS} unpriced components, got {}",
            unpriced.len()
        ));
    }
    for (component, count) in unpriced {
        let name_ok = !component.is_empty()
            && component.len() <= MAX_UNPRICED_COMPONENT_CHARS
            && component
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(format!(
                "unpriced component {:?} must be 1-{MAX_UNPRICED_COMPONENT_CHARS} ASCII letters, digits, '-', '_' or '.'",
                printable(component)
            ));
        }
        if *count == 0 || *count > MAX_TOKEN_COUNT {
            return Err(format!(
                "unpriced count of {component:?} must be 1-{MAX_TOKEN_COUNT}, got {count}"
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
