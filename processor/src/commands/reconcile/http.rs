//! A provider's admin API: one page fetched with the retries its rate
//! limits and outages call for (a 429 waits its `retry-after`, a 5xx or a
//! timeout backs off exponentially, a refused key stops at once), and a
//! report's pages followed to the last ([`pages`]), which both providers
//! shape alike: daily buckets in `data`, `next_page` while `has_more`.

use std::time::Duration;

use chrono::NaiveDate;
use infra::Secret;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;
use store::reconcile::{CostLine, DayLines, ReportKind, UsageLine};

use super::config::ReconcileConfig;
use super::Fetched;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{provider} refused the admin key ({status}): {message}; check reconcile.{provider}.admin_key \
         (an organization admin key is needed, not a project/API key)"
    )]
    BadKey {
        provider: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("{provider} refused {path} ({status}): {message}")]
    Refused {
        provider: &'static str,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{provider} {path}: gave up after {attempts} attempt(s), last: {last}")]
    GaveUp {
        provider: &'static str,
        path: String,
        attempts: u32,
        last: String,
    },
    #[error("{provider} {path}: the answer is not the documented shape: {detail}")]
    Shape {
        provider: &'static str,
        path: String,
        detail: String,
    },
    #[error("reconcile.{provider}.admin_key (or admin_key_file) is not set")]
    NoKey { provider: &'static str },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The HTTP client and retry policy every provider client shares.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_attempts: u32,
    retry_base: Duration,
    max_retry_after: Duration,
}

impl Fetcher {
    pub fn new(config: &ReconcileConfig) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout())
            .build()
            .map_err(FetchError::Client)?;
        Ok(Self {
            client,
            max_attempts: config.max_attempts,
            retry_base: Duration::from_millis(config.retry_base_ms),
            max_retry_after: Duration::from_millis(config.max_retry_after_ms),
        })
    }

    /// GETs `base_url` + `path` with `query` and `headers`, retrying what
    /// is worth retrying, and returns the JSON body.
    pub async fn get_json(
        &self,
        provider: &'static str,
        base_url: &str,
        path: &str,
        query: &[(String, String)],
        headers: &HeaderMap,
    ) -> Result<Value, FetchError> {
        let url = format!("{}{path}", base_url.trim_end_matches('/'));
        let mut last = String::new();
        for attempt in 1..=self.max_attempts {
            let sent = self
                .client
                .get(&url)
                .query(query)
                .headers(headers.clone())
                .send()
                .await;
            let wait = match sent {
                Err(error) => {
                    // The error names the URL; no key is ever in it.
                    last = infra::secret::redact_urls_in(&error.to_string());
                    self.backoff(attempt)
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let body = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&body).map_err(|error| FetchError::Shape {
                            provider,
                            path: path.to_owned(),
                            detail: format!("not JSON: {error}"),
                        });
                    }
                    let message = error_message(&body);
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(FetchError::BadKey {
                            provider,
                            status,
                            message,
                        });
                    }
                    last = format!("{status}: {message}");
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        retry_after
                            .map(|wait| wait.min(self.max_retry_after))
                            .unwrap_or_else(|| self.backoff(attempt))
                    } else if status.is_server_error() {
                        self.backoff(attempt)
                    } else {
                        return Err(FetchError::Refused {
                            provider,
                            path: path.to_owned(),
                            status,
                            message,
                        });
                    }
                }
            };
            if attempt < self.max_attempts {
                tracing::warn!(provider, path, attempt, wait_ms = wait.as_millis() as u64, last = %last, "retrying a provider report page");
                tokio::time::sleep(wait).await;
            }
        }
        Err(FetchError::GaveUp {
            provider,
            path: path.to_owned(),
            attempts: self.max_attempts,
            last,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.retry_base
            .saturating_mul(factor)
            .min(Duration::from_secs(60))
    }
}

/// The provider's admin key, refused when it is not set or empty.
pub fn admin_key<'a>(
    provider: &'static str,
    key: Option<&'a Secret>,
) -> Result<&'a Secret, FetchError> {
    key.filter(|key| !key.expose().is_empty())
        .ok_or(FetchError::NoKey { provider })
}

/// `text` as a header value; `what` names the setting it came from.
pub fn header_value(
    provider: &'static str,
    what: &str,
    text: &str,
) -> Result<HeaderValue, FetchError> {
    HeaderValue::from_str(text).map_err(|_| FetchError::BadKey {
        provider,
        status: StatusCode::UNAUTHORIZED,
        message: format!("{what} holds characters a header cannot carry"),
    })
}

/// How one provider's report pages read.
#[derive(Debug)]
pub struct Reading {
    pub provider: &'static str,
    /// The day a bucket covers, or what the bucket lacks.
    pub bucket_day: fn(&Value) -> Result<NaiveDate, String>,
    pub usage_line: fn(&Value) -> Result<UsageLine, String>,
    pub cost_line: fn(&Value) -> Result<CostLine, String>,
}

/// Every page of a `kind` report from `first` (its path and query) on:
/// each page asks for the one before's `next_page` (as `page`), and each
/// bucket of its `data` becomes the lines of its day.
pub async fn pages(
    fetcher: &Fetcher,
    reading: &Reading,
    base_url: &str,
    headers: HeaderMap,
    kind: ReportKind,
    first: (&'static str, Vec<(String, String)>),
) -> Result<Fetched, FetchError> {
    let (path, first_query) = first;
    let shape = |detail: String| FetchError::Shape {
        provider: reading.provider,
        path: path.to_owned(),
        detail,
    };
    let mut fetched = Fetched::new(super::show_query(path, &first_query));
    let mut page: Option<String> = None;
    loop {
        let mut query = first_query.clone();
        if let Some(token) = &page {
            query.push(("page".into(), token.clone()));
        }
        let body = fetcher
            .get_json(reading.provider, base_url, path, &query, &headers)
            .await?;
        fetched.pages += 1;
        let buckets = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| shape("no `data` array".into()))?;
        for bucket in buckets {
            let day = (reading.bucket_day)(bucket).map_err(shape)?;
            let results = bucket
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| shape("a bucket without `results`".into()))?;
            let lines = match kind {
                ReportKind::Usage => DayLines::Usage(
                    results
                        .iter()
                        .map(reading.usage_line)
                        .collect::<Result<_, _>>()
                        .map_err(shape)?,
                ),
                ReportKind::Cost => DayLines::Cost(
                    results
                        .iter()
                        .map(reading.cost_line)
                        .collect::<Result<_, _>>()
                        .map_err(shape)?,
                ),
            };
            fetched.add_day(day, lines);
        }
        match next_page(&body) {
            Some(token) => page = Some(token),
            None => return Ok(fetched),
        }
    }
}

fn next_page(body: &Value) -> Option<String> {
    let more = body
        .get("has_more")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let token = body.get("next_page").and_then(Value::as_str)?;
    (more && !token.is_empty()).then(|| token.to_owned())
}

/// `retry-after` in seconds; an HTTP date is left to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Both providers answer errors as `{"error": {"message": …}}`.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_leaves_dates_to_the_backoff() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let fetcher = Fetcher::new(&ReconcileConfig {
            retry_base_ms: 100,
            ..ReconcileConfig::default()
        })
        .expect("client");
        assert_eq!(fetcher.backoff(1), Duration::from_millis(100));
        assert_eq!(fetcher.backoff(3), Duration::from_millis(400));
        assert_eq!(fetcher.backoff(30), Duration::from_secs(60));
    }
}
