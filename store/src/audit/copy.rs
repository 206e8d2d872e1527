//! How a batch's rows reach `gateway_mode_audit`: binary COPY straight into
//! the hypertable when no key of the batch is stored yet, else binary COPY
//! into a session-local staging table and one `INSERT … SELECT … ON CONFLICT
//! DO NOTHING RETURNING`, in the batch's transaction ([`insert_hinted`]);
//! or, when the caller knows which rows probably are stored, the others
//! straight in and those alone through staging ([`insert_hinted`]).
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
use std::hash::BuildHasher;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{pin_mut, SinkExt};
use tokio_postgres::types::{IsNull, Json, ToSql, Type};

use super::{key_of, AsNewRow, AuditKey};
use crate::{db, DbError};

/// The connection's staging table; created once per pooled connection
/// (the processor's pool runs it as session setup). `IF NOT EXISTS`: a
/// server that multiplexes connections onto one session (PGlite) already
/// has it.
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
    price_entry TEXT, price_book_version TEXT, pricing_rule TEXT, cost_source TEXT,
    unpriced_tokens JSONB, api_key TEXT
) ON COMMIT DELETE ROWS";

/// Every column the processor writes, in [`COPY_TYPES`]' order.
pub const COLUMNS: &str = "id, tenant_id, user_id, provider, model, \
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at, \
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels, \
    request_id, received_at, payload_sha256, source_partition, source_offset, \
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry, \
    price_book_version, pricing_rule, cost_source, unpriced_tokens, api_key";

const COPY_TYPES: [Type; 30] = [
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
    Type::JSONB,
    Type::TEXT,
];

/// Why a batch's rows were not written.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Database(#[from] DbError),
    /// A value the COPY encoder refused: a bug, not bad input (every
    /// stored value was checked when the record was decoded).
    #[error("cannot encode column {column} for COPY: {detail}")]
    Encode { column: usize, detail: String },
}

impl CopyError {
    fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            CopyError::Database(DbError { source, .. })
                if source.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        )
    }
}

/// Binary COPY of `rows` into `table` (the staging table, or a scratch copy
/// of the audit table for the benchmark's ceiling: one encoder for both).
/// The whole batch is encoded into one buffer and sent as one message:
/// sending it in small pieces woke the connection's task (and a thread) for
/// every few kilobytes.
pub async fn copy_rows<R: AsNewRow>(
    client: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[&R],
) -> Result<(), CopyError> {
    let mut buf = BytesMut::new();
    encode_rows(rows, &mut buf)?;
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(db("copy"))?;
    pin_mut!(sink);
    sink.send(buf.freeze()).await.map_err(db("copy"))?;
    sink.finish().await.map_err(db("copy"))?;
    Ok(())
}

/// Appends the binary COPY stream of `rows` (header, rows, trailer) to `buf`.
pub fn encode_rows<R: AsNewRow>(rows: &[&R], buf: &mut BytesMut) -> Result<(), CopyError> {
    buf.reserve(COPY_HEADER.len() + 2 + rows.len() * ROW_BYTES);
    buf.put_slice(COPY_HEADER);
    for row in rows {
        encode_row(*row, buf)?;
    }
    buf.put_i16(-1);
    Ok(())
}

/// The binary COPY signature, flags and header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// About one row's encoded size, to size the buffer once.
const ROW_BYTES: usize = 512;

