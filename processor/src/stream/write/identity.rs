//! Call identities (`call_identities`, [`store::audit::identity`]): an event marked `call_identity` (an LLM call reported
//! by OpenTelemetry spans, keyed by its provider's response id) is stored
//! once per tenant and id, whatever its `created_at`. The audit table's
//! unique key must contain its partitioning column, so it cannot say that;
//! `call_identities` (sql/V11) holds one row per call, written in the
//! batch's transaction before the rows, and pruned past the backfill window
//! ([`prune`]).
//!
//! Each call-identity event of a batch claims its (tenant, id). The claim
//! that wins (or the one stored before) names the call's `created_at`: an
//! event at that time goes on to the audit table like any other (a retry is
//! found there), and an event at another time is the same call reported
//! again, judged against the call's content hash without touching the audit
//! table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use store::audit::identity::{self, ClaimOf};

use super::WriteError;
use crate::stream::prepare::{EventKey, KeyHasher, MissingStoredRow, PricedEvent};

/// A batch's rows sorted by what the call identities say.
#[derive(Debug)]
pub struct Resolved<'a> {
    /// Rows for the audit table: every event without call identity, and
    /// each call-identity event at its call's time.
    pub rows: Vec<&'a PricedEvent>,
    /// Events that report a call stored at another time, with the content
    /// hash to compare them with.
    pub repeated: HashMap<EventKey, Vec<u8>, KeyHasher>,
}

/// The call each call-identity event belongs to: `(created_at, hash)`.
type Calls = store::audit::identity::Calls<KeyHasher>;

/// Claims the call identities of `rows`, in the batch's transaction.
pub async fn resolve<'a>(
    transaction: &Transaction<'_>,
    rows: &'a [PricedEvent],
) -> Result<Resolved<'a>, WriteError> {
    let claims: Vec<&PricedEvent> = rows.iter().filter(|row| row.event.call_identity).collect();
    if claims.is_empty() {
        return Ok(Resolved {
            rows: rows.iter().collect(),
            repeated: HashMap::default(),
        });
    }
    let claimed: Vec<ClaimOf<'_>> = claims
        .iter()
        .map(|row| ClaimOf {
            tenant_id: &row.event.tenant_id,
            id: row.event.id,
            created_at: row.event.created_at,
            content_sha256: &row.content_sha256,
        })
        .collect();
    let mut calls: Calls = identity::claim(transaction, &claimed).await?;
    let (unclaimed_tenants, unclaimed_ids): (Vec<&str>, Vec<Uuid>) = claims
        .iter()
        .filter(|row| !calls.contains_key(&(row.event.tenant_id.clone(), row.event.id)))
        .map(|row| (row.event.tenant_id.as_str(), row.event.id))
        .unzip();
    if !unclaimed_ids.is_empty() {
        calls.extend(
            identity::stored::<KeyHasher>(transaction, &unclaimed_tenants, &unclaimed_ids).await?,
        );
    }

    let mut resolved = Resolved {
        rows: Vec::with_capacity(rows.len()),
        repeated: HashMap::default(),
    };
    for row in rows {
        if !row.event.call_identity {
            resolved.rows.push(row);
            continue;
        }
        // Claimed by another transaction and gone before the lookup: only
        // pruning does that, and retrying the batch claims it afresh.
        let Some((created_at, hash)) = calls.get(&(row.event.tenant_id.clone(), row.event.id))
        else {
            return Err(MissingStoredRow::from(row.key()).into());
        };
        if *created_at == row.event.created_at {
            resolved.rows.push(row);
        } else {
            // A call stored before its content was recorded is known only
            // by its identity: a report of it is a duplicate.
            let hash = hash.clone().unwrap_or_else(|| row.content_sha256.to_vec());
            resolved.repeated.insert(row.key(), hash);
        }
    }
    Ok(resolved)
}

/// Forgets calls that started before `before`. No later report of them can
/// pass the gateway's backfill window, and their rows keep their own keys.
pub async fn prune(
    client: &impl tokio_postgres::GenericClient,
    before: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    identity::prune(client, before).await
}

/// How long a call's identity is kept: the gateway's 35-day backfill window
/// plus the 14-day outage margin of the rollups' refresh windows, so a
/// report accepted late and consumed after an outage still finds its call.
pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(49);

const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Prunes call identities past [`RETENTION`] now and every hour until
/// `stop`. Processors pruning at once only delete the same rows.
pub fn start_pruning(
    pool: deadpool_postgres::Pool,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let pruned = match pool.get().await {
                Ok(client) => prune(&**client, Utc::now() - RETENTION)
                    .await
                    .map_err(|error| crate::stream::write_errors::describe(&error)),
                Err(error) => Err(error.to_string()),
            };
            match pruned {
                Ok(rows) => tracing::debug!(rows, "pruned call identities"),
                Err(error) => tracing::warn!(%error, "cannot prune call identities"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            }
        }
    })
}
