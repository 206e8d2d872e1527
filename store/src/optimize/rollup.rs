//! Adding a batch's new rows to `usage_optimize_daily` and
//! `usage_optimize_histogram` (sql/V14__optimization_rollup.sql), in the
//! batch's transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger::{PriceBook, UsageEvent};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use tokio_postgres::GenericClient;

use super::histogram::bucket;
use super::parts::{parts, supports_caching};
use super::USE_CASE_LABEL;
use crate::attribution::{OTHER, UNLABELLED};
use crate::{db, DbError};

/// One stored row as the rollup needs it.
#[derive(Debug, Clone, Copy)]
pub struct StoredRow<'a> {
    pub event: &'a UsageEvent,
    /// `estimated_cost` as stored.
    pub cost: Decimal,
    pub unpriced: bool,
}

/// Where a row counts: UTC day, tenant, provider, model, use case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OptimizeKey {
    pub day: DateTime<Utc>,
    pub tenant_id: String,
    pub provider: String,
    pub model: String,
    pub use_case: String,
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

/// What `rows` add: the sums per key, and the histogram counts per key,
/// metric and bucket. Pure, so every figure is unit-testable.
pub type Histogram = BTreeMap<(OptimizeKey, &'static str, i32), i64>;

pub fn rollup(
    book: &PriceBook,
    rows: &[StoredRow<'_>],
) -> (BTreeMap<OptimizeKey, OptimizeSums>, Histogram) {
    let mut sums: BTreeMap<OptimizeKey, OptimizeSums> = BTreeMap::new();
    let mut histogram: Histogram = BTreeMap::new();
    for row in rows {
        let event = row.event;
        let key = OptimizeKey {
            day: utc_day(event.created_at),
            tenant_id: event.tenant_id.clone(),
            provider: event.provider.clone(),
            model: event.model.clone(),
            use_case: event
                .labels
                .get(USE_CASE_LABEL)
                .map_or(UNLABELLED, String::as_str)
                .to_owned(),
        };
        let prompt = i64::from(event.prompt_tokens);
        let total = i64::from(event.total_tokens);
        let mut one = OptimizeSums {
            requests: 1,
            prompt_tokens: prompt,
            completion_tokens: event.completion_tokens.into(),
            total_tokens: total,
            cached_prompt_tokens: event.cached_prompt_tokens.into(),
            cache_write_tokens: i64::from(event.cache_write_tokens)
                + i64::from(event.cache_write_1h_tokens),
            reasoning_tokens: event.reasoning_tokens.into(),
            max_prompt_tokens: prompt,
            ..OptimizeSums::default()
        };
        let mut counts = vec![("prompt_tokens", bucket(prompt as f64))];
        if !row.unpriced {
            one.cost = row.cost;
            one.priced_requests = 1;
            one.priced_tokens = total;
            let cost = row.cost.to_f64().unwrap_or(0.0);
            counts.push(("cost", bucket(cost)));
            if total > 0 {
                counts.push(("cost_per_1k_tokens", bucket(cost * 1000.0 / total as f64)));
            }
        }
        if let Some(p) = parts(book, event) {
            one.listed_requests = 1;
            one.list_cost = p.list_cost;
            one.input_list_cost = p.input;
            one.output_list_cost = p.output;
            one.cache_read_list_cost = p.cache_read;
            one.cache_read_at_input_cost = p.cache_read_at_input;
            one.cache_write_list_cost = p.cache_write;
            one.cache_write_at_input_cost = p.cache_write_at_input;
            if event.cached_prompt_tokens == 0 && supports_caching(book, event) {
                one.no_cache_requests = 1;
                one.no_cache_prompt_tokens = prompt;
                one.no_cache_input_list_cost = p.input;
            }
        }
        for (metric, b) in counts {
            *histogram.entry((key.clone(), metric, b)).or_default() += 1;
        }
        sums.entry(key).or_default().add(&one);
    }
    (sums, histogram)
}

use ledger::day::utc_day;

// A use case the attribution rollup folded into `(other)` for the tenant
// and day is folded here too: the value counts as itself only when the
// attribution rollup has a row of it (written earlier in the same
// transaction). Folding can merge input rows, hence the GROUP BY before the
// upsert (which may touch each target row once).
const FOLDED: &str = "
CASE WHEN i.use_case IN ($LABELLESS, $OTHER) OR EXISTS (
         SELECT 1 FROM usage_attribution_daily AS a
         WHERE a.day = i.day AND a.tenant_id = i.tenant_id AND a.label_key = $KEY
           AND a.label_value = i.use_case)
     THEN i.use_case ELSE $OTHER END";

fn add_sums_sql() -> String {
    format!(
        "WITH i AS (
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                 $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                 $11::int8[], $12::int8[], $13::int8[], $14::numeric[], $15::int8[],
                 $16::int8[], $17::int8[], $18::numeric[], $19::numeric[], $20::numeric[],
                 $21::numeric[], $22::numeric[], $23::numeric[], $24::numeric[], $25::int8[],
                 $26::int8[], $27::numeric[])
             AS i(day, tenant_id, provider, model, use_case, requests, prompt_tokens,
                  completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
                  reasoning_tokens, max_prompt_tokens, cost, priced_requests, priced_tokens,
                  listed_requests, list_cost, input_list_cost, output_list_cost,
                  cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
                  cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
                  no_cache_input_list_cost)
         ), folded AS (
             SELECT i.day, i.tenant_id, i.provider, i.model, {FOLDED} AS use_case,
                    sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens,
                    sum(completion_tokens) AS completion_tokens,
                    sum(total_tokens) AS total_tokens,
                    sum(cached_prompt_tokens) AS cached_prompt_tokens,
                    sum(cache_write_tokens) AS cache_write_tokens,
                    sum(reasoning_tokens) AS reasoning_tokens,
                    max(max_prompt_tokens) AS max_prompt_tokens, sum(cost) AS cost,
                    sum(priced_requests) AS priced_requests,
                    sum(priced_tokens) AS priced_tokens,
                    sum(listed_requests) AS listed_requests, sum(list_cost) AS list_cost,
                    sum(input_list_cost) AS input_list_cost,
                    sum(output_list_cost) AS output_list_cost,
                    sum(cache_read_list_cost) AS cache_read_list_cost,
                    sum(cache_read_at_input_cost) AS cache_read_at_input_cost,
                    sum(cache_write_list_cost) AS cache_write_list_cost,
                    sum(cache_write_at_input_cost) AS cache_write_at_input_cost,
                    sum(no_cache_requests) AS no_cache_requests,
                    sum(no_cache_prompt_tokens) AS no_cache_prompt_tokens,
                    sum(no_cache_input_list_cost) AS no_cache_input_list_cost
             FROM i GROUP BY 1, 2, 3, 4, 5
         )
         INSERT INTO usage_optimize_daily AS r (
             day, tenant_id, provider, model, use_case, requests, prompt_tokens,
             completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
             reasoning_tokens, max_prompt_tokens, cost, priced_requests, priced_tokens,
             listed_requests, list_cost, input_list_cost, output_list_cost,
             cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
             cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
             no_cache_input_list_cost)
         SELECT * FROM folded ORDER BY 1, 2, 3, 4, 5
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
             cache_read_at_input_cost =
                 r.cache_read_at_input_cost + EXCLUDED.cache_read_at_input_cost,
             cache_write_list_cost = r.cache_write_list_cost + EXCLUDED.cache_write_list_cost,
             cache_write_at_input_cost =
                 r.cache_write_at_input_cost + EXCLUDED.cache_write_at_input_cost,
             no_cache_requests = r.no_cache_requests + EXCLUDED.no_cache_requests,
             no_cache_prompt_tokens = r.no_cache_prompt_tokens + EXCLUDED.no_cache_prompt_tokens,
             no_cache_input_list_cost =
                 r.no_cache_input_list_cost + EXCLUDED.no_cache_input_list_cost,
             updated_at = now()",
        FOLDED = folded_sql(28)
    )
}

