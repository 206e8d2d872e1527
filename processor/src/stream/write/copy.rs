//! How a batch's rows reach `gateway_mode_audit`: the statements and the
//! binary COPY encoding are [`store::audit::copy`]; this module gives them
//! the batch's rows and errors.

use bytes::BytesMut;

use super::recent::RecentKeys;
use super::WriteError;
use crate::stream::prepare::{KeyHasher, PricedEvent};

pub use store::audit::copy::CREATE_STAGING;

/// Which of the rows given to [`insert_hinted`] it inserted.
pub type Inserted = store::audit::copy::Inserted<KeyHasher>;

/// Binary COPY of `rows` into `table` (the staging table, or a scratch copy
/// of the audit table for the benchmark's ceiling: one encoder for both).
pub async fn copy_rows(
    client: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[&PricedEvent],
) -> Result<(), WriteError> {
    Ok(store::audit::copy::copy_rows(client, table, rows).await?)
}

/// Appends the binary COPY stream of `rows` (header, rows, trailer) to `buf`.
pub fn encode_rows(rows: &[&PricedEvent], buf: &mut BytesMut) -> Result<(), WriteError> {
    Ok(store::audit::copy::encode_rows(rows, buf)?)
}

/// Writes `rows` to the audit table; returns the keys it inserted. The
/// rows whose key `recent` remembers are left out of the direct COPY and
/// staged alone ([`store::audit::copy::insert_hinted`]).
pub async fn insert_hinted(
    transaction: &deadpool_postgres::Transaction<'_>,
    rows: &[&PricedEvent],
    recent: &RecentKeys,
) -> Result<Inserted, WriteError> {
    let (direct, hinted) = recent.split(rows);
    let hinted_rows = hinted.len();
    let (inserted, path) = store::audit::copy::insert_hinted(transaction, direct, hinted).await?;
    recent.count(path);
    // Which path a batch took, for tuning beside the "batch step" times.
    tracing::trace!(path = path.as_str(), hinted_rows, "batch insert path");
    Ok(inserted)
}
