//! The batch transaction and the migrations against a real TimescaleDB
//! (PostgreSQL + TimescaleDB through the e2e harness).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use e2e::ledger_check::stored_row_count;
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink, Reason};
use processor::migrate::{self, MigrateError, MigrationStatus};
use processor::prepare;
use processor::record::Record;
use processor::write::{AttemptState, BatchOutcome, Writer};
use processor::{database, offsets};
use uuid::Uuid;

use crate::support::migrated_database;
use crate::support::{event_record, TOPIC};

const GROUP: &str = "writer-test";

/// Records what would be dead-lettered; can be told to fail like a broker
/// that is down.
#[derive(Debug, Clone, Default)]
struct RecordingSink {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
    failing: Arc<AtomicBool>,
}

impl RecordingSink {
    fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().expect("not poisoned").clone()
    }
}

impl DeadLetterSink for RecordingSink {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(DeadLetterError::Delivery {
                topic: "dlq".into(),
                partition: letter.record.partition,
                offset: letter.record.offset,
                source: rdkafka::error::KafkaError::Canceled,
            });
        }
        self.letters
            .lock()
            .expect("not poisoned")
            .push(letter.clone());
        Ok(())
    }
}

fn writer(database: &Database, sink: RecordingSink) -> Writer<RecordingSink> {
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    Writer::new(pool, GROUP, sink, Duration::from_secs(20))
}

fn event(tenant: &str, prompt_tokens: u32) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - chrono::Duration::minutes(5),
        tenant_id: tenant.into(),
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

async fn write(writer: &Writer<RecordingSink>, records: Vec<Record>) -> BatchOutcome {
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits")
}

async fn stored_offsets(database: &Database) -> Vec<(i32, i64)> {
    let client = database.client().await;
    let mut stored: Vec<(i32, i64)> = offsets::load(&client, GROUP, TOPIC, &[0, 1, 2, 3])
        .await
        .expect("offsets")
        .into_iter()
        .collect();
    stored.sort();
    stored
}

#[tokio::test]
async fn a_batch_is_inserted_once_and_its_replay_only_counts_duplicates() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let events: Vec<UsageEvent> = (0..20).map(|i| event("acme", 100 + i)).collect();
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| event_record(i as i32 % 2, i as i64, e))
        .collect();

    let first = write(&writer, records.clone()).await;
    assert_eq!(first.new_rows.len(), 20);
    assert_eq!(first.duplicates, 0);
    assert_eq!(stored_row_count(&database).await, 20);

    let replay = write(&writer, records).await;
    assert_eq!(replay.new_rows.len(), 0, "a replay inserts nothing");
    assert_eq!(
        replay.duplicates, 20,
        "and counts every event as a duplicate"
    );
    assert_eq!(replay.conflicts, 0);
    assert_eq!(stored_row_count(&database).await, 20);
    assert!(sink.letters().is_empty());

    // What was stored is what was sent, cost and provenance included.
    let client = database.client().await;
    let row = client
        .query_one(
            "SELECT tenant_id, user_id, prompt_tokens, total_tokens, estimated_cost::text,
                    pricing_status, labels->>'feature', request_id, payload_sha256,
                    source_partition, source_offset, received_at
             FROM gateway_mode_audit WHERE id = $1 AND created_at = $2",
            &[&events[3].id, &events[3].created_at],
        )
        .await
        .expect("row 3 stored");
    let priced = PriceBook::builtin()
        .expect("the built-in book parses")
        .cost(&events[3]);
    assert_eq!(row.get::<_, String>(0), "acme");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("user-1"));
    assert_eq!(row.get::<_, i32>(2), 103);
    assert_eq!(row.get::<_, i32>(3), 153);
    let stored_cost: rust_decimal::Decimal = row.get::<_, String>(4).parse().expect("decimal");
    assert_eq!(stored_cost, priced.usd);
    assert_eq!(row.get::<_, String>(5), priced.status.as_str());
    assert_eq!(row.get::<_, String>(6), "support-bot");
    assert_eq!(row.get::<_, Option<String>>(7).as_deref(), Some("req-1"));
    assert_eq!(
        row.get::<_, Vec<u8>>(8),
        events[3].content_sha256().to_vec()
    );
    assert_eq!(row.get::<_, i32>(9), 1);
    assert_eq!(row.get::<_, i64>(10), 3);
    assert_eq!(row.get::<_, DateTime<Utc>>(11), events[3].received_at);
}

