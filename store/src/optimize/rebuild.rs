//! The optimization rollup of one UTC day and tenant recomputed from the
//! raw table: its rows deleted and the day's stored rows added again
//! through the batch path's own fold ([`add`]). Used by `processor
//! reprice` for every (day, tenant) whose cost it changed and by
//! `processor rebuild-optimize` for usage stored before the rollup.
//!
//! A committed batch whose delta is still pending (sql/V21) has its rows in
//! the raw table already: adding that delta after the rebuild would count
//! it twice. So a rebuild holds the applier's lock and reads in one
//! repeatable-read snapshot taken after it: it first applies every delta
//! that snapshot holds (whose rows it is about to read), and a batch
//! committing later has neither its rows nor its delta in it, so the
//! applier adds that one afterwards. No apply can commit in between, and
//! the rollup rows it rewrites are written by lock holders only.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use futures::{pin_mut, TryStreamExt};
use ledger::{PriceBook, PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use super::pending::{apply_all, APPLY_LOCK_KEY};
use super::rollup::{add, StoredRow};
use super::whatif::event_of;
use super::OptimizeError;
use crate::exports::midnight;
use crate::{db, DbError};

/// Rows added per [`add`]: bounds memory on a large day; the upserts add
/// up, so the result is the same as one call.
const CHUNK: usize = 5_000;

const ROWS: &str = "
SELECT created_at, tenant_id::text AS tenant_id, provider::text AS provider,
       model::text AS model, prompt_tokens, completion_tokens, total_tokens,
       cached_prompt_tokens, cache_write_tokens, reasoning_tokens,
       COALESCE(cache_write_1h_tokens, 0) AS cache_write_1h_tokens, service_tier, calls,
       unpriced_tokens, estimated_cost, pricing_status, labels
FROM gateway_mode_audit
WHERE created_at >= $1 AND created_at < $2 AND tenant_id = $3";

/// Pending rows applied per statement while a rebuild catches up.
const APPLY_CHUNK: i64 = 64;

/// Replaces the rollup of `day` and `tenant` with the one its stored rows
/// give under `book`, in a transaction of its own on `client`; returns how
/// many rows it read. Waits for a running apply to finish, and holds
/// appliers off until it commits.
pub async fn rebuild_day(
    client: &mut Client,
    book: &PriceBook,
    day: NaiveDate,
    tenant: &str,
) -> Result<u64, OptimizeError> {
    // A session lock, so that it is held before the transaction's snapshot
    // is taken (a transaction lock would be taken by its first statement,
    // which takes the snapshot first). A broken connection releases it.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&APPLY_LOCK_KEY])
        .await
        .map_err(db("waiting for the optimization applier"))?;
    let rebuilt = rebuild_locked(client, book, day, tenant).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&APPLY_LOCK_KEY])
        .await
        .map_err(db("releasing the optimization applier's lock"));
    let read = rebuilt?;
    unlocked?;
    Ok(read)
}

async fn rebuild_locked(
    client: &mut Client,
    book: &PriceBook,
    day: NaiveDate,
    tenant: &str,
) -> Result<u64, OptimizeError> {
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(db("beginning a rebuild"))?;
    // this transaction holds the lock through its session: a try-lock of
    // its own succeeds
    if apply_all(&transaction, APPLY_CHUNK).await?.is_none() {
        return Err(OptimizeError::Stored(
            "the optimization applier's lock is held elsewhere".into(),
        ));
    }
    let read = recompute(&transaction, book, day, tenant).await?;
    transaction
        .commit()
        .await
        .map_err(db("committing a rebuild"))?;
    Ok(read)
}

