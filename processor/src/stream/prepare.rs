//! Preparing a batch, without I/O: decode and re-validate each record,
//! sort out what must be dead-lettered and why, dedupe by
//! `(tenant_id, id, created_at)` inside the batch and price each event; then, given what the database
//! answered, classify every event as new, duplicate or conflict.
//!
//! Everything here is a pure function of the records, the price book and
//! the database's answers, so every rule is unit-tested without a database;
//! the `write` module owns the transaction that asks the questions.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use ledger::pricebook::Listings;
use ledger::{Cost, PriceBook, UsageEvent, KAFKA_SCHEMA};
use uuid::Uuid;

use crate::offsets::NextOffsets;
use crate::record::Record;
use crate::stream::dead_letters::{DeadLetter, Reason};
use crate::stream::first_seen::FirstSeen;

/// The idempotency key of a usage event: `(tenant_id, id, created_at)`.
/// Ids are chosen by clients, so they are unique per tenant only: another
/// tenant reusing an id, by chance or on purpose, sends another event, and
/// must not displace this one (sql/V7__tenant_idempotency.sql).
pub type EventKey = (String, Uuid, DateTime<Utc>);

/// Keys are hashed several times per event; foldhash is several times
/// cheaper than the standard SipHash and still seeded per process, so
/// clients choosing ids cannot aim for collisions.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// One decoded, priced event of a batch with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedEvent {
    pub event: UsageEvent,
    pub cost: Cost,
    /// How `cost` was made, stored beside it.
    pub pricing: Pricing,
    pub content_sha256: [u8; 32],
    /// Index of its record in [`PreparedBatch::records`].
    pub record_index: usize,
    pub source_partition: i32,
    pub source_offset: i64,
}

pub use store::audit::Pricing;

impl store::audit::AsNewRow for PricedEvent {
    fn new_row(&self) -> store::audit::NewRow<'_> {
        store::audit::NewRow {
            event: &self.event,
            cost: &self.cost,
            pricing: &self.pricing,
            content_sha256: &self.content_sha256,
            source_partition: self.source_partition,
            source_offset: self.source_offset,
        }
    }
}

impl PricedEvent {
    pub fn key(&self) -> EventKey {
        (
            self.event.tenant_id.clone(),
            self.event.id,
            self.event.created_at,
        )
    }
}

/// A batch after decoding, pricing and in-batch deduplication; no I/O yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedBatch {
    pub records: Vec<Record>,
    /// The first occurrence of each [`EventKey`], in arrival order.
    pub unique: Vec<PricedEvent>,
    /// Later occurrences of a key already in `unique`.
    pub repeats: Vec<PricedEvent>,
    /// Records that cannot be stored whatever the database holds, with
    /// their index in `records`.
    pub poison: Vec<(usize, DeadLetter)>,
    /// One past the highest offset of every partition in the batch,
    /// poison records included.
    pub next_offsets: NextOffsets,
}

/// Decodes, checks, prices and dedupes a batch of records.
pub fn prepare(records: Vec<Record>, price_book: &PriceBook) -> PreparedBatch {
    let mut preparer = Preparer::with_capacity(price_book, records.len());
    for record in records {
        preparer.push(record);
    }
    preparer.take()
}

/// A batch prepared one record at a time, as records arrive, so decoding
/// and pricing overlap the previous batch's transaction instead of
/// following it.
#[derive(Debug)]
pub struct Preparer<'a> {
    price_book: &'a PriceBook,
    /// The book's listing of each model rated, found once rather than per
    /// event (its names' forms are strings built and hashed).
    listings: Listings<'a>,
    batch: PreparedBatch,
    /// Indexes into the batch's `unique` by key: looked up with the
    /// event's own fields, so no key is copied per event.
    first_seen: FirstSeen,
    /// Records each new batch has room for before it grows.
    capacity: usize,
}

impl<'a> Preparer<'a> {
    pub fn new(price_book: &'a PriceBook) -> Self {
        Self::with_capacity(price_book, 0)
    }

    /// A preparer whose batches have room for `capacity` records.
    pub fn with_capacity(price_book: &'a PriceBook, capacity: usize) -> Self {
        Self {
            price_book,
            listings: Listings::new(price_book),
            batch: PreparedBatch::with_capacity(capacity),
            first_seen: FirstSeen::with_capacity(capacity),
            capacity,
        }
    }

