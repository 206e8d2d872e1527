//! What a set of stored rows adds to `usage_optimize_daily` and
//! `usage_optimize_histogram` (sql/V14__optimization_rollup.sql): the sums
//! per target row ([`rollup`], pure, computed before the batch transaction),
//! use cases folded ([`fold_rolled`], in it), and the upserts that add them
//! ([`upsert`], [`add`]).
//!
//! The rows are summed per target row here, use cases folded here too, so
//! each statement is a plain upsert of distinct rows: the database pays one
//! index probe and one write per target row, which is what the rollup
//! costs (a batch of 5,000 events touches about 1,400 daily rows and 13,000
//! histogram rows on the benchmark's traffic). The batch transaction does
//! not upsert: it stores the folded sums as one pending row
//! ([`super::pending`]), and the applier adds many batches' at once.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ledger::day::utc_day;
use ledger::pricebook::Listings;
use ledger::{PriceBook, UsageEvent};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tokio_postgres::GenericClient;

use super::columns::{DailyColumns, HistogramColumns};
use super::histogram::bucket;
use super::parts::split_listed;
pub use super::sums::{Folded, Summed};
use super::USE_CASE_LABEL;
use crate::attribution::{Admitted, OTHER, UNLABELLED};
use crate::{db, DbError};

/// One stored row as the rollup needs it.
#[derive(Debug, Clone, Copy)]
pub struct StoredRow<'a> {
    pub event: &'a UsageEvent,
    /// `estimated_cost` as stored.
    pub cost: Decimal,
    pub unpriced: bool,
}

/// Where a row counts: UTC day, tenant, provider, model, use case,
/// borrowed from the batch's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OptimizeKey<'a> {
    pub day: DateTime<Utc>,
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub use_case: &'a str,
}

/// The sums of one rollup row, in the columns' order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimizeSums {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub max_prompt_tokens: i64,
    pub cost: Decimal,
    pub priced_requests: i64,
    pub priced_tokens: i64,
    pub listed_requests: i64,
    pub list_cost: Decimal,
    pub input_list_cost: Decimal,
    pub output_list_cost: Decimal,
    pub cache_read_list_cost: Decimal,
    pub cache_read_at_input_cost: Decimal,
    pub cache_write_list_cost: Decimal,
    pub cache_write_at_input_cost: Decimal,
    pub no_cache_requests: i64,
    pub no_cache_prompt_tokens: i64,
    pub no_cache_input_list_cost: Decimal,
}

impl OptimizeSums {
    pub fn add(&mut self, o: &Self) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.total_tokens += o.total_tokens;
        self.cached_prompt_tokens += o.cached_prompt_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.max_prompt_tokens = self.max_prompt_tokens.max(o.max_prompt_tokens);
        self.cost += o.cost;
        self.priced_requests += o.priced_requests;
        self.priced_tokens += o.priced_tokens;
        self.listed_requests += o.listed_requests;
        self.list_cost += o.list_cost;
        self.input_list_cost += o.input_list_cost;
        self.output_list_cost += o.output_list_cost;
        self.cache_read_list_cost += o.cache_read_list_cost;
        self.cache_read_at_input_cost += o.cache_read_at_input_cost;
        self.cache_write_list_cost += o.cache_write_list_cost;
        self.cache_write_at_input_cost += o.cache_write_at_input_cost;
        self.no_cache_requests += o.no_cache_requests;
        self.no_cache_prompt_tokens += o.no_cache_prompt_tokens;
        self.no_cache_input_list_cost += o.no_cache_input_list_cost;
    }
}

/// The metrics the histogram counts.
pub const METRICS: [&str; 3] = ["prompt_tokens", "cost", "cost_per_1k_tokens"];

/// What some rows add before use cases are folded ([`rollup`]): sums and
/// histogram counts under key ids, in no order.
pub type Rolled<'a> = Summed<'a>;

