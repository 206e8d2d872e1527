//! Validation of a budget definition as the API (JSON) and the budgets
//! file (TOML, read as JSON) take it, reporting every problem at once.

use std::str::FromStr;

use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::thresholds::{DEFAULT_THRESHOLDS, MAX_THRESHOLDS, MAX_THRESHOLD_PERCENT};
use super::{Budget, LabelMatch, Period, Scope, TenantScope, UserScope, EVERY_TENANT, EVERY_USER};
use crate::event::{
    check_identifier, check_provider, is_invisible, printable, type_name, FieldError,
    MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_MODEL_CHARS, MAX_TENANT_ID_CHARS,
    MAX_USER_ID_CHARS,
};

pub const MAX_BUDGET_NAME_CHARS: usize = 100;
/// Upper bound of a budget amount in USD.
pub const MAX_AMOUNT_USD: i64 = 1_000_000_000;
/// Decimal places an amount may have (the spend column's scale).
pub const MAX_AMOUNT_SCALE: u32 = 10;

const KNOWN_FIELDS: &[&str] = &[
    "name",
    "tenant_id",
    "user_id",
    "api_key",
    "provider",
    "model",
    "label",
    "period",
    "timezone",
    "amount_usd",
    "thresholds",
    "hard_limit",
    "forecast_alert",
];

impl Budget {
    /// Validates a budget definition as the API and the budgets file take
    /// it, reporting every problem at once.
    pub fn from_json(id: Uuid, value: &Value) -> Result<Budget, Vec<FieldError>> {
        let Value::Object(object) = value else {
            return Err(vec![field_error(
                "",
                format!("a budget must be a JSON object, got {}", type_name(value)),
            )]);
        };
        let mut errors = Vec::new();
        for key in object.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                errors.push(field_error(
                    printable(key),
                    format!(
                        "unknown field; known fields are {}",
                        KNOWN_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let name = take(
            &mut errors,
            "name",
            required(object, "name").and_then(parse_name),
        );
        let tenant = take(
            &mut errors,
            "tenant_id",
            required(object, "tenant_id").and_then(parse_tenant_scope),
        );
        let user = take(
            &mut errors,
            "user_id",
            optional(object, "user_id").map_or(Ok(UserScope::All), parse_user),
        );
        let api_key = take(
            &mut errors,
            "api_key",
            optional(object, "api_key").map_or(Ok(None), |v| parse_key_name(v).map(Some)),
        );
        let provider = take(
            &mut errors,
            "provider",
            optional(object, "provider").map_or(Ok(None), |v| parse_provider(v).map(Some)),
        );
        let model = take(
            &mut errors,
            "model",
            optional(object, "model").map_or(Ok(None), |v| parse_model(v).map(Some)),
        );
        let label = take(
            &mut errors,
            "label",
            optional(object, "label").map_or(Ok(None), |v| parse_label(v).map(Some)),
        );
        let period = take(
            &mut errors,
            "period",
            required(object, "period").and_then(|v| expect_str(v)?.parse::<Period>()),
        );
        let timezone = take(
            &mut errors,
            "timezone",
            optional(object, "timezone").map_or(Ok(Tz::UTC), parse_timezone),
        );
        let amount_usd = take(
            &mut errors,
            "amount_usd",
            required(object, "amount_usd").and_then(parse_amount),
        );
        let thresholds = take(
            &mut errors,
            "thresholds",
            optional(object, "thresholds")
                .map_or(Ok(DEFAULT_THRESHOLDS.to_vec()), parse_thresholds),
        );
        let hard_limit = take(
            &mut errors,
            "hard_limit",
            optional(object, "hard_limit").map_or(Ok(false), |v| {
                v.as_bool()
                    .ok_or_else(|| format!("must be true or false, got {}", type_name(v)))
            }),
        );
        let forecast_alert = take(
            &mut errors,
            "forecast_alert",
            optional(object, "forecast_alert").map_or(Ok(false), |v| {
                v.as_bool()
                    .ok_or_else(|| format!("must be true or false, got {}", type_name(v)))
            }),
        );
        match (
            name,
            (tenant, user, api_key),
            provider,
            model,
            label,
            period,
            timezone,
            amount_usd,
            thresholds,
            (hard_limit, forecast_alert),
        ) {
            (
                Some(name),
                (Some(tenant), Some(user), Some(api_key)),
                Some(provider),
                Some(model),
                Some(label),
                Some(period),
                Some(timezone),
                Some(amount_usd),
                Some(thresholds),
                (Some(hard_limit), Some(forecast_alert)),
            ) if errors.is_empty() => Ok(Budget {
                id,
                name,
                scope: Scope {
                    tenant,
                    user,
                    api_key,
                    provider,
                    model,
                    label,
                },
                period,
                timezone,
                amount_usd,
                thresholds,
                hard_limit,
                forecast_alert,
            }),
            _ => Err(errors),
        }
    }
}

/// The value of a field's parse, or `None` with its error recorded.
fn take<T>(errors: &mut Vec<FieldError>, field: &str, result: Result<T, String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(field_error(field, message));
            None
        }
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err("is required".into()),
        Some(value) => Ok(value),
    }
}

/// A field that may be absent or null.
fn optional<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|value| !value.is_null())
}

fn expect_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", type_name(value)))
}

