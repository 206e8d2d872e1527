//! One LLM call reported more than once (OpenTelemetry spans: two
//! instrumentations, two traces, an exporter's retry, an hour boundary
//! between the reports) is stored once, at its own time, against a real
//! TimescaleDB; and the call identities are pruned past their retention.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink, Reason};
use processor::prepare;
use processor::record::Record;
use processor::write::{identity, AttemptState, BatchOutcome, Writer};
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

#[derive(Debug, Clone, Default)]
struct Letters(std::sync::Arc<std::sync::Mutex<Vec<DeadLetter>>>);

impl DeadLetterSink for Letters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        self.0.lock().expect("not poisoned").push(letter.clone());
        Ok(())
    }
}

fn writer(database: &Database, letters: Letters) -> Writer<Letters> {
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 3,
        timeout_ms: 20_000,
    })
    .expect("pool");
    Writer::new(pool, "call-identity-test", letters, Duration::from_secs(20))
}

/// A report of the call `id` started at `at`, as the gateway maps a span
/// with a response id.
fn report(id: Uuid, at: DateTime<Utc>, prompt_tokens: u32) -> UsageEvent {
    UsageEvent {
        id,
        created_at: at,
        tenant_id: "acme".into(),
        user_id: None,
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        prompt_tokens,
        completion_tokens: 20,
        total_tokens: prompt_tokens + 20,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: Utc::now(),
        request_id: Some("req".into()),
        call_identity: true,
        reservation_id: None,
        api_key: None,
    }
}

async fn write(writer: &Writer<Letters>, records: Vec<Record>) -> BatchOutcome {
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits")
}

async fn rows_of(database: &Database, id: Uuid) -> Vec<DateTime<Utc>> {
    database
        .client()
        .await
        .query(
            "SELECT created_at FROM gateway_mode_audit WHERE id = $1 ORDER BY created_at",
            &[&id],
        )
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The last full hour's start: reports on both sides of it.
fn hour_boundary() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .expect("in range")
}

#[tokio::test]
async fn one_call_reported_twice_across_an_hour_is_stored_once_at_its_own_time() {
    let database = migrated_database().await;
    let letters = Letters::default();
    let writer = writer(&database, letters.clone());
    let call = Uuid::new_v4();
    let before = hour_boundary() - TimeDelta::microseconds(9_877);
    let after = hour_boundary() + TimeDelta::microseconds(15_123);

    let first = write(
        &writer,
        vec![event_record(0, 0, &report(call, before, 100))],
    )
    .await;
    assert_eq!(first.new_rows.len(), 1);
    // The second span, in another trace, after the hour turned; then the
    // exporter's retry of the first.
    let second = write(
        &writer,
        vec![
            event_record(0, 1, &report(call, after, 100)),
            event_record(0, 2, &report(call, before, 100)),
        ],
    )
    .await;
    assert_eq!(
        (second.new_rows.len(), second.duplicates, second.conflicts),
        (0, 2, 0),
        "{second:?}"
    );
    assert_eq!(rows_of(&database, call).await, vec![before]);

    // Both reports in one batch: the earlier one is stored.
    let both = Uuid::new_v4();
    let outcome = write(
        &writer,
        vec![
            event_record(0, 3, &report(both, after, 100)),
            event_record(0, 4, &report(both, before, 100)),
        ],
    )
    .await;
    assert_eq!((outcome.new_rows.len(), outcome.duplicates), (1, 1));
    assert_eq!(rows_of(&database, both).await, vec![before]);

    // A report of the call with other usage is a conflicting reuse of its
    // identity: dead-lettered, never merged.
    let outcome = write(&writer, vec![event_record(0, 5, &report(call, after, 999))]).await;
    assert_eq!((outcome.new_rows.len(), outcome.conflicts), (0, 1));
    assert_eq!(
        letters.0.lock().expect("not poisoned")[0].reason,
        Reason::Conflict
    );
    assert_eq!(rows_of(&database, call).await, vec![before]);

    // Events without call identity keep their key with the time in it.
    let mut plain = report(Uuid::new_v4(), before, 100);
    plain.call_identity = false;
    let mut later = plain.clone();
    later.created_at = after;
    let outcome = write(
        &writer,
        vec![event_record(1, 0, &plain), event_record(1, 1, &later)],
    )
    .await;
    assert_eq!(outcome.new_rows.len(), 2);
}

