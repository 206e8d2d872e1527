//! `call_identities` (sql/V11): one row per LLM call reported with a call
//! identity, keyed by tenant and the provider's response id, naming the
//! call's `created_at` and content hash. The audit table's unique key must
//! contain its partitioning column, so it cannot say "one row per call
//! whatever its time"; this table does. Claimed in the batch's transaction
//! before the rows are written, and pruned past the backfill window.

use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::{db, DbError};

// Claims in key order, earliest report first: two writers claiming the
// same calls queue instead of deadlocking, and within a batch the earliest
// report of a call is the one stored. DO NOTHING also skips a second claim
// of one call inside the statement.
const CLAIM: &str = "
INSERT INTO call_identities (tenant_id, id, created_at, payload_sha256)
SELECT tenant_id, id, created_at, payload_sha256
FROM UNNEST($1::text[], $2::uuid[], $3::timestamptz[], $4::bytea[])
     AS claim(tenant_id, id, created_at, payload_sha256)
ORDER BY tenant_id, id, created_at
ON CONFLICT (tenant_id, id) DO NOTHING
RETURNING tenant_id, id, created_at, payload_sha256";

const STORED: &str = "
SELECT call.tenant_id, call.id, call.created_at, call.payload_sha256
FROM call_identities AS call
JOIN UNNEST($1::text[], $2::uuid[]) AS wanted(tenant_id, id)
  ON call.tenant_id = wanted.tenant_id AND call.id = wanted.id";

const PRUNE: &str = "DELETE FROM call_identities WHERE created_at < $1";

/// A call's stored time and content hash, by (tenant, id); the hash is
/// `None` for calls stored before their content was recorded.
pub type Calls<S> = HashMap<(String, Uuid), (DateTime<Utc>, Option<Vec<u8>>), S>;

/// One call-identity event's claim on its (tenant, id).
#[derive(Debug, Clone, Copy)]
pub struct ClaimOf<'a> {
    pub tenant_id: &'a str,
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub content_sha256: &'a [u8],
}

/// Claims the (tenant, id) of each of `claims` not claimed before; returns
/// the claims that won.
pub async fn claim<S: BuildHasher + Default>(
    transaction: &deadpool_postgres::Transaction<'_>,
    claims: &[ClaimOf<'_>],
) -> Result<Calls<S>, DbError> {
    let tenants: Vec<&str> = claims.iter().map(|c| c.tenant_id).collect();
    let ids: Vec<Uuid> = claims.iter().map(|c| c.id).collect();
    let times: Vec<DateTime<Utc>> = claims.iter().map(|c| c.created_at).collect();
    let hashes: Vec<&[u8]> = claims.iter().map(|c| c.content_sha256).collect();
    let statement = transaction
        .prepare_cached(CLAIM)
        .await
        .map_err(db("prepare call identities"))?;
    let rows = transaction
        .query(&statement, &[&tenants, &ids, &times, &hashes])
        .await
        .map_err(db("call identities"))?;
    read_calls(&rows).map_err(db("call identities"))
}

/// The stored calls among `(tenants[i], ids[i])`.
pub async fn stored<S: BuildHasher + Default>(
    transaction: &deadpool_postgres::Transaction<'_>,
    tenants: &[&str],
    ids: &[Uuid],
) -> Result<Calls<S>, DbError> {
    let statement = transaction
        .prepare_cached(STORED)
        .await
        .map_err(db("prepare stored call identities"))?;
    let rows = transaction
        .query(&statement, &[&tenants, &ids])
        .await
        .map_err(db("stored call identities"))?;
    read_calls(&rows).map_err(db("stored call identities"))
}

fn read_calls<S: BuildHasher + Default>(rows: &[Row]) -> Result<Calls<S>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            Ok((
                (row.try_get("tenant_id")?, row.try_get("id")?),
                (row.try_get("created_at")?, row.try_get("payload_sha256")?),
            ))
        })
        .collect()
}

/// Forgets calls that started before `before`; returns how many.
pub async fn prune(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    client.execute(PRUNE, &[&before]).await
}