/// What `rows` add: the sums per key, and the histogram counts per key,
/// metric and bucket, before use cases are folded. Pure (no database), so
/// the batch computes it before its transaction, and every figure is
/// unit-testable.
pub fn rollup<'a>(book: &PriceBook, rows: &[StoredRow<'a>]) -> Rolled<'a> {
    // on the benchmark's traffic ~0.3 keys and ~2.8 histogram entries per
    // row (at most 1 and 3): room for about that, so that neither map grows
    // through every power of two nor starts at twice its size
    let mut rolled = Rolled::with_capacity(rows.len() / 2, rows.len() * 5 / 2);
    let mut listings = Listings::new(book);
    for row in rows {
        let event = row.event;
        let key = OptimizeKey {
            day: utc_day(event.created_at),
            tenant_id: &event.tenant_id,
            provider: &event.provider,
            model: &event.model,
            use_case: event
                .labels
                .get(USE_CASE_LABEL)
                .map_or(UNLABELLED, String::as_str),
        };
        let at = rolled.id(key);
        let one = &mut rolled.sums[at as usize];
        let prompt = i64::from(event.prompt_tokens);
        let total = i64::from(event.total_tokens);
        one.requests += 1;
        one.prompt_tokens += prompt;
        one.completion_tokens += i64::from(event.completion_tokens);
        one.total_tokens += total;
        one.cached_prompt_tokens += i64::from(event.cached_prompt_tokens);
        one.cache_write_tokens +=
            i64::from(event.cache_write_tokens) + i64::from(event.cache_write_1h_tokens);
        one.reasoning_tokens += i64::from(event.reasoning_tokens);
        one.max_prompt_tokens = one.max_prompt_tokens.max(prompt);
        let mut cost_buckets = None;
        if !row.unpriced {
            one.cost += row.cost;
            one.priced_requests += 1;
            one.priced_tokens += total;
            let cost = row.cost.to_f64().unwrap_or(0.0);
            let per_1k = (total > 0).then(|| bucket(cost * 1000.0 / total as f64));
            cost_buckets = Some((bucket(cost), per_1k));
        }
        if let Some((p, caching)) = split_listed(listings.of(&event.provider, &event.model), event)
        {
            one.listed_requests += 1;
            one.list_cost += p.list_cost;
            one.input_list_cost += p.input;
            one.output_list_cost += p.output;
            one.cache_read_list_cost += p.cache_read;
            one.cache_read_at_input_cost += p.cache_read_at_input;
            one.cache_write_list_cost += p.cache_write;
            one.cache_write_at_input_cost += p.cache_write_at_input;
            if event.cached_prompt_tokens == 0 && caching {
                one.no_cache_requests += 1;
                one.no_cache_prompt_tokens += prompt;
                one.no_cache_input_list_cost += p.input;
            }
        }
        rolled.count(at, 0, bucket(prompt as f64), 1);
        if let Some((cost, per_1k)) = cost_buckets {
            rolled.count(at, 1, cost, 1);
            if let Some(per_1k) = per_1k {
                rolled.count(at, 2, per_1k, 1);
            }
        }
    }
    rolled
}

/// The use cases of `keys` the attribution rollup counts as themselves on
/// their tenant and day, i.e. has a row of (written earlier in the same
/// transaction); any other value it folded into `(other)`, and so does
/// this rollup, so both name the same use cases and the table is bounded.
/// What `known` (the attribution step's own answer, when `use_case` is one
/// of its keys) tells is not asked of the database.
async fn kept_use_cases<'k, 'a: 'k>(
    client: &impl GenericClient,
    keys: impl Iterator<Item = &'k OptimizeKey<'a>>,
    known: Option<&Admitted>,
) -> Result<Kept<'a>, DbError> {
    let mut kept = Kept::new();
    let asked: Kept<'a> = keys
        .filter(|k| k.use_case != UNLABELLED && k.use_case != OTHER)
        .map(|k| (k.day, k.tenant_id, k.use_case))
        .filter(
            |a| match known.and_then(|known| known.has_row(a.0, a.1, USE_CASE_LABEL, a.2)) {
                Some(true) => {
                    kept.insert(*a);
                    false
                }
                Some(false) => false,
                None => true,
            },
        )
        .collect();
    if asked.is_empty() {
        return Ok(kept);
    }
    let days: Vec<DateTime<Utc>> = asked.iter().map(|a| a.0).collect();
    let tenants: Vec<&str> = asked.iter().map(|a| a.1).collect();
    let use_cases: Vec<&str> = asked.iter().map(|a| a.2).collect();
    let step = "reading the use cases the attribution rollup keeps";
    let rows = client
        .query(
            "SELECT k.day, k.tenant_id, k.use_case
             FROM UNNEST($1::timestamptz[], $2::text[], $3::text[]) AS k(day, tenant_id, use_case)
             WHERE EXISTS (
                 SELECT 1 FROM usage_attribution_daily AS a
                 WHERE a.day = k.day AND a.tenant_id = k.tenant_id AND a.label_key = $4
                   AND a.label_value = k.use_case)",
            &[&days, &tenants, &use_cases, &USE_CASE_LABEL],
        )
        .await
        .map_err(db(step))?;
    let mut found: BTreeSet<(DateTime<Utc>, String, String)> = BTreeSet::new();
    for row in &rows {
        found.insert((
            row.try_get("day").map_err(db(step))?,
            row.try_get("tenant_id").map_err(db(step))?,
            row.try_get("use_case").map_err(db(step))?,
        ));
    }
    // the batch's own strings, so that folding compares borrowed keys
    kept.extend(
        asked
            .into_iter()
            .filter(|a| found.contains(&(a.0, a.1.to_owned(), a.2.to_owned()))),
    );
    Ok(kept)
}

