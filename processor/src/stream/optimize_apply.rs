//! The optimization rollup's applier: every `optimize.apply_interval` it
//! adds the deltas batches stored (`usage_optimize_pending`, one row per
//! batch) to `usage_optimize_daily` and `usage_optimize_histogram`, many
//! batches per transaction, and once more on shutdown after the last batch
//! has committed. Each transaction sums and deletes the rows it claims
//! (`store::optimize::pending::apply`), so a delta counts exactly once
//! whatever stops the processor; several processors take turns under one
//! advisory lock, and a turn another holds is skipped.

use std::time::Duration;

use deadpool_postgres::Pool;
use store::optimize::pending::{apply, Applied};
use tokio_util::sync::CancellationToken;

/// Batches per apply transaction: enough that the rows many batches touch
/// are upserted once, few enough that one transaction stays short.
pub const BATCHES_PER_APPLY: i64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] store::DbError),
    #[error(transparent)]
    Optimize(#[from] store::optimize::OptimizeError),
    #[error("applying the optimization deltas took longer than {0:?}")]
    Timeout(Duration),
}

/// One apply transaction of up to `limit` batches; `None` when another
/// applier (or a rebuild) holds the turn.
pub async fn apply_once(pool: &Pool, limit: i64) -> Result<Option<Applied>, ApplyError> {
    let mut client = pool.get().await?;
    let transaction = client
        .transaction()
        .await
        .map_err(store::db("beginning an apply"))?;
    let applied = apply(&*transaction, limit).await?;
    transaction
        .commit()
        .await
        .map_err(store::db("committing an apply"))?;
    if let Some(applied) = applied.filter(|a| a.batches > 0) {
        // The applier's cost, for tuning and the benchmark's report.
        tracing::debug!(
            batches = applied.batches,
            events = applied.events,
            daily_rows = applied.daily_rows,
            histogram_rows = applied.histogram_rows,
            micros = applied.micros,
            upsert_micros = applied.upsert_micros,
            micros_per_event = applied.micros as f64 / applied.events.max(1) as f64,
            "optimization deltas applied"
        );
    }
    Ok(applied)
}

/// Applies until no pending row is left (or another applier holds the
/// turn), each transaction bounded by `timeout`; what it applied.
pub async fn drain(pool: &Pool, timeout: Duration) -> Result<Applied, ApplyError> {
    let mut total = Applied::default();
    loop {
        let turn = tokio::time::timeout(timeout, apply_once(pool, BATCHES_PER_APPLY))
            .await
            .map_err(|_| ApplyError::Timeout(timeout))??;
        let Some(one) = turn else {
            return Ok(total);
        };
        total.batches += one.batches;
        total.events += one.events;
        total.daily_rows += one.daily_rows;
        total.histogram_rows += one.histogram_rows;
        total.micros += one.micros;
        total.upsert_micros += one.upsert_micros;
        if one.batches < BATCHES_PER_APPLY as u64 {
            return Ok(total);
        }
    }
}

/// Runs the applier until `stop`, then drains once more: stop it after the
/// writers' last commit so that their deltas reach the tables.
pub fn start(
    pool: Pool,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(interval) => false,
            };
            if let Err(error) = drain(&pool, timeout).await {
                // The rows stay pending; the next turn (or processor) applies them.
                tracing::warn!(%error, "cannot apply the optimization deltas");
            }
            if stopping {
                return;
            }
        }
    })
}
