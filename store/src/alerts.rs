//! Threshold crossings in `budget_alerts`. The batch transaction records
//! each crossing once (the primary key is budget, tenant, user of an
//! each-user budget, period start, kind and threshold); the row snapshots what its alert says, so the alert reads the
//! same after the budget is edited or deleted. Delivering the rows (the
//! outbox columns) is the processor's alone and stays with it.

use chrono::{DateTime, Utc};
use ledger::Budget;
use rust_decimal::Decimal;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{db, DbError, SpendKey};

const RECORD_CROSSINGS: &str = "
INSERT INTO budget_alerts (budget_id, tenant_id, period_start, threshold, period_end,
                           budget_name, period, timezone, narrowing, amount_usd, spend_usd,
                           user_id)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int2[], $5::timestamptz[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::numeric[],
                     $11::numeric[], $12::text[])
ON CONFLICT DO NOTHING
RETURNING budget_id, threshold";

/// A threshold of `budget` that `spend_usd` has reached for `key`.
#[derive(Debug, Clone, Copy)]
pub struct Crossing<'a> {
    pub key: &'a SpendKey,
    pub budget: &'a Budget,
    pub period_end: DateTime<Utc>,
    pub threshold: u16,
    pub spend_usd: Decimal,
}

/// Records the crossings not recorded before; returns them as (budget id,
/// threshold).
pub async fn record_crossings(
    client: &impl GenericClient,
    crossings: &[Crossing<'_>],
) -> Result<Vec<(Uuid, u16)>, DbError> {
    if crossings.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = crossings.iter().map(|c| c.key.budget_id).collect();
    let tenants: Vec<&str> = crossings.iter().map(|c| c.key.tenant_id.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = crossings.iter().map(|c| c.key.period_start).collect();
    let thresholds: Vec<i16> = crossings
        .iter()
        .map(|c| i16::try_from(c.threshold).unwrap_or(i16::MAX))
        .collect();
    let ends: Vec<DateTime<Utc>> = crossings.iter().map(|c| c.period_end).collect();
    let names: Vec<&str> = crossings.iter().map(|c| c.budget.name.as_str()).collect();
    let periods: Vec<&str> = crossings.iter().map(|c| c.budget.period.as_str()).collect();
    let timezones: Vec<&str> = crossings.iter().map(|c| c.budget.timezone.name()).collect();
    let narrowings: Vec<String> = crossings
        .iter()
        .map(|c| c.budget.scope.narrowing())
        .collect();
    let amounts: Vec<Decimal> = crossings.iter().map(|c| c.budget.amount_usd).collect();
    let spends: Vec<Decimal> = crossings.iter().map(|c| c.spend_usd).collect();
    let users: Vec<&str> = crossings.iter().map(|c| c.key.user_id.as_str()).collect();
    let rows = client
        .query(
            RECORD_CROSSINGS,
            &[
                &ids,
                &tenants,
                &starts,
                &thresholds,
                &ends,
                &names,
                &periods,
                &timezones,
                &narrowings,
                &amounts,
                &spends,
                &users,
            ],
        )
        .await
        .map_err(db("record crossings"))?;
    rows.iter()
        .map(|row| {
            let threshold: i16 = row.try_get("threshold")?;
            Ok((
                row.try_get("budget_id")?,
                u16::try_from(threshold).unwrap_or(0),
            ))
        })
        .collect::<Result<_, _>>()
        .map_err(db("record crossings"))
}
