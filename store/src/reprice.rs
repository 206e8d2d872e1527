//! What `processor reprice` reads and changes: one page of
//! `gateway_mode_audit` in key order, the update of the rows whose pricing
//! changed, their `cost_corrections` rows, and the record of runs
//! (`reprice_runs`) and of the days whose rollups a run changed but has not
//! re-materialized yet (`reprice_pending_days`, sql/V13__reprice_runs.sql).
//! Every statement on the audit table carries the tenant: event ids are
//! unique per tenant only. What a new price is, and when the rollups are
//! refreshed, are the processor's.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use ledger::pricebook::ServiceTier;
use ledger::{PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use tokio_postgres::types::Json;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::audit::Pricing;
use crate::{db, DbError};

// Keyset paging over the unique key `(created_at, tenant_id, id)`: a cursor
// on `(created_at, id)` alone would skip a second tenant's row with the
// same id and time at a page boundary.
const PAGE: &str = "
SELECT id, created_at, tenant_id, user_id, provider, model,
       prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
       reasoning_tokens, COALESCE(cache_write_1h_tokens, 0) AS cache_write_1h_tokens,
       service_tier, calls,
       estimated_cost, pricing_status, list_cost, price_entry, price_book_version, pricing_rule,
       cost_source, labels, received_at, unpriced_tokens, api_key
FROM gateway_mode_audit
WHERE created_at >= $1 AND created_at < $2
  AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::text IS NULL OR provider = $4)
  AND ($5::text IS NULL OR model = $5)
  AND (created_at, tenant_id, id) > ($6, $7, $8)
ORDER BY created_at, tenant_id, id
LIMIT $9";

const UPDATE_ROWS: &str = "
UPDATE gateway_mode_audit AS a
SET estimated_cost = u.cost, pricing_status = u.status, list_cost = u.list_cost,
    price_entry = u.entry, price_book_version = u.version, pricing_rule = u.rule,
    cost_source = u.source,
    repriced_at = CASE WHEN a.estimated_cost <> u.cost OR a.pricing_status <> u.status
                       THEN now() ELSE a.repriced_at END
FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::numeric[], $5::text[],
            $6::numeric[], $7::text[], $8::text[], $9::text[], $10::text[])
     AS u(id, created_at, tenant_id, cost, status, list_cost, entry, version, rule, source)
WHERE a.id = u.id AND a.created_at = u.created_at AND a.tenant_id = u.tenant_id";

const INSERT_CORRECTIONS: &str = "
INSERT INTO cost_corrections (run_id, id, created_at, tenant_id, provider, model, old_cost,
                              new_cost, old_status, new_status, old_price_book_version,
                              new_price_book_version, new_pricing_rule)
SELECT $1, * FROM UNNEST($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::numeric[], $8::numeric[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::text[])
ON CONFLICT DO NOTHING";

/// Held by a run from start to end ("reprice"): runs take turns. Pages are
/// read without `FOR UPDATE`, which compressed chunks refuse; only a run
/// changes a stored row (ingestion inserts), so this lock keeps a page as
/// read until its update. Rebuilding the optimization rollup takes the same
/// turn: a re-pricing changes the rows it reads.
pub const LOCK_KEY: i64 = 0x0072_6570_7269_6365;

/// Waits for the turn to change stored rows ([`LOCK_KEY`], a session lock:
/// it outlives transactions, and a broken connection releases it).
pub async fn take_turn(client: &impl GenericClient) -> Result<(), DbError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("waiting for another reprice run"))?;
    Ok(())
}

/// Gives the turn taken by [`take_turn`] back.
pub async fn end_turn(client: &impl GenericClient) -> Result<(), DbError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("ending a reprice turn"))?;
    Ok(())
}

/// Where the next page starts: the key of the last row read.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    pub id: Uuid,
}

impl Cursor {
    /// Before every row at or after `from`.
    pub fn before(from: DateTime<Utc>) -> Self {
        Self {
            created_at: from - chrono::Duration::microseconds(1),
            tenant_id: String::new(),
            id: Uuid::nil(),
        }
    }
}

/// One stored row as read back: the event it was, and its pricing.
#[derive(Debug)]
pub struct Stored {
    pub event: UsageEvent,
    pub cost: Decimal,
    pub status: String,
    pub pricing: Pricing,
}

/// Which rows a run restates, and how many a page holds.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    pub tenant: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub page_rows: i64,
}

