//! Cost by use case: the SQL of `usage_attribution_daily`
//! (sql/V9__use_case_rollup.sql), the daily rollup of cost and tokens per
//! tenant, provider, model and value of each attribution label key. The
//! processor adds to it inside the batch transaction ([`add`]); reports,
//! statements and the dashboard read it ([`cost_by_label`]) and never the
//! raw table.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::{db, DbError};

/// The value an event without the label counts under, so the values of one
/// key always add up to the tenant's whole cost.
pub const UNLABELLED: &str = "(unlabelled)";

/// The most label keys an operator may name: each key adds one rollup row
/// per event's (day, tenant, model), so the list stays small.
pub const MAX_KEYS: usize = 8;

/// The sums of one rollup row; the key is the rest of [`AttributionRow`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Decimal,
    pub unpriced_requests: i64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost += other.cost;
        self.unpriced_requests += other.unpriced_requests;
    }
}

/// The key of one rollup row, ordered so that a batch upserts its rows in
/// one order everywhere (two writers then wait for each other instead of
/// deadlocking).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttributionKey {
    /// The UTC day's midnight.
    pub day: DateTime<Utc>,
    pub tenant_id: String,
    pub label_key: String,
    pub label_value: String,
    pub provider: String,
    pub model: String,
}

const ADD: &str = "
INSERT INTO usage_attribution_daily AS rollup (
    day, tenant_id, label_key, label_value, provider, model,
    requests, prompt_tokens, completion_tokens, total_tokens,
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, cost, unpriced_requests)
SELECT * FROM UNNEST(
    $1::timestamptz[], $2::varchar[], $3::text[], $4::text[], $5::varchar[], $6::varchar[],
    $7::int8[], $8::int8[], $9::int8[], $10::int8[],
    $11::int8[], $12::int8[], $13::int8[], $14::numeric[], $15::int8[])
ON CONFLICT (day, tenant_id, label_key, label_value, provider, model) DO UPDATE SET
    requests             = rollup.requests + EXCLUDED.requests,
    prompt_tokens        = rollup.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens    = rollup.completion_tokens + EXCLUDED.completion_tokens,
    total_tokens         = rollup.total_tokens + EXCLUDED.total_tokens,
    cached_prompt_tokens = rollup.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
    cache_write_tokens   = rollup.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens     = rollup.reasoning_tokens + EXCLUDED.reasoning_tokens,
    cost                 = rollup.cost + EXCLUDED.cost,
    unpriced_requests    = rollup.unpriced_requests + EXCLUDED.unpriced_requests,
    updated_at           = now()";

/// Adds `rows` (in the caller's order: keep it sorted) to the rollup.
pub async fn add(
    client: &impl GenericClient,
    rows: &[(AttributionKey, Sums)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Sums) -> i64| rows.iter().map(|(_, s)| f(s)).collect::<Vec<i64>>();
    let days: Vec<DateTime<Utc>> = rows.iter().map(|(k, _)| k.day).collect();
    let tenants: Vec<&str> = rows.iter().map(|(k, _)| k.tenant_id.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.label_key.as_str()).collect();
    let values: Vec<&str> = rows.iter().map(|(k, _)| k.label_value.as_str()).collect();
    let providers: Vec<&str> = rows.iter().map(|(k, _)| k.provider.as_str()).collect();
    let models: Vec<&str> = rows.iter().map(|(k, _)| k.model.as_str()).collect();
    let costs: Vec<Decimal> = rows.iter().map(|(_, s)| s.cost).collect();
    let statement = client
        .prepare(ADD)
        .await
        .map_err(db("preparing the attribution rollup upsert"))?;
    client
        .execute(
            &statement,
            &[
                &days,
                &tenants,
                &keys,
                &values,
                &providers,
                &models,
                &column(|s| s.requests),
                &column(|s| s.prompt_tokens),
                &column(|s| s.completion_tokens),
                &column(|s| s.total_tokens),
                &column(|s| s.cached_prompt_tokens),
                &column(|s| s.cache_write_tokens),
                &column(|s| s.reasoning_tokens),
                &costs,
                &column(|s| s.unpriced_requests),
            ],
        )
        .await
        .map_err(db("adding to the attribution rollup"))?;
    Ok(())
}

