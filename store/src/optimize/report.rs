//! The optimization report, read from the rollup alone (its tables plus
//! the deltas of committed batches not applied yet, so a report is exact
//! as soon as a batch commits): prompt length per model, use case, tenant
//! and day; cost per request per model and use case; what caching saved;
//! where caching was not used.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::histogram::{quantile, RELATIVE_ERROR};
use super::rollup::OptimizeSums;
use super::{OptimizeError, Range};
use crate::db;

/// What one row of the report is about; the dimensions it is not grouped
/// by are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
}

/// Prompt length of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptLength {
    #[serde(flatten)]
    pub dims: Dims,
    pub requests: i64,
    pub prompt_tokens: i64,
    /// prompt_tokens / requests, to 4 places.
    pub prompt_tokens_mean: Decimal,
    pub prompt_tokens_p50: Option<f64>,
    pub prompt_tokens_p95: Option<f64>,
    pub prompt_tokens_max: i64,
    /// The list price of the requests the book prices, by token kind:
    /// input (uncached, cached and cache writes), output (with reasoning),
    /// and the rest (per-call charges).
    pub list_cost: Decimal,
    pub input_list_cost: Decimal,
    pub output_list_cost: Decimal,
    pub other_list_cost: Decimal,
    /// input_list_cost / list_cost, to 4 places; `None` without list cost.
    pub input_share: Option<Decimal>,
    pub output_share: Option<Decimal>,
}

/// Cost per request of one model and use case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostPerRequest {
    #[serde(flatten)]
    pub dims: Dims,
    pub requests: i64,
    /// The requests with a cost (not unpriced): the ones measured here.
    pub priced_requests: i64,
    pub unpriced_requests: i64,
    pub cost: Decimal,
    /// cost / priced_requests, to 10 places.
    pub cost_per_request_mean: Option<Decimal>,
    pub cost_per_request_p50: Option<f64>,
    pub cost_per_request_p95: Option<f64>,
    /// cost × 1000 / tokens of the priced requests, to 10 places.
    pub cost_per_1k_tokens_mean: Option<Decimal>,
    /// Percentiles of each request's own cost per 1K tokens.
    pub cost_per_1k_tokens_p50: Option<f64>,
    pub cost_per_1k_tokens_p95: Option<f64>,
}

/// What caching did for one model and use case, at list prices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caching {
    #[serde(flatten)]
    pub dims: Dims,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub cache_write_tokens: i64,
    /// cached_prompt_tokens / prompt_tokens, to 4 places.
    pub cache_hit_ratio: Option<Decimal>,
    /// The cached tokens at the uncached input rate.
    pub cached_at_input_cost: Decimal,
    /// What the cached tokens cost.
    pub cached_cost: Decimal,
    pub cache_write_cost: Decimal,
    /// The cache writes at the uncached input rate.
    pub cache_write_at_input_cost: Decimal,
    /// cache_write_cost − cache_write_at_input_cost.
    pub cache_write_overhead: Decimal,
    /// (cached_at_input_cost − cached_cost) − cache_write_overhead.
    pub net_saving: Decimal,
}

/// Usage with no cached token at all on a model whose price has a
/// cache-read rate, per model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoCache {
    #[serde(flatten)]
    pub dims: Dims,
    pub requests: i64,
    /// The share of the model's requests that had no cached token.
    pub share_of_requests: Decimal,
    pub prompt_tokens: i64,
    pub input_list_cost: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizeReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tenant: Option<String>,
    /// How far a percentile may be from the exact one, relatively.
    pub percentile_relative_error: f64,
    pub notes: Vec<String>,
    pub prompt_length_by_model: Vec<PromptLength>,
    pub prompt_length_by_use_case: Vec<PromptLength>,
    pub prompt_length_by_tenant: Vec<PromptLength>,
    pub prompt_length_by_day: Vec<PromptLength>,
    pub cost_per_request: Vec<CostPerRequest>,
    pub caching: Vec<Caching>,
    pub no_cache: Vec<NoCache>,
}

pub const NOTES: [&str; 3] = [
    "percentiles are read from a log-bucketed histogram: each is within 1% of the exact \
     nearest-rank percentile (percentile_disc) of the raw rows",
    "costs are the stored estimated_cost; input/output shares and caching figures are at the \
     price book's list price, each part priced under the tier the whole request was priced with",
    "use case is the use_case label; '(unlabelled)' without one, '(other)' past \
     attribution.max_values_per_day",
];