fn encode_row<R: AsNewRow>(row: &R, buf: &mut BytesMut) -> Result<(), CopyError> {
    let row = row.new_row();
    let event = row.event;
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    let calls = (!event.calls.is_empty()).then_some(Json(&event.calls));
    let unpriced = (!event.unpriced_tokens.is_empty()).then_some(Json(&event.unpriced_tokens));
    let values: [&(dyn ToSql + Sync); 30] = [
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
        &row.content_sha256,
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
        &unpriced,
        &event.api_key,
    ];
    buf.put_i16(values.len() as i16);
    for (column, (value, ty)) in values.iter().zip(&COPY_TYPES).enumerate() {
        let at = buf.len();
        buf.put_i32(0);
        let length = match value.to_sql_checked(ty, buf) {
            Ok(IsNull::Yes) => -1,
            Ok(IsNull::No) => i32::try_from(buf.len() - at - 4).unwrap_or(i32::MAX),
            Err(source) => {
                return Err(CopyError::Encode {
                    column,
                    detail: source.to_string(),
                })
            }
        };
        buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

const INSERT_STAGED: &str = "
INSERT INTO gateway_mode_audit (
    id, tenant_id, user_id, provider, model,
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at,
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels,
    request_id, received_at, payload_sha256, source_partition, source_offset,
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry,
    price_book_version, pricing_rule, cost_source, unpriced_tokens, api_key)
SELECT
    id, tenant_id, user_id, provider, model,
    prompt_tokens, completion_tokens, total_tokens, estimated_cost, created_at,
    cached_prompt_tokens, cache_write_tokens, reasoning_tokens, pricing_status, labels,
    request_id, received_at, payload_sha256, source_partition, source_offset,
    cache_write_1h_tokens, service_tier, calls, list_cost, price_entry,
    price_book_version, pricing_rule, cost_source, unpriced_tokens, api_key
FROM tokenledger_staging
ON CONFLICT (created_at, tenant_id, id) DO NOTHING
RETURNING tenant_id, id, created_at";

/// Writes `direct` and `hinted` to the audit table; returns the keys it
/// inserted and the path the batch took.
///
/// Most batches hold no key that is stored already (a client's retry, a
/// replay): for them the rows are COPYed straight into the hypertable,
/// which costs the database about half of staging them and inserting from
/// the staging table. COPY has no `ON CONFLICT`, so it runs under a
/// savepoint: a stored key makes it fail with `unique_violation`, the
/// savepoint is rolled back, and the batch takes the staging path, which
/// skips stored keys. Any other error is the batch's (bisected, retried).
///
/// Rows go in key order: two writers inserting the same keys (one event
/// written to two partitions) then wait for each other in the same order
/// instead of deadlocking.
///
/// The `hinted` rows' keys were probably stored already (the caller
/// committed them recently): the `direct` rows are COPYed straight in,
/// the hinted ones alone take the staging insert, which skips those stored and inserts the others, so a
/// wrong hint costs time, never a row. Without this, one stored key made
/// the whole batch's direct COPY fail part-way and the whole batch take
/// the staging path. Should the direct COPY still meet a stored key, the
/// whole batch takes the staging path as above.
///
/// Each part goes in key order. Two writers holding the same keys in
/// different parts could wait for each other in opposite orders; that
/// needs a hinted key that another writer is inserting right now (a hint
/// is of committed keys), and the database breaks such a deadlock by
/// failing one transaction, which is retried.
pub async fn insert_hinted<R: AsNewRow, S: BuildHasher + Default>(
    transaction: &deadpool_postgres::Transaction<'_>,
    mut direct: Vec<&R>,
    mut hinted: Vec<&R>,
) -> Result<(Inserted<S>, Path), CopyError> {
    if direct.is_empty() && hinted.is_empty() {
        return Ok((Inserted::Every, Path::Direct));
    }
    let by_key = |a: &&R, b: &&R| {
        let (a, b) = (a.new_row().event, b.new_row().event);
        (a.created_at, &a.tenant_id, a.id).cmp(&(b.created_at, &b.tenant_id, b.id))
    };
    direct.sort_unstable_by(by_key);
    hinted.sort_unstable_by(by_key);
    if !direct.is_empty() {
        transaction
            .batch_execute("SAVEPOINT tokenledger_direct_copy")
            .await
            .map_err(db("savepoint"))?;
        match copy_rows(transaction, "gateway_mode_audit", &direct).await {
            Ok(()) if hinted.is_empty() => return Ok((Inserted::Every, Path::Direct)),
            Ok(()) => {}
            Err(error) if error.is_unique_violation() => {
                transaction
                    .batch_execute("ROLLBACK TO SAVEPOINT tokenledger_direct_copy")
                    .await
                    .map_err(db("rollback to savepoint"))?;
                direct.append(&mut hinted);
                direct.sort_unstable_by(by_key);
                copy_rows(transaction, "tokenledger_staging", &direct).await?;
                let inserted = insert_staged(transaction).await?;
                return Ok((Inserted::Keys(inserted), Path::Staged));
            }
            Err(error) => return Err(error),
        }
    }
    copy_rows(transaction, "tokenledger_staging", &hinted).await?;
    let mut inserted: HashSet<AuditKey, S> = insert_staged(transaction).await?;
    inserted.reserve(direct.len());
    inserted.extend(direct.iter().map(|row| row.new_row().key()));
    Ok((Inserted::Keys(inserted), Path::Hinted))
}

/// How [`insert_hinted`] wrote a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// One COPY straight into the audit table.
    Direct,
    /// The rows not hinted by COPY straight in, the hinted ones staged.
    Hinted,
    /// Every row staged, after the direct COPY met a stored key.
    Staged,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Hinted => "hinted",
            Path::Staged => "staged",
        }
    }
}

/// Which of the rows given to [`insert_hinted`] it inserted.
#[derive(Debug)]
pub enum Inserted<S> {
    /// All of them: no key was stored before.
    Every,
    /// These keys; the others were stored before.
    Keys(HashSet<AuditKey, S>),
}

impl<S: BuildHasher + Default> Inserted<S> {
    /// The inserted keys of `rows` (the rows given to [`insert_hinted`]).
    pub fn into_keys<R: AsNewRow>(self, rows: &[&R]) -> HashSet<AuditKey, S> {
        match self {
            Inserted::Every => rows.iter().map(|row| row.new_row().key()).collect(),
            Inserted::Keys(keys) => keys,
        }
    }
}

/// Inserts the staged rows whose key is not stored yet; returns the keys
/// it inserted.
async fn insert_staged<S: BuildHasher + Default>(
    transaction: &deadpool_postgres::Transaction<'_>,
) -> Result<HashSet<AuditKey, S>, DbError> {
    let statement = transaction
        .prepare_cached(INSERT_STAGED)
        .await
        .map_err(db("prepare insert"))?;
    let returned = transaction
        .query(&statement, &[])
        .await
        .map_err(db("insert"))?;
    returned
        .iter()
        .map(key_of)
        .collect::<Result<_, _>>()
        .map_err(db("insert"))
}
