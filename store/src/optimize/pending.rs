//! The optimization rollup's deltas on their way from the batch
//! transaction to `usage_optimize_daily` and `usage_optimize_histogram`
//! (sql/V21__optimization_rollup_pending.sql).
//!
//! [`insert`] stores what a batch adds, folded exactly as the direct
//! upsert folds it ([`super::rollup::fold`]), as one row of `usage_optimize_pending` in
//! the batch's transaction: one insert instead of ~15,000 upserted rows. [`apply`]
//! adds many such rows to the tables and deletes them in one transaction
//! under [`APPLY_LOCK_KEY`], so each is added exactly once: the delete and
//! the upserts commit or roll back together, and a row left by a crash is
//! still there for the next apply. What this saves is the batch
//! transaction's time, and the target rows many batches share: the daily
//! rows almost all, the histogram rows far fewer (on the benchmark's
//! traffic ~2.8 per event for one batch, 1.2-1.9 over 11-28 batches).
//!
//! Readers that must see every committed batch read the tables plus the
//! views `usage_optimize_pending_daily` / `_histogram` in one statement
//! (the report); an apply moves deltas from one to the other atomically,
//! so their sum never changes under a reader.

use std::time::Instant;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::columns::{key_positions, DailyColumns, HistogramColumns};
use super::rollup::{sums_columns, upsert, OptimizeKey, OptimizeSums, METRICS};
use super::sums::{Folded, Metric, Summed};
use super::OptimizeError;
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

/// Stores `folded` (what [`super::rollup::fold`] gave for the rows this transaction
/// inserted, after the attribution rollup's upsert) as one pending row, in
/// the caller's transaction.
pub async fn insert(client: &impl GenericClient, folded: Folded<'_>) -> Result<(), DbError> {
    if folded.is_empty() {
        return Ok(());
    }
    let positions = key_positions(&folded);
    let daily = DailyColumns::of(&folded);
    let histogram = HistogramColumns::of(&folded);
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
    /// Of `micros`: the two upserts.
    pub upsert_micros: u64,
}

impl std::ops::AddAssign for Applied {
    /// Turns taken one after another, as one.
    fn add_assign(&mut self, one: Applied) {
        self.batches += one.batches;
        self.events += one.events;
        self.daily_rows += one.daily_rows;
        self.histogram_rows += one.histogram_rows;
        self.micros += one.micros;
        self.upsert_micros += one.upsert_micros;
    }
}