// The tables plus the deltas not applied yet (sql/V21), in one statement:
// one snapshot, in which an apply has either moved a delta or not, so every
// committed batch counts once (a key may come twice; the caller adds).
const SUMS: &str = "
SELECT day, tenant_id::text AS tenant_id, provider::text AS provider, model::text AS model,
       use_case, requests, prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
       cache_write_tokens, reasoning_tokens, max_prompt_tokens, cost, priced_requests,
       priced_tokens, listed_requests, list_cost, input_list_cost, output_list_cost,
       cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
       cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
       no_cache_input_list_cost
FROM usage_optimize_daily
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR tenant_id = $3)
UNION ALL
SELECT day, tenant_id::text AS tenant_id, provider::text AS provider, model::text AS model,
       use_case, requests, prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
       cache_write_tokens, reasoning_tokens, max_prompt_tokens, cost, priced_requests,
       priced_tokens, listed_requests, list_cost, input_list_cost, output_list_cost,
       cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
       cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
       no_cache_input_list_cost
FROM usage_optimize_pending_daily
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR tenant_id = $3)";

const HISTOGRAM: &str = "
SELECT day, tenant_id::text AS tenant_id, provider::text AS provider, model::text AS model,
       use_case, metric, bucket, requests
FROM usage_optimize_histogram
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR tenant_id = $3)
UNION ALL
SELECT day, tenant_id, provider, model, use_case, metric, bucket, requests
FROM usage_optimize_pending_histogram
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR tenant_id = $3)";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Full {
    day: DateTime<Utc>,
    tenant_id: String,
    provider: String,
    model: String,
    use_case: String,
}

type Buckets = BTreeMap<(String, i32), i64>;

/// How a report groups the rollup's rows.
#[derive(Debug, Clone, Copy)]
enum By {
    Model,
    UseCase,
    Tenant,
    Day,
    ModelUseCase,
}

impl By {
    fn dims(self, f: &Full) -> Dims {
        let mut d = Dims::default();
        match self {
            By::Model => (d.provider, d.model) = (Some(f.provider.clone()), Some(f.model.clone())),
            By::UseCase => d.use_case = Some(f.use_case.clone()),
            By::Tenant => d.tenant_id = Some(f.tenant_id.clone()),
            By::Day => d.day = Some(f.day.date_naive()),
            By::ModelUseCase => {
                d.provider = Some(f.provider.clone());
                d.model = Some(f.model.clone());
                d.use_case = Some(f.use_case.clone());
            }
        }
        d
    }
}

/// Reads the rollup of `range` and builds the report.
pub async fn optimize_report(
    client: &impl GenericClient,
    range: &Range,
) -> Result<OptimizeReport, OptimizeError> {
    let (from, to) = range.bounds()?;
    let tenant = range.tenant.as_deref();
    let mut sums: BTreeMap<Full, OptimizeSums> = BTreeMap::new();
    for row in client
        .query(SUMS, &[&from, &to, &tenant])
        .await
        .map_err(db("reading the optimization rollup"))?
    {
        // the first row of a key as read, so that figures keep the
        // columns' scale as they did when each key had one row
        match sums.entry(full(&row)?) {
            Entry::Vacant(entry) => {
                entry.insert(read_sums(&row)?);
            }
            Entry::Occupied(mut entry) => entry.get_mut().add(&read_sums(&row)?),
        }
    }
    let mut histogram: BTreeMap<Full, Buckets> = BTreeMap::new();
    for row in client
        .query(HISTOGRAM, &[&from, &to, &tenant])
        .await
        .map_err(db("reading the optimization histogram"))?
    {
        let metric: String = row.try_get("metric").map_err(db("reading metric"))?;
        let bucket: i32 = row.try_get("bucket").map_err(db("reading bucket"))?;
        let requests: i64 = row.try_get("requests").map_err(db("reading requests"))?;
        *histogram
            .entry(full(&row)?)
            .or_default()
            .entry((metric, bucket))
            .or_default() += requests;
    }
    Ok(build(range, &sums, &histogram))
}

