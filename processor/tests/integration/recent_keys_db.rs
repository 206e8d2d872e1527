//! The insert's hint of recently committed keys against a real TimescaleDB:
//! a batch's retries of keys the writer committed skip the direct COPY, and
//! a wrong hint never loses or doubles a row.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use e2e::ledger_check::stored_row_count;
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::record::Record;
use processor::write::recent::InsertPaths;
use processor::write::{AttemptState, BatchOutcome, WriteError, Writer};
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

/// Acknowledges every letter, or refuses them all like a broker that is down.
#[derive(Debug, Clone, Default)]
struct Sink {
    failing: Arc<Mutex<bool>>,
}

impl DeadLetterSink for Sink {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        if *self.failing.lock().expect("not poisoned") {
            return Err(DeadLetterError::Delivery {
                topic: "dlq".into(),
                partition: letter.record.partition,
                offset: letter.record.offset,
                source: rdkafka::error::KafkaError::Canceled,
            });
        }
        Ok(())
    }
}

fn writer(database: &Database, sink: Sink) -> Writer<Sink> {
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    Writer::new(pool, "recent-keys-test", sink, Duration::from_secs(20))
}

fn event(prompt_tokens: u32) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - chrono::Duration::minutes(5),
        tenant_id: "acme".into(),
        user_id: Some("user-1".into()),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        prompt_tokens,
        completion_tokens: 50,
        total_tokens: prompt_tokens + 50,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: [("feature".to_string(), "support-bot".to_string())].into(),
        received_at: now,
        request_id: Some("req-1".into()),
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

/// A client's retry: the same content, received again later.
fn retried(event: &UsageEvent) -> UsageEvent {
    let mut retry = event.clone();
    retry.received_at += chrono::Duration::seconds(3);
    retry.request_id = Some("req-2".into());
    retry
}

fn records(events: &[UsageEvent], first_offset: i64) -> Vec<Record> {
    events
        .iter()
        .zip(first_offset..)
        .map(|(event, offset)| event_record(0, offset, event))
        .collect()
}

async fn try_write(
    writer: &Writer<Sink>,
    records: Vec<Record>,
) -> Result<BatchOutcome, WriteError> {
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
}

async fn write(writer: &Writer<Sink>, records: Vec<Record>) -> BatchOutcome {
    try_write(writer, records).await.expect("batch commits")
}

fn sorted_ids(outcome: &BatchOutcome) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = outcome.new_rows.iter().map(|row| row.event.id).collect();
    ids.sort();
    ids
}

