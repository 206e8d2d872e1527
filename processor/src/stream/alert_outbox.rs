//! Delivery of recorded threshold crossings, and the budget gauges.
//!
//! `budget_alerts` is an outbox: the batch transaction records a crossing
//! (exactly once, see [`crate::budget_spend`]); this task pushes it to
//! Alertmanager (`POST /api/v2/alerts`) and to the optional webhook until
//! each answers 2xx, with capped exponential backoff in between. A row is
//! marked delivered per target only after that target accepted it, so an
//! outage of Alertmanager delays alerts and loses none, and a processor that
//! dies between commit and push pushes after its restart (any processor of
//! the group will: the outbox is in the database, not in memory).
//!
//! Delivery is at least once: a crash between a 2xx and marking the row
//! delivered pushes it again. Alertmanager merges alerts with identical
//! labels, so it still shows one alert per crossing; a webhook receiver
//! should dedupe on the labels (they identify the crossing).
//!
//! Several processors may run this loop; a row is claimed by moving its
//! `next_attempt_at` past a lease with `FOR UPDATE SKIP LOCKED`, in a
//! statement of its own (no transaction stays open during HTTP calls).
//!
//! Every alert stays active for at least [`MIN_ACTIVE_AFTER_PUSH`](push::MIN_ACTIVE_AFTER_PUSH) after it
//! is pushed, and one whose period had ended when it was pushed is labelled
//! `late="true"` (see [`alert_payload`]): a crossing recorded from late
//! events, or held up past the period's end, is still seen, and Alertmanager
//! does not refuse it for ending before it starts.
//!
//! A target that answers 400 or 422 refuses the content of what it was sent;
//! sending it again cannot help. The batch is then pushed again one alert at
//! a time: the accepted ones are delivered, and each refused one is set
//! aside with the reason (`*_rejected_at`, `rejection`) instead of being
//! retried, so one bad alert never holds up the others.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use ledger::ThresholdAlert;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::config::AlertingConfig;

mod push;
mod record;

use push::alert_payload;
use push::{push, Outcome};
pub use store::alert_outbox::Target;

/// How often the gauges are read from the database, in polls.
const GAUGE_EVERY_POLLS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] store::DbError),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    TlsMaterial {
        what: &'static str,
        source: reqwest::Error,
    },
    #[error("cannot register metric: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The outbox's and the budgets' metrics, in the processor's registry.
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    spend_ratio: GaugeVec,
    pending: IntGauge,
    oldest_pending_age: prometheus::Gauge,
    delivered: IntCounterVec,
    failures: IntCounterVec,
    rejected: IntCounterVec,
}

impl OutboxMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let spend_ratio = GaugeVec::new(
            Opts::new(
                "tokenledger_budget_spend_ratio",
                "Spend of the current period divided by the budget amount, per budget and tenant \
                 (1 = the whole budget). At most alerting.max_ratio_series series, highest first.",
            ),
            &["tenant_id", "budget", "period"],
        )?;
        let pending = IntGauge::new(
            "tokenledger_budget_alerts_pending",
            "Recorded budget threshold crossings not yet accepted by every configured target.",
        )?;
        let oldest_pending_age = prometheus::Gauge::new(
            "tokenledger_budget_alerts_oldest_pending_age_seconds",
            "Age of the oldest crossing not yet accepted by every configured target (0 if none).",
        )?;
        let delivered = IntCounterVec::new(
            Opts::new(
                "tokenledger_budget_alerts_delivered_total",
                "Budget threshold alerts accepted by a target (alertmanager, webhook).",
            ),
            &["target"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "tokenledger_budget_alert_delivery_failures_total",
                "Failed pushes of budget threshold alerts, by target; each is retried.",
            ),
            &["target"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "tokenledger_budget_alerts_rejected_total",
                "Budget threshold alerts a target refused (HTTP 400 or 422), by target; they are \
                 not retried and keep the reason in budget_alerts.rejection.",
            ),
            &["target"],
        )?;
        registry.register(Box::new(spend_ratio.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(oldest_pending_age.clone()))?;
        registry.register(Box::new(delivered.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        for target in [Target::Alertmanager, Target::Webhook] {
            delivered.with_label_values(&[target.as_str()]);
            failures.with_label_values(&[target.as_str()]);
            rejected.with_label_values(&[target.as_str()]);
        }
        Ok(Self {
            spend_ratio,
            pending,
            oldest_pending_age,
            delivered,
            failures,
            rejected,
        })
    }
}

/// The delivery loop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertOutbox {
    pool: Pool,
    config: AlertingConfig,
    http: reqwest::Client,
    metrics: Arc<OutboxMetrics>,
}

