//! Anthropic's Admin API reports: `GET /v1/organizations/usage_report/messages`
//! and `GET /v1/organizations/cost_report`, daily buckets grouped by
//! workspace (and model, and cost description), read into tokenledger's
//! token kinds and USD (the cost report's amounts are cents).

use chrono::{DateTime, NaiveDate};
use reqwest::header::{HeaderMap, HeaderName};
use rust_decimal::Decimal;
use serde_json::Value;
use store::reconcile::{CostLine, ReportKind, TokenCounts, UsageLine};

use super::config::AnthropicSettings;
use super::http::{self, FetchError, Fetcher, Reading};
use super::{decimal_field, int_field, midnight, Fetched};

const READING: Reading = Reading {
    provider: PROVIDER,
    bucket_day,
    usage_line,
    cost_line,
};
const PROVIDER: &str = "anthropic";
pub const USAGE_PATH: &str = "/v1/organizations/usage_report/messages";
pub const COSTS_PATH: &str = "/v1/organizations/cost_report";

/// Every page of one report over `[from, to)`.
pub async fn fetch(
    fetcher: &Fetcher,
    settings: &AnthropicSettings,
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Fetched, FetchError> {
    let key = http::admin_key(PROVIDER, settings.admin_key.as_ref())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-api-key"),
        http::header_value(PROVIDER, "the key", key.expose())?,
    );
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        http::header_value(PROVIDER, "anthropic_version", &settings.anthropic_version)?,
    );
    let first = request(report, from, to);
    http::pages(
        fetcher,
        &READING,
        &settings.base_url,
        headers,
        report,
        first,
    )
    .await
}

/// A bucket's `starting_at`, in RFC 3339.
fn bucket_day(bucket: &Value) -> Result<NaiveDate, String> {
    bucket
        .get("starting_at")
        .and_then(Value::as_str)
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.to_utc().date_naive())
        .ok_or_else(|| "a bucket without a `starting_at`".into())
}

/// The path and query of a report's first page.
pub fn request(
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
) -> (&'static str, Vec<(String, String)>) {
    let (path, group_by): (&str, &[&str]) = match report {
        ReportKind::Usage => (USAGE_PATH, &["workspace_id", "model"]),
        ReportKind::Cost => (COSTS_PATH, &["workspace_id", "description"]),
    };
    let rfc3339 = |day| midnight(day).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut query: Vec<(String, String)> = vec![
        ("starting_at".into(), rfc3339(from)),
        ("ending_at".into(), rfc3339(to)),
        ("bucket_width".into(), "1d".into()),
        ("limit".into(), "31".into()),
    ];
    query.extend(
        group_by
            .iter()
            .map(|field| ("group_by[]".to_owned(), (*field).to_owned())),
    );
    (path, query)
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// The default workspace has no id in the reports.
fn scope(result: &Value) -> String {
    text(result, "workspace_id").unwrap_or_default()
}

fn usage_line(result: &Value) -> Result<UsageLine, String> {
    let creation = result.get("cache_creation").cloned().unwrap_or(Value::Null);
    Ok(UsageLine {
        scope_id: scope(result),
        api_key_id: text(result, "api_key_id"),
        model: text(result, "model").unwrap_or_default(),
        service_tier: text(result, "service_tier"),
        tokens: TokenCounts {
            input_uncached: int_field(result, "uncached_input_tokens")?,
            cache_read: int_field(result, "cache_read_input_tokens").unwrap_or(0),
            cache_write_5m: int_field(&creation, "ephemeral_5m_input_tokens").unwrap_or(0),
            cache_write_1h: int_field(&creation, "ephemeral_1h_input_tokens").unwrap_or(0),
            output: int_field(result, "output_tokens")?,
        },
        requests: None,
        raw: result.clone(),
    })
}

/// `amount` is a decimal string in cents ("123.45" USD is $1.2345).
fn cost_line(result: &Value) -> Result<CostLine, String> {
    let currency = text(result, "currency").unwrap_or_else(|| "USD".into());
    if !currency.eq_ignore_ascii_case("usd") {
        return Err(format!("a cost in {currency}, not USD"));
    }
    let cents = decimal_field(result, "amount")?;
    let token_kind = match text(result, "token_type").as_deref() {
        Some("uncached_input_tokens") => Some("input_uncached"),
        Some("cache_read_input_tokens") => Some("cache_read"),
        Some("cache_creation.ephemeral_5m_input_tokens") => Some("cache_write_5m"),
        Some("cache_creation.ephemeral_1h_input_tokens") => Some("cache_write_1h"),
        Some("output_tokens") => Some("output"),
        _ => None,
    };
    Ok(CostLine {
        scope_id: scope(result),
        model: text(result, "model"),
        token_kind: token_kind.map(str::to_owned),
        line_item: text(result, "description"),
        amount_usd: cents / Decimal::ONE_HUNDRED,
        raw: result.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_amounts_are_cents_as_decimal_strings() {
        let line = cost_line(&serde_json::json!({
            "currency": "USD", "amount": "123.45", "workspace_id": null,
            "description": "Claude Sonnet 4.5 Usage - Input Tokens, Cache Read",
            "cost_type": "tokens", "model": "claude-sonnet-4-5",
            "token_type": "cache_read_input_tokens", "service_tier": "standard",
            "context_window": "0-200k"
        }))
        .expect("documented shape");
        assert_eq!(line.amount_usd, Decimal::new(12345, 4));
        assert_eq!(line.token_kind.as_deref(), Some("cache_read"));
        assert_eq!(line.scope_id, "");
    }

    #[test]
    fn usage_reads_both_cache_write_lifetimes() {
        let line = usage_line(&serde_json::json!({
            "uncached_input_tokens": 10, "cache_read_input_tokens": 20,
            "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 4},
            "output_tokens": 7, "workspace_id": "wrkspc_a", "model": "claude-sonnet-4-5"
        }))
        .expect("documented shape");
        assert_eq!(
            line.tokens,
            TokenCounts {
                input_uncached: 10,
                cache_read: 20,
                cache_write_5m: 3,
                cache_write_1h: 4,
                output: 7
            }
        );
    }
}