/// Adds up to `limit` pending rows to the tables and deletes them, in the
/// caller's transaction, which must commit for it to count. `None` when
/// another transaction holds [`APPLY_LOCK_KEY`] (another applier, a
/// rebuild): nothing was done, try again later.
///
/// The rows are summed here, per target row, and added with the batch
/// path's own upserts ([`upsert`]): one plain upsert of distinct rows per
/// table, whatever the number of batches.
pub async fn apply(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Option<Applied>, OptimizeError> {
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
    // meanwhile adds a row neither statement names.
    let claimed = client
        .query(CLAIM, &[&limit])
        .await
        .map_err(db("claiming pending optimization deltas"))?
        .iter()
        .map(PendingRow::read)
        .collect::<Result<Vec<PendingRow>, OptimizeError>>()?;
    let mut applied = Applied::default();
    if claimed.is_empty() {
        applied.micros = started.elapsed().as_micros() as u64;
        return Ok(Some(applied));
    }
    let mut summed = Summed::default();
    for row in &claimed {
        applied.events += row.add_to(&mut summed)?;
    }
    let folded = summed.finish();
    applied.daily_rows = folded.keys.len() as u64;
    applied.histogram_rows = folded.counts.len() as u64;
    let upserting = Instant::now();
    upsert(client, &folded).await?;
    applied.upsert_micros = upserting.elapsed().as_micros() as u64;
    let ids: Vec<i64> = claimed.iter().map(|row| row.id).collect();
    applied.batches = client
        .execute(
            "DELETE FROM usage_optimize_pending WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(db("deleting applied optimization deltas"))?;
    applied.micros = started.elapsed().as_micros() as u64;
    Ok(Some(applied))
}

/// The batches whose deltas are not applied yet: how far the applier is
/// behind.
pub async fn count(client: &impl GenericClient) -> Result<i64, DbError> {
    let step = "counting pending optimization deltas";
    client
        .query_one(
            "SELECT count(*) AS pending FROM usage_optimize_pending",
            &[],
        )
        .await
        .map_err(db(step))?
        .try_get("pending")
        .map_err(db(step))
}

/// Applies every pending row the caller's transaction sees, `limit` at a
/// time; `None` when the lock is held elsewhere.
pub async fn apply_all(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Option<Applied>, OptimizeError> {
    let mut total = Applied::default();
    loop {
        let Some(one) = apply(client, limit).await? else {
            return Ok(None);
        };
        total += one;
        if one.batches < limit.max(1) as u64 {
            return Ok(Some(total));
        }
    }
}

const CLAIM: &str = concat!(
    "
SELECT id, day, tenant_id, provider, model, use_case, ",
    sums_columns!(),
    ",
    h_key, h_metric, h_bucket, h_requests
FROM usage_optimize_pending ORDER BY id LIMIT $1"
);

/// One claimed pending row, its arrays as read.
struct PendingRow {
    id: i64,
    day: Vec<DateTime<Utc>>,
    tenant_id: Vec<String>,
    provider: Vec<String>,
    model: Vec<String>,
    use_case: Vec<String>,
    sums: Vec<OptimizeSums>,
    h_key: Vec<i32>,
    h_metric: Vec<String>,
    h_bucket: Vec<i32>,
    h_requests: Vec<i64>,
}

impl PendingRow {
    fn read(row: &tokio_postgres::Row) -> Result<Self, OptimizeError> {
        let step = "reading a pending optimization delta";
        let day: Vec<DateTime<Utc>> = row.try_get("day").map_err(db(step))?;
        let keys = day.len();
        let column = |name: &'static str| -> Result<Vec<i64>, OptimizeError> {
            let values: Vec<i64> = row.try_get(name).map_err(db(step))?;
            same_length(name, values, keys)
        };
        let money = |name: &'static str| -> Result<Vec<Decimal>, OptimizeError> {
            let values: Vec<Decimal> = row.try_get(name).map_err(db(step))?;
            same_length(name, values, keys)
        };
        let text = |name: &'static str| -> Result<Vec<String>, OptimizeError> {
            let values: Vec<String> = row.try_get(name).map_err(db(step))?;
            same_length(name, values, keys)
        };
        let requests = column("requests")?;
        let prompt_tokens = column("prompt_tokens")?;
        let completion_tokens = column("completion_tokens")?;
        let total_tokens = column("total_tokens")?;
        let cached_prompt_tokens = column("cached_prompt_tokens")?;
        let cache_write_tokens = column("cache_write_tokens")?;
        let reasoning_tokens = column("reasoning_tokens")?;
        let max_prompt_tokens = column("max_prompt_tokens")?;
        let cost = money("cost")?;
        let priced_requests = column("priced_requests")?;
        let priced_tokens = column("priced_tokens")?;
        let listed_requests = column("listed_requests")?;
        let list_cost = money("list_cost")?;
        let input_list_cost = money("input_list_cost")?;
        let output_list_cost = money("output_list_cost")?;
        let cache_read_list_cost = money("cache_read_list_cost")?;
        let cache_read_at_input_cost = money("cache_read_at_input_cost")?;
        let cache_write_list_cost = money("cache_write_list_cost")?;
        let cache_write_at_input_cost = money("cache_write_at_input_cost")?;
        let no_cache_requests = column("no_cache_requests")?;
        let no_cache_prompt_tokens = column("no_cache_prompt_tokens")?;
        let no_cache_input_list_cost = money("no_cache_input_list_cost")?;
        let sums = (0..keys)
            .map(|i| OptimizeSums {
                requests: requests[i],
                prompt_tokens: prompt_tokens[i],
                completion_tokens: completion_tokens[i],
                total_tokens: total_tokens[i],
                cached_prompt_tokens: cached_prompt_tokens[i],
                cache_write_tokens: cache_write_tokens[i],
                reasoning_tokens: reasoning_tokens[i],
                max_prompt_tokens: max_prompt_tokens[i],
                cost: cost[i],
                priced_requests: priced_requests[i],
                priced_tokens: priced_tokens[i],
                listed_requests: listed_requests[i],
                list_cost: list_cost[i],
                input_list_cost: input_list_cost[i],
                output_list_cost: output_list_cost[i],
                cache_read_list_cost: cache_read_list_cost[i],
                cache_read_at_input_cost: cache_read_at_input_cost[i],
                cache_write_list_cost: cache_write_list_cost[i],
                cache_write_at_input_cost: cache_write_at_input_cost[i],
                no_cache_requests: no_cache_requests[i],
                no_cache_prompt_tokens: no_cache_prompt_tokens[i],
                no_cache_input_list_cost: no_cache_input_list_cost[i],
            })
            .collect();
        let h_key: Vec<i32> = row.try_get("h_key").map_err(db(step))?;
        let histogram = h_key.len();
        let h_metric: Vec<String> = row.try_get("h_metric").map_err(db(step))?;
        let h_bucket: Vec<i32> = row.try_get("h_bucket").map_err(db(step))?;
        let h_requests: Vec<i64> = row.try_get("h_requests").map_err(db(step))?;
        Ok(Self {
            id: row.try_get("id").map_err(db(step))?,
            day,
            tenant_id: text("tenant_id")?,
            provider: text("provider")?,
            model: text("model")?,
            use_case: text("use_case")?,
            sums,
            h_key,
            h_metric: same_length("h_metric", h_metric, histogram)?,
            h_bucket: same_length("h_bucket", h_bucket, histogram)?,
            h_requests: same_length("h_requests", h_requests, histogram)?,
        })
    }

    /// Adds this batch's deltas to `folded`; the events it counted.
    fn add_to<'a>(&'a self, summed: &mut Summed<'a>) -> Result<i64, OptimizeError> {
        let mut events = 0;
        let ids: Vec<u32> = (0..self.day.len())
            .map(|i| {
                let id = summed.id(OptimizeKey {
                    day: self.day[i],
                    tenant_id: &self.tenant_id[i],
                    provider: &self.provider[i],
                    model: &self.model[i],
                    use_case: &self.use_case[i],
                });
                summed.sums[id as usize].add(&self.sums[i]);
                events += self.sums[i].requests;
                id
            })
            .collect();
        for (j, position) in self.h_key.iter().enumerate() {
            let id = usize::try_from(*position - 1)
                .ok()
                .and_then(|at| ids.get(at))
                .ok_or_else(|| {
                    OptimizeError::Stored(format!(
                        "pending optimization delta {}: histogram key {position} of {}",
                        self.id,
                        ids.len()
                    ))
                })?;
            let metric = METRICS
                .iter()
                .position(|m| *m == self.h_metric[j])
                .ok_or_else(|| {
                    OptimizeError::Stored(format!(
                        "pending optimization delta {}: unknown metric {:?}",
                        self.id, self.h_metric[j]
                    ))
                })?;
            summed.count(*id, metric as Metric, self.h_bucket[j], self.h_requests[j]);
        }
        Ok(events)
    }
}

/// `values` if it has one element per key.
fn same_length<T>(name: &str, values: Vec<T>, keys: usize) -> Result<Vec<T>, OptimizeError> {
    if values.len() == keys {
        Ok(values)
    } else {
        Err(OptimizeError::Stored(format!(
            "a pending optimization delta's {name} has {} elements, not {keys}",
            values.len()
        )))
    }
}
