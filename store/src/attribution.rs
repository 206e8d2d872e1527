//! Cost by use case: the SQL of `usage_attribution_daily`
//! (sql/V9__use_case_rollup.sql), the daily rollup of cost and tokens per
//! tenant, provider, model and value of each attribution label key. The
//! processor adds to it inside the batch transaction ([`add`]); reports,
//! statements and the dashboard read it ([`cost_by_label`]) and never the
//! raw table.
//!
//! The values of one key are bounded per tenant and UTC day: past
//! `max_values` distinct values (not counting [`UNLABELLED`] and [`OTHER`])
//! a new value counts under [`OTHER`], so a tenant sending a fresh value
//! on every call adds at most that many rows per day, key and model. A
//! value's fate on a day is fixed once decided (the count never drops), so
//! "does the value have a row that day" tells any later correction which
//! row an event was counted under.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::{db, DbError};

mod admitted;
pub use admitted::Admitted;

/// The value an event without the label counts under, so the values of one
/// key always add up to the tenant's whole cost.
pub const UNLABELLED: &str = "(unlabelled)";

/// The value label values past the daily bound count under.
pub const OTHER: &str = "(other)";

/// The most label keys an operator may name: each key adds one rollup row
/// per event's (day, tenant, model), so the list stays small.
pub const MAX_KEYS: usize = 8;

/// The rule for a configured list of attribution label keys (the
/// processor's `attribution.labels`, the gateway's
/// `exports.attribution_labels`): at most [`MAX_KEYS`], each a label key,
/// none twice. `setting` names the list in the error.
pub fn validate_label_keys(setting: &str, keys: &[String]) -> Result<(), String> {
    if keys.len() > MAX_KEYS {
        return Err(format!(
            "{setting} names {} keys; at most {MAX_KEYS} are allowed",
            keys.len()
        ));
    }
    for (index, key) in keys.iter().enumerate() {
        if !ledger::event::is_label_key(key) {
            return Err(format!(
                "{setting}: {key:?} is not a label key (1-64 of A-Z a-z 0-9 _ - .)"
            ));
        }
        if keys[..index].contains(key) {
            return Err(format!("{setting} names {key:?} twice"));
        }
    }
    Ok(())
}

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

// Batches that add values to one (day, tenant, key) take turns deciding
// which values are admitted, so two writers cannot both take the last slot;
// the locks are taken in one order (the hashes sorted) and before any
// rollup row, so writers wait for each other instead of deadlocking.
const LOCK_GROUPS: &str = "
SELECT pg_advisory_xact_lock(h) FROM (
    SELECT DISTINCT hashtextextended(g.day::text || '/' || g.tenant_id || '/' || g.key, 0) AS h
    FROM UNNEST($1::timestamptz[], $2::text[], $3::text[]) AS g(day, tenant_id, key)
    ORDER BY h
) AS hashes";

const ADMITTED: &str = "
SELECT DISTINCT r.day, r.tenant_id::text AS tenant_id, r.label_key, r.label_value
FROM usage_attribution_daily AS r
JOIN (SELECT DISTINCT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[])
      AS g(day, tenant_id, key)) AS g
  ON r.day = g.day AND r.tenant_id = g.tenant_id AND r.label_key = g.key
WHERE r.label_value <> $4 AND r.label_value <> $5";

// The lock the upsert takes anyway, taken before the read: a rebuild
// (`rebuild`, which locks the table against it and takes no group lock)
// then commits before the read or waits for the batch, so the values read
// stay the table's until the batch commits.
const LOCK_TABLE: &str = "LOCK TABLE usage_attribution_daily IN ROW EXCLUSIVE MODE";

type Group = (DateTime<Utc>, String, String);

