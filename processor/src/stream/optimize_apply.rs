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
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use store::optimize::pending::{apply, count, Applied};
use tokio_util::sync::CancellationToken;

/// The applier's own series: how far behind it is and what it costs.
#[derive(Debug, Clone)]
pub struct ApplierMetrics {
    pending: IntGauge,
    applied: IntCounter,
    duration: Histogram,
}

impl ApplierMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pending = IntGauge::new(
            "tokenledger_optimize_pending_batches",
            "Committed batches whose optimization rollup deltas are not applied yet \
             (rows of usage_optimize_pending), read after each apply.",
        )?;
        let applied = IntCounter::new(
            "tokenledger_optimize_batches_applied_total",
            "Batches whose optimization rollup deltas this processor applied.",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "tokenledger_optimize_apply_duration_seconds",
                "Time of one apply transaction of optimization rollup deltas.",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.5, 10)?),
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            pending,
            applied,
            duration,
        })
    }

    fn observe(&self, applied: &Applied) {
        if applied.batches > 0 {
            self.applied.inc_by(applied.batches);
            self.duration.observe(applied.micros as f64 / 1e6);
        }
    }
}

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
    drain_observed(pool, timeout, None).await
}

/// [`drain`], each apply transaction observed in `metrics`.
async fn drain_observed(
    pool: &Pool,
    timeout: Duration,
    metrics: Option<&ApplierMetrics>,
) -> Result<Applied, ApplyError> {
    let mut total = Applied::default();
    loop {
        let turn = tokio::time::timeout(timeout, apply_once(pool, BATCHES_PER_APPLY))
            .await
            .map_err(|_| ApplyError::Timeout(timeout))??;
        let Some(one) = turn else {
            return Ok(total);
        };
        if let Some(metrics) = metrics {
            metrics.observe(&one);
        }
        total += one;
        if one.batches < BATCHES_PER_APPLY as u64 {
            return Ok(total);
        }
    }
}

async fn read_pending(pool: &Pool, timeout: Duration) -> Result<i64, ApplyError> {
    let client = pool.get().await?;
    tokio::time::timeout(timeout, count(&**client))
        .await
        .map_err(|_| ApplyError::Timeout(timeout))?
        .map_err(ApplyError::from)
}

/// Runs the applier until `stop`, then drains once more: stop it after the
/// writers' last commit so that their deltas reach the tables.
pub fn start(
    pool: Pool,
    interval: Duration,
    timeout: Duration,
    metrics: ApplierMetrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(interval) => false,
            };
            if let Err(error) = drain_observed(&pool, timeout, Some(&metrics)).await {
                // The rows stay pending; the next turn (or processor) applies them.
                tracing::warn!(%error, "cannot apply the optimization deltas");
            }
            // Read whether this processor applied or another holds the
            // turn, so every processor reports how far behind the rollup is.
            match read_pending(&pool, timeout).await {
                Ok(pending) => metrics.pending.set(pending),
                Err(error) => {
                    tracing::warn!(%error, "cannot count the pending optimization deltas")
                }
            }
            if stopping {
                return;
            }
        }
    })
}
