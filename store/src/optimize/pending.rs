//! The optimization rollup's deltas on their way from the batch
//! transaction to `usage_optimize_daily` and `usage_optimize_histogram`
//! (sql/V21__optimization_rollup_pending.sql).
//!
//! [`record`] stores what a batch adds, folded exactly as the direct
//! upsert folds it, as one row of `usage_optimize_pending` in the batch's
//! transaction: one insert instead of ~15,000 upserted rows. [`apply`]
//! adds many such rows to the tables and deletes them in one transaction
//! under [`APPLY_LOCK_KEY`], so each is added exactly once: the delete and
//! the upserts commit or roll back together, and a row left by a crash is
//! still there for the next apply. The distinct target rows of many
//! batches are barely more than those of one, which is what this saves.
//!
//! Readers that must see every committed batch read the tables plus the
//! views `usage_optimize_pending_daily` / `_histogram` in one statement
//! (the report); an apply moves deltas from one to the other atomically,
//! so their sum never changes under a reader.

use std::time::Instant;

use ledger::PriceBook;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::columns::{key_positions, DailyColumns, HistogramColumns};
use super::rollup::{fold, histogram_conflict, sums_columns, sums_conflict, StoredRow};
use crate::{db, DbError};

/// The lock an apply holds for its transaction ("optapply" in ASCII): one
/// applier at a time across processors, and none while a rebuild recomputes
/// a day ([`super::rebuild::rebuild_day`] holds it for its whole run).
pub const APPLY_LOCK_KEY: i64 = 0x6f70_7461_7070_6c79;

const INSERT: &str = concat!(
    "
INSERT INTO usage_optimize_pending (
    day, tenant_id, provider, model, use_case, ",
    sums_columns!(),
    ",
    h_key, h_metric, h_bucket, h_requests)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)"
);

/// Stores what `rows` (the rows this transaction inserted) add to the
/// rollup as one pending row, in the caller's transaction, after the
/// attribution rollup's own upsert (whose use cases it folds by).
pub async fn record(
    client: &impl GenericClient,
    book: &PriceBook,
    rows: &[StoredRow<'_>],
) -> Result<(), DbError> {
    let mut folded = fold(client, book, rows).await?;
    if folded.is_empty() {
        return Ok(());
    }
    let positions = key_positions(&mut folded.sums, &folded.counts);
    let daily = DailyColumns::of(&folded.sums);
    let histogram = HistogramColumns::of(&folded.counts);
    let mut params: Vec<&(dyn ToSql + Sync)> = daily.params();
    params.extend([
        &positions as &(dyn ToSql + Sync),
        &histogram.metrics,
        &histogram.buckets,
        &histogram.requests,
    ]);
    client
        .execute(INSERT, &params)
        .await
        .map_err(db("storing the optimization rollup's deltas"))?;
    Ok(())
}

const APPLY_SUMS: &str = concat!(
    "
INSERT INTO usage_optimize_daily AS r (
    day, tenant_id, provider, model, use_case, ",
    sums_columns!(),
    ")
SELECT day, tenant_id, provider, model, use_case, sum(requests), sum(prompt_tokens),
       sum(completion_tokens), sum(total_tokens), sum(cached_prompt_tokens),
       sum(cache_write_tokens), sum(reasoning_tokens), max(max_prompt_tokens), sum(cost),
       sum(priced_requests), sum(priced_tokens), sum(listed_requests), sum(list_cost),
       sum(input_list_cost), sum(output_list_cost), sum(cache_read_list_cost),
       sum(cache_read_at_input_cost), sum(cache_write_list_cost),
       sum(cache_write_at_input_cost), sum(no_cache_requests), sum(no_cache_prompt_tokens),
       sum(no_cache_input_list_cost)
FROM usage_optimize_pending_daily
WHERE pending_id = ANY($1)
GROUP BY day, tenant_id, provider, model, use_case",
    sums_conflict!()
);

const APPLY_HISTOGRAM: &str = concat!(
    "
INSERT INTO usage_optimize_histogram AS r (
    day, tenant_id, provider, model, use_case, metric, bucket, requests)
SELECT day, tenant_id, provider, model, use_case, metric, bucket, sum(requests)
FROM usage_optimize_pending_histogram
WHERE pending_id = ANY($1)
GROUP BY day, tenant_id, provider, model, use_case, metric, bucket",
    histogram_conflict!()
);

/// What one [`apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pending rows (batches) added and deleted.
    pub batches: u64,
    /// The events they counted.
    pub events: i64,
    pub daily_rows: u64,
    pub histogram_rows: u64,
    pub micros: u64,
}

/// Adds up to `limit` pending rows to the tables and deletes them, in the
/// caller's transaction, which must commit for it to count. `None` when
/// another transaction holds [`APPLY_LOCK_KEY`] (another applier, a
/// rebuild): nothing was done, try again later.
pub async fn apply(client: &impl GenericClient, limit: i64) -> Result<Option<Applied>, DbError> {
    let started = Instant::now();
    let step = "taking the optimization applier's lock";
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            &[&APPLY_LOCK_KEY],
        )
        .await
        .map_err(db(step))?
        .try_get("locked")
        .map_err(db(step))?;
    if !locked {
        return Ok(None);
    }
    // The ids claimed are the ids summed and deleted: a batch committing
    // meanwhile adds a row none of the three statements names.
    let step = "claiming pending optimization deltas";
    let claimed = client
        .query(
            "SELECT id, (SELECT COALESCE(sum(n), 0) FROM UNNEST(requests) AS n)::int8 AS events
             FROM usage_optimize_pending ORDER BY id LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(db(step))?;
    let mut ids: Vec<i64> = Vec::with_capacity(claimed.len());
    let mut applied = Applied::default();
    for row in &claimed {
        ids.push(row.try_get("id").map_err(db(step))?);
        applied.events += row.try_get::<_, i64>("events").map_err(db(step))?;
    }
    if !ids.is_empty() {
        applied.daily_rows = client
            .execute(APPLY_SUMS, &[&ids])
            .await
            .map_err(db("applying the optimization rollup's deltas"))?;
        applied.histogram_rows = client
            .execute(APPLY_HISTOGRAM, &[&ids])
            .await
            .map_err(db("applying the optimization histogram's deltas"))?;
        applied.batches = client
            .execute(
                "DELETE FROM usage_optimize_pending WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db("deleting applied optimization deltas"))?;
    }
    applied.micros = started.elapsed().as_micros() as u64;
    Ok(Some(applied))
}

/// Applies every pending row the caller's transaction sees, `limit` at a
/// time; `None` when the lock is held elsewhere.
pub async fn apply_all(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Option<Applied>, DbError> {
    let mut total = Applied::default();
    loop {
        let Some(one) = apply(client, limit).await? else {
            return Ok(None);
        };
        total.batches += one.batches;
        total.events += one.events;
        total.daily_rows += one.daily_rows;
        total.histogram_rows += one.histogram_rows;
        total.micros += one.micros;
        if one.batches < limit.max(1) as u64 {
            return Ok(Some(total));
        }
    }
}
