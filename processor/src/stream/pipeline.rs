//! The run loop: start-up checks, then take the next batch, prepare it,
//! commit it (retrying the same batch until it commits), count it, repeat;
//! and a graceful stop that commits the in-flight batch.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::PriceBook;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PricingConfig};
use crate::database::{self, DatabaseError};
use crate::migrate::{self, MigrateError};
use crate::offsets::OffsetFloors;
use crate::record::Record;
use crate::stream::batch::{self, BatchLimits};
use crate::stream::consumer::{self, ConsumerDeps, ConsumerError, GroupMember};
use crate::stream::dead_letters::{DeadLetterError, DeadLetterSink, KafkaDeadLetters};
use crate::stream::health::{self, Readiness, ServeError};
use crate::stream::metrics::{CommittedBatch, Metrics, MetricsError};
use crate::stream::prepare::PreparedBatch;
use crate::stream::write::{AttemptState, BatchOutcome, WriteError, Writer};

/// First pause after a failed attempt; doubled per attempt up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    PriceBook(#[from] infra::pricebook::PriceBookLoadError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Schema(#[from] MigrateError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    #[error(transparent)]
    AlertOutbox(#[from] crate::stream::alert_outbox::OutboxError),
    #[error("cannot commit a batch: {0}")]
    Write(WriteError),
    #[error("the consumer stopped unexpectedly")]
    ConsumerStopped,
}

/// The built-in price book with the configured file laid over it.
pub fn load_price_book(pricing: &PricingConfig) -> Result<PriceBook, RunError> {
    Ok(infra::pricebook::load(pricing.pricebook_path.as_deref())?)
}