/// (day, tenant, use case) the attribution rollup counts as themselves.
type Kept<'a> = BTreeSet<(DateTime<Utc>, &'a str, &'a str)>;

/// `key` with its use case folded into `(other)` unless kept.
fn folded<'a>(key: &OptimizeKey<'a>, kept: &Kept<'_>) -> OptimizeKey<'a> {
    let as_itself = key.use_case == UNLABELLED
        || key.use_case == OTHER
        || kept.contains(&(key.day, key.tenant_id, key.use_case));
    if as_itself {
        *key
    } else {
        OptimizeKey {
            use_case: OTHER,
            ..*key
        }
    }
}

/// The daily table's columns after the key, in the order of [`OptimizeSums`].
macro_rules! sums_columns {
    () => {
        "requests, prompt_tokens,
    completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
    reasoning_tokens, max_prompt_tokens, cost, priced_requests, priced_tokens,
    listed_requests, list_cost, input_list_cost, output_list_cost,
    cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
    cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
    no_cache_input_list_cost"
    };
}

pub(super) use sums_columns;

const ADD_SUMS: &str = concat!(
    "
INSERT INTO usage_optimize_daily AS r (
    day, tenant_id, provider, model, use_case, ",
    sums_columns!(),
    ")
SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[],
    $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
    $11::int8[], $12::int8[], $13::int8[], $14::numeric[], $15::int8[],
    $16::int8[], $17::int8[], $18::numeric[], $19::numeric[], $20::numeric[],
    $21::numeric[], $22::numeric[], $23::numeric[], $24::numeric[], $25::int8[],
    $26::int8[], $27::numeric[])
ON CONFLICT (day, tenant_id, provider, model, use_case) DO UPDATE SET
    requests = r.requests + EXCLUDED.requests,
    prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens,
    total_tokens = r.total_tokens + EXCLUDED.total_tokens,
    cached_prompt_tokens = r.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
    max_prompt_tokens = GREATEST(r.max_prompt_tokens, EXCLUDED.max_prompt_tokens),
    cost = r.cost + EXCLUDED.cost,
    priced_requests = r.priced_requests + EXCLUDED.priced_requests,
    priced_tokens = r.priced_tokens + EXCLUDED.priced_tokens,
    listed_requests = r.listed_requests + EXCLUDED.listed_requests,
    list_cost = r.list_cost + EXCLUDED.list_cost,
    input_list_cost = r.input_list_cost + EXCLUDED.input_list_cost,
    output_list_cost = r.output_list_cost + EXCLUDED.output_list_cost,
    cache_read_list_cost = r.cache_read_list_cost + EXCLUDED.cache_read_list_cost,
    cache_read_at_input_cost = r.cache_read_at_input_cost + EXCLUDED.cache_read_at_input_cost,
    cache_write_list_cost = r.cache_write_list_cost + EXCLUDED.cache_write_list_cost,
    cache_write_at_input_cost =
        r.cache_write_at_input_cost + EXCLUDED.cache_write_at_input_cost,
    no_cache_requests = r.no_cache_requests + EXCLUDED.no_cache_requests,
    no_cache_prompt_tokens = r.no_cache_prompt_tokens + EXCLUDED.no_cache_prompt_tokens,
    no_cache_input_list_cost = r.no_cache_input_list_cost + EXCLUDED.no_cache_input_list_cost,
    updated_at = now()"
);

