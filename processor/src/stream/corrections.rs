//! Cost corrections as Prometheus counters. The usage counters only grow
//! with stored rows and a counter cannot go down, so when `processor
//! reprice` changes stored costs the correction is exported as its own
//! series: `tokenledger_cost_corrections_usd_total{provider, model,
//! tenant_id, direction}`, `direction` being `up` or `down`. Corrected cost
//! = `axonflow_orchestrator_provider_total_cost` + up − down.
//!
//! `processor reprice` is a one-shot command that Prometheus never scrapes,
//! so the running processor reads the `cost_corrections` table, which is
//! append-only, and raises each series to the table's total. Totals only
//! grow, so the series stay monotonic; after a restart they start at the
//! table's totals, which Prometheus reads as no increase rather than as a
//! reset.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::{CounterVec, Opts, Registry};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::stream::fair_labels::FairBound;
use crate::stream::metrics::LabelBound;

/// How often the table is read. Corrections are rare operator actions; a
/// minute's delay in the dashboards is harmless.
const POLL_INTERVAL: Duration = Duration::from_secs(15);

pub const CORRECTIONS_METRIC: &str = "tokenledger_cost_corrections_usd_total";

/// The correction series and the bounds on their labels.
#[derive(Debug)]
pub struct CorrectionMetrics {
    counter: CounterVec,
    tenants: LabelBound,
    models: FairBound,
    providers: FairBound,
}

impl CorrectionMetrics {
    pub fn new(
        registry: &Registry,
        max_tenant_labels: usize,
        max_model_labels: usize,
    ) -> Result<Self, prometheus::Error> {
        let counter = CounterVec::new(
            Opts::new(
                CORRECTIONS_METRIC,
                "USD by which `processor reprice` changed stored costs (direction up or down); \
                 corrected cost = provider_total_cost + up - down.",
            ),
            &["provider", "model", "tenant_id", "direction"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        Ok(Self {
            counter,
            tenants: LabelBound::new(max_tenant_labels),
            models: FairBound::new(max_model_labels),
            providers: FairBound::new(max_model_labels),
        })
    }

    /// Raises each series to `totals` (provider, model, tenant, direction →
    /// USD), after bounding the labels the way the usage counters are (the
    /// tenant first, then its fair share of models and providers).
    pub fn raise_to(&mut self, totals: &[(String, String, String, String, Decimal)]) {
        let mut bounded: BTreeMap<[String; 4], f64> = BTreeMap::new();
        for (provider, model, tenant, direction, usd) in totals {
            let tenant = self.tenants.label(tenant);
            let key = [
                self.providers.label(tenant, provider).to_owned(),
                self.models.label(tenant, model).to_owned(),
                tenant.to_owned(),
                direction.clone(),
            ];
            *bounded.entry(key).or_default() += usd.to_f64().unwrap_or(0.0);
        }
        for (labels, total) in bounded {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let series = self.counter.with_label_values(&labels);
            let increase = total - series.get();
            if increase > 0.0 {
                series.inc_by(increase);
            }
        }
    }
}

/// Polls the corrections table until `stop`.
pub fn start(
    pool: Pool,
    mut metrics: CorrectionMetrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match read_totals(&pool).await {
                Ok(totals) => metrics.raise_to(&totals),
                Err(error) => tracing::warn!(%error, "cannot read cost corrections"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    })
}

type Totals = Vec<(String, String, String, String, Decimal)>;

async fn read_totals(pool: &Pool) -> Result<Totals, Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    Ok(store::corrections::totals(&client)
        .await?
        .into_iter()
        .map(|t| (t.provider, t.model, t.tenant_id, t.direction, t.usd))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(metrics: &CorrectionMetrics, labels: &[&str]) -> f64 {
        metrics.counter.with_label_values(labels).get()
    }

    #[test]
    fn series_rise_to_the_totals_never_fall_and_bound_their_labels() {
        let registry = Registry::new();
        let mut metrics = CorrectionMetrics::new(&registry, 1, 10).expect("registers");
        let row = |tenant: &str, direction: &str, usd: i64| {
            (
                "openai".to_string(),
                "gpt-4o".to_string(),
                tenant.to_string(),
                direction.to_string(),
                Decimal::new(usd, 0),
            )
        };
        metrics.raise_to(&[
            row("acme", "up", 3),
            row("globex", "down", 2),
            row("initech", "down", 1),
        ]);
        assert_eq!(value(&metrics, &["openai", "gpt-4o", "acme", "up"]), 3.0);
        assert_eq!(
            value(
                &metrics,
                &[
                    "openai",
                    "gpt-4o",
                    crate::stream::metrics::OTHER_LABEL,
                    "down"
                ]
            ),
            3.0,
            "tenants past the bound are summed under the overflow label"
        );
        metrics.raise_to(&[row("acme", "up", 5)]);
        assert_eq!(value(&metrics, &["openai", "gpt-4o", "acme", "up"]), 5.0);
        metrics.raise_to(&[row("acme", "up", 4)]);
        assert_eq!(
            value(&metrics, &["openai", "gpt-4o", "acme", "up"]),
            5.0,
            "never falls"
        );
    }

    /// Issue: the correction series' model label was first come for all tenants: corrections of
    /// one tenant's many models folded another tenant's model into `__other__`.
    #[test]
    fn one_tenants_many_corrected_models_do_not_fold_another_tenants_model() {
        let registry = Registry::new();
        let mut metrics = CorrectionMetrics::new(&registry, 10, 20).expect("registers");
        let mut totals: Vec<(String, String, String, String, Decimal)> = (1..=20)
            .map(|n| {
                (
                    "openai".to_string(),
                    format!("m-{n:04}"),
                    "hog".to_string(),
                    "up".to_string(),
                    Decimal::ONE,
                )
            })
            .collect();
        totals.push((
            "openai".into(),
            "gpt-4o".into(),
            "acme".into(),
            "up".into(),
            Decimal::ONE,
        ));
        metrics.raise_to(&totals);
        assert_eq!(value(&metrics, &["openai", "gpt-4o", "acme", "up"]), 1.0);
    }
}