fn add_histogram_sql() -> String {
    format!(
        "WITH i AS (
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::int4[], $8::int8[])
             AS i(day, tenant_id, provider, model, use_case, metric, bucket, requests)
         )
         INSERT INTO usage_optimize_histogram AS r (
             day, tenant_id, provider, model, use_case, metric, bucket, requests)
         SELECT i.day, i.tenant_id, i.provider, i.model, {FOLDED}, i.metric, i.bucket,
                sum(i.requests)
         FROM i GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7
         ON CONFLICT (day, tenant_id, provider, model, use_case, metric, bucket) DO UPDATE SET
             requests = r.requests + EXCLUDED.requests",
        FOLDED = folded_sql(9)
    )
}

/// [`FOLDED`] with its three parameters numbered from `first`.
fn folded_sql(first: usize) -> String {
    FOLDED
        .replace("$LABELLESS", &format!("${first}"))
        .replace("$OTHER", &format!("${}", first + 1))
        .replace("$KEY", &format!("${}", first + 2))
}

/// Adds `rows` (the rows this transaction inserted) to both tables, in
/// the caller's transaction, after the attribution rollup's own upsert.
pub async fn add(
    client: &impl GenericClient,
    book: &PriceBook,
    rows: &[StoredRow<'_>],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (sums, histogram) = rollup(book, rows);
    let keys: Vec<&OptimizeKey> = sums.keys().collect();
    let days: Vec<DateTime<Utc>> = keys.iter().map(|k| k.day).collect();
    let tenants: Vec<&str> = keys.iter().map(|k| k.tenant_id.as_str()).collect();
    let providers: Vec<&str> = keys.iter().map(|k| k.provider.as_str()).collect();
    let models: Vec<&str> = keys.iter().map(|k| k.model.as_str()).collect();
    let use_cases: Vec<&str> = keys.iter().map(|k| k.use_case.as_str()).collect();
    let int = |f: fn(&OptimizeSums) -> i64| sums.values().map(f).collect::<Vec<i64>>();
    let num = |f: fn(&OptimizeSums) -> Decimal| sums.values().map(f).collect::<Vec<Decimal>>();
    client
        .execute(
            &add_sums_sql(),
            &[
                &days,
                &tenants,
                &providers,
                &models,
                &use_cases,
                &int(|s| s.requests),
                &int(|s| s.prompt_tokens),
                &int(|s| s.completion_tokens),
                &int(|s| s.total_tokens),
                &int(|s| s.cached_prompt_tokens),
                &int(|s| s.cache_write_tokens),
                &int(|s| s.reasoning_tokens),
                &int(|s| s.max_prompt_tokens),
                &num(|s| s.cost),
                &int(|s| s.priced_requests),
                &int(|s| s.priced_tokens),
                &int(|s| s.listed_requests),
                &num(|s| s.list_cost),
                &num(|s| s.input_list_cost),
                &num(|s| s.output_list_cost),
                &num(|s| s.cache_read_list_cost),
                &num(|s| s.cache_read_at_input_cost),
                &num(|s| s.cache_write_list_cost),
                &num(|s| s.cache_write_at_input_cost),
                &int(|s| s.no_cache_requests),
                &int(|s| s.no_cache_prompt_tokens),
                &num(|s| s.no_cache_input_list_cost),
                &UNLABELLED,
                &OTHER,
                &USE_CASE_LABEL,
            ],
        )
        .await
        .map_err(db("adding to the optimization rollup"))?;
    let entries: Vec<(&(OptimizeKey, &str, i32), &i64)> = histogram.iter().collect();
    let days: Vec<DateTime<Utc>> = entries.iter().map(|e| e.0 .0.day).collect();
    let tenants: Vec<&str> = entries.iter().map(|e| e.0 .0.tenant_id.as_str()).collect();
    let providers: Vec<&str> = entries.iter().map(|e| e.0 .0.provider.as_str()).collect();
    let models: Vec<&str> = entries.iter().map(|e| e.0 .0.model.as_str()).collect();
    let use_cases: Vec<&str> = entries.iter().map(|e| e.0 .0.use_case.as_str()).collect();
    let metrics: Vec<&str> = entries.iter().map(|e| e.0 .1).collect();
    let buckets: Vec<i32> = entries.iter().map(|e| e.0 .2).collect();
    let counts: Vec<i64> = entries.iter().map(|e| *e.1).collect();
    client
        .execute(
            &add_histogram_sql(),
            &[
                &days,
                &tenants,
                &providers,
                &models,
                &use_cases,
                &metrics,
                &buckets,
                &counts,
                &UNLABELLED,
                &OTHER,
                &USE_CASE_LABEL,
            ],
        )
        .await
        .map_err(db("adding to the optimization histogram"))?;
    Ok(())
}