fn ids(events: &[UsageEvent]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_retry_of_a_key_committed_by_an_earlier_batch_takes_the_hinted_path() {
    let database = migrated_database().await;
    let writer = writer(&database, Sink::default());
    let earlier: Vec<UsageEvent> = (0..10).map(|i| event(100 + i)).collect();
    write(&writer, records(&earlier, 0)).await;

    let new: Vec<UsageEvent> = (0..20).map(|i| event(200 + i)).collect();
    // The retries sort among the new rows by key: the direct COPY would
    // have written some of the new rows before meeting them.
    let mut batch: Vec<UsageEvent> = new.clone();
    batch.extend([2, 5, 9].map(|i| retried(&earlier[i])));
    let outcome = write(&writer, records(&batch, 10)).await;

    assert_eq!(
        writer.recent_keys().paths(),
        InsertPaths {
            direct: 1,
            hinted: 1,
            staged: 0
        },
        "the retries were left out of the direct COPY"
    );
    assert_eq!(sorted_ids(&outcome), ids(&new), "exactly the new rows");
    assert_eq!(outcome.duplicates, 3);
    assert_eq!(outcome.conflicts, 0);
    assert_eq!(stored_row_count(&database).await, 30);
}

#[tokio::test]
async fn a_hinted_key_that_is_not_stored_is_inserted() {
    let database = migrated_database().await;
    let writer = writer(&database, Sink::default());
    let never_stored: Vec<UsageEvent> = (0..4).map(|i| event(100 + i)).collect();
    writer.recent_keys().remember(
        never_stored
            .iter()
            .map(|e| e.content_sha256())
            .collect::<Vec<_>>()
            .iter(),
    );
    let mut batch: Vec<UsageEvent> = (0..6).map(|i| event(200 + i)).collect();
    batch.extend(never_stored.iter().cloned());

    let outcome = write(&writer, records(&batch, 0)).await;
    assert_eq!(writer.recent_keys().paths().hinted, 1);
    assert_eq!(sorted_ids(&outcome), ids(&batch), "every row is new");
    assert_eq!(outcome.duplicates, 0);
    assert_eq!(stored_row_count(&database).await, 10);

    // Every row of a batch may be hinted: nothing goes in directly.
    let only_hinted: Vec<UsageEvent> = (0..3).map(|i| event(300 + i)).collect();
    writer.recent_keys().remember(
        only_hinted
            .iter()
            .map(|e| e.content_sha256())
            .collect::<Vec<_>>()
            .iter(),
    );
    let outcome = write(&writer, records(&only_hinted, 10)).await;
    assert_eq!(writer.recent_keys().paths().hinted, 2);
    assert_eq!(sorted_ids(&outcome), ids(&only_hinted));
    assert_eq!(stored_row_count(&database).await, 13);
}

#[tokio::test]
async fn keys_of_a_rolled_back_transaction_are_not_remembered() {
    let database = migrated_database().await;
    let sink = Sink::default();
    let writer = writer(&database, sink.clone());
    let earlier: Vec<UsageEvent> = (0..5).map(|i| event(100 + i)).collect();
    write(&writer, records(&earlier, 0)).await;

    // A conflicting reuse of a stored id with the dead-letter topic down:
    // the transaction that inserted the new rows rolls back.
    let new: Vec<UsageEvent> = (0..5).map(|i| event(200 + i)).collect();
    let mut conflicting = earlier[0].clone();
    conflicting.prompt_tokens += 1;
    conflicting.total_tokens += 1;
    let mut batch = new.clone();
    batch.push(conflicting);
    *sink.failing.lock().expect("not poisoned") = true;
    try_write(&writer, records(&batch, 5))
        .await
        .expect_err("the conflict cannot be dead-lettered");
    assert_eq!(stored_row_count(&database).await, 5, "nothing committed");

    let outcome = write(&writer, records(&new, 5)).await;
    assert_eq!(sorted_ids(&outcome), ids(&new));
    assert_eq!(
        writer.recent_keys().paths(),
        InsertPaths {
            direct: 2,
            hinted: 0,
            staged: 1
        },
        "the rows of the rolled-back transaction went straight in"
    );
}

#[tokio::test]
async fn a_stored_key_the_hint_misses_sends_the_whole_batch_through_staging() {
    let database = migrated_database().await;
    let other = writer(&database, Sink::default());
    let stored = event(100);
    write(&other, records(std::slice::from_ref(&stored), 0)).await;

    // This writer never committed `stored`; it remembers a key never stored.
    let writer = writer(&database, Sink::default());
    let hinted = event(200);
    writer
        .recent_keys()
        .remember([hinted.content_sha256()].iter());
    let new: Vec<UsageEvent> = (0..5).map(|i| event(300 + i)).collect();
    let mut batch = new.clone();
    batch.push(hinted.clone());
    batch.push(retried(&stored));

    let outcome = write(&writer, records(&batch, 1)).await;
    assert_eq!(
        writer.recent_keys().paths(),
        InsertPaths {
            direct: 0,
            hinted: 0,
            staged: 1
        }
    );
    let mut expected = new.clone();
    expected.push(hinted);
    assert_eq!(sorted_ids(&outcome), ids(&expected));
    assert_eq!(outcome.duplicates, 1);
    assert_eq!(stored_row_count(&database).await, 7);
}
