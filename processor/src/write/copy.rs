//! How a batch's rows reach `gateway_mode_audit`: binary COPY into a
//! session-local staging table, then one `INSERT … SELECT … ON CONFLICT DO
//! NOTHING RETURNING` into the hypertable, in the batch's transaction.
//!
//! COPY is the database's cheapest way in, but it has no `ON CONFLICT`:
//! replays and client retries must be skipped, not fail the batch. The
//! staging table keeps COPY's cheap parsing (binary, no per-row statement,
//! no arrays to unnest) and leaves the conflict handling to one set-based
//! insert. It is `TEMP … ON COMMIT DELETE ROWS`: written without WAL, private
//! to the connection, emptied by every commit and rollback, so a retried
//! or probed batch never sees another's rows. Its columns have no length or
//! scale limits, so an over-long value is refused by the insert into the
//! audit table, with the audit table's own SQLSTATE, as before.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};
use uuid::Uuid;

use super::{db, WriteError};
use crate::prepare::{EventKey, KeyHasher, PricedEvent};

/// The connection's staging table; created once per pooled connection
/// ([`crate::database::pool`]). `IF NOT EXISTS`: a server that multiplexes
/// connections onto one session (PGlite) already has it.
pub const CREATE_STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS tokenledger_staging (
    id UUID NOT NULL, tenant_id TEXT NOT NULL, user_id TEXT, provider TEXT NOT NULL,
    model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL, estimated_cost NUMERIC NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, cached_prompt_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    pricing_status TEXT NOT NULL, labels JSONB NOT NULL, request_id TEXT,
    received_at TIMESTAMPTZ NOT NULL, payload_sha256 BYTEA NOT NULL,
    source_partition INTEGER NOT NULL, source_offset BIGINT NOT NULL,
    cache_write_1h_tokens INTEGER, service_tier TEXT, calls JSONB, list_cost NUMERIC,
    price_entry TEXT, price_book_version TEXT, pricing_rule TEXT, cost_source TEXT
) ON COMMIT DELETE ROWS";

/// Every column the processor writes, in [`COPY_TYPES`]' order.
pub const COLUMNS: &str = "id, tenant_id, user_id, provider, model, \
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at, \
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels, \
    request_id, received_at, payload_sha256, source_partition, source_offset, \
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry, \
    price_book_version, pricing_rule, cost_source";

const COPY_TYPES: [Type; 28] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::BYTEA,
    Type::INT4,
    Type::INT8,
    Type::INT4,
    Type::TEXT,
    Type::JSONB,
    Type::NUMERIC,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// Binary COPY of `rows` into `table` (the staging table, or a scratch copy
/// of the audit table for the benchmark's ceiling: one encoder for both).
pub async fn copy_rows<'r>(
    client: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: impl IntoIterator<Item = &'r PricedEvent>,
) -> Result<(), WriteError> {
    let sink = client
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(db("copy"))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    for row in rows {
        let event = &row.event;
        let calls = (!event.calls.is_empty()).then_some(Json(&event.calls));
        let values: [&(dyn ToSql + Sync); 28] = [
            &event.id,
            &event.tenant_id,
            &event.user_id,
            &event.provider,
            &event.model,
            &count(event.prompt_tokens),
            &count(event.completion_tokens),
            &count(event.total_tokens),
            &row.cost.usd,
            &event.created_at,
            &count(event.cached_prompt_tokens),
            &count(event.cache_write_tokens),
            &count(event.reasoning_tokens),
            &row.cost.status.as_str(),
            // Serialized straight from the map, without a serde_json::Value.
            &Json(&event.labels),
            &event.request_id,
            &event.received_at,
            &row.content_sha256.as_slice(),
            &row.source_partition,
            &row.source_offset,
            &count(event.cache_write_1h_tokens),
            &event.service_tier.map(|tier| tier.as_str()),
            &calls,
            &row.pricing.list_cost,
            &row.pricing.price_entry,
            &row.pricing.price_book_version,
            &row.pricing.pricing_rule,
            &row.pricing.cost_source,
        ];
        writer.as_mut().write(&values).await.map_err(db("copy"))?;
    }
    writer.finish().await.map_err(db("copy"))?;
    Ok(())
}

const INSERT_STAGED: &str = "
INSERT INTO gateway_mode_audit (
    id, tenant_id, user_id, provider, model,
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at,
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels,
    request_id, received_at, payload_sha256, source_partition, source_offset,
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry,
    price_book_version, pricing_rule, cost_source)
SELECT
    id, tenant_id, user_id, provider, model,
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at,
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels,
    request_id, received_at, payload_sha256, source_partition, source_offset,
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry,
    price_book_version, pricing_rule, cost_source
FROM tokenledger_staging
ON CONFLICT (created_at, tenant_id, id) DO NOTHING
RETURNING tenant_id, id, created_at";

/// Stages `rows` and inserts those whose key is not stored yet; returns the
/// keys it inserted.
pub async fn insert_rows(
    transaction: &deadpool_postgres::Transaction<'_>,
    rows: &[PricedEvent],
) -> Result<HashSet<EventKey, KeyHasher>, WriteError> {
    if rows.is_empty() {
        return Ok(HashSet::default());
    }
    // Staged, and so inserted, in key order: two writers inserting the same
    // keys (one event written to two partitions) then wait for each other
    // in the same order instead of deadlocking.
    let mut ordered: Vec<&PricedEvent> = rows.iter().collect();
    ordered.sort_unstable_by(|a, b| {
        (a.event.created_at, &a.event.tenant_id, a.event.id).cmp(&(
            b.event.created_at,
            &b.event.tenant_id,
            b.event.id,
        ))
    });
    copy_rows(transaction, "tokenledger_staging", ordered).await?;
    let statement = transaction
        .prepare_cached(INSERT_STAGED)
        .await
        .map_err(db("prepare insert"))?;
    let returned = transaction
        .query(&statement, &[])
        .await
        .map_err(db("insert"))?;
    Ok(returned
        .iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                row.get::<_, Uuid>(1),
                row.get::<_, DateTime<Utc>>(2),
            )
        })
        .collect())
}
