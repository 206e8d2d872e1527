//! The body of `POST /v1/budgets/reservations`: read, checked field by
//! field, and fingerprinted so that a retry under the same idempotency key
//! can be told from a different request reusing it.

use std::collections::BTreeMap;
use std::str::FromStr;

use ledger::budget::{MAX_AMOUNT_SCALE, MAX_AMOUNT_USD};
use ledger::event::{MAX_LABELS, MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::ReservationsConfig;

/// Longest identifier (tenant, user, provider, model, idempotency key).
const MAX_IDENTIFIER_CHARS: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    tenant_id: Option<String>,
    amount_usd: Value,
    user_id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    provider: Option<String>,
    model: Option<String>,
    ttl_s: Option<u64>,
    idempotency_key: Option<String>,
}

/// A checked reservation request; `tenant_id` is `None` when the body left
/// it to the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub tenant_id: Option<String>,
    pub amount_usd: Decimal,
    pub user_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub ttl_s: u32,
    pub idempotency_key: Option<String>,
}

impl Planned {
    /// Reads `body`; every problem is named in the error.
    pub fn parse(body: &[u8], config: &ReservationsConfig) -> Result<Self, String> {
        let body: Body = serde_json::from_slice(body).map_err(|error| error.to_string())?;
        let amount_usd = amount(&body.amount_usd)?;
        for (field, value) in [
            ("tenant_id", &body.tenant_id),
            ("user_id", &body.user_id),
            ("provider", &body.provider),
            ("model", &body.model),
            ("idempotency_key", &body.idempotency_key),
        ] {
            if let Some(value) = value {
                identifier(field, value, MAX_IDENTIFIER_CHARS)?;
            }
        }
        if body.labels.len() > MAX_LABELS {
            return Err(format!("labels: at most {MAX_LABELS} labels"));
        }
        for (key, value) in &body.labels {
            identifier("labels key", key, MAX_LABEL_KEY_CHARS)?;
            identifier("labels value", value, MAX_LABEL_VALUE_CHARS)?;
        }
        let ttl_s = match body.ttl_s {
            None => config.default_ttl_s,
            Some(ttl) if ttl >= 1 && ttl <= u64::from(config.max_ttl_s) => {
                u32::try_from(ttl).unwrap_or(config.max_ttl_s)
            }
            Some(ttl) => {
                return Err(format!(
                    "ttl_s: must be between 1 and {} seconds, got {ttl}",
                    config.max_ttl_s
                ))
            }
        };
        Ok(Self {
            tenant_id: body.tenant_id,
            amount_usd,
            user_id: body.user_id,
            labels: body.labels,
            provider: body.provider.map(|p| p.to_ascii_lowercase()),
            model: body.model,
            ttl_s,
            idempotency_key: body.idempotency_key,
        })
    }

    /// SHA-256 of everything the request asks for but its idempotency key,
    /// with `tenant` resolved.
    pub fn fingerprint(&self, tenant: &str) -> Vec<u8> {
        let canonical = json!({
            "tenant_id": tenant,
            "amount_usd": self.amount_usd.normalize().to_string(),
            "user_id": self.user_id,
            "labels": self.labels,
            "provider": self.provider,
            "model": self.model,
            "ttl_s": self.ttl_s,
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

fn amount(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return Err("amount_usd: must be a decimal string or a number".to_owned()),
    };
    let amount = Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_str(&text))
        .map_err(|_| format!("amount_usd: {text:?} is not a decimal amount"))?;
    if amount <= Decimal::ZERO {
        return Err("amount_usd: must be greater than zero".to_owned());
    }
    if amount > Decimal::from(MAX_AMOUNT_USD) {
        return Err(format!("amount_usd: at most {MAX_AMOUNT_USD}"));
    }
    if amount.normalize().scale() > MAX_AMOUNT_SCALE {
        return Err(format!(
            "amount_usd: at most {MAX_AMOUNT_SCALE} decimal places"
        ));
    }
    Ok(amount.normalize())
}

fn identifier(field: &str, value: &str, max_chars: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(format!("{field}: at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<Planned, String> {
        Planned::parse(body.to_string().as_bytes(), &ReservationsConfig::default())
    }

    #[test]
    fn a_request_is_read_with_the_configured_default_ttl() {
        let planned =
            parse(json!({"tenant_id": "acme", "amount_usd": "1.50", "provider": "OpenAI"}))
                .expect("valid");
        assert_eq!(planned.amount_usd, Decimal::new(15, 1));
        assert_eq!(planned.ttl_s, ReservationsConfig::default().default_ttl_s);
        assert_eq!(planned.provider.as_deref(), Some("openai"));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        for (body, field) in [
            (json!({"amount_usd": "0"}), "amount_usd"),
            (json!({"amount_usd": "-1"}), "amount_usd"),
            (json!({"amount_usd": "1e400"}), "amount_usd"),
            (json!({"amount_usd": true}), "amount_usd"),
            (json!({"amount_usd": "1", "ttl_s": 0}), "ttl_s"),
            (json!({"amount_usd": "1", "ttl_s": 1_000_000}), "ttl_s"),
            (json!({"amount_usd": "1", "user_id": ""}), "user_id"),
            (json!({"amount_usd": "1", "surprise": 1}), "surprise"),
        ] {
            let error = parse(body.clone()).expect_err(&body.to_string());
            assert!(error.contains(field), "{body}: {error}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_the_key_and_sees_every_other_field() {
        let a = parse(json!({"amount_usd": "1", "idempotency_key": "k1"})).expect("valid");
        let b = parse(json!({"amount_usd": "1.0", "idempotency_key": "k2"})).expect("valid");
        let c = parse(json!({"amount_usd": "2", "idempotency_key": "k1"})).expect("valid");
        assert_eq!(a.fingerprint("acme"), b.fingerprint("acme"));
        assert_ne!(a.fingerprint("acme"), c.fingerprint("acme"));
        assert_ne!(a.fingerprint("acme"), a.fingerprint("globex"));
    }
}
