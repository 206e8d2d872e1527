//! Recording what a target answered on the outbox rows
//! ([`store::alert_outbox`]): delivered, retried later with backoff, or set
//! aside as refused with the reason; and counting and logging it.

use ledger::ThresholdAlert;

use super::{AlertOutbox, OutboxError, Target};

/// First pause after a failed push; doubled per attempt up to `max_backoff_ms`.
const FIRST_BACKOFF_MS: f64 = 1_000.0;
/// The last error kept per row, in characters.
const MAX_ERROR_CHARS: usize = 500;

impl AlertOutbox {
    /// Holds the rows of `alerts` for `lease_ms` more, from now.
    pub(super) async fn extend_claim(
        &self,
        alerts: &[&ThresholdAlert],
        lease_ms: f64,
    ) -> Result<(), OutboxError> {
        store::alert_outbox::extend_claim(&**self.pool.get().await?, alerts, lease_ms).await?;
        Ok(())
    }

    pub(super) async fn mark_delivered(
        &self,
        target: Target,
        alerts: &[&ThresholdAlert],
    ) -> Result<(), OutboxError> {
        store::alert_outbox::mark_delivered(&**self.pool.get().await?, target, alerts).await?;
        self.metrics
            .delivered
            .with_label_values(&[target.as_str()])
            .inc_by(alerts.len() as u64);
        tracing::info!(
            target = target.as_str(),
            alerts = alerts.len(),
            "budget alerts delivered"
        );
        Ok(())
    }

    pub(super) async fn schedule_retry(
        &self,
        target: Target,
        alerts: &[&ThresholdAlert],
        error: &str,
    ) -> Result<(), OutboxError> {
        let message = error_text(target, error);
        store::alert_outbox::schedule_retry(
            &**self.pool.get().await?,
            alerts,
            self.config.max_backoff_ms as f64,
            FIRST_BACKOFF_MS,
            &message,
        )
        .await?;
        self.metrics
            .failures
            .with_label_values(&[target.as_str()])
            .inc();
        tracing::warn!(
            target = target.as_str(),
            alerts = alerts.len(),
            %error,
            "pushing budget alerts failed; will retry with backoff"
        );
        Ok(())
    }

    /// Sets a refused alert aside for this target, with the reason.
    pub(super) async fn mark_rejected(
        &self,
        target: Target,
        alert: &ThresholdAlert,
        reason: &str,
    ) -> Result<(), OutboxError> {
        let message = error_text(target, reason);
        store::alert_outbox::mark_rejected(&**self.pool.get().await?, target, alert, &message)
            .await?;
        self.metrics
            .rejected
            .with_label_values(&[target.as_str()])
            .inc();
        tracing::error!(
            target = target.as_str(),
            budget = %alert.budget_name,
            tenant_id = %alert.tenant_id,
            threshold = alert.threshold,
            period_start = %alert.period_start,
            %reason,
            "a budget alert was refused; it is set aside and not retried"
        );
        Ok(())
    }
}

/// `<target>: <error>`, cut to what a row keeps.
fn error_text(target: Target, error: &str) -> String {
    format!("{}: {error}", target.as_str())
        .chars()
        .take(MAX_ERROR_CHARS)
        .collect()
}
