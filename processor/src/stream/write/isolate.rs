//! Isolating the events a database refuses for good: bisecting a batch in
//! probe transactions that are rolled back, and moving what they single
//! out to the batch's poison as [`Reason::Unstorable`], with the SQLSTATE
//! and message of the refusal.

use std::collections::HashMap;

use deadpool_postgres::Object;

use super::{AttemptState, Mode, WriteError, Writer};
use crate::stream::dead_letters::{DeadLetter, DeadLetterSink, Reason};
use crate::stream::prepare::{EventKey, KeyHasher, PreparedBatch, PricedEvent};
use crate::stream::write_errors::{self, DatabaseFailure, ErrorClass, Probe};

/// Why the database refuses an event: the error's text, and its SQLSTATE
/// and message.
type Refusal = (String, Option<DatabaseFailure>);

impl<D: DeadLetterSink> Writer<D> {
    /// Bisects `prepared.unique` down to the events the database refuses
    /// and moves them, with every in-batch repeat of their keys, to
    /// `prepared.poison`. Returns how many events were moved.
    pub(super) async fn isolate_unstorable(
        &self,
        prepared: &mut PreparedBatch,
    ) -> Result<usize, WriteError> {
        let candidates: Vec<usize> = (0..prepared.unique.len()).collect();
        let snapshot: &PreparedBatch = prepared;
        let found = write_errors::bisect(candidates, |indexes| {
            let rows: Vec<PricedEvent> = indexes
                .iter()
                .map(|index| snapshot.unique[*index].clone())
                .collect();
            self.probe(rows, snapshot)
        })
        .await?;
        if found.is_empty() {
            return Ok(0);
        }
        let refused: HashMap<usize, Refusal> = found.into_iter().collect();
        let mut keys: HashMap<EventKey, Refusal, KeyHasher> = HashMap::default();
        let mut kept = Vec::with_capacity(prepared.unique.len() - refused.len());
        let mut moved = Vec::new();
        for (index, row) in std::mem::take(&mut prepared.unique).into_iter().enumerate() {
            match refused.get(&index) {
                Some(failure) => {
                    keys.insert(row.key(), failure.clone());
                    moved.push((row, failure.clone()));
                }
                None => kept.push(row),
            }
        }
        prepared.unique = kept;
        let (repeats_moved, repeats_kept): (Vec<_>, Vec<_>) = std::mem::take(&mut prepared.repeats)
            .into_iter()
            .partition(|row| keys.contains_key(&row.key()));
        prepared.repeats = repeats_kept;
        for row in repeats_moved {
            let failure = keys.get(&row.key()).cloned().unwrap_or_default();
            moved.push((row, failure));
        }
        let count = moved.len();
        for (row, (detail, database)) in moved {
            let letter = DeadLetter {
                record: prepared.records[row.record_index].clone(),
                reason: Reason::Unstorable,
                detail,
                database,
            };
            prepared.poison.push((row.record_index, letter));
        }
        tracing::warn!(
            events = count,
            remaining = prepared.unique.len(),
            "isolated the events the database refuses; dead-lettering them and writing the rest"
        );
        Ok(count)
    }

    /// Runs the batch's statements for `rows` alone in a transaction that
    /// is rolled back, and says whether the database refuses them for good.
    async fn probe(
        &self,
        rows: Vec<PricedEvent>,
        prepared: &PreparedBatch,
    ) -> Result<Probe<Refusal>, WriteError> {
        let subset = PreparedBatch {
            records: Vec::new(),
            unique: rows,
            repeats: Vec::new(),
            poison: Vec::new(),
            next_offsets: prepared.next_offsets.clone(),
        };
        let mut client = self.bounded("connect", self.pool.get()).await??;
        let mut unused = AttemptState::default();
        let result = self
            .write_in_transaction(&mut client, &subset, None, &mut unused, Mode::Probe)
            .await;
        match result {
            Ok(_) => Ok(Probe::Stored),
            Err(error) => {
                drop(Object::take(client));
                if error.class() == ErrorClass::Permanent {
                    Ok(Probe::Unstorable((
                        error.to_string(),
                        error.database_failure(),
                    )))
                } else {
                    Err(error)
                }
            }
        }
    }
}
