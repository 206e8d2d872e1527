//! The delivery columns of `budget_alerts`, the outbox the processor pushes
//! crossings from: claiming due rows under a lease (`FOR UPDATE SKIP
//! LOCKED`, one statement, no transaction held during HTTP calls), and
//! recording what a target answered (delivered, retried with backoff,
//! refused with the reason); plus the reads behind the budget gauges.
//! Recording a crossing is [`crate::alerts`]; what to push, when, and to
//! whom is the processor's.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use ledger::{Period, ThresholdAlert};
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::column::{Kind, Parsed, Percent};
use crate::{db, DbError};

const CLAIM_DUE: &str = "
UPDATE budget_alerts AS a
SET attempts = a.attempts + 1,
    next_attempt_at = now() + $1::float8 * INTERVAL '1 millisecond'
FROM (
    SELECT budget_id, tenant_id, user_id, period_start, kind, threshold
    FROM budget_alerts
    WHERE next_attempt_at <= now()
      AND crossed_at <= now() - $2::float8 * INTERVAL '1 millisecond'
      AND (($3 AND alertmanager_delivered_at IS NULL AND alertmanager_rejected_at IS NULL)
        OR ($4 AND webhook_delivered_at IS NULL AND webhook_rejected_at IS NULL))
    ORDER BY next_attempt_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
) AS due
WHERE a.budget_id = due.budget_id AND a.tenant_id = due.tenant_id
  AND a.user_id = due.user_id AND a.period_start = due.period_start AND a.kind = due.kind
  AND a.threshold = due.threshold
RETURNING a.budget_id, a.tenant_id, a.user_id, a.kind, a.period_start, a.threshold,
          a.period_end, a.budget_name, a.period, a.timezone, a.narrowing, a.amount_usd,
          a.spend_usd, a.crossed_at, a.resolved_at,
          a.alertmanager_delivered_at IS NULL AND a.alertmanager_rejected_at IS NULL
              AS needs_alertmanager,
          a.webhook_delivered_at IS NULL AND a.webhook_rejected_at IS NULL AS needs_webhook,
          now() AS claimed_at";

const PENDING: &str = "
SELECT count(*) AS pending, EXTRACT(EPOCH FROM now() - min(crossed_at))::float8 AS oldest_age
FROM budget_alerts
WHERE ($1 AND alertmanager_delivered_at IS NULL AND alertmanager_rejected_at IS NULL)
   OR ($2 AND webhook_delivered_at IS NULL AND webhook_rejected_at IS NULL)";

// An each-user budget has a row per user; its series per tenant is the
// user nearest the amount (the users are in its alerts and the status
// endpoint, not in label values: their number is unbounded).
const CURRENT_RATIOS: &str = "
SELECT b.name, s.tenant_id, b.period, max(s.spend_usd) AS spend_usd, b.amount_usd
FROM budget_spend AS s JOIN budgets AS b ON b.id = s.budget_id
WHERE s.period_start <= now() AND s.period_end > now()
GROUP BY b.id, b.name, s.tenant_id, b.period, b.amount_usd
ORDER BY max(s.spend_usd) / b.amount_usd DESC, b.name, s.tenant_id
LIMIT $1";

const KEYS: &str = "
FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int2[], $5::text[], $6::text[],
            $7::timestamptz[])
     AS k(budget_id, tenant_id, period_start, threshold, user_id, kind, resolved_at)
WHERE a.budget_id = k.budget_id AND a.tenant_id = k.tenant_id
  AND a.period_start = k.period_start AND a.threshold = k.threshold
  AND a.user_id = k.user_id AND a.kind = k.kind
  -- A forecast alert resolved after it was claimed is pushed again, resolved.
  AND a.resolved_at IS NOT DISTINCT FROM k.resolved_at";

/// Where a crossing is pushed; each has its own delivery columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Alertmanager,
    Webhook,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Alertmanager => "alertmanager",
            Target::Webhook => "webhook",
        }
    }

    fn delivered_column(self) -> &'static str {
        match self {
            Target::Alertmanager => "alertmanager_delivered_at",
            Target::Webhook => "webhook_delivered_at",
        }
    }

    fn rejected_column(self) -> &'static str {
        match self {
            Target::Alertmanager => "alertmanager_rejected_at",
            Target::Webhook => "webhook_rejected_at",
        }
    }
}

/// One claimed row of `budget_alerts`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub alert: ThresholdAlert,
    pub needs_alertmanager: bool,
    pub needs_webhook: bool,
    /// The database's clock when the row was claimed.
    pub claimed_at: DateTime<Utc>,
}

impl Claimed {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        let Parsed(period) = row.try_get::<_, Parsed<Period>>("period")?;
        let Parsed(timezone) = row.try_get::<_, Parsed<Tz>>("timezone")?;
        let Parsed(Kind(kind)) = row.try_get::<_, Parsed<Kind>>("kind")?;
        let Percent(threshold) = row.try_get("threshold")?;
        Ok(Self {
            alert: ThresholdAlert {
                budget_id: row.try_get("budget_id")?,
                budget_name: row.try_get("budget_name")?,
                tenant_id: row.try_get("tenant_id")?,
                user_id: row.try_get("user_id")?,
                kind,
                period,
                timezone,
                period_start: row.try_get("period_start")?,
                period_end: row.try_get("period_end")?,
                threshold,
                amount_usd: row.try_get("amount_usd")?,
                spend_usd: row.try_get("spend_usd")?,
                narrowing: row.try_get("narrowing")?,
                crossed_at: row.try_get("crossed_at")?,
                resolved_at: row.try_get("resolved_at")?,
            },
            needs_alertmanager: row.try_get("needs_alertmanager")?,
            needs_webhook: row.try_get("needs_webhook")?,
            claimed_at: row.try_get("claimed_at")?,
        })
    }
}