/// Runs the pipeline until `shutdown` is cancelled, then commits the
/// in-flight batch and leaves the consumer group. The caller bounds the
/// whole shutdown with `shutdown_timeout_ms`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let price_book = load_price_book(&config.pricing)?;
    tracing::info!(prices = price_book.len(), "price book loaded");
    let pool = database::pool(&config.database)?;
    let metrics = Arc::new(Metrics::new(
        config.metrics.max_tenant_labels,
        config.metrics.max_model_labels,
    )?);
    metrics.enable_label_metrics(&config.metrics.label_keys, config.metrics.max_label_values)?;
    let readiness = Readiness::default();
    let server_stop = CancellationToken::new();
    let server = health::serve(
        metrics.clone(),
        readiness.clone(),
        &config.metrics.listen,
        &config.metrics.path,
        server_stop.clone(),
    )
    .await?;

    let expected = migrate::embedded()?;
    let schema_ok = retry_until_shutdown("checking the database schema", &shutdown, || async {
        let client = pool
            .get()
            .await
            .map_err(|e| Retry::Transient(e.to_string()))?;
        match migrate::verify(&client, &expected).await {
            Ok(()) => Ok(()),
            Err(error @ MigrateError::NotMigrated { .. }) => Err(Retry::Fatal(error)),
            Err(error) => Err(Retry::Transient(error.to_string())),
        }
    })
    .await?;
    if !schema_ok {
        return Ok(());
    }
    let db_timeout = config.database.timeout();
    let topics_ok = retry_until_shutdown("creating topics", &shutdown, || async {
        consumer::ensure_topics(&config.kafka, db_timeout)
            .await
            .map_err(|e| Retry::<ConsumerError>::Transient(e.to_string()))
    })
    .await?;
    if !topics_ok {
        return Ok(());
    }

    let dead_letters = KafkaDeadLetters::new(
        consumer::client_config(&config.kafka),
        &config.kafka.dlq_topic,
        db_timeout,
    )?;
    let writer = Writer::new(
        pool.clone(),
        &config.kafka.group_id,
        dead_letters,
        db_timeout,
    )
    .with_attribution_keys(config.attribution.labels.clone())
    .with_attribution_bound(config.attribution.max_values_per_day)
    .with_price_book(Arc::new(price_book.clone()));
    let floors = OffsetFloors::default();
    let (member, receivers) = GroupMember::start(
        &config.kafka,
        ConsumerDeps {
            pool: pool.clone(),
            floors: floors.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            db_timeout,
            channel_capacity: config.batch.max_events,
            writers: config.batch.writers,
        },
    )?;
    // Pushes recorded budget crossings; stopped last, after the final commit.
    let outbox_stop = CancellationToken::new();
    let outbox = crate::stream::alert_outbox::start(
        pool.clone(),
        &config.alerting,
        metrics.registry(),
        outbox_stop.clone(),
        Arc::new(price_book.clone()),
    )?;
    // Exports `processor reprice`'s corrections as their own series.
    let corrections = crate::stream::corrections::start(
        pool.clone(),
        crate::stream::corrections::CorrectionMetrics::new(
            metrics.registry(),
            config.metrics.max_tenant_labels,
            config.metrics.max_model_labels,
        )
        .map_err(MetricsError::from)?,
        outbox_stop.clone(),
    );
    let pruning = crate::stream::write::identity::start_pruning(pool.clone(), outbox_stop.clone());
    // Adds the batches' optimization deltas to the rollup tables; stopped
    // after the writers' last commit, so that it applies their deltas too.
    let applier_stop = CancellationToken::new();
    let applier = crate::stream::optimize_apply::start(
        pool.clone(),
        config.optimize.apply_interval(),
        db_timeout,
        crate::stream::optimize_apply::ApplierMetrics::new(metrics.registry())
            .map_err(MetricsError::from)?,
        applier_stop.clone(),
    );
    readiness.set(true);
    tracing::info!(
        topic = %config.kafka.topic,
        group_id = %config.kafka.group_id,
        "processor running"
    );

    let limits = BatchLimits {
        max_events: config.batch.max_events,
        max_latency: config.batch.max_latency(),
    };
    // One writer per group of partitions (consumer::writer_of), each
    // committing its own batches; on a failure the others commit what they
    // hold and stop.
    let writers = receivers.into_iter().enumerate().map(|(index, records)| {
        let context = WriterContext {
            writer: &writer,
            price_book: &price_book,
            metrics: &metrics,
            readiness: &readiness,
            floors: &floors,
            member: &member,
            shutdown: &shutdown,
        };
        run_writer(index, records, limits, context)
    });
    let mut result = Ok(());
    for ended in futures::future::join_all(writers).await {
        match ended {
            Ok(batch::End::Shutdown) => {}
            Ok(batch::End::SourceClosed) if shutdown.is_cancelled() => {}
            Ok(batch::End::SourceClosed) => {
                if result.is_ok() {
                    result = Err(RunError::ConsumerStopped);
                }
            }
            Err(error) => {
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
    }

    readiness.set(false);
    // Stop the polling thread in every case (it also watches `shutdown`).
    shutdown.cancel();
    let consumer_result = member
        .stop(Duration::from_millis(config.shutdown_timeout_ms))
        .await;
    server_stop.cancel();
    outbox_stop.cancel();
    applier_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), outbox).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), corrections).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), pruning).await;
    // The deltas left behind stay pending for the next applier either way.
    let _ = tokio::time::timeout(db_timeout, applier).await;
    match (result, consumer_result) {
        (Err(error), _) => Err(error),
        (Ok(()), Err(error)) => Err(error.into()),
        (Ok(()), Ok(())) => {
            tracing::info!("processor stopped");
            Ok(())
        }
    }
}