/// The next page of `range` after `cursor` (runs take turns on an advisory
/// lock, so the page stays as read until its update).
pub async fn page(
    transaction: &Transaction<'_>,
    filter: &Filter<'_>,
    range: (DateTime<Utc>, DateTime<Utc>),
    cursor: &Cursor,
) -> Result<Vec<Stored>, DbError> {
    let rows = transaction
        .query(
            PAGE,
            &[
                &range.0,
                &range.1,
                &filter.tenant,
                &filter.provider,
                &filter.model,
                &cursor.created_at,
                &cursor.tenant_id,
                &cursor.id,
                &filter.page_rows,
            ],
        )
        .await
        .map_err(db("reading stored rows"))?;
    rows.iter()
        .map(read_row)
        .collect::<Result<_, _>>()
        .map_err(db("reading stored rows"))
}

fn read_row(row: &Row) -> Result<Stored, tokio_postgres::Error> {
    let count = |column: &str| -> Result<u32, tokio_postgres::Error> {
        Ok(u32::try_from(row.try_get::<_, i32>(column)?).unwrap_or(0))
    };
    let status: String = row.try_get("pricing_status")?;
    let cost: Decimal = row.try_get("estimated_cost")?;
    let calls: Option<Json<BTreeMap<String, u32>>> = row.try_get("calls")?;
    // Re-pricing must leave out what ingestion left out, or audio tokens
    // would turn into text input on the next run.
    let unpriced: Option<Json<BTreeMap<String, u32>>> = row.try_get("unpriced_tokens")?;
    let labels: Option<Json<BTreeMap<String, String>>> = row.try_get("labels")?;
    let tier: Option<String> = row.try_get("service_tier")?;
    let event = UsageEvent {
        id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
        total_tokens: count("total_tokens")?,
        cached_prompt_tokens: count("cached_prompt_tokens")?,
        cache_write_tokens: count("cache_write_tokens")?,
        reasoning_tokens: count("reasoning_tokens")?,
        cache_write_1h_tokens: count("cache_write_1h_tokens")?,
        service_tier: tier.and_then(|t| t.parse::<ServiceTier>().ok()),
        calls: calls.map(|Json(calls)| calls).unwrap_or_default(),
        unpriced_tokens: unpriced.map(|Json(u)| u).unwrap_or_default(),
        // The caller's own cost stays the cost; the book restates only the
        // list cost beside it.
        estimated_cost: (status == PricingStatus::Provided.as_str()).then_some(cost),
        labels: labels.map(|Json(labels)| labels).unwrap_or_default(),
        received_at: row.try_get("received_at")?,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: row.try_get("api_key")?,
    };
    let source: Option<String> = row.try_get("cost_source")?;
    Ok(Stored {
        event,
        cost,
        pricing: Pricing {
            list_cost: row.try_get("list_cost")?,
            price_entry: row.try_get("price_entry")?,
            price_book_version: row
                .try_get::<_, Option<String>>("price_book_version")?
                .unwrap_or_default(),
            pricing_rule: row
                .try_get::<_, Option<String>>("pricing_rule")?
                .unwrap_or_default(),
            cost_source: match source.as_deref() {
                Some("book") => Some("book"),
                Some("tenant_contract") => Some("tenant_contract"),
                Some("caller") => Some("caller"),
                _ => None,
            },
        },
        status,
    })
}

/// A row to restate: the event, its new cost and status, its new pricing.
pub type Update = (UsageEvent, Decimal, PricingStatus, Pricing);

/// Restates `updates` in the audit table; a row whose cost or status
/// changed is stamped `repriced_at`.
pub async fn update(transaction: &Transaction<'_>, updates: &[Update]) -> Result<(), DbError> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.0.id).collect();
    let created: Vec<DateTime<Utc>> = updates.iter().map(|u| u.0.created_at).collect();
    let tenants: Vec<&str> = updates.iter().map(|u| u.0.tenant_id.as_str()).collect();
    let costs: Vec<Decimal> = updates.iter().map(|u| u.1).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.2.as_str()).collect();
    let list: Vec<Option<Decimal>> = updates.iter().map(|u| u.3.list_cost).collect();
    let entries: Vec<Option<&str>> = updates.iter().map(|u| u.3.price_entry.as_deref()).collect();
    let versions: Vec<&str> = updates
        .iter()
        .map(|u| u.3.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = updates.iter().map(|u| u.3.pricing_rule.as_str()).collect();
    let sources: Vec<Option<&str>> = updates.iter().map(|u| u.3.cost_source).collect();
    transaction
        .execute(
            UPDATE_ROWS,
            &[
                &ids, &created, &tenants, &costs, &statuses, &list, &entries, &versions, &rules,
                &sources,
            ],
        )
        .await
        .map_err(db("updating rows"))?;
    Ok(())
}

