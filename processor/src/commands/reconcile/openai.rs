//! OpenAI's organization reports: `GET /v1/organization/usage/completions`
//! and `GET /v1/organization/costs`, daily buckets grouped by project (and
//! model, and line item), read into tokenledger's token kinds and USD.

use chrono::{DateTime, NaiveDate};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde_json::Value;
use store::reconcile::{CostLine, ReportKind, TokenCounts, UsageLine};

use super::config::OpenAiSettings;
use super::http::{self, FetchError, Fetcher, Reading};
use super::{decimal_field, int_field, midnight_unix, Fetched};

const READING: Reading = Reading {
    provider: PROVIDER,
    bucket_day,
    usage_line,
    cost_line,
};
const PROVIDER: &str = "openai";
pub const USAGE_PATH: &str = "/v1/organization/usage/completions";
pub const COSTS_PATH: &str = "/v1/organization/costs";

/// Every page of one report over `[from, to)`.
pub async fn fetch(
    fetcher: &Fetcher,
    settings: &OpenAiSettings,
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Fetched, FetchError> {
    let key = http::admin_key(PROVIDER, settings.admin_key.as_ref())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        http::header_value(PROVIDER, "the key", &format!("Bearer {}", key.expose()))?,
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

/// A bucket's `start_time`, in Unix seconds.
fn bucket_day(bucket: &Value) -> Result<NaiveDate, String> {
    bucket
        .get("start_time")
        .and_then(Value::as_i64)
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .map(|start| start.date_naive())
        .ok_or_else(|| "a bucket without a `start_time`".into())
}

/// The path and query of a report's first page.
pub fn request(
    report: ReportKind,
    from: NaiveDate,
    to: NaiveDate,
) -> (&'static str, Vec<(String, String)>) {
    let (path, group_by): (&str, &[&str]) = match report {
        ReportKind::Usage => (USAGE_PATH, &["project_id", "model"]),
        ReportKind::Cost => (COSTS_PATH, &["project_id", "line_item"]),
    };
    let mut query: Vec<(String, String)> = vec![
        ("start_time".into(), midnight_unix(from).to_string()),
        ("end_time".into(), midnight_unix(to).to_string()),
        ("bucket_width".into(), "1d".into()),
        // 31 daily buckets is the documented maximum per page.
        ("limit".into(), "31".into()),
    ];
    query.extend(
        group_by
            .iter()
            .map(|field| ("group_by".to_owned(), (*field).to_owned())),
    );
    (path, query)
}

/// `input_tokens` includes the cached ones (`input_cached_tokens`); OpenAI
/// reports no cache writes apart, so they count as uncached input.
fn usage_line(result: &Value) -> Result<UsageLine, String> {
    let input = int_field(result, "input_tokens")?;
    let cached = int_field(result, "input_cached_tokens").unwrap_or(0);
    if cached > input {
        return Err(format!(
            "input_cached_tokens {cached} above input_tokens {input}"
        ));
    }
    Ok(UsageLine {
        scope_id: text(result, "project_id").unwrap_or_default(),
        api_key_id: text(result, "api_key_id"),
        model: text(result, "model").unwrap_or_default(),
        service_tier: text(result, "service_tier"),
        tokens: TokenCounts {
            input_uncached: input - cached,
            cache_read: cached,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: int_field(result, "output_tokens")?,
        },
        requests: int_field(result, "num_model_requests").ok(),
        raw: result.clone(),
    })
}

/// `amount.value` in USD, a number or a decimal string; `line_item` such as
/// `gpt-4o-2024-08-06, cached input` names the model and the kind.
fn cost_line(result: &Value) -> Result<CostLine, String> {
    let amount = result
        .get("amount")
        .ok_or_else(|| "a cost result without `amount`".to_owned())?;
    let currency = text(amount, "currency").unwrap_or_else(|| "usd".into());
    if !currency.eq_ignore_ascii_case("usd") {
        return Err(format!("a cost in {currency}, not USD"));
    }
    let amount_usd = decimal_field(amount, "value")?;
    let line_item = text(result, "line_item");
    let (model, token_kind) = line_item
        .as_deref()
        .map(parse_line_item)
        .unwrap_or((None, None));
    Ok(CostLine {
        scope_id: text(result, "project_id").unwrap_or_default(),
        model,
        token_kind,
        line_item,
        amount_usd,
        raw: result.clone(),
    })
}

/// `"<model>, <kind>"`; a line item of another shape keeps its model
/// unknown rather than guessed.
pub fn parse_line_item(line_item: &str) -> (Option<String>, Option<String>) {
    let Some((model, kind)) = line_item.rsplit_once(", ") else {
        return (None, None);
    };
    let kind = match kind.trim().to_ascii_lowercase().as_str() {
        "input" => Some("input_uncached"),
        "cached input" => Some("cache_read"),
        "output" => Some("output"),
        _ => None,
    };
    (Some(model.trim().to_owned()), kind.map(str::to_owned))
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_items_name_model_and_kind() {
        assert_eq!(
            parse_line_item("gpt-4o-2024-08-06, cached input"),
            (Some("gpt-4o-2024-08-06".into()), Some("cache_read".into()))
        );
        assert_eq!(
            parse_line_item("gpt-4o-mini, output"),
            (Some("gpt-4o-mini".into()), Some("output".into()))
        );
        assert_eq!(
            parse_line_item("ft-gpt-4o, training"),
            (Some("ft-gpt-4o".into()), None)
        );
        assert_eq!(parse_line_item("Web search"), (None, None));
    }

    #[test]
    fn a_usage_result_splits_cached_from_uncached_input() {
        let line = usage_line(&serde_json::json!({
            "object": "organization.usage.completions.result",
            "input_tokens": 1000, "input_cached_tokens": 800, "output_tokens": 50,
            "num_model_requests": 5, "project_id": "proj_a", "model": "gpt-4o"
        }))
        .expect("documented shape");
        assert_eq!(line.tokens.input_uncached, 200);
        assert_eq!(line.tokens.cache_read, 800);
        assert_eq!(line.tokens.output, 50);
        assert!(usage_line(
            &serde_json::json!({"input_tokens": 1, "input_cached_tokens": 2, "output_tokens": 0})
        )
        .is_err());
    }
}
