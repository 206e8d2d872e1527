//! The continuous aggregates over the audit table (`usage_hourly`,
//! `usage_daily`, `tenant_daily`, `model_daily`, sql/V2 and V5): refreshing
//! them over a window, their policies' refresh windows, and the daily rows
//! `processor report` reads. TimescaleDB refuses to refresh inside a
//! transaction, so each refresh here is a statement of its own on a plain
//! connection.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::{db, DbError};

/// The rollups in hierarchy order (the daily ones read `usage_hourly`),
/// with their bucket width.
pub const CONTINUOUS_AGGREGATES: [(&str, &str); 4] = [
    ("usage_hourly", "1 hour"),
    ("usage_daily", "1 day"),
    ("tenant_daily", "1 day"),
    ("model_daily", "1 day"),
];

/// Materializes `rollup` up to the start of its current bucket (`width`),
/// leaving the open bucket to real-time aggregation.
pub async fn refresh_to_open_bucket(
    client: &impl GenericClient,
    rollup: &str,
    width: &str,
) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "CALL refresh_continuous_aggregate('{rollup}', NULL, \
             time_bucket(INTERVAL '{width}', now()))"
        ))
        .await
        .map_err(db("refreshing a rollup"))
}

/// One refresh of `rollup` over `[start, end)`; `None` is open-ended.
pub async fn refresh(
    client: &impl GenericClient,
    rollup: &str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    client
        .execute(
            "CALL refresh_continuous_aggregate($1::text::regclass, $2::timestamptz, \
             $3::timestamptz)",
            &[&rollup, &start, &end],
        )
        .await
        .map(drop)
        .map_err(db("refreshing a rollup"))
}

/// A rollup's refresh window, as set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub rollup: String,
    pub start_offset: Option<String>,
    pub end_offset: Option<String>,
}