const ADD_HISTOGRAM: &str = "
INSERT INTO usage_optimize_histogram AS r (
    day, tenant_id, provider, model, use_case, metric, bucket, requests)
SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[],
    $5::text[], $6::text[], $7::int4[], $8::int8[])
ON CONFLICT (day, tenant_id, provider, model, use_case, metric, bucket) DO UPDATE SET
    requests = r.requests + EXCLUDED.requests";

/// What `rows` add, with use cases folded as the attribution rollup
/// (written earlier in the same transaction) folds them.
pub async fn fold<'a>(
    client: &impl GenericClient,
    book: &PriceBook,
    rows: &[StoredRow<'a>],
) -> Result<Folded<'a>, DbError> {
    if rows.is_empty() {
        return Ok(Folded::default());
    }
    fold_rolled(client, &rollup(book, rows), None).await
}

/// [`fold`] of rows whose [`rollup`] is already computed: only the use
/// cases the attribution rollup keeps are asked of the database, and only
/// those `known` does not tell (what the transaction's bounded attribution
/// upsert returned for these rows; `None` when it did not run).
pub async fn fold_rolled<'a>(
    client: &impl GenericClient,
    rolled: &Rolled<'a>,
    known: Option<&Admitted>,
) -> Result<Folded<'a>, DbError> {
    if rolled.is_empty() {
        return Ok(Folded::default());
    }
    let kept = kept_use_cases(client, rolled.keys.iter(), known).await?;
    // folding can merge keys: each statement must touch a row once
    Ok(rolled.fold(|key| folded(key, &kept)))
}

/// Rows per upsert statement. An apply adds 100,000-230,000 histogram rows
/// at once; bound as one statement, tokio-postgres encodes them into one
/// buffer of tens of megabytes that grows by reallocation into pages the
/// kernel must zero first (a quarter of the applier's CPU when measured).
/// A few thousand rows per statement keep every buffer small enough for
/// the allocator to reuse, for one round trip more per chunk.
pub const ROWS_PER_STATEMENT: usize = 4_096;

/// Adds `folded` to both tables, in the caller's transaction, at most
/// [`ROWS_PER_STATEMENT`] rows per statement: the rows are distinct, so the
/// chunks add exactly what one statement would, and commit with it.
pub async fn upsert(client: &impl GenericClient, folded: &Folded<'_>) -> Result<(), DbError> {
    if folded.is_empty() {
        return Ok(());
    }
    let step = "adding to the optimization rollup";
    let statement = client.prepare(ADD_SUMS).await.map_err(db(step))?;
    for rows in chunks(folded.keys.len()) {
        let daily = DailyColumns::of_range(folded, rows);
        client
            .execute(&statement, &daily.params())
            .await
            .map_err(db(step))?;
    }
    let step = "adding to the optimization histogram";
    let statement = client.prepare(ADD_HISTOGRAM).await.map_err(db(step))?;
    for rows in chunks(folded.counts.len()) {
        let histogram = HistogramColumns::of_range(folded, rows);
        client
            .execute(&statement, &histogram.params())
            .await
            .map_err(db(step))?;
    }
    Ok(())
}

/// `0..len` in ranges of at most [`ROWS_PER_STATEMENT`].
fn chunks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len)
        .step_by(ROWS_PER_STATEMENT)
        .map(move |start| start..len.min(start + ROWS_PER_STATEMENT))
}

/// Adds `rows` to both tables at once, in the caller's transaction, after
/// the attribution rollup's own upsert ([`fold`], then [`upsert`]).
pub async fn add(
    client: &impl GenericClient,
    book: &PriceBook,
    rows: &[StoredRow<'_>],
) -> Result<(), DbError> {
    let folded = fold(client, book, rows).await?;
    upsert(client, &folded).await
}