/// Commits one batch, retrying the same batch with capped exponential
/// backoff while the error is retryable (the writer has already isolated
/// the records behind a permanent error; a schema error stops). Nothing else of the writer's
/// partitions is consumed meanwhile: its channel fills, and the consumer thread waits (one
/// writer) or pauses those partitions (several, [`crate::handoff`]).
pub async fn commit_batch<D: DeadLetterSink>(
    writer: &Writer<D>,
    mut prepared: PreparedBatch,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Result<BatchOutcome, RunError> {
    let started = Instant::now();
    let mut attempt_state = AttemptState::default();
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    let outcome = loop {
        match writer.write(&mut prepared, &mut attempt_state).await {
            Ok(outcome) => break outcome,
            Err(error) if error.is_retryable() => {
                metrics.record_db_retry();
                readiness.set(false);
                // The error's text names the SQLSTATE and message of a
                // database error; the field makes it searchable.
                tracing::warn!(
                    attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    records = prepared.records.len(),
                    sqlstate = error.database_failure().map(|f| f.sqlstate).unwrap_or_default(),
                    %error,
                    "batch transaction failed; retrying the same batch"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(error) => return Err(RunError::Write(error)),
        }
    };
    if attempt > 1 {
        tracing::info!(attempt, "batch committed after retrying");
    }
    readiness.set(true);
    metrics.record_batch(&counted(&outcome), started.elapsed());
    let dead_lettered: usize = outcome.dead_lettered.values().sum();
    if dead_lettered > 0 || outcome.conflicts > 0 {
        tracing::info!(
            records = outcome.consumed,
            inserted = outcome.new_rows.len(),
            duplicates = outcome.duplicates,
            conflicts = outcome.conflicts,
            dead_lettered,
            committed_at = %outcome.committed_at.to_rfc3339(),
            next_offsets = ?outcome.next_offsets,
            "batch committed"
        );
    } else {
        tracing::debug!(
            records = outcome.consumed,
            inserted = outcome.new_rows.len(),
            duplicates = outcome.duplicates,
            duration_ms = started.elapsed().as_millis() as u64,
            committed_at = %outcome.committed_at.to_rfc3339(),
            next_offsets = ?outcome.next_offsets,
            "batch committed"
        );
    }
    Ok(outcome)
}

/// What every writer shares.
struct WriterContext<'a, D> {
    writer: &'a Writer<D>,
    price_book: &'a PriceBook,
    metrics: &'a Metrics,
    readiness: &'a Readiness,
    floors: &'a OffsetFloors,
    member: &'a GroupMember,
    shutdown: &'a CancellationToken,
}

/// One writer: its partitions' batches, committed one at a time. A writer
/// that fails cancels `shutdown`, so the others stop after committing.
async fn run_writer<D: DeadLetterSink>(
    index: usize,
    mut records: tokio::sync::mpsc::Receiver<Record>,
    limits: BatchLimits,
    context: WriterContext<'_, D>,
) -> Result<batch::End, RunError> {
    let WriterContext {
        writer,
        price_book,
        metrics,
        readiness,
        floors,
        member,
        shutdown,
    } = context;
    let ended = batch::run_writer(
        &mut records,
        limits,
        price_book,
        shutdown,
        |record| floors.admits(record),
        |prepared, closed_by| async move {
            let outcome = commit_batch(writer, prepared, metrics, readiness).await?;
            floors.raise_all(&outcome.next_offsets);
            member.commit_for_monitoring(&outcome.next_offsets);
            if closed_by == batch::CloseReason::Shutdown {
                tracing::info!(
                    writer = index,
                    records = outcome.consumed,
                    "committed the in-flight batch on shutdown"
                );
            }
            Ok(())
        },
    )
    .await;
    if ended.is_err() {
        shutdown.cancel();
    }
    ended
}

/// What the counters need of a committed batch.
fn counted(outcome: &BatchOutcome) -> CommittedBatch<'_> {
    CommittedBatch {
        consumed: outcome.consumed,
        new_rows: &outcome.new_rows,
        duplicates: outcome.duplicates,
        conflicts: outcome.conflicts,
        dead_lettered: &outcome.dead_lettered,
        committed_at: outcome.committed_at,
    }
}

/// How a start-up step failed.
enum Retry<E> {
    Transient(String),
    Fatal(E),
}

/// Retries `step` with backoff until it succeeds (true), `shutdown` is
/// cancelled (false) or it fails fatally.
async fn retry_until_shutdown<E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<bool, RunError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Retry<E>>>,
    RunError: From<E>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    loop {
        match step().await {
            Ok(()) => return Ok(true),
            Err(Retry::Fatal(error)) => return Err(error.into()),
            Err(Retry::Transient(error)) => {
                tracing::warn!(attempt, backoff_ms = backoff.as_millis() as u64, %error, "{what} failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}
