//! The ledger's side of a reconciliation: audit rows of one provider summed
//! per UTC day, tenant and model, in the disjoint token kinds the
//! providers' reports use, with the cost and the price entries behind it.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::TokenCounts;
use crate::{db, DbError};

/// One day, tenant and model of one provider, as the ledger has it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerGroup {
    pub day: NaiveDate,
    pub tenant_id: String,
    pub model: String,
    pub tokens: TokenCounts,
    /// What the tenant is charged (`estimated_cost`).
    pub cost_usd: Decimal,
    pub rows: i64,
    /// The price book entries the rows were priced with.
    pub price_entries: Vec<String>,
    /// `book`, `tenant_contract`, `caller`: where the cost came from.
    pub cost_sources: Vec<String>,
}

/// Every audit row of `provider` created in `[from, to)` (UTC days).
pub async fn ledger_groups(
    client: &impl GenericClient,
    provider: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<LedgerGroup>, DbError> {
    let rows = client
        .query(
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, tenant_id::text AS tenant_id,
                    model::text AS model,
                    sum(prompt_tokens::bigint - cached_prompt_tokens - cache_write_tokens
                        - coalesce(cache_write_1h_tokens, 0))::bigint AS input_uncached,
                    sum(cached_prompt_tokens)::bigint AS cache_read,
                    sum(cache_write_tokens)::bigint AS cache_write_5m,
                    sum(coalesce(cache_write_1h_tokens, 0))::bigint AS cache_write_1h,
                    sum(completion_tokens)::bigint AS output,
                    sum(estimated_cost) AS cost_usd,
                    count(*) AS row_count,
                    coalesce(array_agg(DISTINCT price_entry) FILTER (WHERE price_entry IS NOT NULL),
                             '{}') AS price_entries,
                    coalesce(array_agg(DISTINCT cost_source) FILTER (WHERE cost_source IS NOT NULL),
                             '{}') AS cost_sources
             FROM gateway_mode_audit
             WHERE provider = $1
               AND created_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
               AND created_at < ($3::date)::timestamp AT TIME ZONE 'UTC'
             GROUP BY 1, 2, 3
             ORDER BY 1, 2, 3",
            &[&provider, &from, &to],
        )
        .await
        .map_err(db("summing the ledger's usage for a reconciliation"))?;
    let read = db("reading the ledger's usage for a reconciliation");
    rows.iter()
        .map(|row| {
            Ok(LedgerGroup {
                day: row.try_get("day").map_err(&read)?,
                tenant_id: row.try_get("tenant_id").map_err(&read)?,
                model: row.try_get("model").map_err(&read)?,
                tokens: TokenCounts {
                    input_uncached: row.try_get("input_uncached").map_err(&read)?,
                    cache_read: row.try_get("cache_read").map_err(&read)?,
                    cache_write_5m: row.try_get("cache_write_5m").map_err(&read)?,
                    cache_write_1h: row.try_get("cache_write_1h").map_err(&read)?,
                    output: row.try_get("output").map_err(&read)?,
                },
                cost_usd: row.try_get("cost_usd").map_err(&read)?,
                rows: row.try_get("row_count").map_err(&read)?,
                price_entries: row.try_get("price_entries").map_err(&read)?,
                cost_sources: row.try_get("cost_sources").map_err(&read)?,
            })
        })
        .collect()
}
