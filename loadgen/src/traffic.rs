//! The traffic model: what a realistic multi-tenant LLM deployment sends.
//!
//! Tenants follow a Zipf distribution (a few large customers, a long tail),
//! the model mix follows what production traffic looks like (mostly small,
//! cheap models, a tail of frontier and self-hosted ones, and a sliver of a
//! model the price book does not know), and token counts are log-normal.
//! Everything is derived from one seed, so a run can be repeated exactly.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use serde_json::{json, Value};
use uuid::Builder;

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("invalid traffic parameter: {0}")]
    Parameter(String),
}

/// One provider/model and how it is typically used.
#[derive(Debug, Clone, Copy)]
struct ModelProfile {
    provider: &'static str,
    model: &'static str,
    /// Relative share of requests.
    weight: u32,
    /// Median prompt and completion sizes.
    prompt_median: f64,
    completion_median: f64,
    /// Share of the prompt served from the provider's prompt cache.
    cached_share: f64,
    /// Share of the completion spent on hidden reasoning.
    reasoning_share: f64,
}

const MODELS: &[ModelProfile] = &[
    profile("openai", "gpt-4o-mini", 30, 900.0, 250.0, 0.3, 0.0),
    profile("openai", "gpt-4o", 14, 1_800.0, 400.0, 0.2, 0.0),
    profile("openai", "gpt-4.1", 5, 2_500.0, 500.0, 0.2, 0.0),
    profile("openai", "o4-mini", 5, 1_200.0, 1_500.0, 0.0, 0.6),
    profile(
        "anthropic",
        "claude-sonnet-4-5",
        14,
        3_000.0,
        600.0,
        0.5,
        0.0,
    ),
    profile(
        "anthropic",
        "claude-haiku-4-5",
        10,
        1_000.0,
        200.0,
        0.4,
        0.0,
    ),
    profile(
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        5,
        2_000.0,
        400.0,
        0.0,
        0.0,
    ),
    profile(
        "bedrock",
        "amazon.nova-lite-v1:0",
        3,
        800.0,
        200.0,
        0.0,
        0.0,
    ),
    profile("google", "gemini-2.5-flash", 8, 1_500.0, 350.0, 0.1, 0.2),
    profile("ollama", "llama3.1:8b", 5, 700.0, 300.0, 0.0, 0.0),
    profile("openai", "ft:acme-support-v3", 1, 600.0, 150.0, 0.0, 0.0),
];

const USE_CASES: &[&str] = &[
    "support-bot",
    "code-gen",
    "doc-analysis",
    "search",
    "summarize",
];

const fn profile(
    provider: &'static str,
    model: &'static str,
    weight: u32,
    prompt_median: f64,
    completion_median: f64,
    cached_share: f64,
    reasoning_share: f64,
) -> ModelProfile {
    ModelProfile {
        provider,
        model,
        weight,
        prompt_median,
        completion_median,
        cached_share,
        reasoning_share,
    }
}

/// Shapes the generated traffic.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    pub tenants: usize,
    /// Zipf exponent of tenant popularity (1.0–1.2 is typical SaaS skew).
    pub tenant_skew: f64,
    /// Events' `created_at` spread uniformly over this many past days, so a
    /// demo shows several days in the rollups; 0 = "now".
    pub spread_days: u32,
    /// Share of events that also carry a caller-known `estimated_cost`.
    pub provided_cost_share: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            tenants: 50,
            tenant_skew: 1.1,
            spread_days: 0,
            provided_cost_share: 0.05,
        }
    }
}

/// Produces usage events as JSON, ready for `POST /v1/usage`.
#[derive(Debug)]
pub struct TrafficGenerator {
    config: TrafficConfig,
    rng: StdRng,
    tenant_dist: Zipf<f64>,
    total_weight: u32,
    sequence: u64,
}

impl TrafficGenerator {
    pub fn new(config: TrafficConfig) -> Result<Self, TrafficError> {
        if config.tenants == 0 {
            return Err(TrafficError::Parameter("tenants must be at least 1".into()));
        }
        let tenant_dist = Zipf::new(config.tenants as f64, config.tenant_skew)
            .map_err(|err| TrafficError::Parameter(format!("tenant skew: {err}")))?;
        Ok(Self {
            rng: StdRng::seed_from_u64(config.seed),
            tenant_dist,
            total_weight: MODELS.iter().map(|m| m.weight).sum(),
            sequence: 0,
            config,
        })
    }

    /// The tenant name for a popularity rank (1 = largest).
    pub fn tenant_name(rank: usize) -> String {
        const NAMES: &[&str] = &[
            "acme",
            "globex",
            "initech",
            "umbrella",
            "hooli",
            "stark",
            "wayne",
            "wonka",
            "cyberdyne",
            "tyrell",
        ];
        match NAMES.get(rank.saturating_sub(1)) {
            Some(name) => (*name).to_owned(),
            None => format!("tenant-{rank:05}"),
        }
    }

