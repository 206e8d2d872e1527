//! The stored rows a re-pricing reads and changes ([`store::reprice`]): one
//! page of `gateway_mode_audit` in key order for the run's filter.

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use super::{RepriceArgs, RepriceError};

pub use store::reprice::{insert_corrections, update, Correction, Cursor, Stored, Update};

/// The next page of the range after `cursor` (runs take turns on
/// [`super::REPRICE_LOCK_KEY`], so the page stays as read until its update).
pub async fn page(
    transaction: &Transaction<'_>,
    args: &RepriceArgs,
    range: (DateTime<Utc>, DateTime<Utc>),
    cursor: &Cursor,
) -> Result<Vec<Stored>, RepriceError> {
    let filter = store::reprice::Filter {
        tenant: args.tenant.as_deref(),
        provider: args.provider.as_deref(),
        model: args.model.as_deref(),
        page_rows: i64::from(args.batch_rows),
    };
    Ok(store::reprice::page(transaction, &filter, range, cursor).await?)
}