/// A batch holding stored keys cannot be COPYed straight in: it falls back to the staging
/// table, which must still insert exactly its new rows, in the same transaction.
#[tokio::test]
async fn a_batch_mixing_stored_and_new_keys_inserts_exactly_the_new_ones() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let events: Vec<UsageEvent> = (0..30).map(|i| event("acme", 100 + i)).collect();
    let record = |i: usize| event_record(0, i as i64, &events[i]);

    let first = write(&writer, (0..10).map(record).collect()).await;
    assert_eq!(first.new_rows.len(), 10);

    // Stored keys in the middle of new ones, and one conflicting reuse of a stored id.
    let mut reused = events[3].clone();
    reused.prompt_tokens += 1;
    reused.total_tokens += 1;
    let mut mixed: Vec<Record> = (5..30).map(record).collect();
    mixed.push(event_record(0, 30, &reused));
    let outcome = write(&writer, mixed).await;
    let mut new_ids: Vec<Uuid> = outcome.new_rows.iter().map(|r| r.event.id).collect();
    new_ids.sort();
    let mut expected: Vec<Uuid> = events[10..].iter().map(|e| e.id).collect();
    expected.sort();
    assert_eq!(new_ids, expected, "exactly the keys not stored before");
    assert_eq!(outcome.duplicates, 5);
    assert_eq!(outcome.conflicts, 1);
    assert_eq!(stored_row_count(&database).await, 30);
    assert_eq!(sink.letters().len(), 1, "the conflict is dead-lettered");
    assert_eq!(stored_offsets(&database).await, vec![(0, 31)]);
}

#[tokio::test]
async fn an_event_twice_in_one_batch_is_stored_once() {
    let database = migrated_database().await;
    let writer = writer(&database, RecordingSink::default());
    let once = event("acme", 10);
    let mut retried = once.clone();
    retried.received_at += chrono::Duration::seconds(2);
    let outcome = write(
        &writer,
        vec![
            event_record(0, 0, &once),
            event_record(0, 1, &retried),
            event_record(0, 2, &once),
        ],
    )
    .await;
    assert_eq!(outcome.new_rows.len(), 1);
    assert_eq!(outcome.duplicates, 2);
    assert_eq!(stored_row_count(&database).await, 1);
}

#[tokio::test]
async fn a_conflicting_payload_is_detected_and_dead_lettered() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let original = event("acme", 10);
    write(&writer, vec![event_record(0, 0, &original)]).await;

    let mut reused = original.clone();
    reused.prompt_tokens = 999;
    reused.total_tokens = 1049;
    let outcome = write(&writer, vec![event_record(0, 1, &reused)]).await;
    assert_eq!(outcome.new_rows.len(), 0);
    assert_eq!(outcome.conflicts, 1);
    assert_eq!(outcome.duplicates, 0);
    assert_eq!(outcome.dead_lettered.get(&Reason::Conflict), Some(&1));
    let letters = sink.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, Reason::Conflict);
    assert_eq!(letters[0].record.offset, 1);
    assert_eq!(letters[0].record.value, Some(reused.to_kafka_value()));

    let client = database.client().await;
    let stored: i32 = client
        .query_one(
            "SELECT prompt_tokens FROM gateway_mode_audit WHERE id = $1",
            &[&original.id],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(stored, 10, "the first stored content stays");
    assert_eq!(stored_offsets(&database).await, [(0, 2)]);
}

#[tokio::test]
async fn stored_offsets_only_move_forward_and_include_poison() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let mut poison = event_record(1, 41, &event("acme", 1));
    poison.value = Some(b"{\"not\": \"an event\"}".to_vec());
    write(
        &writer,
        vec![
            event_record(0, 7, &event("acme", 1)),
            event_record(1, 40, &event("acme", 2)),
            poison,
        ],
    )
    .await;
    assert_eq!(stored_offsets(&database).await, [(0, 8), (1, 42)]);
    assert_eq!(sink.letters().len(), 1);
    assert_eq!(sink.letters()[0].reason, Reason::Undecodable);
    assert_eq!(stored_row_count(&database).await, 2);

    // A late batch from an older owner of partition 0 must not move it back.
    write(&writer, vec![event_record(0, 3, &event("acme", 3))]).await;
    assert_eq!(stored_offsets(&database).await, [(0, 8), (1, 42)]);
    write(&writer, vec![event_record(0, 20, &event("acme", 4))]).await;
    assert_eq!(stored_offsets(&database).await, [(0, 21), (1, 42)]);
}