#[tokio::test]
async fn two_writers_storing_two_reports_of_one_call_at_once_store_it_once() {
    let database = migrated_database().await;
    let (one, two) = (
        writer(&database, Letters::default()),
        writer(&database, Letters::default()),
    );
    let calls: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let at = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("in range")
        - TimeDelta::minutes(3);
    let batch = |partition: i32, offset: TimeDelta| -> Vec<Record> {
        calls
            .iter()
            .enumerate()
            .map(|(n, call)| event_record(partition, n as i64, &report(*call, at + offset, 100)))
            .collect()
    };
    let (a, b) = tokio::join!(
        write(&one, batch(0, TimeDelta::zero())),
        write(&two, batch(1, TimeDelta::milliseconds(3)))
    );
    assert_eq!(a.new_rows.len() + b.new_rows.len(), 50);
    assert_eq!(a.duplicates + b.duplicates, 50);
    let stored: i64 = database
        .client()
        .await
        .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 50);
}

#[tokio::test]
async fn call_identities_are_pruned_past_their_retention() {
    let database = migrated_database().await;
    let writer = writer(&database, Letters::default());
    let old = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("in range")
        - identity::RETENTION
        - TimeDelta::hours(1);
    let recent = old + identity::RETENTION;
    let (old_call, recent_call) = (Uuid::new_v4(), Uuid::new_v4());
    write(
        &writer,
        vec![
            event_record(0, 0, &report(old_call, old, 100)),
            event_record(0, 1, &report(recent_call, recent, 100)),
        ],
    )
    .await;
    let client = database.client().await;
    let pruned = identity::prune(&client, Utc::now() - identity::RETENTION)
        .await
        .expect("prunes");
    assert_eq!(pruned, 1);
    let kept: Vec<Uuid> = client
        .query("SELECT id FROM call_identities", &[])
        .await
        .expect("identities")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(kept, vec![recent_call]);
}

/// What claiming call identities costs a batch: the same 1,000-event batch
/// written with and without `call_identity`, alternately, fresh ids each
/// time, and every call reported again; every repeat must be recognised.
/// Prints the medians (no timed assertion); for figures, raise `ROUNDS` and
/// run `cargo nextest run -p processor
/// call_identity_db::write_path_cost --no-capture` on a quiet machine.
#[tokio::test]
async fn write_path_cost_of_call_identities() {
    const ROUNDS: usize = 3;
    const EVENTS: usize = 1_000;
    let database = migrated_database().await;
    let writer = writer(&database, Letters::default());
    let at = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("in range")
        - TimeDelta::minutes(10);
    let offset = std::cell::Cell::new(0i64);
    let next = || {
        offset.set(offset.get() + 1);
        offset.get()
    };
    let batch = |call_identity: bool| -> Vec<Record> {
        (0..EVENTS)
            .map(|n| {
                let mut event = report(Uuid::new_v4(), at + TimeDelta::microseconds(n as i64), 100);
                event.call_identity = call_identity;
                event_record(0, next(), &event)
            })
            .collect()
    };
    let median = |mut samples: Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    // Warm the pool's connections, the staging table and the plans.
    write(&writer, batch(false)).await;
    write(&writer, batch(true)).await;
    let (mut plain, mut calls, mut repeats) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(timed(&writer, batch(false)).await.0);
        let records = batch(true);
        // The same calls reported again a millisecond later.
        let again: Vec<Record> = records
            .iter()
            .map(|record| {
                let mut event =
                    UsageEvent::from_kafka_value(record.value.as_deref().expect("value"))
                        .expect("decodes");
                event.created_at += TimeDelta::milliseconds(1);
                event_record(0, next(), &event)
            })
            .collect();
        calls.push(timed(&writer, records).await.0);
        let (elapsed, outcome) = timed(&writer, again).await;
        repeats.push(elapsed);
        assert_eq!(outcome.duplicates, EVENTS);
    }
    let (plain, calls, repeats) = (median(plain), median(calls), median(repeats));
    println!(
        "{EVENTS}-event batch, median of {ROUNDS}: without call identity {plain:.1} ms, \
         new calls {calls:.1} ms ({:.2}x), every call reported again {repeats:.1} ms ({:.2}x)",
        calls / plain,
        repeats / plain
    );
}

/// Milliseconds `writer` takes to commit `records`, prepared beforehand.
async fn timed(writer: &Writer<Letters>, records: Vec<Record>) -> (f64, BatchOutcome) {
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let started = std::time::Instant::now();
    let outcome = writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
    (started.elapsed().as_secs_f64() * 1e3, outcome)
}