/// Cost and tokens of one label value over a range of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelCost {
    pub label_key: String,
    pub label_value: String,
    #[serde(flatten)]
    pub sums: Sums,
}

/// The SQL of sql/reports/cost_by_use_case.sql, with the key, the range and
/// the tenant bound: cost per value of every key, over `[from, to)`.
pub const COST_BY_LABEL: &str = "
SELECT label_key, label_value,
       sum(requests)::BIGINT, sum(prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT,
       sum(total_tokens)::BIGINT, sum(cached_prompt_tokens)::BIGINT,
       sum(cache_write_tokens)::BIGINT, sum(reasoning_tokens)::BIGINT,
       sum(cost), sum(unpriced_requests)::BIGINT
FROM usage_attribution_daily
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR tenant_id = $3)
GROUP BY label_key, label_value
ORDER BY label_key, sum(cost) DESC, label_value";

/// Cost per label value over `[from, to)`, of one tenant or all, from the
/// rollup alone.
pub async fn cost_by_label(
    client: &impl GenericClient,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant: Option<&str>,
) -> Result<Vec<LabelCost>, DbError> {
    let rows = client
        .query(COST_BY_LABEL, &[&from, &to, &tenant])
        .await
        .map_err(db("reading cost by label"))?;
    Ok(rows
        .iter()
        .map(|row| LabelCost {
            label_key: row.get(0),
            label_value: row.get(1),
            sums: Sums {
                requests: row.get(2),
                prompt_tokens: row.get(3),
                completion_tokens: row.get(4),
                total_tokens: row.get(5),
                cached_prompt_tokens: row.get(6),
                cache_write_tokens: row.get(7),
                reasoning_tokens: row.get(8),
                cost: row.get::<_, Option<Decimal>>(9).unwrap_or_default(),
                unpriced_requests: row.get(10),
            },
        })
        .collect())
}

/// Recomputes the rollup of `keys` over the UTC days `[from, to)` from the
/// raw table, in the caller's transaction: for a key named after its usage
/// arrived, or after a restore. The table lock (which the batches' upserts
/// wait for, and which waits for uncommitted ones) makes the rebuild and the
/// batches serialize: a batch that committed first is in the raw rows read
/// here, and one that commits later adds its own rows on top. Returns the
/// rows written.
pub async fn rebuild(
    transaction: &tokio_postgres::Transaction<'_>,
    keys: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, DbError> {
    transaction
        .batch_execute("LOCK TABLE usage_attribution_daily IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(db("locking the attribution rollup"))?;
    transaction
        .execute(
            "DELETE FROM usage_attribution_daily
             WHERE day >= $1 AND day < $2 AND label_key = ANY($3)",
            &[&from, &to, &keys],
        )
        .await
        .map_err(db("clearing the attribution rollup"))?;
    transaction
        .execute(
            "INSERT INTO usage_attribution_daily (
                 day, tenant_id, label_key, label_value, provider, model,
                 requests, prompt_tokens, completion_tokens, total_tokens,
                 cached_prompt_tokens, cache_write_tokens, reasoning_tokens, cost,
                 unpriced_requests)
             SELECT time_bucket(INTERVAL '1 day', created_at), tenant_id, key,
                    COALESCE(labels ->> key, $4), provider, model,
                    count(*), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
                    sum(cached_prompt_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
                    sum(estimated_cost), count(*) FILTER (WHERE pricing_status = 'unpriced')
             FROM gateway_mode_audit CROSS JOIN unnest($3::text[]) AS key
             WHERE created_at >= $1 AND created_at < $2
             GROUP BY 1, 2, 3, 4, 5, 6",
            &[&from, &to, &keys, &UNLABELLED],
        )
        .await
        .map_err(db("rebuilding the attribution rollup"))
}

/// One stored row whose cost a re-pricing changed: where it counts in the
/// rollup and by how much it changed.
#[derive(Debug, Clone)]
pub struct CostChange<'a> {
    pub day: DateTime<Utc>,
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub cost: Decimal,
    /// −1 when an unpriced row became priced, +1 the other way round.
    pub unpriced_requests: i64,
}

// Every key present in the rollup for the row's day, tenant and model gets
// the change under the row's value of that key: the batch that stored the
// row counted it under every key configured then, which are exactly the
// keys present. The rows are locked in key order first, as the batches'
// upserts are, so the two queue instead of deadlocking; the changes are
// summed per rollup row because an UPDATE applies one source row per
// target row.
const LOCK_FOR_CHANGES: &str = "
SELECT 1 FROM usage_attribution_daily AS r
JOIN (SELECT DISTINCT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[])
      AS c(day, tenant_id, provider, model)) AS c
  ON r.day = c.day AND r.tenant_id = c.tenant_id AND r.provider = c.provider
 AND r.model = c.model