#[tokio::test]
async fn nothing_commits_until_dead_letters_are_acknowledged() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let mut poison = event_record(0, 1, &event("acme", 1));
    poison.value = Some(b"garbage".to_vec());
    let mut prepared = prepare::prepare(
        vec![event_record(0, 0, &event("acme", 1)), poison],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let mut attempt = AttemptState::default();

    sink.failing.store(true, Ordering::SeqCst);
    let failed = writer.write(&mut prepared, &mut attempt).await;
    assert!(
        failed.is_err(),
        "a dead-letter topic that is down fails the batch"
    );
    assert!(failed.as_ref().err().is_some_and(|e| e.is_retryable()));
    assert_eq!(stored_row_count(&database).await, 0);
    assert!(stored_offsets(&database).await.is_empty());

    sink.failing.store(false, Ordering::SeqCst);
    let outcome = writer
        .write(&mut prepared, &mut attempt)
        .await
        .expect("the retry commits");
    assert_eq!(outcome.new_rows.len(), 1);
    assert_eq!(sink.letters().len(), 1);
    assert_eq!(stored_offsets(&database).await, [(0, 2)]);
}

#[tokio::test]
async fn a_database_outage_fails_the_attempt_and_the_retry_commits() {
    let mut database = migrated_database().await;
    let writer = writer(&database, RecordingSink::default());
    let records = vec![event_record(0, 0, &event("acme", 1))];
    write(&writer, records.clone()).await;

    database.stop().await;
    let mut prepared = prepare::prepare(
        vec![event_record(0, 1, &event("acme", 2))],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let mut attempt = AttemptState::default();
    let failed = writer.write(&mut prepared, &mut attempt).await;
    let error = failed.expect_err("no database, no commit");
    assert!(error.is_retryable(), "{error}");

    database.start_again().await;
    let outcome = writer
        .write(&mut prepared, &mut attempt)
        .await
        .expect("commits once the database is back");
    assert_eq!(outcome.new_rows.len(), 1);
    assert_eq!(stored_row_count(&database).await, 2);
}

#[tokio::test]
async fn a_schema_error_in_budget_spend_is_not_retried() {
    let database = migrated_database().await;
    let writer = writer(&database, RecordingSink::default());
    database
        .client()
        .await
        .batch_execute("ALTER TABLE budgets RENAME TO budgets_renamed")
        .await
        .expect("rename");
    let mut prepared = prepare::prepare(
        vec![event_record(0, 0, &event("acme", 1))],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let error = writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect_err("budget spend cannot read a missing table");
    assert!(!error.is_retryable(), "{error}");
    assert_eq!(stored_row_count(&database).await, 0, "nothing committed");
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_an_edited_migration_is_refused() {
    let database = Database::start().await;
    let mut client = database.client().await;
    let migrations = migrate::embedded().expect("embedded");

    let first = migrate::apply(&mut client, &migrations)
        .await
        .expect("first");
    assert!(first.iter().all(|o| o.status == MigrationStatus::Applied));
    let second = migrate::apply(&mut client, &migrations)
        .await
        .expect("second");
    assert!(second
        .iter()
        .all(|o| o.status == MigrationStatus::AlreadyApplied));
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM tokenledger_schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(recorded, migrations.len() as i64);
    migrate::verify(&client, &migrations)
        .await
        .expect("verified");

    let mut edited = migrations.clone();
    edited[0] =
        migrate::Migration::parse(&edited[0].name, &format!("{}\n-- edited\n", edited[0].sql))
            .expect("parses");
    let refused = migrate::apply(&mut client, &edited).await;
    assert!(
        matches!(
            refused,
            Err(MigrateError::ChecksumMismatch { version: 1, .. })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_reported_and_no_transaction_files_run_outside_one() {
    let database = Database::start().await;
    let mut client = database.client().await;
    let verified = migrate::verify(&client, &migrate::embedded().expect("embedded")).await;
    assert!(
        matches!(verified, Err(MigrateError::NotMigrated { .. })),
        "{verified:?}"
    );

    let mut migrations = migrate::embedded().expect("embedded");
    // A window in 2000, which the refresh policies (running from the moment the migrations
    // create them) never refresh: an overlapping window would be refused as a concurrent
    // refresh, which is not what this test is about.
    migrations.push(
        migrate::Migration::parse(
            "V1000__refresh.sql",
            "-- tokenledger:no-transaction\n\
             CALL refresh_continuous_aggregate('usage_hourly', '2000-01-01', '2000-01-02');\n\
             CALL refresh_continuous_aggregate('usage_daily', '2000-01-01', '2000-01-02');\n",
        )
        .expect("parses"),
    );
    let outcomes = migrate::apply(&mut client, &migrations)
        .await
        .expect("a refresh runs because it is sent outside a transaction");
    assert_eq!(outcomes.len(), migrations.len());
}
