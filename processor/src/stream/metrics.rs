//! Prometheus metrics: the guide's four usage counters, the pipeline's
//! operational metrics and the label-cardinality bound. What a committed
//! batch did arrives as a [`CommittedBatch`], so counting knows nothing of
//! the transaction; the `health` module serves the registry over HTTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rust_decimal::prelude::ToPrimitive;

use crate::stream::dead_letters::Reason;
use crate::stream::fair_labels::FairBound;
use crate::stream::prepare::PricedEvent;

/// The label value that stands for every value past the cardinality bound.
pub const OTHER_LABEL: &str = "__other__";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
}

/// A committed batch as the counters see it.
#[derive(Debug, Clone, Copy)]
pub struct CommittedBatch<'a> {
    /// Records in the batch, poison and duplicates included.
    pub consumed: usize,
    /// The rows this batch stored for the first time: the only rows usage
    /// counters may count.
    pub new_rows: &'a [PricedEvent],
    pub duplicates: usize,
    pub conflicts: usize,
    pub dead_lettered: &'a BTreeMap<Reason, usize>,
    pub committed_at: DateTime<Utc>,
}

/// Admits at most `max` distinct label values; later newcomers become
/// [`OTHER_LABEL`]. First come, first kept: which values get their own
/// series depends on arrival order since start, and a restart may choose
/// differently. Sums over all values stay exact either way, because the
/// overflow is counted under `__other__` rather than dropped.
#[derive(Debug)]
pub struct LabelBound {
    max: usize,
    admitted: HashSet<String>,
}

impl LabelBound {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: HashSet::new(),
        }
    }

    pub fn label<'a>(&mut self, value: &'a str) -> &'a str {
        if self.admitted.contains(value) {
            return value;
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_owned());
            return value;
        }
        OTHER_LABEL
    }
}

#[derive(Debug)]
struct Bounds {
    tenants: LabelBound,
    // Per tenant as well as in total (crate::stream::fair_labels). Providers are not
    // named by the configuration; they get the model bound's size.
    models: FairBound,
    providers: FairBound,
}

/// One batch's usage under one label set.
#[derive(Debug, Default)]
struct UsageSum {
    total_tokens: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    unpriced: u64,
    /// Unpriced tokens by component label (see [`unpriced_label`]).
    unpriced_tokens: BTreeMap<&'static str, u64>,
}

/// The metric label of an unpriced component: tokenledger's own names as
/// they are, a field of a usage object (`usage.<field>`, chosen by whoever
/// sent it) as one `usage_field`, so clients cannot grow the series.
fn unpriced_label(component: &str) -> &'static str {
    use ledger::pricebook::rating::{UNPRICED_INPUT, UNPRICED_OUTPUT};
    UNPRICED_INPUT
        .iter()
        .chain(UNPRICED_OUTPUT)
        .find(|known| **known == component)
        .copied()
        .unwrap_or("usage_field")
}

impl UsageSum {
    fn add(&mut self, row: &PricedEvent) {
        let event = &row.event;
        self.total_tokens += u64::from(event.total_tokens);
        self.prompt_tokens += u64::from(event.prompt_tokens);
        self.completion_tokens += u64::from(event.completion_tokens);
        self.cost_usd += row.cost.usd.to_f64().unwrap_or(0.0);
        if row.cost.status == ledger::PricingStatus::Unpriced {
            self.unpriced += 1;
        }
        for (component, n) in &event.unpriced_tokens {
            *self
                .unpriced_tokens
                .entry(unpriced_label(component))
                .or_default() += u64::from(*n);
        }
    }

    fn merge(&mut self, other: &UsageSum) {
        self.total_tokens += other.total_tokens;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        self.unpriced += other.unpriced;
        for (component, n) in &other.unpriced_tokens {
            *self.unpriced_tokens.entry(component).or_default() += n;
        }
    }
}

/// Every metric the processor exports, in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    bounds: Mutex<Bounds>,
    total_tokens: IntCounterVec,
    total_cost: CounterVec,
    prompt_tokens: IntCounterVec,
    completion_tokens: IntCounterVec,
    events_consumed: IntCounter,
    events_inserted: IntCounter,
    events_duplicate: IntCounter,
    events_conflict: IntCounter,
    events_dead_lettered: IntCounterVec,
    events_unpriced: IntCounterVec,
    tokens_unpriced: IntCounterVec,
    batch_size: Histogram,
    batch_duration: Histogram,
    end_to_end_latency: Histogram,
    consumer_lag: IntGaugeVec,
    db_retries: IntCounter,
    up: IntGauge,
    last_commit: Gauge,
    /// Opted-in attribution labels ([`crate::stream::label_metrics`]).
    labels: std::sync::OnceLock<crate::stream::label_metrics::LabelMetrics>,
}

