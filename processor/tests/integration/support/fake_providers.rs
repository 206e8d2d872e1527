//! A fake of OpenAI's and Anthropic's organization report APIs, serving
//! their documented shapes on a local port: daily buckets, `has_more` /
//! `next_page` pagination one day per page, admin-key checks, and faults
//! injected per path (429 with `retry-after`, 500). The reports are set by
//! the test and may be changed between fetches (a provider's revision).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, NaiveDate, SecondsFormat};
use serde_json::{json, Value};

pub const OPENAI_KEY: &str = "sk-admin-test-openai";
pub const ANTHROPIC_KEY: &str = "sk-ant-admin01-test";

/// One injected answer instead of the report.
#[derive(Debug, Clone)]
pub enum Fault {
    TooManyRequests { retry_after_seconds: u32 },
    ServerError,
}

#[derive(Debug, Default)]
pub struct Reports {
    /// path → day → result objects of that day's bucket.
    pub days: BTreeMap<&'static str, BTreeMap<NaiveDate, Vec<Value>>>,
    /// path → faults answered before the report, first first.
    pub faults: BTreeMap<&'static str, VecDeque<Fault>>,
    /// path → page number (1-based) that always fails with a 500.
    pub broken_page: BTreeMap<&'static str, usize>,
    /// Every request: path and query string.
    pub requests: Vec<(String, String)>,
}

pub const OPENAI_USAGE: &str = "/v1/organization/usage/completions";
pub const OPENAI_COSTS: &str = "/v1/organization/costs";
pub const ANTHROPIC_USAGE: &str = "/v1/organizations/usage_report/messages";
pub const ANTHROPIC_COSTS: &str = "/v1/organizations/cost_report";

#[derive(Clone, Default)]
pub struct FakeProviders {
    pub reports: Arc<Mutex<Reports>>,
}

impl FakeProviders {
    /// Serves on 127.0.0.1 at a free port; returns the base URL.
    pub async fn start(&self) -> String {
        let app = Router::new()
            .route(OPENAI_USAGE, get(openai))
            .route(OPENAI_COSTS, get(openai))
            .route(ANTHROPIC_USAGE, get(anthropic))
            .route(ANTHROPIC_COSTS, get(anthropic))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a local port");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake providers serve");
        });
        format!("http://{address}")
    }

    pub fn set_day(&self, path: &'static str, day: NaiveDate, results: Vec<Value>) {
        self.lock()
            .days
            .entry(path)
            .or_default()
            .insert(day, results);
    }

    pub fn fault(&self, path: &'static str, fault: Fault) {
        self.lock().faults.entry(path).or_default().push_back(fault);
    }

    pub fn break_page(&self, path: &'static str, page: usize) {
        self.lock().broken_page.insert(path, page);
    }

    pub fn requests_to(&self, path: &str) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, query)| query.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reports> {
        self.reports.lock().expect("fake provider state")
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": "error", "message": message}})),
    )
        .into_response()
}

fn pairs(query: &Option<String>) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://fake/?{}", query.as_deref().unwrap_or("")))
        .expect("query parses");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Records the request and answers the next injected fault or the broken
/// page, if any; `None` when the report is to be served.
fn before_serving(
    state: &FakeProviders,
    path: &'static str,
    query: &Option<String>,
) -> Option<Response> {
    let mut reports = state.lock();
    reports
        .requests
        .push((path.to_owned(), query.clone().unwrap_or_default()));
    if let Some(fault) = reports.faults.get_mut(path).and_then(VecDeque::pop_front) {
        return Some(match fault {
            Fault::TooManyRequests {
                retry_after_seconds,
            } => {
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
                response.headers_mut().insert(
                    "retry-after",
                    retry_after_seconds.to_string().parse().expect("header"),
                );
                response
            }
            Fault::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        });
    }
    let page = page_index(&pairs(query)) + 1;
    if reports.broken_page.get(path) == Some(&page) {
        return Some(error(StatusCode::BAD_GATEWAY, "upstream unavailable"));
    }
    None
}

fn page_index(pairs: &[(String, String)]) -> usize {
    param(pairs, "page")
        .and_then(|token| token.strip_prefix("page_"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The days of `[start, end)` and which one this page serves.
fn page_of(
    state: &FakeProviders,
    path: &'static str,
    start: NaiveDate,
    end: NaiveDate,
    index: usize,
) -> (NaiveDate, Vec<Value>, Option<String>) {
    let days: Vec<NaiveDate> = start.iter_days().take_while(|d| *d < end).collect();
    let day = days[index.min(days.len().saturating_sub(1))];
    let results = state
        .lock()
        .days
        .get(path)
        .and_then(|days| days.get(&day))
        .cloned()
        .unwrap_or_default();
    let next = (index + 1 < days.len()).then(|| format!("page_{}", index + 1));
    (day, results, next)
}

async fn openai(
    State(state): State<FakeProviders>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let path: &'static str = if uri.path() == OPENAI_USAGE {
        OPENAI_USAGE
    } else {
        OPENAI_COSTS
    };
    let expected = format!("Bearer {OPENAI_KEY}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        state
            .lock()
            .requests
            .push((path.to_owned(), query.clone().unwrap_or_default()));
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided. You must be an organization owner and use an admin key.",
        );
    }
    if let Some(response) = before_serving(&state, path, &query) {
        return response;
    }
    let pairs = pairs(&query);
    let time = |name| {
        param(&pairs, name)
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .map(|t| t.date_naive())
    };
    let (Some(start), Some(end)) = (time("start_time"), time("end_time")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "start_time and end_time are required",
        );
    };
    let (day, results, next) = page_of(&state, path, start, end, page_index(&pairs));
    let start_time = day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp();
    Json(json!({
        "object": "page",
        "data": [{
            "object": "bucket",
            "start_time": start_time,
            "end_time": start_time + 86_400,
            "results": results,
        }],
        "has_more": next.is_some(),
        "next_page": next,
    }))
    .into_response()
}

async fn anthropic(
    State(state): State<FakeProviders>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let path: &'static str = if uri.path() == ANTHROPIC_USAGE {
        ANTHROPIC_USAGE
    } else {
        ANTHROPIC_COSTS
    };
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "anthropic-version header is required",
        );
    }
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(ANTHROPIC_KEY) {
        return error(StatusCode::UNAUTHORIZED, "invalid x-api-key");
    }
    if let Some(response) = before_serving(&state, path, &query) {
        return response;
    }
    let pairs = pairs(&query);
    let time = |name| {
        param(&pairs, name)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.to_utc().date_naive())
    };
    let (Some(start), Some(end)) = (time("starting_at"), time("ending_at")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "starting_at and ending_at are required",
        );
    };
    let (day, results, next) = page_of(&state, path, start, end, page_index(&pairs));
    let at = |day: NaiveDate| {
        day.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    Json(json!({
        "data": [{
            "starting_at": at(day),
            "ending_at": at(day + Duration::days(1)),
            "results": results,
        }],
        "has_more": next.is_some(),
        "next_page": next,
    }))
    .into_response()
}
