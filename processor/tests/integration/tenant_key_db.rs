//! Idempotency per tenant against a real TimescaleDB (PostgreSQL + TimescaleDB
//! through the e2e harness): the batch transaction keys events by
//! `(tenant_id, id, created_at)`, and `V7__tenant_idempotency.sql` moves a
//! table holding rows, compressed chunks included, to that key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use e2e::Database;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink, Reason};
use processor::migrate::{self, MigrationStatus};
use processor::prepare;
use processor::record::Record;
use processor::write::{AttemptState, BatchOutcome, Writer};
use uuid::Uuid;

use crate::support::event_record;
use crate::support::migrated_database;

#[derive(Debug, Clone, Default)]
struct RecordingSink(Arc<Mutex<Vec<DeadLetter>>>);

impl RecordingSink {
    fn letters(&self) -> Vec<DeadLetter> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl DeadLetterSink for RecordingSink {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        self.0.lock().expect("not poisoned").push(letter.clone());
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
    Writer::new(pool, "tenant-key-test", sink, Duration::from_secs(20))
}

fn event(tenant: &str, prompt_tokens: u32, age: chrono::Duration) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - age,
        tenant_id: tenant.into(),
        user_id: None,
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
        labels: Default::default(),
        received_at: now,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

/// The same id and time under another tenant, with other content.
fn under(tenant: &str, original: &UsageEvent) -> UsageEvent {
    UsageEvent {
        tenant_id: tenant.into(),
        prompt_tokens: original.prompt_tokens + 7,
        total_tokens: original.total_tokens + 7,
        ..original.clone()
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

/// `(tenant_id, prompt_tokens)` of every row with `id`, by tenant.
async fn stored(database: &Database, id: Uuid) -> Vec<(String, i32)> {
    database
        .client()
        .await
        .query(
            "SELECT tenant_id, prompt_tokens FROM gateway_mode_audit WHERE id = $1 ORDER BY 1",
            &[&id],
        )
        .await
        .expect("rows")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// `(new, duplicates, conflicts)` of a batch outcome.
fn counts(outcome: &BatchOutcome) -> (usize, usize, usize) {
    (
        outcome.new_rows.len(),
        outcome.duplicates,
        outcome.conflicts,
    )
}

#[tokio::test]
async fn the_same_key_under_two_tenants_is_two_events() {
    let database = migrated_database().await;
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());

    // Another tenant sends acme's id and time first.
    let acme = event("acme", 10, chrono::Duration::minutes(5));
    let globex = under("globex", &acme);
    assert_eq!(
        counts(&write(&writer, vec![event_record(0, 0, &globex)]).await),
        (1, 0, 0)
    );
    assert_eq!(
        counts(&write(&writer, vec![event_record(0, 1, &acme)]).await),
        (1, 0, 0)
    );
    // Replays of both are duplicates, each of its own tenant's row.
    let replay = write(
        &writer,
        vec![event_record(0, 2, &acme), event_record(0, 3, &globex)],
    )
    .await;
    assert_eq!(counts(&replay), (0, 2, 0));
    assert_eq!(
        stored(&database, acme.id).await,
        [("acme".into(), 10), ("globex".into(), 17)]
    );

    // Both in one batch.
    let initech = event("initech", 20, chrono::Duration::minutes(1));
    let umbrella = under("umbrella", &initech);
    let outcome = write(
        &writer,
        vec![event_record(0, 4, &initech), event_record(0, 5, &umbrella)],
    )
    .await;
    assert_eq!(counts(&outcome), (2, 0, 0));

    // Within one tenant the key still means one event.
    let mut acme_reused = acme.clone();
    acme_reused.prompt_tokens = 999;
    acme_reused.total_tokens = 1049;
    let outcome = write(&writer, vec![event_record(0, 6, &acme_reused)]).await;
    assert_eq!(counts(&outcome), (0, 0, 1));
    let letters = sink.letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, Reason::Conflict);
    assert_eq!(letters[0].record.offset, 6);
    assert!(
        letters[0].detail.contains("(acme, "),
        "the detail names the tenant: {}",
        letters[0].detail
    );
    assert_eq!(
        stored(&database, acme.id).await,
        [("acme".into(), 10), ("globex".into(), 17)],
        "stored rows keep their first content"
    );
}

#[tokio::test]
async fn the_migration_moves_a_table_with_compressed_chunks_to_the_tenant_key() {
    let database = Database::start().await;
    let mut client = database.client().await;
    let all = migrate::embedded().expect("embedded");
    let before: Vec<_> = all.iter().filter(|m| m.version < 7).cloned().collect();
    migrate::apply(&mut client, &before)
        .await
        .expect("migrations up to V6 apply");

    // Rows under the old key: one in a chunk that compression then takes, one recent.
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let old = event("acme", 10, chrono::Duration::days(10));
    let recent = event("acme", 11, chrono::Duration::minutes(5));
    // As the processor of before V7 stored them: the writer now names the new key as its
    // conflict target, which a table without it refuses.
    let old_written = client
        .execute(
            "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
                 completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
                 received_at, payload_sha256, source_partition, source_offset)
             SELECT id, 'acme', 'openai', 'gpt-4o', p, 50, p + 50, 0, c, 'provided', now(),
                    h, 0, o
             FROM (VALUES ($1::uuid, $2::int4, $3::timestamptz, $4::bytea, 0::int8),
                          ($5::uuid, $6::int4, $7::timestamptz, $8::bytea, 1::int8))
                  AS v(id, p, c, h, o)",
            &[
                &old.id,
                &10_i32,
                &old.created_at,
                &old.content_sha256().as_slice(),
                &recent.id,
                &11_i32,
                &recent.created_at,
                &recent.content_sha256().as_slice(),
            ],
        )
        .await
        .expect("rows under the old key");
    assert_eq!(old_written, 2);
    let compressed: i64 = client
        .query_one(
            "SELECT count(compress_chunk(c)) FROM show_chunks('gateway_mode_audit', older_than => INTERVAL '7 days') c",
            &[],
        )
        .await
        .expect("compress")
        .get(0);
    assert_eq!(compressed, 1, "the old row's chunk is compressed");

    let outcomes = migrate::apply(&mut client, &all).await.expect("V7 applies");
    let v7 = outcomes
        .iter()
        .find(|o| o.name == "V7__tenant_idempotency.sql")
        .expect("V7 listed");
    assert_eq!(v7.status, MigrationStatus::Applied);
    let keys: Vec<String> = client
        .query(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
             WHERE i.indrelid = 'gateway_mode_audit'::regclass AND i.indisunique",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "one unique key, the old one dropped: {keys:?}"
    );
    assert!(keys[0].contains("(created_at, tenant_id, id)"), "{keys:?}");
    let again = migrate::apply(&mut client, &all).await.expect("re-run");
    assert!(again
        .iter()
        .all(|o| o.status == MigrationStatus::AlreadyApplied));

    // The stored rows keep deduplicating, in the compressed chunk too; another tenant's use of
    // the same keys is new.
    let outcome = write(
        &writer,
        vec![
            event_record(0, 10, &old),
            event_record(0, 11, &recent),
            event_record(0, 12, &under("globex", &old)),
            event_record(0, 13, &under("globex", &recent)),
        ],
    )
    .await;
    assert_eq!(counts(&outcome), (2, 2, 0));
    assert_eq!(
        stored(&database, old.id).await,
        [("acme".into(), 10), ("globex".into(), 17)]
    );
    let mut old_reused = old.clone();
    old_reused.prompt_tokens = 1;
    old_reused.total_tokens = 51;
    let outcome = write(&writer, vec![event_record(0, 14, &old_reused)]).await;
    assert_eq!(
        counts(&outcome),
        (0, 0, 1),
        "a conflict in a compressed chunk"
    );
    assert_eq!(sink.letters().len(), 1);
}