/// How a claim picks rows: due, older than the push delay, and not yet
/// accepted or refused by a configured target.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// How long the claimed rows are held before another claim may take them.
    pub lease_ms: f64,
    /// How old a crossing must be before it is pushed.
    pub push_delay_ms: f64,
    pub alertmanager: bool,
    pub webhook: bool,
    pub limit: i64,
}

/// Claims the due crossings, earliest due first.
pub async fn claim_due(
    client: &impl GenericClient,
    claim: &Claim,
) -> Result<Vec<Claimed>, DbError> {
    const STEP: &str = "claiming due alerts";
    let rows = client
        .query(
            CLAIM_DUE,
            &[
                &claim.lease_ms,
                &claim.push_delay_ms,
                &claim.alertmanager,
                &claim.webhook,
                &claim.limit,
            ],
        )
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(Claimed::from_row)
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// Holds the rows of `alerts` for `lease_ms` more, from now.
pub async fn extend_claim(
    client: &impl GenericClient,
    alerts: &[&ThresholdAlert],
    lease_ms: f64,
) -> Result<(), DbError> {
    let set = "next_attempt_at = now() + $8::float8 * INTERVAL '1 millisecond'";
    update_keyed(client, set, alerts, &[&lease_ms])
        .await
        .map_err(db("extending the claim"))
}

/// Marks `alerts` accepted by `target`.
pub async fn mark_delivered(
    client: &impl GenericClient,
    target: Target,
    alerts: &[&ThresholdAlert],
) -> Result<(), DbError> {
    let set = format!("{} = now(), last_error = NULL", target.delivered_column());
    update_keyed(client, &set, alerts, &[])
        .await
        .map_err(db("marking alerts delivered"))
}

/// Schedules the next attempt at `alerts` after a failed push: the backoff
/// doubles per attempt from `first_backoff_ms` up to `max_backoff_ms`.
pub async fn schedule_retry(
    client: &impl GenericClient,
    alerts: &[&ThresholdAlert],
    max_backoff_ms: f64,
    first_backoff_ms: f64,
    last_error: &str,
) -> Result<(), DbError> {
    let set = "next_attempt_at = now() + LEAST($8::float8,
                   $9::float8 * power(2, LEAST(a.attempts - 1, 30)))
                   * INTERVAL '1 millisecond',
               last_error = $10";
    update_keyed(
        client,
        set,
        alerts,
        &[&max_backoff_ms, &first_backoff_ms, &last_error],
    )
    .await
    .map_err(db("scheduling a retry"))
}

/// Sets `alert` aside for `target` with the reason it was refused.
pub async fn mark_rejected(
    client: &impl GenericClient,
    target: Target,
    alert: &ThresholdAlert,
    reason: &str,
) -> Result<(), DbError> {
    let set = format!(
        "{} = now(), rejection = concat_ws('; ', a.rejection, $8::text), last_error = $8",
        target.rejected_column()
    );
    update_keyed(client, &set, &[alert], &[&reason])
        .await
        .map_err(db("marking an alert rejected"))
}

/// `UPDATE budget_alerts AS a SET <set>` on the rows of `alerts`: their
/// keys are parameters `$1`–`$7` ([`KEYS`]), `extra` follows from `$8`.
async fn update_keyed(
    client: &impl GenericClient,
    set: &str,
    alerts: &[&ThresholdAlert],
    extra: &[&(dyn ToSql + Sync)],
) -> Result<(), tokio_postgres::Error> {
    let statement = format!("UPDATE budget_alerts AS a SET {set} {KEYS}");
    let (ids, tenants, starts, thresholds, users, kinds, resolved) = key_columns(alerts);
    let keys: [&(dyn ToSql + Sync); 7] = [
        &ids,
        &tenants,
        &starts,
        &thresholds,
        &users,
        &kinds,
        &resolved,
    ];
    let params: Vec<&(dyn ToSql + Sync)> = keys.iter().chain(extra).copied().collect();
    client.execute(&statement, &params).await.map(drop)
}

/// Crossings not yet accepted by every configured target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pending {
    pub count: i64,
    /// Age of the oldest, in seconds; `None` when there is none.
    pub oldest_age_seconds: Option<f64>,
}

/// Counts the crossings pending for the configured targets.
pub async fn pending(
    client: &impl GenericClient,
    alertmanager: bool,
    webhook: bool,
) -> Result<Pending, DbError> {
    const STEP: &str = "counting pending alerts";
    let row = client
        .query_one(PENDING, &[&alertmanager, &webhook])
        .await
        .map_err(db(STEP))?;
    Ok(Pending {
        count: row.try_get("pending").map_err(db(STEP))?,
        oldest_age_seconds: row.try_get("oldest_age").map_err(db(STEP))?,
    })
}

/// The spend of a budget's current period for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentSpend {
    pub budget: String,
    pub tenant_id: String,
    pub period: String,
    pub spend_usd: Decimal,
    pub amount_usd: Decimal,
}

/// The `limit` current periods with the highest share of their budget spent.
pub async fn current_ratios(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<CurrentSpend>, DbError> {
    const STEP: &str = "reading spend ratios";
    let rows = client
        .query(CURRENT_RATIOS, &[&limit])
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| {
            Ok(CurrentSpend {
                budget: row.try_get("name")?,
                tenant_id: row.try_get("tenant_id")?,
                period: row.try_get("period")?,
                spend_usd: row.try_get("spend_usd")?,
                amount_usd: row.try_get("amount_usd")?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
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
