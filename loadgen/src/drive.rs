//! Driving a gateway: batches go out at a fixed offered rate (or as fast as
//! the gateway takes them) over a bounded number of connections, 503s are
//! retried with the same ids as a well-behaved client would, and every
//! request's latency is recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::traffic::{TrafficConfig, TrafficGenerator};

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Traffic(#[from] crate::traffic::TrafficError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid API key header: {0}")]
    Header(#[from] reqwest::header::InvalidHeaderValue),
    #[error("histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}

#[derive(Debug, Clone)]
pub struct DriveConfig {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub api_key: Option<String>,
    pub events: u64,
    /// Stop after this long even if `events` were not all sent.
    pub max_duration: Option<Duration>,
    /// Events per request; 1 sends a bare object rather than an array.
    pub batch_size: usize,
    pub concurrency: usize,
    /// Offered load in events per second; 0 = as fast as accepted.
    pub rate: u64,
    /// Share of accepted requests that are sent a second time, unchanged,
    /// as a client retry after a lost response would be.
    pub duplicate_share: f64,
    pub max_retries: u32,
    pub progress: bool,
    pub traffic: TrafficConfig,
}

/// What a run did, in the units a capacity plan needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriveSummary {
    pub requests: u64,
    pub events_accepted: u64,
    pub events_rejected: u64,
    pub events_resent_as_duplicates: u64,
    pub unavailable_responses: u64,
    pub events_failed: u64,
    pub elapsed_seconds: f64,
    pub accepted_events_per_second: f64,
    pub latency_ms: LatencySummary,
    /// From the `Server-Timing` header of accepted requests: the gateway's
    /// own time (`gateway`) and its wait for Kafka's acknowledgement
    /// (`kafka`). Absent when the gateway sends no such header.
    pub server_timing_ms: Option<ServerTimingSummary>,
    pub first_rejection: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerTimingSummary {
    pub gateway: LatencySummary,
    pub kafka: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Percentiles in milliseconds of a histogram recorded in microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

/// Per-request histograms (microseconds) a worker records.
struct Histograms {
    request: Histogram<u64>,
    gateway: Histogram<u64>,
    kafka: Histogram<u64>,
}

impl Histograms {
    fn new() -> Result<Self, hdrhistogram::CreationError> {
        let new = || Histogram::new_with_bounds(1, 60_000_000, 3);
        Ok(Self {
            request: new()?,
            gateway: new()?,
            kafka: new()?,
        })
    }

    fn add(&mut self, other: &Histograms) {
        let _ = self.request.add(&other.request);
        let _ = self.gateway.add(&other.gateway);
        let _ = self.kafka.add(&other.kafka);
    }
}

/// The `kafka` and `gateway` durations (ms) of a `Server-Timing` value such
/// as `kafka;dur=1.250, gateway;dur=0.310`.
pub fn parse_server_timing(value: &str) -> (Option<f64>, Option<f64>) {
    let mut kafka = None;
    let mut gateway = None;
    for metric in value.split(',') {
        let mut parts = metric.trim().split(';');
        let name = parts.next().unwrap_or("").trim();
        let duration = parts
            .filter_map(|param| param.trim().strip_prefix("dur="))
            .find_map(|d| d.parse::<f64>().ok());
        match name {
            "kafka" => kafka = duration,
            "gateway" => gateway = duration,
            _ => {}
        }
    }
    (kafka, gateway)
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    resent: AtomicU64,
    unavailable: AtomicU64,
    failed: AtomicU64,
    queued: AtomicU64,
}

/// One request body and how many events it holds.
struct Batch {
    body: Vec<u8>,
    events: u64,
}

pub async fn drive(config: DriveConfig) -> Result<DriveSummary, DriveError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &config.api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{}/v1/usage", config.url.trim_end_matches('/'));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = config.max_duration.map(|d| started + d);

    // The channel is the only buffer between generation and sending; its
    // bound keeps memory flat when the gateway is slower than the offer.
    let (sender, receiver) = mpsc::channel::<Batch>(config.concurrency.max(1) * 2);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let generator = tokio::spawn(generate(
        config.clone(),
        sender,
        Arc::clone(&counters),
        deadline,
    ));

    let mut workers = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let worker = Worker {
            client: client.clone(),
            endpoint: endpoint.clone(),
            counters: Arc::clone(&counters),
            max_retries: config.max_retries,
            duplicate_share: config.duplicate_share,
            histograms: Histograms::new()?,
            first_rejection: None,
            dice: TrafficGenerator::new(TrafficConfig {
                seed: config.traffic.seed ^ (workers.len() as u64 + 1),
                ..config.traffic.clone()
            })?,
        };
        workers.push(tokio::spawn(worker.run(Arc::clone(&receiver))));
    }
    let progress = config.progress.then(|| {
        let counters = Arc::clone(&counters);
        let total = config.events;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            let mut last = 0;
            loop {
                ticker.tick().await;
                let accepted = counters.accepted.load(Ordering::Relaxed);
                eprintln!(
                    "  {accepted:>9}/{total} events accepted  {:>7}/s  rejected {}  503s {}",
                    accepted - last,
                    counters.rejected.load(Ordering::Relaxed),
                    counters.unavailable.load(Ordering::Relaxed),
                );
                last = accepted;
            }
        })
    });

    let _ = generator.await;
    let mut histograms = Histograms::new()?;
    let mut first_rejection = None;
    for worker in workers {
        if let Ok((worker_histograms, rejection)) = worker.await {
            histograms.add(&worker_histograms);
            first_rejection = first_rejection.or(rejection);
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = counters.accepted.load(Ordering::Relaxed);
    Ok(DriveSummary {
        requests: counters.requests.load(Ordering::Relaxed),
        events_accepted: accepted,
        events_rejected: counters.rejected.load(Ordering::Relaxed),
        events_resent_as_duplicates: counters.resent.load(Ordering::Relaxed),
        unavailable_responses: counters.unavailable.load(Ordering::Relaxed),
        events_failed: counters.failed.load(Ordering::Relaxed),
        elapsed_seconds: elapsed,
        accepted_events_per_second: accepted as f64 / elapsed.max(1e-9),
        latency_ms: LatencySummary::from_micros(&histograms.request),
        server_timing_ms: (!histograms.gateway.is_empty()).then(|| ServerTimingSummary {
            gateway: LatencySummary::from_micros(&histograms.gateway),
            kafka: LatencySummary::from_micros(&histograms.kafka),
        }),
        first_rejection,
    })
}

async fn generate(
    config: DriveConfig,
    sender: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    deadline: Option<Instant>,
) {
    let Ok(mut generator) = TrafficGenerator::new(config.traffic.clone()) else {
        return;
    };
    let batch_size = config.batch_size.max(1) as u64;
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < config.events {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if config.rate > 0 {
            // Pace by schedule, not by sleeping between sends, so a slow
            // response does not lower the offered rate.
            let due = started + Duration::from_secs_f64(sent as f64 / config.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let events = batch_size.min(config.events - sent);
        let now = Utc::now();
        let body = if config.batch_size == 1 {
            serde_json::to_vec(&generator.next_event(now))
        } else {
            let batch: Vec<Value> = (0..events).map(|_| generator.next_event(now)).collect();
            serde_json::to_vec(&batch)
        };
        let Ok(body) = body else { break };
        counters.queued.fetch_add(events, Ordering::Relaxed);
        if sender.send(Batch { body, events }).await.is_err() {
            break;
        }
        sent += events;
    }
}

struct Worker {
    client: reqwest::Client,
    endpoint: String,
    counters: Arc<Counters>,
    max_retries: u32,
    duplicate_share: f64,
    histograms: Histograms,
    first_rejection: Option<String>,
    dice: TrafficGenerator,
}

impl Worker {
    async fn run(
        mut self,
        receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    ) -> (Histograms, Option<String>) {
        loop {
            let next = receiver.lock().await.recv().await;
            let Some(batch) = next else { break };
            let accepted = self.send(&batch).await;
            if accepted && self.duplicate_share > 0.0 && self.dice.chance(self.duplicate_share) {
                self.counters
                    .resent
                    .fetch_add(batch.events, Ordering::Relaxed);
                // The resend must be absorbed downstream; it is not counted
                // as accepted a second time.
                let _ = self.post(&batch).await;
            }
        }
        (self.histograms, self.first_rejection)
    }

    /// Sends until accepted, refused, or out of retries. True if accepted.
    async fn send(&mut self, batch: &Batch) -> bool {
        let mut attempt = 0;
        loop {
            match self.post(batch).await {
                Ok((status, _)) if status == StatusCode::ACCEPTED => {
                    self.counters
                        .accepted
                        .fetch_add(batch.events, Ordering::Relaxed);
                    return true;
                }
                Ok((status, retry_after))
                    if status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    if attempt >= self.max_retries {
                        break;
                    }
                    let wait = retry_after.unwrap_or(Duration::from_millis(200));
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
                Ok((status, _)) if status.is_client_error() => {
                    self.counters
                        .rejected
                        .fetch_add(batch.events, Ordering::Relaxed);
                    return false;
                }
                Ok(_) | Err(_) => {
                    if attempt >= self.max_retries {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
            }
            attempt += 1;
        }
        self.counters
            .failed
            .fetch_add(batch.events, Ordering::Relaxed);
        false
    }

    async fn post(&mut self, batch: &Batch) -> Result<(StatusCode, Option<Duration>), ()> {
        let started = Instant::now();
        let response = self
            .client
            .post(&self.endpoint)
            .body(batch.body.clone())
            .send()
            .await
            .map_err(|_| ())?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == StatusCode::ACCEPTED {
            let timing = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(parse_server_timing);
            if let Some((Some(kafka_ms), Some(gateway_ms))) = timing {
                let micros = |ms: f64| (ms * 1000.0).round().max(1.0) as u64;
                let _ = self.histograms.kafka.record(micros(kafka_ms));
                let _ = self.histograms.gateway.record(micros(gateway_ms));
            }
        }
        if status.is_client_error() && self.first_rejection.is_none() {
            let text = response.text().await.unwrap_or_default();
            self.first_rejection = Some(format!("{status}: {}", truncate(&text, 400)));
        } else {
            // Read the body so the connection returns to the pool.
            let _ = response.bytes().await;
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.histograms.request.record(micros.max(1));
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        Ok((status, retry_after))
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_read_by_metric_name() {
        assert_eq!(
            parse_server_timing("kafka;dur=1.250, gateway;dur=0.310"),
            (Some(1.25), Some(0.31))
        );
        assert_eq!(
            parse_server_timing("gateway;desc=\"x\";dur=2"),
            (None, Some(2.0))
        );
        assert_eq!(parse_server_timing("db;dur=3"), (None, None));
    }
}