fn full(row: &tokio_postgres::Row) -> Result<Full, OptimizeError> {
    Ok(Full {
        day: row.try_get("day").map_err(db("reading day"))?,
        tenant_id: row.try_get("tenant_id").map_err(db("reading tenant_id"))?,
        provider: row.try_get("provider").map_err(db("reading provider"))?,
        model: row.try_get("model").map_err(db("reading model"))?,
        use_case: row.try_get("use_case").map_err(db("reading use_case"))?,
    })
}

fn read_sums(row: &tokio_postgres::Row) -> Result<OptimizeSums, OptimizeError> {
    let i = |name: &'static str| row.try_get::<_, i64>(name).map_err(db(name));
    let n = |name: &'static str| row.try_get::<_, Decimal>(name).map_err(db(name));
    Ok(OptimizeSums {
        requests: i("requests")?,
        prompt_tokens: i("prompt_tokens")?,
        completion_tokens: i("completion_tokens")?,
        total_tokens: i("total_tokens")?,
        cached_prompt_tokens: i("cached_prompt_tokens")?,
        cache_write_tokens: i("cache_write_tokens")?,
        reasoning_tokens: i("reasoning_tokens")?,
        max_prompt_tokens: i("max_prompt_tokens")?,
        cost: n("cost")?,
        priced_requests: i("priced_requests")?,
        priced_tokens: i("priced_tokens")?,
        listed_requests: i("listed_requests")?,
        list_cost: n("list_cost")?,
        input_list_cost: n("input_list_cost")?,
        output_list_cost: n("output_list_cost")?,
        cache_read_list_cost: n("cache_read_list_cost")?,
        cache_read_at_input_cost: n("cache_read_at_input_cost")?,
        cache_write_list_cost: n("cache_write_list_cost")?,
        cache_write_at_input_cost: n("cache_write_at_input_cost")?,
        no_cache_requests: i("no_cache_requests")?,
        no_cache_prompt_tokens: i("no_cache_prompt_tokens")?,
        no_cache_input_list_cost: n("no_cache_input_list_cost")?,
    })
}

fn group(
    by: By,
    sums: &BTreeMap<Full, OptimizeSums>,
    histogram: &BTreeMap<Full, Buckets>,
) -> Vec<(Dims, OptimizeSums, Buckets)> {
    let mut groups: BTreeMap<Dims, (OptimizeSums, Buckets)> = BTreeMap::new();
    for (key, s) in sums {
        groups.entry(by.dims(key)).or_default().0.add(s);
    }
    for (key, buckets) in histogram {
        let entry = groups.entry(by.dims(key)).or_default();
        for (bucket, count) in buckets {
            *entry.1.entry(bucket.clone()).or_default() += count;
        }
    }
    groups.into_iter().map(|(d, (s, b))| (d, s, b)).collect()
}

fn percentile(buckets: &Buckets, metric: &str, p: f64) -> Option<f64> {
    let counts: Vec<(i32, i64)> = buckets
        .iter()
        .filter(|((m, _), _)| m == metric)
        .map(|((_, b), n)| (*b, *n))
        .collect();
    quantile(&counts, p)
}

/// `a / b` rounded half-even to `places`; `None` when `b` is 0.
pub fn ratio(a: Decimal, b: Decimal, places: u32) -> Option<Decimal> {
    if b.is_zero() {
        return None;
    }
    a.checked_div(b).map(|q| q.round_dp(places).normalize())
}

fn prompt_length(d: Dims, s: &OptimizeSums, b: &Buckets) -> PromptLength {
    PromptLength {
        dims: d,
        requests: s.requests,
        prompt_tokens: s.prompt_tokens,
        prompt_tokens_mean: ratio(s.prompt_tokens.into(), s.requests.into(), 4).unwrap_or_default(),
        prompt_tokens_p50: percentile(b, "prompt_tokens", 0.5),
        prompt_tokens_p95: percentile(b, "prompt_tokens", 0.95),
        prompt_tokens_max: s.max_prompt_tokens,
        list_cost: s.list_cost,
        input_list_cost: s.input_list_cost,
        output_list_cost: s.output_list_cost,
        other_list_cost: s.list_cost - s.input_list_cost - s.output_list_cost,
        input_share: ratio(s.input_list_cost, s.list_cost, 4),
        output_share: ratio(s.output_list_cost, s.list_cost, 4),
    }
}

fn by_prompt_tokens_mean(rows: &mut [PromptLength]) {
    rows.sort_by(|a, b| {
        b.prompt_tokens_mean
            .cmp(&a.prompt_tokens_mean)
            .then_with(|| a.dims.cmp(&b.dims))
    });
}