ORDER BY r.day, r.tenant_id, r.label_key, r.label_value, r.provider, r.model
FOR UPDATE OF r";

const APPLY_CHANGES: &str = "
WITH c AS (
    SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                         $6::numeric[], $7::int8[])
        AS c(day, tenant_id, provider, model, labels, cost, unpriced)
), per_row AS (
    SELECT r.day, r.tenant_id, r.label_key, r.label_value, r.provider, r.model,
           sum(c.cost) AS cost, sum(c.unpriced) AS unpriced
    FROM usage_attribution_daily AS r
    JOIN c ON r.day = c.day AND r.tenant_id = c.tenant_id AND r.provider = c.provider
          AND r.model = c.model AND r.label_value = COALESCE(c.labels ->> r.label_key, $8)
    GROUP BY 1, 2, 3, 4, 5, 6
)
UPDATE usage_attribution_daily AS r
SET cost = r.cost + p.cost, unpriced_requests = r.unpriced_requests + p.unpriced,
    updated_at = now()
FROM per_row AS p
WHERE r.day = p.day AND r.tenant_id = p.tenant_id AND r.label_key = p.label_key
  AND r.label_value = p.label_value AND r.provider = p.provider AND r.model = p.model";

/// Applies re-priced rows' cost changes to the rollup, in the caller's
/// transaction (the one that changes the rows); returns the rollup rows
/// changed.
pub async fn apply_cost_changes(
    client: &impl GenericClient,
    changes: &[CostChange<'_>],
) -> Result<u64, DbError> {
    if changes.is_empty() {
        return Ok(0);
    }
    let days: Vec<DateTime<Utc>> = changes.iter().map(|c| c.day).collect();
    let tenants: Vec<&str> = changes.iter().map(|c| c.tenant_id).collect();
    let providers: Vec<&str> = changes.iter().map(|c| c.provider).collect();
    let models: Vec<&str> = changes.iter().map(|c| c.model).collect();
    let labels: Vec<tokio_postgres::types::Json<_>> = changes
        .iter()
        .map(|c| tokio_postgres::types::Json(c.labels))
        .collect();
    let costs: Vec<Decimal> = changes.iter().map(|c| c.cost).collect();
    let unpriced: Vec<i64> = changes.iter().map(|c| c.unpriced_requests).collect();
    client
        .query(LOCK_FOR_CHANGES, &[&days, &tenants, &providers, &models])
        .await
        .map_err(db("locking the attribution rollup rows"))?;
    client
        .execute(
            APPLY_CHANGES,
            &[
                &days,
                &tenants,
                &providers,
                &models,
                &labels,
                &costs,
                &unpriced,
                &UNLABELLED,
            ],
        )
        .await
        .map_err(db("correcting the attribution rollup"))
}