const USAGE_LABELS: &[&str] = &["provider", "model", "tenant_id"];

impl Metrics {
    pub fn new(max_tenant_labels: usize, max_model_labels: usize) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let int_counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let int_counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };

        let total_tokens = int_counter_vec(
            "axonflow_orchestrator_provider_total_tokens",
            "Total tokens (prompt + completion) of stored LLM calls.",
            USAGE_LABELS,
        )?;
        let total_cost = CounterVec::new(
            Opts::new(
                "axonflow_orchestrator_provider_total_cost",
                "Cost in USD of stored LLM calls (caller's estimate, else the price book).",
            ),
            USAGE_LABELS,
        )?;
        registry.register(Box::new(total_cost.clone()))?;
        let prompt_tokens = int_counter_vec(
            "axonflow_orchestrator_provider_prompt_tokens",
            "Prompt (input) tokens of stored LLM calls.",
            USAGE_LABELS,
        )?;
        let completion_tokens = int_counter_vec(
            "axonflow_orchestrator_provider_completion_tokens",
            "Completion (output) tokens of stored LLM calls.",
            USAGE_LABELS,
        )?;
        let events_consumed = int_counter(
            "tokenledger_events_consumed_total",
            "Kafka records in committed batches, poison and duplicates included.",
        )?;
        let events_inserted = int_counter(
            "tokenledger_events_inserted_total",
            "Usage events stored for the first time.",
        )?;
        let events_duplicate = int_counter(
            "tokenledger_events_duplicate_total",
            "Usage events already stored with the same content (retries, redelivery).",
        )?;
        let events_conflict = int_counter(
            "tokenledger_events_conflict_total",
            "Usage events whose (id, created_at) is stored with different content.",
        )?;
        let events_dead_lettered = int_counter_vec(
            "tokenledger_events_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason.",
            &["reason"],
        )?;
        let events_unpriced = int_counter_vec(
            "tokenledger_events_unpriced_total",
            "Stored usage events without a known price (stored at cost 0).",
            &["provider", "model"],
        )?;
        let tokens_unpriced = int_counter_vec(
            "tokenledger_tokens_unpriced_total",
            "Tokens of stored events the price book has no rate for, by component; the events' \
             cost covers their other tokens and pricing_rule names these.",
            &["provider", "model", "component"],
        )?;
        let batch_size = histogram(
            "tokenledger_batch_size",
            "Records per committed batch.",
            prometheus::exponential_buckets(1.0, 4.0, 8)?,
        )?;
        let batch_duration = histogram(
            "tokenledger_batch_duration_seconds",
            "Time to commit one batch, retries included.",
            prometheus::exponential_buckets(0.001, 2.5, 12)?,
        )?;
        let end_to_end_latency = histogram(
            "tokenledger_end_to_end_latency_seconds",
            "From the gateway accepting an event to its row being committed.",
            prometheus::exponential_buckets(0.01, 2.5, 12)?,
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "tokenledger_consumer_lag",
                "Records behind the partition's high watermark (best effort).",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let db_retries = int_counter(
            "tokenledger_db_retries_total",
            "Batch transactions retried after an error.",
        )?;
        let up = IntGauge::new("tokenledger_processor_up", "1 while the processor runs.")?;
        registry.register(Box::new(up.clone()))?;
        up.set(1);
        let last_commit = Gauge::new(
            "tokenledger_last_commit_timestamp_seconds",
            "Unix time of the last committed batch.",
        )?;
        registry.register(Box::new(last_commit.clone()))?;
        for reason in Reason::ALL {
            // pre-create so rate() works from the first dead letter on
            events_dead_lettered.with_label_values(&[reason.as_str()]);
        }

        Ok(Self {
            registry,
            bounds: Mutex::new(Bounds {
                tenants: LabelBound::new(max_tenant_labels),
                models: FairBound::new(max_model_labels),
                providers: FairBound::new(max_model_labels),
            }),
            total_tokens,
            total_cost,
            prompt_tokens,
            completion_tokens,
            events_consumed,
            events_inserted,
            events_duplicate,
            events_conflict,
            events_dead_lettered,
            events_unpriced,
            tokens_unpriced,
            batch_size,
            batch_duration,
            end_to_end_latency,
            consumer_lag,
            db_retries,
            up,
            last_commit,
            labels: std::sync::OnceLock::new(),
        })
    }

    /// Exports the attribution label `keys` as Prometheus labels, each with
    /// at most `max_values` values. Called once, before the first batch.
    pub fn enable_label_metrics(
        &self,
        keys: &[String],
        max_values: usize,
    ) -> Result<(), MetricsError> {
        if let Some(labels) =
            crate::stream::label_metrics::LabelMetrics::register(&self.registry, keys, max_values)?
        {
            let _ = self.labels.set(labels);
        }
        Ok(())
    }

    /// Moves the counters for a committed batch. Only `new_rows` count
    /// towards usage: duplicates were counted when first stored.
    ///
    /// The rows are summed per (provider, model, tenant) first and each
    /// series is moved once per batch. The label bounds see the distinct
    /// values in order of first appearance, so they admit exactly what
    /// they would admit row by row.
    pub fn record_batch(&self, batch: &CommittedBatch<'_>, duration: std::time::Duration) {
        if let Some(labels) = self.labels.get() {
            let mut bounds = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
            let tenants: Vec<&str> = batch
                .new_rows
                .iter()
                .map(|row| bounds.tenants.label(&row.event.tenant_id))
                .collect();
            drop(bounds);
            labels.record(batch.new_rows, &tenants);
        }
        // one lookup per row: foldhash rather than SipHash
        let mut slots: foldhash::HashMap<(&str, &str, &str), usize> = Default::default();
        let mut sums: Vec<((&str, &str, &str), UsageSum)> = Vec::new();
        let latency = self.end_to_end_latency.local();
        for row in batch.new_rows {
            let event = &row.event;
            let key = (
                event.provider.as_str(),
                event.model.as_str(),
                event.tenant_id.as_str(),
            );
            let slot = *slots.entry(key).or_insert_with(|| {
                sums.push((key, UsageSum::default()));
                sums.len() - 1
            });
            sums[slot].1.add(row);
            let elapsed = batch.committed_at - event.received_at;
            latency.observe(elapsed.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
        latency.flush();

        let mut bounded_slots: HashMap<[&str; 3], usize> = HashMap::with_capacity(sums.len());
        let mut bounded: Vec<([&str; 3], UsageSum)> = Vec::with_capacity(sums.len());
        let mut bounds = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
        for ((provider, model, tenant), sum) in sums {
            let tenant = bounds.tenants.label(tenant);
            let labels = [
                bounds.providers.label(tenant, provider),
                bounds.models.label(tenant, model),
                tenant,
            ];
            match bounded_slots.get(&labels) {
                Some(&slot) => bounded[slot].1.merge(&sum),
                None => {
                    bounded_slots.insert(labels, bounded.len());
                    bounded.push((labels, sum));
                }
            }
        }
        drop(bounds);

        let mut unpriced: HashMap<[&str; 2], u64> = HashMap::new();
        for (labels, sum) in &bounded {
            self.total_tokens
                .with_label_values(labels)
                .inc_by(sum.total_tokens);
            self.prompt_tokens
                .with_label_values(labels)
                .inc_by(sum.prompt_tokens);
            self.completion_tokens
                .with_label_values(labels)
                .inc_by(sum.completion_tokens);
            self.total_cost
                .with_label_values(labels)
                .inc_by(sum.cost_usd);
            if sum.unpriced > 0 {
                *unpriced.entry([labels[0], labels[1]]).or_default() += sum.unpriced;
            }
            for (component, n) in &sum.unpriced_tokens {
                self.tokens_unpriced
                    .with_label_values(&[labels[0], labels[1], component])
                    .inc_by(*n);
            }
        }
        for (labels, count) in &unpriced {
            self.events_unpriced
                .with_label_values(labels)
                .inc_by(*count);
        }
        self.events_consumed.inc_by(batch.consumed as u64);
        self.events_inserted.inc_by(batch.new_rows.len() as u64);
        self.events_duplicate.inc_by(batch.duplicates as u64);
        self.events_conflict.inc_by(batch.conflicts as u64);
        for (reason, count) in batch.dead_lettered {
            self.events_dead_lettered
                .with_label_values(&[reason.as_str()])
                .inc_by(*count as u64);
        }
        self.batch_size.observe(batch.consumed as f64);
        self.batch_duration.observe(duration.as_secs_f64());
        self.last_commit
            .set(batch.committed_at.timestamp_micros() as f64 / 1e6);
    }

    pub fn record_db_retry(&self) {
        self.db_retries.inc();
    }

    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(lag.max(0));
    }

    pub fn set_down(&self) {
        self.up.set(0);
    }

    /// The registry, for metrics other modules own (the alert outbox's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|error| prometheus::Error::Msg(error.to_string()))
    }

    pub fn seconds_since_last_commit(&self) -> Option<f64> {
        let last = self.last_commit.get();
        (last > 0.0).then(|| Utc::now().timestamp_micros() as f64 / 1e6 - last)
    }
}

#[cfg(test)]
mod tests;