/// The rollup of `day` and `tenant` deleted and added again from the
/// stored rows the caller's transaction sees.
async fn recompute(
    client: &impl GenericClient,
    book: &PriceBook,
    day: NaiveDate,
    tenant: &str,
) -> Result<u64, OptimizeError> {
    let start = midnight(day);
    let end = midnight(day.checked_add_days(Days::new(1)).unwrap_or(day));
    for table in ["usage_optimize_daily", "usage_optimize_histogram"] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE day = $1 AND tenant_id = $2"),
                &[&start, &tenant],
            )
            .await
            .map_err(db("clearing the optimization rollup of a day"))?;
    }
    let params: [&(dyn ToSql + Sync); 3] = [&start, &end, &tenant];
    let rows = client
        .query_raw(ROWS, params)
        .await
        .map_err(db("reading a day's stored rows"))?;
    pin_mut!(rows);
    let mut read = 0u64;
    let mut chunk: Vec<(UsageEvent, Decimal, bool)> = Vec::with_capacity(CHUNK);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db("reading a day's stored rows"))?
    {
        let mut event = event_of(&row)?;
        let labels: Option<Json<BTreeMap<String, String>>> =
            row.try_get("labels").map_err(db("labels"))?;
        event.labels = labels.map(|j| j.0).unwrap_or_default();
        let status: String = row
            .try_get("pricing_status")
            .map_err(db("pricing_status"))?;
        let cost: Decimal = row
            .try_get("estimated_cost")
            .map_err(db("estimated_cost"))?;
        chunk.push((event, cost, status == PricingStatus::Unpriced.as_str()));
        read += 1;
        if chunk.len() == CHUNK {
            add_chunk(client, book, &chunk).await?;
            chunk.clear();
        }
    }
    add_chunk(client, book, &chunk).await?;
    Ok(read)
}

async fn add_chunk(
    client: &impl GenericClient,
    book: &PriceBook,
    chunk: &[(UsageEvent, Decimal, bool)],
) -> Result<(), DbError> {
    let rows: Vec<StoredRow<'_>> = chunk
        .iter()
        .map(|(event, cost, unpriced)| StoredRow {
            event,
            cost: *cost,
            unpriced: *unpriced,
        })
        .collect();
    add(client, book, &rows).await
}

/// The tenants with stored rows or rollup rows on `day` (a tenant whose
/// rows are gone still has its rollup rows cleared).
pub async fn tenants_of_day(
    client: &impl GenericClient,
    day: NaiveDate,
) -> Result<Vec<String>, DbError> {
    let start: DateTime<Utc> = midnight(day);
    let end: DateTime<Utc> = midnight(day.checked_add_days(Days::new(1)).unwrap_or(day));
    let rows = client
        .query(
            "SELECT tenant_id::text AS tenant_id FROM gateway_mode_audit
             WHERE created_at >= $1 AND created_at < $2
             UNION
             SELECT tenant_id::text FROM usage_optimize_daily WHERE day = $1
             ORDER BY 1",
            &[&start, &end],
        )
        .await
        .map_err(db("listing a day's tenants"))?;
    rows.iter()
        .map(|row| row.try_get("tenant_id").map_err(db("tenant_id")))
        .collect()
}

/// The tenants whose cost a re-pricing run changed on `day`, from the
/// run's `cost_corrections`.
pub async fn tenants_corrected(
    client: &impl GenericClient,
    run_id: uuid::Uuid,
    day: NaiveDate,
) -> Result<Vec<String>, DbError> {
    let start: DateTime<Utc> = midnight(day);
    let end: DateTime<Utc> = midnight(day.checked_add_days(Days::new(1)).unwrap_or(day));
    let rows = client
        .query(
            "SELECT DISTINCT tenant_id::text AS tenant_id FROM cost_corrections
             WHERE run_id = $1 AND created_at >= $2 AND created_at < $3
             ORDER BY 1",
            &[&run_id, &start, &end],
        )
        .await
        .map_err(db("listing the tenants a re-pricing changed"))?;
    rows.iter()
        .map(|row| row.try_get("tenant_id").map_err(db("tenant_id")))
        .collect()
}