    /// Records pushed since the last [`Preparer::take`].
    pub fn len(&self) -> usize {
        self.batch.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.records.is_empty()
    }

    /// The records pushed so far.
    pub fn records(&self) -> &[Record] {
        &self.batch.records
    }

    /// Decodes, checks, prices and dedupes one more record.
    pub fn push(&mut self, record: Record) {
        let batch = &mut self.batch;
        let record_index = batch.records.len();
        raise_next_offset(&mut batch.next_offsets, &record);
        match decode(&record) {
            Ok(event) => {
                let listing = self.listings.of(&event.provider, &event.model);
                let rating = self.price_book.rate_event_listed(&event, listing);
                let priced = PricedEvent {
                    cost: Cost::from(&rating),
                    pricing: Pricing::from(rating),
                    content_sha256: event.content_sha256(),
                    event,
                    record_index,
                    source_partition: record.partition,
                    source_offset: record.offset,
                };
                if self.first_seen.insert(&batch.unique, &priced) {
                    batch.unique.push(priced);
                } else {
                    batch.repeats.push(priced);
                }
            }
            Err((reason, detail)) => batch.poison.push((
                record_index,
                DeadLetter {
                    record: record.clone(),
                    reason,
                    detail,
                    database: None,
                },
            )),
        }
        batch.records.push(record);
    }

    /// The batch prepared so far; the preparer starts a new one.
    pub fn take(&mut self) -> PreparedBatch {
        self.first_seen.clear();
        std::mem::replace(&mut self.batch, PreparedBatch::with_capacity(self.capacity))
    }
}

impl PreparedBatch {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            records: Vec::with_capacity(capacity),
            unique: Vec::with_capacity(capacity),
            repeats: Vec::new(),
            poison: Vec::new(),
            next_offsets: NextOffsets::new(),
        }
    }
}

/// Moves the partition's next offset past `record`. Looks the partition up
/// by reference first: the key's topic is copied only for the first record
/// of each partition, not for every record.
fn raise_next_offset(next_offsets: &mut NextOffsets, record: &Record) {
    let next = record.offset + 1;
    let existing = next_offsets
        .iter_mut()
        .find(|((topic, partition), _)| *partition == record.partition && **topic == *record.topic);
    match existing {
        Some((_, stored)) => *stored = (*stored).max(next),
        None => {
            next_offsets.insert((record.topic.to_string(), record.partition), next);
        }
    }
}

/// Decodes one record into a storable event, or says why it is poison.
fn decode(record: &Record) -> Result<UsageEvent, (Reason, String)> {
    if let Some(schema) = &record.schema {
        if schema.as_slice() != KAFKA_SCHEMA.as_bytes() {
            return Err((
                Reason::Schema,
                format!(
                    "schema header {:?}, this processor reads {KAFKA_SCHEMA:?}",
                    String::from_utf8_lossy(schema)
                ),
            ));
        }
    }
    let Some(value) = &record.value else {
        return Err((Reason::Undecodable, "record has no value".into()));
    };
    let record_time = record
        .timestamp_ms
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis);
    let event = UsageEvent::from_kafka_record(value, record_time).map_err(|error| {
        // from_kafka_value reports both kinds alike; a value that is a
        // well-formed event breaking a rule is "invalid", anything else
        // "undecodable", so operators know whether a producer or a client
        // is at fault.
        let reason = match serde_json::from_slice::<UsageEvent>(value) {
            Ok(_) => Reason::Invalid,
            Err(_) => Reason::Undecodable,
        };
        (reason, error.to_string())
    })?;
    check_storable(&event).map_err(|detail| (Reason::Invalid, detail))?;
    Ok(event)
}

/// Limits of the table that the event rules do not imply: PostgreSQL text
/// cannot hold NUL, and `request_id` is set by the gateway rather than
/// checked as client input. Token counts need no check here: the rules cap
/// them at [`ledger::event::MAX_TOKEN_COUNT`], which the INTEGER columns
/// hold. Without this check one such record would fail its whole batch.
fn check_storable(event: &UsageEvent) -> Result<(), String> {
    if event
        .request_id
        .as_deref()
        .is_some_and(|id| id.contains('\0'))
    {
        return Err("request_id: must not contain NUL".into());
    }
    Ok(())
}

