//! The optimization rollup of the days a re-pricing changed, rebuilt from
//! the raw table for each (day, tenant) whose cost changed, one
//! transaction each. Driven by the pending days ([`super::pending`]): the
//! rebuild is over a whole day, so it runs once per day at the end of a
//! run rather than once per page, and a run stopped before it leaves the
//! days pending for the next run, which rebuilds them first.

use std::collections::BTreeSet;
use std::io::Write;

use chrono::NaiveDate;
use ledger::PriceBook;
use store::optimize::rebuild::{rebuild_day, tenants_corrected};
use tokio_postgres::Client;
use uuid::Uuid;

use super::RepriceError;

pub async fn rebuild(
    client: &mut Client,
    book: &PriceBook,
    pending: &[(Uuid, NaiveDate)],
    out: &mut impl Write,
) -> Result<(), RepriceError> {
    let mut changed: BTreeSet<(NaiveDate, String)> = BTreeSet::new();
    for (run_id, day) in pending {
        for tenant in tenants_corrected(&*client, *run_id, *day).await? {
            changed.insert((*day, tenant));
        }
    }
    for (day, tenant) in changed {
        let rows = rebuild_day(client, book, day, &tenant).await?;
        writeln!(
            out,
            "  optimization rollup of {day} {tenant} rebuilt from {rows} rows"
        )?;
    }
    Ok(())
}