/// A changed cost: the event, its old cost, status and book version, its
/// new cost and status, its new pricing.
pub type Correction = (
    UsageEvent,
    Decimal,
    String,
    String,
    Decimal,
    PricingStatus,
    Pricing,
);

/// Records `corrections` as changed by `run_id` (each row once per run).
pub async fn insert_corrections(
    transaction: &Transaction<'_>,
    run_id: Uuid,
    corrections: &[Correction],
) -> Result<(), DbError> {
    if corrections.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = corrections.iter().map(|c| c.0.id).collect();
    let created: Vec<DateTime<Utc>> = corrections.iter().map(|c| c.0.created_at).collect();
    let tenants: Vec<&str> = corrections.iter().map(|c| c.0.tenant_id.as_str()).collect();
    let providers: Vec<&str> = corrections.iter().map(|c| c.0.provider.as_str()).collect();
    let models: Vec<&str> = corrections.iter().map(|c| c.0.model.as_str()).collect();
    let old_costs: Vec<Decimal> = corrections.iter().map(|c| c.1).collect();
    let new_costs: Vec<Decimal> = corrections.iter().map(|c| c.4).collect();
    let old_statuses: Vec<&str> = corrections.iter().map(|c| c.2.as_str()).collect();
    let new_statuses: Vec<&str> = corrections.iter().map(|c| c.5.as_str()).collect();
    let old_versions: Vec<Option<&str>> = corrections
        .iter()
        .map(|c| (!c.3.is_empty()).then_some(c.3.as_str()))
        .collect();
    let new_versions: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.pricing_rule.as_str())
        .collect();
    transaction
        .execute(
            INSERT_CORRECTIONS,
            &[
                &run_id,
                &ids,
                &created,
                &tenants,
                &providers,
                &models,
                &old_costs,
                &new_costs,
                &old_statuses,
                &new_statuses,
                &old_versions,
                &new_versions,
                &rules,
            ],
        )
        .await
        .map_err(db("recording corrections"))?;
    Ok(())
}

/// What a run restates, as recorded in `reprice_runs`.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub run_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tenant: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub price_book_version: &'a str,
}

pub async fn start_run(client: &impl GenericClient, run: &Run<'_>) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO reprice_runs (run_id, from_day, to_day, tenant_id, provider, model,
                                       price_book_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &run.run_id,
                &run.from,
                &run.to,
                &run.tenant,
                &run.provider,
                &run.model,
                &run.price_book_version,
            ],
        )
        .await
        .map_err(db("recording the run"))?;
    Ok(())
}

pub async fn finish_run(client: &impl GenericClient, run_id: Uuid) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE reprice_runs SET finished_at = now() WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .map_err(db("recording the run as finished"))?;
    Ok(())
}

/// Records `days` as changed by `run_id`, in the page's transaction.
pub async fn record_days(
    client: &impl GenericClient,
    run_id: Uuid,
    days: &[NaiveDate],
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO reprice_pending_days (run_id, day)
             SELECT $1, day FROM UNNEST($2::date[]) AS day
             ON CONFLICT DO NOTHING",
            &[&run_id, &days],
        )
        .await
        .map_err(db("recording the days to refresh"))?;
    Ok(())
}

/// Every (run, day) recorded and not yet refreshed, of any run.
pub async fn pending_days(client: &impl GenericClient) -> Result<Vec<(Uuid, NaiveDate)>, DbError> {
    const STEP: &str = "reading the days to refresh";
    client
        .query("SELECT run_id, day FROM reprice_pending_days", &[])
        .await
        .map_err(db(STEP))?
        .iter()
        .map(|row| Ok((row.try_get("run_id")?, row.try_get("day")?)))
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// Forgets the (run, day) pairs of `done`, refreshed.
pub async fn forget_days(
    client: &impl GenericClient,
    done: &[(Uuid, NaiveDate)],
) -> Result<(), DbError> {
    let runs: Vec<Uuid> = done.iter().map(|(run, _)| *run).collect();
    let days: Vec<NaiveDate> = done.iter().map(|(_, day)| *day).collect();
    client
        .execute(
            "DELETE FROM reprice_pending_days AS p
             USING UNNEST($1::uuid[], $2::date[]) AS done(run_id, day)
             WHERE p.run_id = done.run_id AND p.day = done.day",
            &[&runs, &days],
        )
        .await
        .map_err(db("forgetting the refreshed days"))?;
    Ok(())
}