fn build(
    range: &Range,
    sums: &BTreeMap<Full, OptimizeSums>,
    histogram: &BTreeMap<Full, Buckets>,
) -> OptimizeReport {
    let prompt = |by: By| {
        let mut rows: Vec<PromptLength> = group(by, sums, histogram)
            .into_iter()
            .map(|(d, s, b)| prompt_length(d, &s, &b))
            .collect();
        if !matches!(by, By::Day) {
            by_prompt_tokens_mean(&mut rows);
        }
        rows
    };
    let per_model_use_case = group(By::ModelUseCase, sums, histogram);
    let mut cost_per_request: Vec<CostPerRequest> = per_model_use_case
        .iter()
        .map(|(d, s, b)| CostPerRequest {
            dims: d.clone(),
            requests: s.requests,
            priced_requests: s.priced_requests,
            unpriced_requests: s.requests - s.priced_requests,
            cost: s.cost,
            cost_per_request_mean: ratio(s.cost, s.priced_requests.into(), 10),
            cost_per_request_p50: percentile(b, "cost", 0.5),
            cost_per_request_p95: percentile(b, "cost", 0.95),
            cost_per_1k_tokens_mean: ratio(
                s.cost * Decimal::ONE_THOUSAND,
                s.priced_tokens.into(),
                10,
            ),
            cost_per_1k_tokens_p50: percentile(b, "cost_per_1k_tokens", 0.5),
            cost_per_1k_tokens_p95: percentile(b, "cost_per_1k_tokens", 0.95),
        })
        .collect();
    cost_per_request.sort_by(|a, b| {
        b.cost_per_request_mean
            .cmp(&a.cost_per_request_mean)
            .then_with(|| a.dims.cmp(&b.dims))
    });
    let mut caching: Vec<Caching> = per_model_use_case
        .iter()
        .map(|(d, s, _)| caching_row(d.clone(), s))
        .collect();
    caching.sort_by(|a, b| {
        b.net_saving
            .cmp(&a.net_saving)
            .then_with(|| a.dims.cmp(&b.dims))
    });
    let mut no_cache: Vec<NoCache> = group(By::Model, sums, histogram)
        .into_iter()
        .filter(|(_, s, _)| s.no_cache_requests > 0)
        .map(|(d, s, _)| NoCache {
            dims: d,
            requests: s.no_cache_requests,
            share_of_requests: ratio(s.no_cache_requests.into(), s.requests.into(), 4)
                .unwrap_or_default(),
            prompt_tokens: s.no_cache_prompt_tokens,
            input_list_cost: s.no_cache_input_list_cost,
        })
        .collect();
    no_cache.sort_by(|a, b| {
        b.input_list_cost
            .cmp(&a.input_list_cost)
            .then_with(|| a.dims.cmp(&b.dims))
    });
    OptimizeReport {
        from: range.from,
        to: range.to,
        tenant: range.tenant.clone(),
        percentile_relative_error: RELATIVE_ERROR,
        notes: NOTES.iter().map(|n| (*n).to_owned()).collect(),
        prompt_length_by_model: prompt(By::Model),
        prompt_length_by_use_case: prompt(By::UseCase),
        prompt_length_by_tenant: prompt(By::Tenant),
        prompt_length_by_day: prompt(By::Day),
        cost_per_request,
        caching,
        no_cache,
    }
}

/// The caching figures of summed rollup rows.
pub fn caching_row(dims: Dims, s: &OptimizeSums) -> Caching {
    let overhead = s.cache_write_list_cost - s.cache_write_at_input_cost;
    Caching {
        dims,
        requests: s.requests,
        prompt_tokens: s.prompt_tokens,
        cached_prompt_tokens: s.cached_prompt_tokens,
        cache_write_tokens: s.cache_write_tokens,
        cache_hit_ratio: ratio(s.cached_prompt_tokens.into(), s.prompt_tokens.into(), 4),
        cached_at_input_cost: s.cache_read_at_input_cost,
        cached_cost: s.cache_read_list_cost,
        cache_write_cost: s.cache_write_list_cost,
        cache_write_at_input_cost: s.cache_write_at_input_cost,
        cache_write_overhead: overhead,
        net_saving: s.cache_read_at_input_cost - s.cache_read_list_cost - overhead,
    }
}