    /// One event created at `now` (minus the configured spread).
    pub fn next_event(&mut self, now: DateTime<Utc>) -> Value {
        self.sequence += 1;
        let rank = self.tenant_dist.sample(&mut self.rng) as usize;
        let tenant = Self::tenant_name(rank);
        let model = self.pick_model();
        let prompt = self
            .log_normal(model.prompt_median, 0.8)
            .clamp(1.0, 190_000.0) as u32;
        let completion = self
            .log_normal(model.completion_median, 0.9)
            .clamp(1.0, 30_000.0) as u32;
        let cached = (f64::from(prompt) * model.cached_share * self.rng.random::<f64>()) as u32;
        let reasoning =
            (f64::from(completion) * model.reasoning_share * self.rng.random::<f64>()) as u32;

        let created_at = if self.config.spread_days == 0 {
            now
        } else {
            let spread_ms = i64::from(self.config.spread_days) * 86_400_000;
            now - Duration::milliseconds(self.rng.random_range(0..spread_ms))
        };
        let created_at = created_at
            .timestamp_millis()
            .max(0)
            .try_into()
            .unwrap_or(0u64);
        // The client names its events with a UUIDv7 carrying the call's
        // time, so a retry after a timeout is recognised as the same event;
        // its random bits come from the seeded generator so runs repeat.
        let id = Builder::from_unix_timestamp_millis(created_at, &self.rng.random::<[u8; 10]>())
            .into_uuid();
        let user = self.rng.random_range(1..=40u32);
        let use_case = USE_CASES[self.rng.random_range(0..USE_CASES.len())];

        let mut event = json!({
            "id": id.to_string(),
            "tenant_id": tenant,
            "user_id": format!("user-{user:03}"),
            "provider": model.provider,
            "model": model.model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "labels": {"use_case": use_case},
        });
        if cached > 0 {
            event["cached_prompt_tokens"] = json!(cached);
        }
        if reasoning > 0 {
            event["reasoning_tokens"] = json!(reasoning);
        }
        if self.rng.random::<f64>() < self.config.provided_cost_share {
            let micro_dollars = u64::from(prompt + completion) * 3;
            event["estimated_cost"] = json!(format!("{:.6}", micro_dollars as f64 / 1e6));
        }
        event
    }

    /// Draws from the process's own generator: used to decide which batches
    /// are resent as duplicates, so the choice is reproducible too.
    pub fn chance(&mut self, probability: f64) -> bool {
        self.rng.random::<f64>() < probability
    }

    pub fn generated(&self) -> u64 {
        self.sequence
    }

    fn pick_model(&mut self) -> ModelProfile {
        let mut ticket = self.rng.random_range(0..self.total_weight);
        for model in MODELS {
            if ticket < model.weight {
                return *model;
            }
            ticket -= model.weight;
        }
        MODELS[0]
    }

    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        LogNormal::new(median.ln(), sigma)
            .map(|dist| dist.sample(&mut self.rng))
            .unwrap_or(median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::event::{UsageEvent, ValidationLimits};
    use std::collections::HashMap;

    #[test]
    fn every_generated_event_passes_the_gateways_validation() {
        let now = Utc::now();
        let mut generator = TrafficGenerator::new(TrafficConfig {
            spread_days: 7,
            ..TrafficConfig::default()
        })
        .expect("valid config");
        for _ in 0..5_000 {
            let value = generator.next_event(now);
            UsageEvent::from_request_value(&value, now, &ValidationLimits::default())
                .unwrap_or_else(|err| panic!("{value}: {err}"));
        }
    }

    #[test]
    fn same_seed_same_traffic() {
        let now = Utc::now();
        let mut a = TrafficGenerator::new(TrafficConfig::default()).expect("valid");
        let mut b = TrafficGenerator::new(TrafficConfig::default()).expect("valid");
        for _ in 0..100 {
            assert_eq!(a.next_event(now), b.next_event(now));
        }
    }

    #[test]
    fn tenants_are_skewed() {
        let now = Utc::now();
        let mut generator = TrafficGenerator::new(TrafficConfig::default()).expect("valid");
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..10_000 {
            let event = generator.next_event(now);
            let tenant = event["tenant_id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(tenant).or_default() += 1;
        }
        let top = counts.get("acme").copied().unwrap_or(0);
        let tail = counts.get("tenant-00040").copied().unwrap_or(0);
        assert!(top > 10 * tail.max(1), "acme {top}, tenant-00040 {tail}");
        assert!(counts.len() > 30);
    }

    #[test]
    fn zero_tenants_is_refused() {
        assert!(TrafficGenerator::new(TrafficConfig {
            tenants: 0,
            ..TrafficConfig::default()
        })
        .is_err());
    }
}