/// Folds the values of `rows` past `max_values` per (day, tenant, key) into
/// [`OTHER`] and adds them to the rollup, in the caller's transaction;
/// returns the values each of those groups has rows under now. The three
/// statements are prepared once per connection, and the lock and the read
/// are sent together: two round trips per batch.
pub async fn add_bounded(
    transaction: &deadpool_postgres::Transaction<'_>,
    rows: Vec<(AttributionKey, Sums)>,
    max_values: usize,
) -> Result<Admitted, DbError> {
    if rows.is_empty() {
        return Ok(Admitted::default());
    }
    let groups: BTreeSet<Group> = rows
        .iter()
        .map(|(k, _)| (k.day, k.tenant_id.clone(), k.label_key.clone()))
        .collect();
    let days: Vec<DateTime<Utc>> = groups.iter().map(|g| g.0).collect();
    let tenants: Vec<&str> = groups.iter().map(|g| g.1.as_str()).collect();
    let keys: Vec<&str> = groups.iter().map(|g| g.2.as_str()).collect();
    let started = Instant::now();
    let (lock, lock_table, read, upsert) = futures::try_join!(
        transaction.prepare_cached(LOCK_GROUPS),
        transaction.prepare_cached(LOCK_TABLE),
        transaction.prepare_cached(ADMITTED),
        transaction.prepare_cached(ADD),
    )
    .map_err(db("preparing the attribution rollup statements"))?;
    let prepared = started.elapsed();
    // Sent in this order without waiting for the first: the server runs the
    // read once every lock is held, so its snapshot has the values of any
    // batch that held one of them before, and of a rebuild that committed.
    let (_, _, read_rows) = futures::try_join!(
        async {
            transaction
                .query(&lock, &[&days, &tenants, &keys])
                .await
                .map_err(db("locking the attribution value bound"))
        },
        async {
            transaction
                .execute(&lock_table, &[])
                .await
                .map_err(db("locking the attribution rollup"))
        },
        async {
            transaction
                .query(&read, &[&days, &tenants, &keys, &UNLABELLED, &OTHER])
                .await
                .map_err(db("reading the admitted attribution values"))
        },
    )?;
    let read = started.elapsed();
    let mut admitted: BTreeMap<Group, BTreeSet<String>> = BTreeMap::new();
    for row in read_rows {
        let read = |row: &tokio_postgres::Row| -> Result<(Group, String), tokio_postgres::Error> {
            let group = (
                row.try_get("day")?,
                row.try_get("tenant_id")?,
                row.try_get("label_key")?,
            );
            Ok((group, row.try_get("label_value")?))
        };
        let (group, value) = read(&row).map_err(db("reading the admitted attribution values"))?;
        admitted.entry(group).or_default().insert(value);
    }
    let folded = fold(rows, &mut admitted, max_values);
    let summed = started.elapsed();
    execute_add(&**transaction, &upsert, &folded).await?;
    // Where the step's time goes, for tuning (off by default).
    tracing::trace!(
        groups = groups.len(),
        rows = folded.len(),
        prepare_micros = prepared.as_micros() as u64,
        lock_and_read_micros = (read - prepared).as_micros() as u64,
        fold_micros = (summed - read).as_micros() as u64,
        upsert_micros = (started.elapsed() - summed).as_micros() as u64,
        "attribution statements"
    );
    Ok(Admitted::of(admitted))
}

/// The rows with each value past the bound replaced by [`OTHER`], merged
/// and sorted; new values are admitted in key order while there is room,
/// and `admitted` gets every group of `rows`, with the values admitted.
fn fold(
    rows: Vec<(AttributionKey, Sums)>,
    admitted: &mut BTreeMap<Group, BTreeSet<String>>,
    max_values: usize,
) -> Vec<(AttributionKey, Sums)> {
    let mut folded: BTreeMap<AttributionKey, Sums> = BTreeMap::new();
    for (mut key, sums) in rows {
        let group = (key.day, key.tenant_id.clone(), key.label_key.clone());
        let values = admitted.entry(group).or_default();
        let always = key.label_value == UNLABELLED || key.label_value == OTHER;
        if !always && !values.contains(&key.label_value) {
            if values.len() < max_values {
                values.insert(key.label_value.clone());
            } else {
                key.label_value = OTHER.to_owned();
            }
        }
        folded.entry(key).or_default().add(&sums);
    }
    folded.into_iter().collect()
}

