//! Recording what a target answered on the outbox rows: delivered, retried
//! later with backoff, or set aside as refused with the reason.

use chrono::{DateTime, Utc};
use ledger::ThresholdAlert;
use uuid::Uuid;

use super::{db, AlertOutbox, OutboxError, Target};

/// First pause after a failed push; doubled per attempt up to `max_backoff_ms`.
const FIRST_BACKOFF_MS: f64 = 1_000.0;
/// The last error kept per row, in characters.
const MAX_ERROR_CHARS: usize = 500;

const KEYS: &str = "
FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int2[], $5::text[], $6::text[],
            $7::timestamptz[])
     AS k(budget_id, tenant_id, period_start, threshold, user_id, kind, resolved_at)
WHERE a.budget_id = k.budget_id AND a.tenant_id = k.tenant_id
  AND a.period_start = k.period_start AND a.threshold = k.threshold
  AND a.user_id = k.user_id AND a.kind = k.kind
  -- A forecast alert resolved after it was claimed is pushed again, resolved.
  AND a.resolved_at IS NOT DISTINCT FROM k.resolved_at";

impl AlertOutbox {
    /// Holds the rows of `alerts` for `lease_ms` more, from now.
    pub(super) async fn extend_claim(
        &self,
        alerts: &[&ThresholdAlert],
        lease_ms: f64,
    ) -> Result<(), OutboxError> {
        let statement = format!(
            "UPDATE budget_alerts AS a
             SET next_attempt_at = now() + $8::float8 * INTERVAL '1 millisecond' {KEYS}"
        );
        let (ids, tenants, starts, thresholds, users, kinds, resolved) = key_columns(alerts);
        self.pool
            .get()
            .await?
            .execute(
                &statement,
                &[
                    &ids,
                    &tenants,
                    &starts,
                    &thresholds,
                    &users,
                    &kinds,
                    &resolved,
                    &lease_ms,
                ],
            )
            .await
            .map_err(db("extending the claim"))?;
        Ok(())
    }

    pub(super) async fn mark_delivered(
        &self,
        target: Target,
        alerts: &[&ThresholdAlert],
    ) -> Result<(), OutboxError> {
        let statement = format!(
            "UPDATE budget_alerts AS a SET {} = now(), last_error = NULL {KEYS}",
            target.delivered_column()
        );
        let (ids, tenants, starts, thresholds, users, kinds, resolved) = key_columns(alerts);
        self.pool
            .get()
            .await?
            .execute(
                &statement,
                &[
                    &ids,
                    &tenants,
                    &starts,
                    &thresholds,
                    &users,
                    &kinds,
                    &resolved,
                ],
            )
            .await
            .map_err(db("marking alerts delivered"))?;
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
        let statement = format!(
            "UPDATE budget_alerts AS a
             SET next_attempt_at = now() + LEAST($8::float8,
                     $9::float8 * power(2, LEAST(a.attempts - 1, 30)))
                     * INTERVAL '1 millisecond',
                 last_error = $10
             {KEYS}"
        );
        let (ids, tenants, starts, thresholds, users, kinds, resolved) = key_columns(alerts);
        let message = error_text(target, error);
        self.pool
            .get()
            .await?
            .execute(
                &statement,
                &[
                    &ids,
                    &tenants,
                    &starts,
                    &thresholds,
                    &users,
                    &kinds,
                    &resolved,
                    &(self.config.max_backoff_ms as f64),
                    &FIRST_BACKOFF_MS,
                    &message,
                ],
            )
            .await
            .map_err(db("scheduling a retry"))?;
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
        let statement = format!(
            "UPDATE budget_alerts AS a
             SET {} = now(), rejection = concat_ws('; ', a.rejection, $8::text), last_error = $8
             {KEYS}",
            target.rejected_column()
        );
        let (ids, tenants, starts, thresholds, users, kinds, resolved) = key_columns(&[alert]);
        let message = error_text(target, reason);
        self.pool
            .get()
            .await?
            .execute(
                &statement,
                &[
                    &ids,
                    &tenants,
                    &starts,
                    &thresholds,
                    &users,
                    &kinds,
                    &resolved,
                    &message,
                ],
            )
            .await
            .map_err(db("marking an alert rejected"))?;
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

type KeyColumns = (
    Vec<Uuid>,
    Vec<String>,
    Vec<DateTime<Utc>>,
    Vec<i16>,
    Vec<String>,
    Vec<&'static str>,
    Vec<Option<DateTime<Utc>>>,
);

/// `<target>: <error>`, cut to what a row keeps.
fn error_text(target: Target, error: &str) -> String {
    format!("{}: {error}", target.as_str())
        .chars()
        .take(MAX_ERROR_CHARS)
        .collect()
}

fn key_columns(alerts: &[&ThresholdAlert]) -> KeyColumns {
    let mut columns: KeyColumns = Default::default();
    for alert in alerts {
        columns.0.push(alert.budget_id);
        columns.1.push(alert.tenant_id.clone());
        columns.2.push(alert.period_start);
        columns
            .3
            .push(i16::try_from(alert.threshold).unwrap_or(i16::MAX));
        columns.4.push(alert.user_id.clone());
        columns.5.push(alert.kind.as_str());
        columns.6.push(alert.resolved_at);
    }
    columns
}
