//! `processor rebuild-attribution`: the use-case rollup of the configured attribution labels,
//! recomputed from the raw table over a range of UTC days (for a key named after its usage
//! arrived). The SQL is the `store` crate's.

use chrono::NaiveDate;
use clap::Args;
use tokio_postgres::Client;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    from: NaiveDate,
    /// Last UTC day (YYYY-MM-DD), exclusive.
    #[arg(long)]
    to: NaiveDate,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("--to must be after --from (it is exclusive)")]
    EmptyRange,
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] store::DbError),
}

impl RebuildArgs {
    /// Refuses an empty range before anything connects.
    pub fn check(&self) -> Result<(), RebuildError> {
        if self.to > self.from {
            Ok(())
        } else {
            Err(RebuildError::EmptyRange)
        }
    }
}

/// Rebuilds the range in one transaction and says how many rows it wrote.
pub async fn run(
    config: &Config,
    client: &mut Client,
    args: &RebuildArgs,
) -> Result<(), RebuildError> {
    let RebuildArgs { from, to } = args;
    let transaction = client.transaction().await?;
    let rows = store::attribution::rebuild(
        &transaction,
        &config.attribution.labels,
        store::exports::midnight(*from),
        store::exports::midnight(*to),
        config.attribution.max_values_per_day,
    )
    .await?;
    transaction.commit().await?;
    println!(
        "usage_attribution_daily: {rows} row(s) rebuilt for {:?} over [{from}, {to})",
        config.attribution.labels
    );
    Ok(())
}
