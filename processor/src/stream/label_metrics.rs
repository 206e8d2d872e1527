//! Attribution labels as Prometheus labels, for the keys an operator opts
//! in (`metrics.label_keys`), each with at most `metrics.max_label_values`
//! values, shared fairly: each (bounded) tenant may introduce at most a
//! share of them ([`FairBound`], as for models and providers), the rest
//! under `__other__`. Off by default: label values are whatever callers
//! send, and the use-case rollup, not Prometheus, is where they are
//! reported. Usage without the label counts as `(unlabelled)`.

use std::sync::{Mutex, PoisonError};

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};
use rust_decimal::prelude::ToPrimitive;
use store::attribution::UNLABELLED;

use crate::stream::fair_labels::FairBound;
use crate::stream::prepare::PricedEvent;

const LABELS: &[&str] = &["label_key", "label_value"];

/// The opted-in series.
#[derive(Debug)]
pub struct LabelMetrics {
    keys: Vec<String>,
    bounds: Mutex<Vec<FairBound>>,
    requests: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
}

impl LabelMetrics {
    /// Registers the series in `registry`; `None` (and nothing registered)
    /// when no key is opted in.
    pub fn register(
        registry: &Registry,
        keys: &[String],
        max_values: usize,
    ) -> Result<Option<Self>, prometheus::Error> {
        if keys.is_empty() {
            return Ok(None);
        }
        let requests = IntCounterVec::new(
            Opts::new(
                "tokenledger_label_requests_total",
                "Stored LLM calls per value of an opted-in attribution label.",
            ),
            LABELS,
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "tokenledger_label_tokens_total",
                "Total tokens of stored LLM calls per value of an opted-in attribution label.",
            ),
            LABELS,
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "tokenledger_label_cost_usd_total",
                "Cost in USD of stored LLM calls per value of an opted-in attribution label.",
            ),
            LABELS,
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        Ok(Some(Self {
            keys: keys.to_vec(),
            bounds: Mutex::new(keys.iter().map(|_| FairBound::new(max_values)).collect()),
            requests,
            tokens,
            cost,
        }))
    }

    /// Counts a committed batch's new rows; `tenants` holds each row's
    /// tenant label (already bounded), whose share of values it uses.
    pub fn record(&self, new_rows: &[PricedEvent], tenants: &[&str]) {
        let mut bounds = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
        for (row, tenant) in new_rows.iter().zip(tenants) {
            for (key, bound) in self.keys.iter().zip(bounds.iter_mut()) {
                let value = row.event.labels.get(key).map_or(UNLABELLED, String::as_str);
                let labels = [key.as_str(), bound.label(tenant, value)];
                self.requests.with_label_values(&labels).inc();
                self.tokens
                    .with_label_values(&labels)
                    .inc_by(u64::from(row.event.total_tokens));
                self.cost
                    .with_label_values(&labels)
                    .inc_by(row.cost.usd.to_f64().unwrap_or(0.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ledger::pricebook::Cost;
    use ledger::PricingStatus;
    use rust_decimal::Decimal;

    fn row(use_case: Option<&str>) -> PricedEvent {
        let now = Utc::now();
        PricedEvent {
            event: ledger::UsageEvent {
                id: uuid::Uuid::new_v4(),
                created_at: now,
                tenant_id: "acme".into(),
                user_id: None,
                provider: "openai".into(),
                model: "gpt-4o".into(),
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                cached_prompt_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                cache_write_1h_tokens: 0,
                service_tier: None,
                calls: Default::default(),
                unpriced_tokens: Default::default(),
                estimated_cost: None,
                labels: use_case
                    .map(|v| [("use_case".to_owned(), v.to_owned())].into())
                    .unwrap_or_default(),
                received_at: now,
                request_id: None,
                call_identity: false,
                reservation_id: None,
                api_key: None,
            },
            cost: Cost {
                usd: Decimal::new(25, 2),
                status: PricingStatus::Priced,
            },
            pricing: Default::default(),
            content_sha256: [0; 32],
            record_index: 0,
            source_partition: 0,
            source_offset: 0,
        }
    }

    #[test]
    fn only_opted_in_keys_are_exported_and_values_are_capped() {
        let registry = Registry::new();
        assert!(LabelMetrics::register(&registry, &[], 5)
            .expect("register")
            .is_none());
        assert!(registry.gather().is_empty(), "nothing without opt-in");

        let keys = vec!["use_case".to_owned()];
        let metrics = LabelMetrics::register(&registry, &keys, 1)
            .expect("register")
            .expect("opted in");
        metrics.record(
            &[
                row(Some("chat")),
                row(Some("code")),
                row(None),
                row(Some("chat")),
            ],
            &["acme"; 4],
        );
        let requests = |value: &str| {
            metrics
                .requests
                .with_label_values(&["use_case", value])
                .get()
        };
        assert_eq!(requests("chat"), 2);
        assert_eq!(
            requests(crate::stream::metrics::OTHER_LABEL),
            2,
            "code and (unlabelled)"
        );
        assert_eq!(requests("code"), 0);
        let cost: f64 = ["chat", crate::stream::metrics::OTHER_LABEL]
            .iter()
            .map(|v| metrics.cost.with_label_values(&["use_case", v]).get())
            .sum();
        assert!((cost - 1.0).abs() < 1e-9, "{cost}");
    }
}