fn parse_name(value: &Value) -> Result<String, String> {
    let name = expect_str(value)?;
    let chars = name.chars().count();
    if name.is_empty() || chars > MAX_BUDGET_NAME_CHARS {
        return Err(format!(
            "must be 1-{MAX_BUDGET_NAME_CHARS} characters, got {chars}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(
            "must be ASCII letters, digits, '-', '_', '.' or ':' (it becomes an alert label)"
                .into(),
        );
    }
    Ok(name.to_owned())
}

fn parse_tenant_scope(value: &Value) -> Result<TenantScope, String> {
    let tenant = expect_str(value)?;
    if tenant == EVERY_TENANT {
        return Ok(TenantScope::Every);
    }
    check_identifier(tenant, MAX_TENANT_ID_CHARS)
        .map_err(|message| format!("{message} (or \"*\" for every tenant)"))?;
    Ok(TenantScope::One(tenant.to_owned()))
}

fn parse_user(value: &Value) -> Result<UserScope, String> {
    let user = expect_str(value)?;
    if user == EVERY_USER {
        return Ok(UserScope::Each);
    }
    check_identifier(user, MAX_USER_ID_CHARS)
        .map_err(|message| format!("{message} (or \"*\" for each user separately)"))?;
    Ok(UserScope::One(user.to_owned()))
}

/// An API key's name as the gateway's `auth.keys` give it (never a hash:
/// the name is what the events carry).
fn parse_key_name(value: &Value) -> Result<String, String> {
    let name = expect_str(value)?;
    if name.is_empty()
        || name.len() > MAX_BUDGET_NAME_CHARS
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(
            "must be an API key's name: 1-100 ASCII letters, digits, '-', '_', '.' or ':'".into(),
        );
    }
    Ok(name.to_owned())
}

fn parse_provider(value: &Value) -> Result<String, String> {
    // Events' providers are lower-cased by the gateway; so are budgets'.
    let provider = expect_str(value)?.to_ascii_lowercase();
    check_provider(&provider)?;
    Ok(provider)
}

fn parse_model(value: &Value) -> Result<String, String> {
    let model = expect_str(value)?;
    check_identifier(model, MAX_MODEL_CHARS)?;
    Ok(model.to_owned())
}

fn parse_label(value: &Value) -> Result<LabelMatch, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "must be an object {{\"key\": …, \"value\": …}}, got {}",
            type_name(value)
        ));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "key" && *k != "value") {
        return Err(format!(
            "unknown field {:?}; a label is {{\"key\": …, \"value\": …}}",
            printable(unknown)
        ));
    }
    let key = object
        .get("key")
        .ok_or("needs \"key\"")
        .map_err(str::to_owned)
        .and_then(|v| expect_str(v).map_err(|m| format!("key {m}")))?;
    let value = object
        .get("value")
        .ok_or("needs \"value\"")
        .map_err(str::to_owned)
        .and_then(|v| expect_str(v).map_err(|m| format!("value {m}")))?;
    if !crate::event::is_label_key(key) {
        return Err(format!(
            "key must be 1-{MAX_LABEL_KEY_CHARS} ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    if value.chars().count() > MAX_LABEL_VALUE_CHARS
        || value.chars().any(|c| c.is_control() || is_invisible(c))
    {
        return Err(format!(
            "value must be at most {MAX_LABEL_VALUE_CHARS} characters without control or invisible characters"
        ));
    }
    Ok(LabelMatch {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_timezone(value: &Value) -> Result<Tz, String> {
    let name = expect_str(value)?;
    name.parse::<Tz>().map_err(|_| {
        format!(
            "{:?} is not an IANA time zone name (e.g. \"UTC\", \"Europe/Berlin\", \"America/New_York\")",
            printable(name)
        )
    })
}

fn parse_amount(value: &Value) -> Result<Decimal, String> {
    let amount =
        match value {
            Value::String(text) => Decimal::from_str(text.trim())
                .map_err(|_| "must be a decimal string such as \"1000.00\"".to_string())?,
            // Whole numbers survive JSON intact; fractions may not.
            Value::Number(number) => match number.as_i64() {
                Some(whole) => Decimal::from(whole),
                None => return Err(
                    "must be a decimal string such as \"1000.50\" (JSON fractions lose precision)"
                        .into(),
                ),
            },
            other => {
                return Err(format!(
                    "must be a decimal string such as \"1000.00\", got {}",
                    type_name(other)
                ))
            }
        };
    if amount <= Decimal::ZERO {
        return Err("must be greater than 0".into());
    }
    if amount > Decimal::from(MAX_AMOUNT_USD) {
        return Err(format!("must be at most {MAX_AMOUNT_USD}"));
    }
    if amount.normalize().scale() > MAX_AMOUNT_SCALE {
        return Err(format!(
            "must have at most {MAX_AMOUNT_SCALE} decimal places"
        ));
    }
    Ok(amount.normalize())
}

fn parse_thresholds(value: &Value) -> Result<Vec<u16>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "must be an array of percentages such as [50, 75, 90, 100], got {}",
            type_name(value)
        ));
    };
    if items.is_empty() || items.len() > MAX_THRESHOLDS {
        return Err(format!(
            "must hold 1-{MAX_THRESHOLDS} percentages, got {}",
            items.len()
        ));
    }
    let mut thresholds = Vec::with_capacity(items.len());
    for item in items {
        let percent = item
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=MAX_THRESHOLD_PERCENT).contains(n))
            .ok_or_else(|| {
                format!(
                    "each threshold must be a whole percentage 1-{MAX_THRESHOLD_PERCENT}, got {item}"
                )
            })?;
        thresholds.push(percent);
    }
    thresholds.sort_unstable();
    if let Some(pair) = thresholds.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("threshold {} is listed twice", pair[0]));
    }
    Ok(thresholds)
}