/// The database reported a key neither inserted nor stored: the insert and
/// the lookup that followed it in the same transaction disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row ({tenant_id}, {id}, {created_at}) was neither inserted nor found stored")]
pub struct MissingStoredRow {
    pub tenant_id: String,
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
}

impl From<EventKey> for MissingStoredRow {
    fn from((tenant_id, id, created_at): EventKey) -> Self {
        Self {
            tenant_id,
            id,
            created_at,
        }
    }
}

/// How the events of a batch relate to what the database holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Indexes into [`PreparedBatch::unique`] of the rows this batch inserted.
    pub new: Vec<usize>,
    /// Events equal to the stored row with their key (retries, replays).
    pub duplicates: usize,
    /// Events whose key is stored with different content: (record index, detail).
    pub conflicts: Vec<(usize, String)>,
}

/// Sorts a batch's events given which keys the insert reported as new and
/// the stored hashes of the keys it did not.
pub fn classify<S: BuildHasher>(
    prepared: &PreparedBatch,
    inserted: &HashSet<EventKey, S>,
    stored: &HashMap<EventKey, Vec<u8>, S>,
) -> Result<Classification, MissingStoredRow> {
    let mut classification = Classification::default();
    // The hash each key ends up with, only needed to judge in-batch repeats.
    let track_known = !prepared.repeats.is_empty();
    let mut known: HashMap<EventKey, &[u8], KeyHasher> = HashMap::with_capacity_and_hasher(
        if track_known {
            prepared.unique.len()
        } else {
            0
        },
        KeyHasher::default(),
    );
    for (index, priced) in prepared.unique.iter().enumerate() {
        let key = priced.key();
        let known_hash: &[u8] = if inserted.contains(&key) {
            classification.new.push(index);
            &priced.content_sha256
        } else {
            let Some(stored_hash) = stored.get(&key) else {
                return Err(key.into());
            };
            compare(priced, stored_hash, &mut classification);
            stored_hash
        };
        if track_known {
            known.insert(key, known_hash);
        }
    }
    for priced in &prepared.repeats {
        let key = priced.key();
        let Some(known_hash) = known.get(&key) else {
            return Err(key.into());
        };
        compare(priced, known_hash, &mut classification);
    }
    Ok(classification)
}

/// [`classify`] for a batch whose every unique event the insert stored (the
/// usual case while catching up): all are new, and each in-batch repeat
/// compares with its first occurrence. Gives what `classify` gives with
/// every key inserted, without an owned key per event: hashing and copying
/// the whole batch's tenant ids twice was about 3% of the processor's CPU
/// when a batch held a client's retry.
pub fn classify_all_inserted(prepared: &PreparedBatch) -> Classification {
    let mut classification = Classification {
        new: (0..prepared.unique.len()).collect(),
        ..Classification::default()
    };
    if prepared.repeats.is_empty() {
        return classification;
    }
    // Only the repeated keys are looked up: a few per batch.
    let mut first: HashMap<_, Option<&[u8; 32]>, KeyHasher> = prepared
        .repeats
        .iter()
        .map(|priced| (key_of(priced), None))
        .collect();
    for priced in &prepared.unique {
        if let Some(hash) = first.get_mut(&key_of(priced)) {
            hash.get_or_insert(&priced.content_sha256);
        }
    }
    for priced in &prepared.repeats {
        // The preparer puts a repeat only beside its first occurrence.
        if let Some(Some(hash)) = first.get(&key_of(priced)) {
            compare(priced, hash.as_slice(), &mut classification);
        }
    }
    classification
}

/// An event's key, borrowed from it.
fn key_of(priced: &PricedEvent) -> (&str, Uuid, DateTime<Utc>) {
    (
        priced.event.tenant_id.as_str(),
        priced.event.id,
        priced.event.created_at,
    )
}

fn compare(priced: &PricedEvent, stored_hash: &[u8], classification: &mut Classification) {
    if stored_hash == priced.content_sha256.as_slice() {
        classification.duplicates += 1;
    } else {
        classification.conflicts.push((
            priced.record_index,
            format!(
                "(tenant_id, id, created_at) = ({}, {}, {}) is stored with content sha256 {}, \
                 this record has {}",
                priced.event.tenant_id,
                priced.event.id,
                priced.event.created_at.to_rfc3339(),
                hex::encode(stored_hash),
                hex::encode(priced.content_sha256)
            ),
        ));
    }
}

#[cfg(test)]
pub(crate) mod tests;
