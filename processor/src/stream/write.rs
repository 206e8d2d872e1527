//! The batch transaction: insert a prepared batch's new rows, look up the
//! stored hashes of the rest, record budget spend and store the next
//! offsets, all in one transaction per batch, and the SQL it runs. Dead
//! letters (poison, and conflicts the transaction finds) are sent in bulk
//! while no transaction is open: a transaction that finds conflicts not yet
//! acknowledged rolls back, they are sent, and it runs again. Which event is new, duplicate or conflict is decided by
//! [`crate::stream::prepare`]; this module only asks the database and commits.
//! A batch the database refuses permanently is bisected, in transactions
//! that are rolled back, down to the records it refuses
//! ([`crate::stream::write_errors`]); they are dead-lettered and the rest commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool, Transaction};
use ledger::PriceBook;
use store::audit::copy::CopyError;
use store::optimize::rollup::Rolled;
use store::{db, DbError};

use crate::attribution::AttributionError;
use crate::budget_spend::BudgetSpendError;
use crate::offsets::{self, NextOffsets};
use crate::stream::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink, Reason};
use crate::stream::prepare::{
    classify, classify_all_inserted, EventKey, KeyHasher, MissingStoredRow, PreparedBatch,
    PricedEvent,
};
use crate::stream::write::recent::RecentKeys;
use crate::stream::write_errors::{self, DatabaseFailure, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error during {}: {}", .0.step, write_errors::describe(&.0.source))]
    Database(#[from] DbError),
    #[error("database step {step} did not finish within {timeout:?}")]
    Timeout {
        step: &'static str,
        timeout: Duration,
    },
    #[error("{0}{suffix}", suffix = write_errors::database_suffix(.0))]
    Offsets(store::DbError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// Budget spend failed; its database error decides retryability like
    /// any other.
    #[error("{0}{suffix}", suffix = write_errors::database_suffix(.0))]
    Budgets(#[from] BudgetSpendError),
    #[error(transparent)]
    Attribution(#[from] AttributionError),
    #[error(transparent)]
    MissingStoredRow(#[from] MissingStoredRow),
    /// A value the COPY encoder refused: a bug, not bad input (every
    /// stored value was checked when the record was decoded).
    #[error("cannot encode column {column} for COPY: {detail}")]
    Encode { column: usize, detail: String },
}

impl From<CopyError> for WriteError {
    fn from(error: CopyError) -> Self {
        match error {
            CopyError::Database(error) => WriteError::Database(error),
            CopyError::Encode { column, detail } => WriteError::Encode { column, detail },
        }
    }
}

impl WriteError {
    /// The PostgreSQL error behind this one, if any.
    pub fn database_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            WriteError::Database(error) => Some(&error.source),
            WriteError::Offsets(error) => Some(&error.source),
            WriteError::Budgets(error) => write_errors::database_cause(error),
            WriteError::Attribution(error) => Some(error.database_error()),
            _ => None,
        }
    }

    /// What to do about this error, decided here once. Only the database
    /// can refuse a batch's content; everything else (no connection, a
    /// step timing out, the dead-letter topic being down, the insert and
    /// the lookup disagreeing) may heal and is retried.
    pub fn class(&self) -> ErrorClass {
        self.database_error()
            .map_or(ErrorClass::Transient, write_errors::classify_database)
    }

    /// Whether the caller may try the same batch again. Only a schema
    /// problem (SQLSTATE class 42) stops the processor; [`Writer::write`]
    /// already isolated the records behind a permanent error, so one that
    /// still reaches the caller is retried like a transient one.
    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::Fatal
    }

    /// The SQLSTATE and message of the database error behind this one.
    pub fn database_failure(&self) -> Option<DatabaseFailure> {
        self.database_error().and_then(DatabaseFailure::of)
    }
}

/// What a committed batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub consumed: usize,
    /// Rows inserted by this batch, with their cost: the only rows counters
    /// (and budgets) may count.
    pub new_rows: Vec<PricedEvent>,
    pub duplicates: usize,
    pub conflicts: usize,
    pub dead_lettered: BTreeMap<Reason, usize>,
    pub next_offsets: NextOffsets,
    pub committed_at: DateTime<Utc>,
}

/// Dead letters already acknowledged in earlier attempts of the same batch,
/// by record index, so a retry does not send them again.
#[derive(Debug, Default)]
pub struct AttemptState {
    acknowledged_dead_letters: HashSet<usize>,
    /// Stored hashes an earlier attempt looked up. A stored row's key and
    /// content never change, so a retry (after sending the conflicts it
    /// found) asks the database only for keys it has not seen.
    stored_hashes: HashMap<EventKey, Vec<u8>, KeyHasher>,
}

/// Writes batches to the database.
#[derive(Debug)]
pub struct Writer<D> {
    pool: Pool,
    group_id: String,
    dead_letters: D,
    step_timeout: Duration,
    attribution_keys: Vec<String>,
    attribution_bound: usize,
    /// Which names a model budget counts (`Scope::matches_model`).
    price_book: Arc<PriceBook>,
    /// Keys committed recently, shared by the writer's tasks: a batch's
    /// retries of them skip the direct COPY.
    recent: RecentKeys,
}

impl<D: DeadLetterSink> Writer<D> {
    pub fn new(pool: Pool, group_id: &str, dead_letters: D, step_timeout: Duration) -> Self {
        Self {
            pool,
            group_id: group_id.to_owned(),
            dead_letters,
            step_timeout,
            attribution_keys: Vec::new(),
            attribution_bound: crate::attribution::DEFAULT_MAX_VALUES_PER_DAY,
            // The compiled-in book is checked by a unit test and parsed at
            // the processor's start (a failure there is a startup error)
            // before any writer exists.
            price_book: Arc::new(PriceBook::builtin().expect("the built-in price book parses")),
            recent: RecentKeys::default(),
        }
    }

    /// The price book whose names of a model the budget scope uses (the
    /// built-in one by default; the processor passes the book it rates with).
    pub fn with_price_book(mut self, book: Arc<PriceBook>) -> Self {
        self.price_book = book;
        self
    }

    /// The label keys whose cost the batch adds to the use-case rollup.
    pub fn with_attribution_keys(mut self, keys: Vec<String>) -> Self {
        self.attribution_keys = keys;
        self
    }

    /// The distinct values per key, tenant and day the rollup keeps
    /// (`attribution.max_values_per_day`).
    pub fn with_attribution_bound(mut self, max_values_per_day: usize) -> Self {
        self.attribution_bound = max_values_per_day;
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The keys this writer committed recently, and its insert paths.
    pub fn recent_keys(&self) -> &RecentKeys {
        &self.recent
    }

    /// One attempt at committing `prepared`. On error nothing was committed
    /// (dead letters may have been sent; `attempt` remembers them) and the
    /// caller may call again with the same batch and state. On success the
    /// inserted rows move out of `prepared.unique` into the outcome rather
    /// than being copied: the batch is done with them.
    ///
    /// When the database refuses the batch permanently (SQLSTATE classes
    /// 22, 23, 54), the records it refuses are found by bisection, moved to
    /// `prepared.poison` as [`Reason::Unstorable`] and dead-lettered, and the
    /// rest is written; a transient error during the search returns, and
    /// the next call searches again among what is left.
    pub async fn write(
        &self,
        prepared: &mut PreparedBatch,
        attempt: &mut AttemptState,
    ) -> Result<BatchOutcome, WriteError> {
        loop {
            let error = match self.write_once(prepared, attempt).await {
                Err(error) if error.class() == ErrorClass::Permanent => error,
                other => return other,
            };
            tracing::warn!(
                %error,
                sqlstate = error.database_failure().map(|f| f.sqlstate).unwrap_or_default(),
                events = prepared.unique.len(),
                "the database refused the batch permanently; bisecting it to find the records it refuses"
            );
            if self.isolate_unstorable(prepared).await? == 0 {
                // Every probe stored the rows: the refusal comes from a step
                // the probes do not repeat. Retrying is all that is left.
                return Err(error);
            }
        }
    }

    /// One attempt at the whole batch.
    async fn write_once(
        &self,
        prepared: &mut PreparedBatch,
        attempt: &mut AttemptState,
    ) -> Result<BatchOutcome, WriteError> {
        // Poison does not depend on the database: acknowledge it before the
        // transaction starts so the transaction is held open for less time.
        let poison = prepared
            .poison
            .iter()
            .map(|(index, letter)| (*index, letter));
        self.dead_letter_all(poison, attempt).await?;
        // The optimization rollup needs no database: computed here for every
        // row, it is used as is when the transaction inserts them all.
        let rolled = crate::optimize::rollup(&self.price_book, &prepared.unique);

        let (mut outcome, new) = loop {
            let mut client = self.bounded("connect", self.pool.get()).await??;
            let result = self
                .write_in_transaction(&mut client, prepared, Some(&rolled), attempt, Mode::Commit)
                .await;
            match result {
                Ok(Attempted::Committed(outcome, new)) => break (outcome, new),
                Ok(Attempted::Unacknowledged(conflicts)) => {
                    // Rolled back: the connection is idle and goes back to
                    // the pool before the topic is waited for.
                    drop(client);
                    let letters = conflicts.iter().map(|(index, letter)| (*index, letter));
                    self.dead_letter_all(letters, attempt).await?;
                }
                Err(error) => {
                    // The connection may be mid-transaction or mid-statement
                    // after a timeout; never hand it back to the pool.
                    drop(Object::take(client));
                    return Err(error);
                }
            }
        };
        let mut is_new = vec![false; prepared.unique.len()];
        for index in new {
            is_new[index] = true;
        }
        outcome.new_rows = std::mem::take(&mut prepared.unique)
            .into_iter()
            .zip(is_new)
            .filter_map(|(row, new)| new.then_some(row))
            .collect();
        Ok(outcome)
    }

    /// `rolled` is the optimization rollup of all of `prepared.unique`, if
    /// computed already.
    async fn write_in_transaction(
        &self,
        client: &mut Object,
        prepared: &PreparedBatch,
        rolled: Option<&Rolled<'_>>,
        attempt: &mut AttemptState,
        mode: Mode,
    ) -> Result<Attempted, WriteError> {
        let transaction = self
            .bounded("begin", client.transaction())
            .await?
            .map_err(db("begin"))?;

        let resolved = self
            .bounded(
                "call identities",
                identity::resolve(&transaction, &prepared.unique),
            )
            .await??;
        let inserted = self
            .bounded(
                "insert",
                copy::insert_hinted(&transaction, &resolved.rows, &self.recent),
            )
            .await??;
        let classification = match inserted {
            // Every event of the batch is a row this transaction inserted
            // (the usual case): nothing to look up, and only in-batch
            // repeats to compare.
            copy::Inserted::Every
                if resolved.repeated.is_empty() && resolved.rows.len() == prepared.unique.len() =>
            {
                classify_all_inserted(prepared)
            }
            inserted => {
                let inserted = inserted.into_keys(&resolved.rows);
                let not_inserted: Vec<EventKey> = resolved
                    .rows
                    .iter()
                    .map(|row| row.key())
                    .filter(|key| {
                        !inserted.contains(key) && !attempt.stored_hashes.contains_key(key)
                    })
                    .collect();
                let mut stored = self
                    .bounded("stored hashes", stored_hashes(&transaction, &not_inserted))
                    .await??;
                stored.extend(resolved.repeated);
                attempt.stored_hashes.extend(stored);
                classify(prepared, &inserted, &attempt.stored_hashes)?
            }
        };

        // Conflicts are known only now; they must be acknowledged by the
        // dead-letter topic before the offsets below move past them. Waiting
        // for the topic with the transaction open would hold its connection
        // and locks for as long as the broker takes, once per conflict: roll
        // back instead, and let the caller send them all at once and retry.
        // (A probe only asks whether the rows can be stored.)
        if mode == Mode::Commit {
            let unacknowledged: Vec<(usize, DeadLetter)> = classification
                .conflicts
                .iter()
                .filter(|(index, _)| !attempt.acknowledged_dead_letters.contains(index))
                .map(|(index, detail)| {
                    let letter = DeadLetter {
                        record: prepared.records[*index].clone(),
                        reason: Reason::Conflict,
                        detail: detail.clone(),
                        database: None,
                    };
                    (*index, letter)
                })
                .collect();
            if !unacknowledged.is_empty() {
                self.bounded("rollback", transaction.rollback())
                    .await?
                    .map_err(db("rollback"))?;
                return Ok(Attempted::Unacknowledged(unacknowledged));
            }
        }

        let new_rows: Vec<&PricedEvent> = classification
            .new
            .iter()
            .map(|index| &prepared.unique[*index])
            .collect();
        // Effects of new rows that must commit with them: budget spend and
        // threshold crossings see exactly the rows this transaction
        // inserted, each with its cost.
        self.bounded(
            "budgets",
            crate::budget_spend::record(&transaction, &new_rows, &self.price_book),
        )
        .await??;
        self.bounded(
            "reservations",
            crate::stream::reservations::settle(&transaction, &new_rows, &self.price_book),
        )
        .await??;
        let admitted = self
            .bounded(
                "attribution",
                crate::attribution::record(
                    &transaction,
                    &self.attribution_keys,
                    self.attribution_bound,
                    &new_rows,
                ),
            )
            .await??;
        // Rows found stored already (redeliveries) or in conflict are not
        // new: the batch's rollup counts them, so it is computed again for
        // the new rows alone.
        let rolled = rolled.filter(|_| new_rows.len() == prepared.unique.len());
        let folded = self
            .bounded(
                "optimization fold",
                crate::optimize::fold(&transaction, &self.price_book, &new_rows, rolled, &admitted),
            )
            .await??;
        self.bounded(
            "optimization deltas",
            crate::optimize::record(&transaction, folded),
        )
        .await??;

        self.bounded(
            "store offsets",
            offsets::store(
                &*transaction,
                &self.group_id,
                &prepared.next_offsets,
                &prepared.records,
            ),
        )
        .await?
        .map_err(WriteError::Offsets)?;
        match mode {
            Mode::Commit => {
                self.bounded("commit", transaction.commit())
                    .await?
                    .map_err(db("commit"))?;
                // Every row's key is stored now, inserted or found.
                self.recent
                    .remember(resolved.rows.iter().map(|row| &row.content_sha256));
            }
            Mode::Probe => self
                .bounded("rollback", transaction.rollback())
                .await?
                .map_err(db("rollback"))?,
        }

        let mut dead_lettered: BTreeMap<Reason, usize> = BTreeMap::new();
        for (_, letter) in &prepared.poison {
            *dead_lettered.entry(letter.reason).or_default() += 1;
        }
        if !classification.conflicts.is_empty() {
            *dead_lettered.entry(Reason::Conflict).or_default() += classification.conflicts.len();
        }
        let outcome = BatchOutcome {
            consumed: prepared.records.len(),
            // filled by `write`, which owns the rows
            new_rows: Vec::new(),
            duplicates: classification.duplicates,
            conflicts: classification.conflicts.len(),
            dead_lettered,
            next_offsets: prepared.next_offsets.clone(),
            committed_at: Utc::now(),
        };
        Ok(Attempted::Committed(outcome, classification.new))
    }

    /// Sends the letters not yet acknowledged all at once (the producer
    /// batches them) and waits for every acknowledgement; those that
    /// arrived are remembered even when another failed, so a retry sends
    /// only the rest.
    async fn dead_letter_all<'a>(
        &self,
        letters: impl Iterator<Item = (usize, &'a DeadLetter)>,
        attempt: &mut AttemptState,
    ) -> Result<(), WriteError> {
        let pending: Vec<(usize, &DeadLetter)> = letters
            .filter(|(index, _)| !attempt.acknowledged_dead_letters.contains(index))
            .collect();
        let Some((_, first)) = pending.first() else {
            return Ok(());
        };
        // One line per send, not per letter: a tenant sending thousands of
        // bad events must not flood the log (the topic's headers carry each).
        tracing::warn!(
            letters = pending.len(),
            reason = first.reason.as_str(),
            partition = first.record.partition,
            offset = first.record.offset,
            detail = %first.detail,
            sqlstate = first.database.as_ref().map(|f| f.sqlstate.as_str()).unwrap_or_default(),
            "dead-lettering records (the first shown)"
        );
        let sent =
            futures::future::join_all(pending.iter().map(|(_, letter)| self.dead_letter(letter)))
                .await;
        let mut failed = None;
        for ((index, _), result) in pending.iter().zip(sent) {
            match result {
                Ok(()) => {
                    attempt.acknowledged_dead_letters.insert(*index);
                }
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), WriteError> {
        tracing::debug!(
            reason = letter.reason.as_str(),
            partition = letter.record.partition,
            offset = letter.record.offset,
            detail = %letter.detail,
            "dead-lettering record"
        );
        match self.dead_letters.send(letter).await {
            Ok(()) => {}
            Err(error) if error.is_too_large() => {
                // Sending it again fails the same way: send where to find
                // it instead of the record itself.
                tracing::warn!(
                    %error,
                    partition = letter.record.partition,
                    offset = letter.record.offset,
                    "the dead-letter topic refuses the record for its size; dead-lettering it without its value"
                );
                self.dead_letters.send(&letter.without_value()).await?;
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    async fn bounded<T>(
        &self,
        step: &'static str,
        future: impl Future<Output = T>,
    ) -> Result<T, WriteError> {
        let started = std::time::Instant::now();
        let done = tokio::time::timeout(self.step_timeout, future)
            .await
            .map_err(|_| WriteError::Timeout {
                step,
                timeout: self.step_timeout,
            });
        // Where a transaction's time goes, for tuning (off by default).
        tracing::trace!(
            step,
            micros = started.elapsed().as_micros() as u64,
            "batch step"
        );
        done
    }
}

pub mod copy;
pub mod identity;
mod isolate;
pub mod recent;

/// How one transaction of a batch ended.
#[derive(Debug)]
enum Attempted {
    /// Committed (or, for a probe, rolled back after every step): the
    /// outcome and the indexes of the rows it inserted.
    Committed(BatchOutcome, Vec<usize>),
    /// Rolled back because it found conflicts the dead-letter topic has
    /// not acknowledged yet (record index, letter).
    Unacknowledged(Vec<(usize, DeadLetter)>),
}

/// Whether a transaction is the batch's own or a probe while bisecting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Commit,
    /// Rolled back, and sends no dead letters.
    Probe,
}

/// The stored content hash of each of `keys` that is stored.
async fn stored_hashes(
    transaction: &Transaction<'_>,
    keys: &[EventKey],
) -> Result<HashMap<EventKey, Vec<u8>, KeyHasher>, WriteError> {
    Ok(store::audit::stored_hashes(transaction, keys).await?)
}