/// Sets every policy's window to the gateway's lateness plus `margin_days`
/// (sql/V5's `tokenledger_set_refresh_windows`); returns the windows set.
pub async fn set_refresh_windows(
    client: &impl GenericClient,
    margin_days: i32,
) -> Result<Vec<Window>, DbError> {
    const STEP: &str = "setting the refresh windows";
    let rows = client
        .query(
            "SELECT rollup, start_offset::text AS start_offset, end_offset::text AS end_offset \
             FROM tokenledger_set_refresh_windows(make_interval(days => $1))",
            &[&margin_days],
        )
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| {
            Ok(Window {
                rollup: row.try_get("rollup")?,
                start_offset: row.try_get("start_offset")?,
                end_offset: row.try_get("end_offset")?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// A refresh policy: its rollup's window and how often it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub window: Window,
    pub schedule_interval: String,
}

/// The refresh policies of the continuous aggregates, in job order.
pub async fn policies(client: &impl GenericClient) -> Result<Vec<Policy>, DbError> {
    const STEP: &str = "reading the refresh policies";
    let rows = client
        .query(
            "SELECT ca.view_name::text AS rollup, j.config->>'start_offset' AS start_offset, \
                    j.config->>'end_offset' AS end_offset, \
                    j.schedule_interval::text AS schedule_interval \
             FROM timescaledb_information.continuous_aggregates ca \
             JOIN timescaledb_information.jobs j \
               ON j.hypertable_name IN (ca.view_name, ca.materialization_hypertable_name) \
              AND j.proc_name = 'policy_refresh_continuous_aggregate' \
             ORDER BY j.job_id",
            &[],
        )
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| {
            Ok(Policy {
                window: Window {
                    rollup: row.try_get("rollup")?,
                    start_offset: row.try_get("start_offset")?,
                    end_offset: row.try_get("end_offset")?,
                },
                schedule_interval: row.try_get("schedule_interval")?,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// The raw table's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub rows: i64,
    pub tenants: i64,
    pub models: i64,
    pub total_tokens: i64,
    pub cost_usd: Decimal,
    pub unpriced_rows: i64,
    /// Rows priced but for some of their tokens (`unpriced_tokens`), and
    /// those tokens by component.
    pub partly_priced_rows: i64,
    pub unpriced_tokens: Vec<(String, i64)>,
    pub first_created_at: Option<DateTime<Utc>>,
    pub last_created_at: Option<DateTime<Utc>>,
}

/// One day of a daily rollup; the columns a rollup does not group by are
/// `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailyRow {
    pub day: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: Decimal,
    pub unpriced_requests: i64,
}

/// Totals over the whole raw table.
pub async fn totals(client: &impl GenericClient) -> Result<Totals, DbError> {
    const STEP: &str = "reading the totals";
    let row = client
        .query_one(
            "SELECT count(*) AS rows, count(DISTINCT tenant_id) AS tenants,
                    count(DISTINCT (provider, model)) AS models,
                    COALESCE(sum(total_tokens), 0)::BIGINT AS total_tokens,
                    COALESCE(sum(estimated_cost), 0) AS cost_usd,
                    count(*) FILTER (WHERE pricing_status = 'unpriced') AS unpriced_rows,
                    min(created_at) AS first_created_at, max(created_at) AS last_created_at,
                    count(*) FILTER (WHERE unpriced_tokens IS NOT NULL) AS partly_priced_rows
             FROM gateway_mode_audit",
            &[],
        )
        .await
        .map_err(db(STEP))?;
    let unpriced_tokens = client
        .query(
            "SELECT component, sum(tokens::bigint)::bigint AS tokens
             FROM gateway_mode_audit, jsonb_each_text(unpriced_tokens) AS u(component, tokens)
             WHERE unpriced_tokens IS NOT NULL
             GROUP BY component ORDER BY component",
            &[],
        )
        .await
        .map_err(db(STEP))?
        .iter()
        .map(|row| Ok((row.try_get("component")?, row.try_get("tokens")?)))
        .collect::<Result<_, _>>()
        .map_err(db(STEP))?;
    let totals = || -> Result<Totals, tokio_postgres::Error> {
        Ok(Totals {
            rows: row.try_get("rows")?,
            tenants: row.try_get("tenants")?,
            models: row.try_get("models")?,
            total_tokens: row.try_get("total_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            unpriced_rows: row.try_get("unpriced_rows")?,
            partly_priced_rows: row.try_get("partly_priced_rows")?,
            unpriced_tokens,
            first_created_at: row.try_get("first_created_at")?,
            last_created_at: row.try_get("last_created_at")?,
        })
    };
    totals().map_err(db(STEP))
}

/// A daily rollup `processor report` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daily {
    /// `tenant_daily`, per tenant.
    Tenant,
    /// `model_daily`, per provider and model.
    Model,
    /// `usage_daily`, per tenant, provider and model.
    Usage,
}

const SUMS: &str = "requests, prompt_tokens, completion_tokens, total_tokens, \
                    cost AS cost_usd, unpriced_requests";

/// The rows of `rollup` over the last `days` days, in day order.
pub async fn daily(
    client: &impl GenericClient,
    rollup: Daily,
    days: i32,
) -> Result<Vec<DailyRow>, DbError> {
    const STEP: &str = "reading the daily rollups";
    let sql = match rollup {
        Daily::Tenant => format!(
            "SELECT to_char(day, 'YYYY-MM-DD') AS day, tenant_id, NULL::text AS provider,
                    NULL::text AS model, {SUMS}
             FROM tenant_daily WHERE day > now() - make_interval(days => $1::int4)
             ORDER BY day, tenant_id"
        ),
        Daily::Model => format!(
            "SELECT to_char(day, 'YYYY-MM-DD') AS day, NULL::text AS tenant_id,
                    provider::text AS provider, model::text AS model, {SUMS}
             FROM model_daily WHERE day > now() - make_interval(days => $1::int4)
             ORDER BY day, provider, model"
        ),
        Daily::Usage => format!(
            "SELECT to_char(day, 'YYYY-MM-DD') AS day, tenant_id::text AS tenant_id,
                    provider::text AS provider, model::text AS model, {SUMS}
             FROM usage_daily WHERE day > now() - make_interval(days => $1::int4)
             ORDER BY day, tenant_id, provider, model"
        ),
    };
    let rows = client.query(&sql, &[&days]).await.map_err(db(STEP))?;
    rows.iter()
        .map(daily_row)
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

fn daily_row(row: &Row) -> Result<DailyRow, tokio_postgres::Error> {
    Ok(DailyRow {
        day: row.try_get("day")?,
        tenant_id: row.try_get("tenant_id")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        requests: row.try_get("requests")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
        total_tokens: row.try_get("total_tokens")?,
        cost_usd: row
            .try_get::<_, Option<Decimal>>("cost_usd")?
            .unwrap_or_default(),
        unpriced_requests: row.try_get("unpriced_requests")?,
    })
}