/// Adds `rows` (in the caller's order: keep it sorted) to the rollup.
pub async fn add(
    client: &impl GenericClient,
    rows: &[(AttributionKey, Sums)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare(ADD)
        .await
        .map_err(db("preparing the attribution rollup upsert"))?;
    execute_add(client, &statement, rows).await
}

/// [`add`] with its upsert (`ADD`) already prepared.
async fn execute_add(
    client: &impl GenericClient,
    statement: &tokio_postgres::Statement,
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
    client
        .execute(
            statement,
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
       sum(requests)::BIGINT AS requests, sum(prompt_tokens)::BIGINT AS prompt_tokens,
       sum(completion_tokens)::BIGINT AS completion_tokens,
       sum(total_tokens)::BIGINT AS total_tokens,
       sum(cached_prompt_tokens)::BIGINT AS cached_prompt_tokens,
       sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
       sum(reasoning_tokens)::BIGINT AS reasoning_tokens,
       sum(cost) AS cost, sum(unpriced_requests)::BIGINT AS unpriced_requests
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
    rows.iter()
        .map(|row| {
            Ok(LabelCost {
                label_key: row.try_get("label_key")?,
                label_value: row.try_get("label_value")?,
                sums: Sums {
                    requests: row.try_get("requests")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                    total_tokens: row.try_get("total_tokens")?,
                    cached_prompt_tokens: row.try_get("cached_prompt_tokens")?,
                    cache_write_tokens: row.try_get("cache_write_tokens")?,
                    reasoning_tokens: row.try_get("reasoning_tokens")?,
                    cost: row
                        .try_get::<_, Option<Decimal>>("cost")?
                        .unwrap_or_default(),
                    unpriced_requests: row.try_get("unpriced_requests")?,
                },
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db("reading cost by label"))
}

/// Recomputes the rollup of `keys` over the UTC days `[from, to)` from the
/// raw table, in the caller's transaction: for a key named after its usage
/// arrived, or after a restore. The table lock (which the batches' upserts
/// wait for, and which waits for uncommitted ones) makes the rebuild and the
/// batches serialize: a batch that committed first is in the raw rows read
/// here, and one that commits later adds its own rows on top. The bound of
/// `max_values` per tenant, day and key admits values in the order they
/// were first received, as the batches did. Returns the rows written.
pub async fn rebuild(
    transaction: &tokio_postgres::Transaction<'_>,
    keys: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max_values: usize,
) -> Result<u64, DbError> {
    let max_values = i64::try_from(max_values).unwrap_or(i64::MAX);
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
            "WITH raw AS (
                 SELECT time_bucket(INTERVAL '1 day', created_at) AS day, tenant_id, key,
                        COALESCE(labels ->> key, $4) AS value, provider, model, received_at,
                        prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens,
                        cache_write_tokens, reasoning_tokens, estimated_cost, pricing_status
                 FROM gateway_mode_audit CROSS JOIN unnest($3::text[]) AS key
                 WHERE created_at >= $1 AND created_at < $2
             ), ranked AS (
                 SELECT day, tenant_id, key, value,
                        row_number() OVER (PARTITION BY day, tenant_id, key
                                           ORDER BY min(received_at), value) AS rank
                 FROM raw WHERE value <> $4 AND value <> $5
                 GROUP BY day, tenant_id, key, value
             )
             INSERT INTO usage_attribution_daily (
                 day, tenant_id, label_key, label_value, provider, model,
                 requests, prompt_tokens, completion_tokens, total_tokens,
                 cached_prompt_tokens, cache_write_tokens, reasoning_tokens, cost,
                 unpriced_requests)
             SELECT r.day, r.tenant_id, r.key,
                    CASE WHEN k.rank > $6 THEN $5 ELSE r.value END, r.provider, r.model,
                    count(*), sum(r.prompt_tokens), sum(r.completion_tokens),
                    sum(r.total_tokens), sum(r.cached_prompt_tokens), sum(r.cache_write_tokens),
                    sum(r.reasoning_tokens), sum(r.estimated_cost),
                    count(*) FILTER (WHERE r.pricing_status = 'unpriced')
             FROM raw AS r
             LEFT JOIN ranked AS k
               ON k.day = r.day AND k.tenant_id = r.tenant_id AND k.key = r.key
              AND k.value = r.value
             GROUP BY 1, 2, 3, 4, 5, 6",
            &[&from, &to, &keys, &UNLABELLED, &OTHER, &max_values],
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
// the change under the row's value of that key (or under `(other)` when
// that value has no row that day: the bound folded it): the batch that
// stored the row counted it under every key configured then, which are
// exactly the keys present. The rows are locked in key order first, as the batches'
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
          AND r.model = c.model
          AND r.label_value = CASE
              WHEN EXISTS (SELECT 1 FROM usage_attribution_daily AS v
                           WHERE v.day = c.day AND v.tenant_id = c.tenant_id
                             AND v.label_key = r.label_key
                             AND v.label_value = COALESCE(c.labels ->> r.label_key, $8))
              THEN COALESCE(c.labels ->> r.label_key, $8)
              ELSE $9 END
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
                &OTHER,
            ],
        )
        .await
        .map_err(db("correcting the attribution rollup"))
}