impl AlertOutbox {
    pub fn new(
        pool: Pool,
        config: AlertingConfig,
        metrics: Arc<OutboxMetrics>,
    ) -> Result<Self, OutboxError> {
        let http = push::client(&config)?;
        Ok(Self {
            pool,
            config,
            http,
            metrics,
        })
    }

    fn targets(&self) -> (bool, bool) {
        (
            self.config.alertmanager_url.is_some(),
            self.config.webhook_url.is_some(),
        )
    }

    /// Pushes due crossings and refreshes the gauges every poll interval
    /// until `shutdown` is cancelled. Errors are logged and retried on the
    /// next poll; they never stop ingestion.
    pub async fn run(self, shutdown: CancellationToken) {
        let (alertmanager, webhook) = self.targets();
        tracing::info!(
            alertmanager = self
                .config
                .alertmanager_url
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), |url| url.redacted()),
            webhook = self.config.webhook_url.is_some(),
            "budget alert outbox running"
        );
        if !alertmanager && !webhook {
            tracing::warn!("alerting.alertmanager_url is not set: budget crossings are recorded in budget_alerts but not pushed");
        }
        let mut interval = tokio::time::interval(self.config.poll_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls: u32 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            if alertmanager || webhook {
                // Drain what is due, a batch at a time.
                loop {
                    match self.deliver_due().await {
                        Ok(claimed) if claimed >= self.config.batch_size => continue,
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(%error, "budget alert outbox poll failed");
                            break;
                        }
                    }
                }
            }
            if polls % GAUGE_EVERY_POLLS == 0 {
                if let Err(error) = self.refresh_gauges().await {
                    tracing::warn!(%error, "cannot refresh the budget gauges");
                }
            }
            polls = polls.wrapping_add(1);
        }
        tracing::info!("budget alert outbox stopped");
    }

    /// Claims the due crossings, pushes them, records the outcome. Returns
    /// how many were claimed.
    pub async fn deliver_due(&self) -> Result<usize, OutboxError> {
        let (alertmanager, webhook) = self.targets();
        let limit = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        let claim = store::alert_outbox::Claim {
            lease_ms: self.lease_ms(1),
            push_delay_ms: self.config.push_delay_ms as f64,
            alertmanager,
            webhook,
            limit,
        };
        let claimed = store::alert_outbox::claim_due(&**self.pool.get().await?, &claim).await?;
        let Some(now) = claimed.first().map(|row| row.claimed_at) else {
            return Ok(0);
        };
        for target in [Target::Alertmanager, Target::Webhook] {
            let url =
                match target {
                    Target::Alertmanager => self.config.alertmanager_url.as_ref().map(|base| {
                        format!("{}/api/v2/alerts", base.expose().trim_end_matches('/'))
                    }),
                    Target::Webhook => self
                        .config
                        .webhook_url
                        .as_ref()
                        .map(|url| url.expose().to_owned()),
                };
            let Some(url) = url else { continue };
            let batch: Vec<&ThresholdAlert> = claimed
                .iter()
                .filter(|c| match target {
                    Target::Alertmanager => c.needs_alertmanager,
                    Target::Webhook => c.needs_webhook,
                })
                .map(|c| &c.alert)
                .collect();
            if !batch.is_empty() {
                self.deliver(target, &url, &batch, now).await?;
            }
        }
        Ok(claimed.len())
    }

    /// How long a claim holds rows for `pushes` requests per target.
    fn lease_ms(&self, pushes: usize) -> f64 {
        (self.config.timeout_ms as f64) * 2.0 * (pushes as f64) + 1_000.0
    }

    /// Pushes `batch` to one target and records the outcome; a refused batch
    /// is pushed again one alert at a time, to deliver all but the refused.
    async fn deliver(
        &self,
        target: Target,
        url: &str,
        batch: &[&ThresholdAlert],
        now: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        let payload = Value::Array(batch.iter().map(|a| alert_payload(a, now)).collect());
        let reason = match push(&self.http, url, &payload).await {
            Outcome::Accepted => return self.mark_delivered(target, batch).await,
            Outcome::Failed(error) => return self.schedule_retry(target, batch, &error).await,
            Outcome::Rejected(reason) if batch.len() == 1 => {
                return self.mark_rejected(target, batch[0], &reason).await
            }
            Outcome::Rejected(reason) => reason,
        };
        tracing::warn!(
            target = target.as_str(),
            alerts = batch.len(),
            %reason,
            "a batch of budget alerts was refused; pushing its alerts one at a time"
        );
        // One request per alert now: hold the rows long enough for all of them.
        self.extend_claim(batch, self.lease_ms(batch.len())).await?;
        let mut accepted = Vec::new();
        for (index, alert) in batch.iter().enumerate() {
            let one = Value::Array(vec![alert_payload(alert, now)]);
            match push(&self.http, url, &one).await {
                Outcome::Accepted => accepted.push(*alert),
                Outcome::Rejected(reason) => self.mark_rejected(target, alert, &reason).await?,
                Outcome::Failed(error) => {
                    // The target is failing now, not refusing: the rest waits
                    // for the next attempt rather than for a timeout each.
                    self.schedule_retry(target, &batch[index..], &error).await?;
                    break;
                }
            }
        }
        if !accepted.is_empty() {
            self.mark_delivered(target, &accepted).await?;
        }
        Ok(())
    }

    /// Reads the current periods' spend ratios and the pending count.
    pub async fn refresh_gauges(&self) -> Result<(), OutboxError> {
        let (alertmanager, webhook) = self.targets();
        let client = self.pool.get().await?;
        let limit = i64::try_from(self.config.max_ratio_series).unwrap_or(i64::MAX);
        let rows = store::alert_outbox::current_ratios(&**client, limit).await?;
        let pending = store::alert_outbox::pending(&**client, alertmanager, webhook).await?;
        // Reset first: a budget deleted, renamed or in a new period without
        // spend yet must not keep its last value.
        self.metrics.spend_ratio.reset();
        for row in &rows {
            let ratio = ledger::budget::spend_ratio(row.spend_usd, row.amount_usd);
            self.metrics
                .spend_ratio
                .with_label_values(&[&row.tenant_id, &row.budget, &row.period])
                .set(ratio.to_f64().unwrap_or(0.0));
        }
        self.metrics.pending.set(pending.count);
        self.metrics
            .oldest_pending_age
            .set(pending.oldest_age_seconds.unwrap_or(0.0).max(0.0));
        Ok(())
    }
}

/// Registers the metrics and spawns the delivery loop until `stop`; the
/// forecasts count a model budget's names with `book`, the stream's own.
pub fn start(
    pool: Pool,
    config: &AlertingConfig,
    registry: &Registry,
    stop: CancellationToken,
    book: Arc<ledger::PriceBook>,
) -> Result<tokio::task::JoinHandle<()>, OutboxError> {
    let metrics = Arc::new(OutboxMetrics::new(registry)?);
    crate::stream::forecasts::spawn(pool.clone(), config, registry, stop.clone(), book)?;
    let outbox = AlertOutbox::new(pool, config.clone(), metrics)?;
    Ok(tokio::spawn(outbox.run(stop)))
}

#[cfg(test)]
mod tests;
