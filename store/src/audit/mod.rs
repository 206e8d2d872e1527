//! The raw audit table `gateway_mode_audit`, as the processor's batch
//! writes it: the row a usage event becomes ([`NewRow`], its provenance
//! columns [`Pricing`]), the binary COPY of a batch and the staging insert
//! that skips stored keys ([`copy`]), the stored content hashes of keys a
//! batch did not insert ([`stored_hashes`]), and the call identities that
//! make an OpenTelemetry-reported call one row whatever its time
//! ([`identity`], `call_identities`). Which event is new, duplicate or
//! conflict, and the transaction's flow, are the processor's.

use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use ledger::pricebook::Rating;
use ledger::{Cost, PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{db, DbError};

pub mod copy;
pub mod identity;

/// The audit table's unique key: `(tenant_id, id, created_at)`.
pub type AuditKey = (String, Uuid, DateTime<Utc>);

/// The provenance columns of a row: which price made its cost, under which
/// book, by which rule, and whose cost it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    pub list_cost: Option<Decimal>,
    pub price_entry: Option<String>,
    pub price_book_version: String,
    pub pricing_rule: String,
    /// `book`, `tenant_contract` or `caller`; `None` when unpriced.
    pub cost_source: Option<&'static str>,
}

impl From<Rating> for Pricing {
    /// Moves the provenance out of a rating that is done with: cloning its
    /// strings cost three allocations per event.
    fn from(rating: Rating) -> Self {
        let cost_source = Pricing::cost_source(&rating);
        Self {
            list_cost: rating.list_cost,
            price_entry: rating.provenance.entry_id,
            price_book_version: rating.provenance.book_version,
            pricing_rule: rating.provenance.rule,
            cost_source,
        }
    }
}

impl Pricing {
    fn cost_source(rating: &Rating) -> Option<&'static str> {
        match rating.status {
            PricingStatus::Provided => Some("caller"),
            PricingStatus::Priced if rating.provenance.tenant_rule.is_some() => {
                Some("tenant_contract")
            }
            PricingStatus::Priced => Some("book"),
            PricingStatus::Unpriced => None,
        }
    }
}

impl From<&Rating> for Pricing {
    fn from(rating: &Rating) -> Self {
        let cost_source = Pricing::cost_source(rating);
        Self {
            list_cost: rating.list_cost,
            price_entry: rating.provenance.entry_id.clone(),
            price_book_version: rating.provenance.book_version.clone(),
            pricing_rule: rating.provenance.rule.clone(),
            cost_source,
        }
    }
}

/// One new row of the audit table, borrowed from the caller's event.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    pub event: &'a UsageEvent,
    pub cost: &'a Cost,
    pub pricing: &'a Pricing,
    /// SHA-256 of the event's content, compared when its key comes again.
    pub content_sha256: &'a [u8],
    /// The Kafka partition and offset of the record it came from.
    pub source_partition: i32,
    pub source_offset: i64,
}

/// What the caller's batch element is as an audit row.
pub trait AsNewRow {
    fn new_row(&self) -> NewRow<'_>;
}

impl<'a> NewRow<'a> {
    pub fn key(&self) -> AuditKey {
        (
            self.event.tenant_id.clone(),
            self.event.id,
            self.event.created_at,
        )
    }
}

const STORED_HASHES: &str = "
SELECT audit.tenant_id, audit.id, audit.created_at, audit.payload_sha256
FROM gateway_mode_audit AS audit
JOIN UNNEST($1::varchar[], $2::uuid[], $3::timestamptz[]) AS wanted(tenant_id, id, created_at)
  ON audit.created_at = wanted.created_at
 AND audit.tenant_id = wanted.tenant_id
 AND audit.id = wanted.id";

/// The stored content hash of each of `keys` that is stored.
pub async fn stored_hashes<S: BuildHasher + Default>(
    transaction: &deadpool_postgres::Transaction<'_>,
    keys: &[AuditKey],
) -> Result<HashMap<AuditKey, Vec<u8>, S>, DbError> {
    if keys.is_empty() {
        return Ok(HashMap::default());
    }
    let tenants: Vec<&str> = keys.iter().map(|(tenant, _, _)| tenant.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, id, _)| *id).collect();
    let created: Vec<DateTime<Utc>> = keys.iter().map(|(_, _, at)| *at).collect();
    let statement = transaction
        .prepare_cached(STORED_HASHES)
        .await
        .map_err(db("prepare stored hashes"))?;
    let rows = transaction
        .query(&statement, &[&tenants, &ids, &created])
        .await
        .map_err(db("stored hashes"))?;
    rows.iter()
        .map(|row| Ok((key_of(row)?, row.try_get("payload_sha256")?)))
        .collect::<Result<_, _>>()
        .map_err(db("stored hashes"))
}

/// The key columns of a returned row, by name.
fn key_of(row: &Row) -> Result<AuditKey, tokio_postgres::Error> {
    Ok((
        row.try_get("tenant_id")?,
        row.try_get("id")?,
        row.try_get("created_at")?,
    ))
}

/// Where and when one stored row came in: `(received_at, source_partition,
/// source_offset, ingested_at)`; `ingested_at` is the inserting
/// transaction's `now()`.
pub type Arrival = (DateTime<Utc>, i32, i64, DateTime<Utc>);

/// The arrival of every row the gateway received in `[from, to)`: what the
/// benchmark measures latency from.
pub async fn received_between(
    client: &impl tokio_postgres::GenericClient,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Arrival>, DbError> {
    const STEP: &str = "reading the rows received in a window";
    let rows = client
        .query(
            "SELECT received_at, source_partition, source_offset, ingested_at \
             FROM gateway_mode_audit \
             WHERE received_at >= $1 AND received_at < $2",
            &[&from, &to],
        )
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("received_at")?,
                row.try_get("source_partition")?,
                row.try_get("source_offset")?,
                row.try_get("ingested_at")?,
            ))
        })
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}
