//! Fair label bounds: the model and provider label values of the usage counters, capped per
//! tenant as well as in total, so one tenant sending many distinct names cannot use up the
//! series every other tenant's new models need.
//!
//! Each tenant label (itself bounded; tenants past that bound share `__other__`) may introduce
//! at most a share of the total bound (a tenth, at least one); a value one tenant introduced is
//! that tenant's own, and another tenant sending the same name introduces it again from its own
//! share. Past its share a tenant's further names count under `__other__`; the total bound
//! still holds for everyone together. Sums stay exact: nothing is dropped, only folded.

use std::collections::{HashMap, HashSet};

use crate::stream::metrics::OTHER_LABEL;

/// The share of the total bound one tenant may take.
const SHARE_DIVISOR: usize = 10;

/// A label bound with a per-tenant share.
#[derive(Debug)]
pub struct FairBound {
    max: usize,
    per_tenant: usize,
    /// Distinct values admitted for any tenant.
    admitted: HashSet<String>,
    /// The values each (bounded) tenant label introduced.
    by_tenant: HashMap<String, HashSet<String>>,
}

impl FairBound {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            per_tenant: (max / SHARE_DIVISOR).max(1).min(max),
            admitted: HashSet::new(),
            by_tenant: HashMap::new(),
        }
    }

    /// The label `value` is counted under for `tenant` (already bounded).
    pub fn label<'a>(&mut self, tenant: &str, value: &'a str) -> &'a str {
        let own = self.by_tenant.entry(tenant.to_owned()).or_default();
        if own.contains(value) {
            return value;
        }
        let room = self.admitted.contains(value) || self.admitted.len() < self.max;
        if own.len() < self.per_tenant && room {
            own.insert(value.to_owned());
            self.admitted.insert(value.to_owned());
            return value;
        }
        OTHER_LABEL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::metrics::{CommittedBatch, Metrics};
    use crate::stream::prepare::PricedEvent;
    use chrono::Utc;
    use ledger::{Cost, PricingStatus, UsageEvent};
    use rust_decimal::Decimal;

    fn row(tenant: &str, model: &str) -> PricedEvent {
        let now = Utc::now();
        PricedEvent {
            event: UsageEvent {
                id: uuid::Uuid::now_v7(),
                created_at: now,
                tenant_id: tenant.into(),
                user_id: None,
                provider: "openai".into(),
                model: model.into(),
                prompt_tokens: 1,
                completion_tokens: 0,
                total_tokens: 1,
                cached_prompt_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                cache_write_1h_tokens: 0,
                service_tier: None,
                calls: Default::default(),
                unpriced_tokens: Default::default(),
                estimated_cost: None,
                labels: Default::default(),
                received_at: now,
                request_id: None,
                call_identity: false,
                reservation_id: None,
                api_key: None,
            },
            cost: Cost {
                usd: Decimal::new(1, 6),
                status: PricingStatus::Priced,
            },
            pricing: Default::default(),
            content_sha256: [0; 32],
            record_index: 0,
            source_partition: 0,
            source_offset: 0,
        }
    }

    fn record(metrics: &Metrics, rows: &[PricedEvent]) {
        metrics.record_batch(
            &CommittedBatch {
                consumed: rows.len(),
                new_rows: rows,
                duplicates: 0,
                conflicts: 0,
                dead_lettered: &Default::default(),
                committed_at: Utc::now(),
            },
            std::time::Duration::from_millis(1),
        );
    }

    /// Issue: one tenant sending 200 one-token events with models `m-0001`…`m-0200` pushed
    /// every other tenant's new models into `__other__` until restart.
    #[test]
    fn one_tenant_sending_many_models_does_not_fold_another_tenants_models() {
        let metrics = Metrics::new(1000, 200).expect("metrics");
        let flood: Vec<PricedEvent> = (1..=200)
            .map(|n| row("hog", &format!("m-{n:04}")))
            .collect();
        record(&metrics, &flood);
        record(&metrics, &[row("acme", "gpt-4o")]);
        let text = metrics.render().expect("renders");
        let acme = text
            .lines()
            .find(|line| {
                line.starts_with("axonflow_orchestrator_provider_total_tokens{")
                    && line.contains("tenant_id=\"acme\"")
            })
            .expect("a series of acme");
        assert!(acme.contains("model=\"gpt-4o\""), "{acme}");
        // The flood is still counted, in full, partly under `__other__`.
        let hog_tokens: f64 = text
            .lines()
            .filter(|line| {
                line.starts_with("axonflow_orchestrator_provider_total_tokens{")
                    && line.contains("tenant_id=\"hog\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(hog_tokens, 200.0);
    }

    #[test]
    fn a_tenant_keeps_its_share_and_the_total_bound_holds() {
        let mut bound = FairBound::new(20);
        for n in 0..5 {
            let name = format!("m{n}");
            let expected = if n < 2 { name.as_str() } else { OTHER_LABEL };
            assert_eq!(bound.label("hog", &name), expected);
        }
        assert_eq!(bound.label("acme", "m0"), "m0", "a name another tenant has");
        assert_eq!(bound.label("acme", "gpt-4o"), "gpt-4o");
        assert_eq!(bound.label("acme", "o3"), OTHER_LABEL, "acme's share is 2");
        let mut none = FairBound::new(0);
        assert_eq!(none.label("acme", "x"), OTHER_LABEL);
    }

    /// Issue: the opted-in label counters were first come, first kept for all tenants: one
    /// tenant sending as many `use_case` values as the bound folded every other tenant's values
    /// into `__other__`.
    #[test]
    fn one_tenant_sending_many_label_values_does_not_fold_another_tenants_values() {
        let metrics = Metrics::new(1000, 200).expect("metrics");
        metrics
            .enable_label_metrics(&["use_case".to_owned()], 20)
            .expect("label metrics");
        let labelled = |tenant: &str, value: &str| {
            let mut row = row(tenant, "gpt-4o");
            row.event.labels.insert("use_case".into(), value.into());
            row
        };
        let flood: Vec<PricedEvent> = (1..=20)
            .map(|n| labelled("hog", &format!("v-{n:04}")))
            .collect();
        record(&metrics, &flood);
        record(&metrics, &[labelled("acme", "chat")]);
        let text = metrics.render().expect("renders");
        let series = |value: &str| {
            text.lines()
                .filter(|line| line.starts_with("tokenledger_label_requests_total{"))
                .find(|line| line.contains(&format!("label_value=\"{value}\"")))
                .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!(series("chat"), Some(1.0), "{text}");
        // The flood is still counted, in full, partly under `__other__`.
        let hog: f64 = (1..=20)
            .filter_map(|n| series(&format!("v-{n:04}")))
            .sum::<f64>()
            + series(OTHER_LABEL).unwrap_or(0.0);
        assert_eq!(hog, 20.0);
    }
}
