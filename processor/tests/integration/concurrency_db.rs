//! The batch transaction's concurrency claims on a real multi-connection TimescaleDB, each with
//! the overlap staged deterministically: a trigger makes a transaction wait at a chosen step on
//! an advisory lock the test holds (a "gate"), the test waits until the other transaction is
//! seen blocked on the lock it contends for, and only then opens the gate.
//!
//! - `a_budget_edit_racing_a_batch_leaves_spend_equal_to_the_raw_sum`: twenty edits of a
//!   budget's scope (what `PUT /v1/budgets/{id}` runs), each overlapping a batch that adds to
//!   the same budget and tenant: half with the batch inside its transaction when the edit comes
//!   (the edit must wait for it, then reset its spend), half with the edit inside its
//!   transaction when the batch comes (the batch must wait, then evaluate under the new scope).
//!   After each, the stored spend equals the raw sum over the period under the current scope.
//! - `a_zombie_writing_the_same_records_adds_nothing_and_moves_no_offset_back`: two writers of
//!   the same partition; the second's batch holds records the first has inserted but not yet
//!   committed, so it waits on the first's index entries (a real row lock), then finds them
//!   stored: rows, spend, crossings and the stored offset as if one writer had written.
//! - `replays_into_a_compressed_chunk_are_duplicates_and_a_late_event_is_stored_once`: a chunk
//!   compressed by TimescaleDB still recognises every replayed key, and a late event into it
//!   is inserted once and then is a duplicate too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use e2e::{wait_for, Database};
use ledger::{Budget, PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::record::Record;
use processor::write::{AttemptState, BatchOutcome, Writer};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support;
use crate::support::migrated_database;

const GROUP: &str = "concurrency-test";
const WAIT: Duration = Duration::from_secs(30);
/// The advisory lock key of the gates below.
const GATE: i64 = 0x6761_7465;

/// These tests produce no dead letters; the sink refuses any.
#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!(
            "unexpected dead letter: {:?} {}",
            letter.reason, letter.detail
        );
    }
}

fn writer(database: &Database) -> Arc<Writer<NoDeadLetters>> {
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    Arc::new(Writer::new(pool, GROUP, NoDeadLetters, WAIT))
}

async fn write(writer: &Writer<NoDeadLetters>, records: Vec<Record>) -> BatchOutcome {
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits")
}

fn at(day: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::seconds(i64::from(second))
}

/// An event with a caller-provided cost, so spend is exact.
fn event(model: &str, cost: &str, created_at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        id: Uuid::now_v7(),
        created_at,
        tenant_id: "acme".into(),
        user_id: None,
        provider: "openai".into(),
        model: model.into(),
        prompt_tokens: 100,
        completion_tokens: 10,
        total_tokens: 110,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: Some(cost.parse().expect("decimal")),
        labels: Default::default(),
        received_at: Utc::now(),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

fn records(partition: i32, first_offset: i64, events: &[UsageEvent]) -> Vec<Record> {
    events
        .iter()
        .zip(first_offset..)
        .map(|(event, offset)| support::event_record(partition, offset, event))
        .collect()
}

fn budget(id: Uuid, model: &str) -> Budget {
    Budget::from_json(
        id,
        &json!({"name": "acme-model", "tenant_id": "acme", "model": model,
                "period": "monthly", "amount_usd": "1000", "thresholds": [50, 90]}),
    )
    .expect("valid budget")
}

/// A migrated database whose compression policy is paused before any row is written. The
/// policy compresses chunks older than 7 days whenever its background job runs; an insert into a
/// compressed chunk takes a lock on the whole chunk, which would make the transactions below meet
/// there, at a moment of the job's choosing, instead of on the rows they are about.
async fn database_without_compression_policy() -> Database {
    let database = migrated_database().await;
    database
        .client()
        .await
        .batch_execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
             WHERE proc_name = 'policy_compression'",
        )
        .await
        .expect("pause the compression policy");
    database
}

/// Makes every transaction that fires a row trigger of `table` (`INSERT`/`UPDATE`) wait while
/// the test holds the gate, without keeping the gate itself.
async fn install_gate(client: &Client, table: &str) {
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_advisory_lock_shared({GATE});
                 PERFORM pg_advisory_unlock_shared({GATE});
                 RETURN NEW;
             END $$;
             CREATE TRIGGER test_gate BEFORE INSERT OR UPDATE ON {table}
                 FOR EACH ROW EXECUTE FUNCTION test_gate();"
        ))
        .await
        .expect("gate trigger");
}

/// Backends waiting on a heavyweight lock of one of `kinds` (pg_stat_activity's wait_event:
/// `advisory` for a gate, `transactionid`/`tuple` for a row or index entry).
async fn waiting(client: &Client, kinds: &[&str]) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND wait_event = ANY($1)",
            &[&kinds],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn wait_until_waiting(client: &Client, kinds: &[&str], count: i64, what: &str) {
    let seen = wait_for(WAIT, || async { waiting(client, kinds).await >= count }).await;
    if !seen {
        let waits: Vec<(Option<String>, Option<String>, Option<String>)> = client
            .query(
                "SELECT wait_event_type, wait_event, query FROM pg_stat_activity
                 WHERE backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        panic!("{what}: no backend waited on {kinds:?} within {WAIT:?}; backends: {waits:#?}");
    }
}

async fn one_decimal(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Decimal {
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// 12:00 UTC on the 15th of the `round`th month from January 2025, plus `second`: each round
/// of the edit test in a budget period of its own, which has no spend row before the round.
fn in_month(round: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025 + (round / 12) as i32, round % 12 + 1, 15, 12, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::seconds(i64::from(second))
}

/// Asserts that every `budget_spend` row of `budget_id` equals the raw sum of its period under
/// a `model` scope; returns how many rows there are.
async fn check_spend(client: &Client, budget_id: Uuid, model: &str, when: &str) -> usize {
    let rows = client
        .query(
            "SELECT s.period_start, s.spend_usd, COALESCE((
                 SELECT sum(a.estimated_cost) FROM gateway_mode_audit AS a
                 WHERE a.tenant_id = s.tenant_id AND a.model = $2
                   AND a.created_at >= s.period_start AND a.created_at < s.period_end), 0)
             FROM budget_spend AS s WHERE s.budget_id = $1 ORDER BY s.period_start",
            &[&budget_id, &model],
        )
        .await
        .expect("budget_spend");
    for row in &rows {
        let (start, stored, raw): (DateTime<Utc>, Decimal, Decimal) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            stored, raw,
            "{when}: spend of the period from {start}, scope {model}"
        );
    }
    rows.len()
}

async fn stored_spend(client: &Client, budget_id: Uuid) -> Option<Decimal> {
    client
        .query_opt(
            "SELECT spend_usd FROM budget_spend WHERE budget_id = $1 AND tenant_id = 'acme'",
            &[&budget_id],
        )
        .await
        .expect("budget_spend")
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_edit_racing_a_batch_leaves_spend_equal_to_the_raw_sum() {
    let database = database_without_compression_policy().await;
    let control = database.client().await;
    let gate = database.client().await;
    let writer = writer(&database);
    let id = Uuid::now_v7();
    store::budgets::create(&control, &budget(id, "gpt-4o"))
        .await
        .expect("budget");
    install_gate(&control, "budget_spend").await;
    install_gate(&control, "budgets").await;

    // Costs differ by model, so a spend row computed under the other model's scope shows.
    let costs = [("gpt-4o", "1.25"), ("gpt-4o-mini", "0.03")];
    let mut offset = 0;
    let mut batch = |round: u32| {
        let events: Vec<UsageEvent> = (0..6)
            .map(|n| {
                let (model, cost) = costs[n % 2];
                event(model, cost, in_month(round, n as u32))
            })
            .collect();
        let batch = records(0, offset, &events);
        offset += events.len() as i64;
        batch
    };
    // Spend exists before the first edit.
    write(&writer, batch(20)).await;

    for round in 0..20u32 {
        let new_model = if round % 2 == 0 {
            "gpt-4o-mini"
        } else {
            "gpt-4o"
        };
        gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
            .await
            .expect("close the gate");
        let edit = {
            let url = database.url();
            let edited = budget(id, new_model);
            async move {
                let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("edit connection");
                tokio::spawn(connection);
                store::budgets::replace(&mut client, &edited)
                    .await
                    .expect("edit");
            }
        };
        let records = batch(round);
        let in_flight = Arc::clone(&writer);
        let batch_task = async move {
            write(&in_flight, records).await;
        };
        let (first, second) = if round < 10 {
            // The batch holds the budget and waits at its spend row; the edit comes and must
            // wait for the batch's lock before it resets spend.
            let batch_task = tokio::spawn(batch_task);
            wait_until_waiting(&control, &["advisory"], 1, "the batch at its spend row").await;
            let edit_task = tokio::spawn(edit);
            wait_until_waiting(
                &control,
                &["transactionid", "tuple"],
                1,
                "the edit behind the batch's budget lock",
            )
            .await;
            (batch_task, edit_task)
        } else {
            // The edit holds the budget (it has reset spend and waits at its update); the batch
            // comes and must wait for the edit, then evaluate under the new scope.
            let edit_task = tokio::spawn(edit);
            wait_until_waiting(&control, &["advisory"], 1, "the edit at its update").await;
            let batch_task = tokio::spawn(batch_task);
            wait_until_waiting(
                &control,
                &["transactionid", "tuple"],
                1,
                "the batch behind the edit's budget lock",
            )
            .await;
            (edit_task, batch_task)
        };
        gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
            .await
            .expect("open the gate");
        first.await.expect("first transaction");
        second.await.expect("second transaction");
        // Spend after the edit: every stored row equals the raw sum of its period under the new
        // scope, and so does the round's row after one more batch (which adds to a row left
        // standing, or rebuilds it from the audit table).
        check_spend(
            &control,
            id,
            new_model,
            &format!("round {round}, after the edit"),
        )
        .await;
        write(&writer, batch(round)).await;
        let rows = check_spend(
            &control,
            id,
            new_model,
            &format!("round {round}, next batch"),
        )
        .await;
        assert!(
            rows >= 1,
            "round {round}: no spend row after the next batch"
        );
    }
}

/// (rows, duplicates) a batch reported.
fn counts(outcome: &BatchOutcome) -> (usize, usize) {
    (outcome.new_rows.len(), outcome.duplicates)
}

async fn row_count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM gateway_mode_audit", &[])
        .await
        .expect("count")
        .get(0)
}

async fn crossings(client: &Client) -> Vec<i16> {
    client
        .query(
            "SELECT threshold FROM budget_alerts WHERE tenant_id = 'acme' ORDER BY threshold",
            &[],
        )
        .await
        .expect("budget_alerts")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn stored_offset(client: &Client, partition: i32) -> i64 {
    client
        .query_one(
            "SELECT next_offset FROM ingest_offsets WHERE consumer_group = $1 AND partition = $2",
            &[&GROUP, &partition],
        )
        .await
        .expect("ingest_offsets")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writing_the_same_records_adds_nothing_and_moves_no_offset_back() {
    let database = database_without_compression_policy().await;
    let control = database.client().await;
    let gate = database.client().await;
    let id = Uuid::now_v7();
    store::budgets::create(&control, &budget(id, "gpt-4o"))
        .await
        .expect("budget");
    // Two processors, each with its own pool: the member and a zombie given the same partition.
    let member = writer(&database);
    let zombie = writer(&database);
    // 40 events of 25 USD: the member's batch takes the budget of 1000 to 100 %.
    let events: Vec<UsageEvent> = (0..40)
        .map(|n| event("gpt-4o", "25", in_month(12, n)))
        .collect();
    let batch = records(3, 100, &events);
    // The zombie is behind: it holds the first half of the same records.
    let stale = batch[..20].to_vec();
    // The day's chunk exists before: the zombie then waits on the member's rows, not on the
    // member's creation of the chunk.
    let earlier = event("gpt-4o-mini", "1", in_month(12, 0));
    write(&member, records(3, 99, std::slice::from_ref(&earlier))).await;

    // The member stops after inserting its rows and spend, before it stores its offsets.
    install_gate(&control, "ingest_offsets").await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .await
        .expect("close the gate");
    let member_task = {
        let member = Arc::clone(&member);
        tokio::spawn(async move { write(&member, batch).await })
    };
    wait_until_waiting(&control, &["advisory"], 1, "the member before its offsets").await;
    // The zombie's insert meets the member's uncommitted keys and must wait for its outcome.
    let zombie_task = {
        let zombie = Arc::clone(&zombie);
        tokio::spawn(async move { write(&zombie, stale).await })
    };
    wait_until_waiting(
        &control,
        &["transactionid", "tuple"],
        1,
        "the zombie behind the member's uncommitted rows",
    )
    .await;
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .await
        .expect("open the gate");
    let member_outcome = member_task.await.expect("member");
    let zombie_outcome = zombie_task.await.expect("zombie");

    assert_eq!(counts(&member_outcome), (40, 0), "the member's batch");
    assert_eq!(counts(&zombie_outcome), (0, 20), "the zombie's batch");
    assert_eq!(row_count(&control).await, 41);
    assert_eq!(check_spend(&control, id, "gpt-4o", "after both").await, 1);
    assert_eq!(
        stored_spend(&control, id).await,
        Some(Decimal::from(1000)),
        "spend"
    );
    assert_eq!(
        crossings(&control).await,
        vec![50, 90],
        "each crossing once"
    );
    assert_eq!(
        stored_offset(&control, 3).await,
        140,
        "the zombie's older batch moved the stored offset back"
    );
}

async fn compressed_chunks(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks
             WHERE hypertable_name = 'gateway_mode_audit' AND is_compressed",
            &[],
        )
        .await
        .expect("chunks")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_into_a_compressed_chunk_are_duplicates_and_a_late_event_is_stored_once() {
    let database = migrated_database().await;
    let control = database.client().await;
    let id = Uuid::now_v7();
    store::budgets::create(&control, &budget(id, "gpt-4o"))
        .await
        .expect("budget");
    let writer = writer(&database);
    let events: Vec<UsageEvent> = (0..30)
        .map(|n| event("gpt-4o", "7", in_month(13, n)))
        .collect();
    let batch = records(0, 0, &events);
    assert_eq!(counts(&write(&writer, batch.clone()).await), (30, 0));

    control
        .batch_execute("SELECT compress_chunk(c) FROM show_chunks('gateway_mode_audit') AS c")
        .await
        .expect("compress");
    assert_eq!(
        compressed_chunks(&control).await,
        1,
        "the day's chunk is compressed"
    );

    // The same records again (a replay after the offsets were lost), and a batch mixing stored
    // keys with one late event of the same day.
    assert_eq!(
        counts(&write(&writer, batch.clone()).await),
        (0, 30),
        "a replay into the compressed chunk"
    );
    let late = event("gpt-4o", "7", in_month(13, 3_600));
    let mut mixed = records(0, 30, std::slice::from_ref(&late));
    mixed.extend(batch[..10].iter().cloned());
    assert_eq!(
        counts(&write(&writer, mixed.clone()).await),
        (1, 10),
        "a late event beside replayed ones"
    );
    assert_eq!(
        counts(&write(&writer, mixed).await),
        (0, 11),
        "the late event replayed"
    );

    assert_eq!(row_count(&control).await, 31);
    let stored_once: i64 = control
        .query_one(
            "SELECT count(*) FROM gateway_mode_audit WHERE id = $1",
            &[&late.id],
        )
        .await
        .expect("late row")
        .get(0);
    assert_eq!(stored_once, 1);
    assert_eq!(
        check_spend(&control, id, "gpt-4o", "after the replays").await,
        1
    );
    assert_eq!(stored_spend(&control, id).await, Some(Decimal::from(217)));
    assert_eq!(crossings(&control).await, Vec::<i16>::new());
}

/// Makes every transaction wait while the test holds the gate before the second audit row it
/// inserts: two writers are then each stopped holding one row.
async fn install_second_row_gate(client: &Client) {
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION test_second_row_gate() RETURNS trigger
             LANGUAGE plpgsql AS $$
             DECLARE n int := COALESCE(NULLIF(current_setting('test.rows', true), ''), '0')::int + 1;
             BEGIN
                 PERFORM set_config('test.rows', n::text, true);
                 IF n = 2 THEN
                     PERFORM pg_advisory_lock_shared({GATE});
                     PERFORM pg_advisory_unlock_shared({GATE});
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER test_second_row_gate BEFORE INSERT ON gateway_mode_audit
                 FOR EACH ROW EXECUTE FUNCTION test_second_row_gate();"
        ))
        .await
        .expect("gate trigger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_meeting_on_the_same_keys_queue_instead_of_deadlocking() {
    let mut database = database_without_compression_policy().await;
    let control = database.client().await;
    let gate = database.client().await;
    let first = writer(&database);
    let second = writer(&database);
    // The day's chunk exists, so the writers meet on rows rather than on creating the chunk.
    write(&first, records(0, 0, &[event("gpt-4o", "1", at(20, 0))])).await;
    install_second_row_gate(&control).await;

    // The same two events on two partitions, in opposite orders (a producer that does not key
    // by tenant, or a retry through another partition).
    let (a, b) = (
        event("gpt-4o", "2", at(20, 1)),
        event("gpt-4o", "3", at(20, 2)),
    );
    let one = records(1, 0, &[a.clone(), b.clone()]);
    let other = records(2, 0, &[b, a]);
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .await
        .expect("close the gate");
    let tasks = [(first, one), (second, other)].map(|(writer, batch)| {
        tokio::spawn(async move {
            let mut prepared = prepare::prepare(
                batch,
                &PriceBook::builtin().expect("the built-in book parses"),
            );
            writer
                .write(&mut prepared, &mut AttemptState::default())
                .await
                .map(|outcome| counts(&outcome))
                .map_err(|error| error.to_string())
        })
    });
    // Both transactions are stopped: one before its second row, the other either behind the
    // first's row (one order) or before its own second row (opposite orders).
    wait_until_waiting(
        &control,
        &["advisory", "transactionid", "tuple"],
        2,
        "both writers inside their transactions",
    )
    .await;
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .await
        .expect("open the gate");
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("writer"));
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![Ok((0, 2)), Ok((2, 0))],
        "one writer stores both events, the other finds them stored, both on the first attempt"
    );
    let log = database
        .process()
        .map(|postgres| postgres.log_contents())
        .unwrap_or_default();
    assert_eq!(
        log.matches("deadlock detected").count(),
        0,
        "deadlocks in the server log"
    );
    assert_eq!(row_count(&control).await, 3);
}

/// $1 per million input tokens of `acme-ai/acme-large`, and the same price corrected to $2.
const BOOK: &str = r#"
[[price]]
provider = "acme-ai"
model = "acme-large"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "PRICE"
output = "4"
"#;

/// A January 2026 event of `acme-ai/acme-large` with 1M input tokens, priced by the book.
fn priced_event(day: u32, second: u32) -> UsageEvent {
    let mut event = event("acme-large", "0", Utc::now());
    event.provider = "acme-ai".into();
    event.estimated_cost = None;
    event.prompt_tokens = 1_000_000;
    event.completion_tokens = 0;
    event.total_tokens = 1_000_000;
    event.created_at = Utc
        .with_ymd_and_hms(2026, 1, day, 9, 0, second)
        .single()
        .expect("valid time");
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprice_while_a_batch_writes_the_same_days_keeps_spend_and_rollups_exact() {
    let database = database_without_compression_policy().await;
    let mut control = database.client().await;
    let gate = database.client().await;
    let old = PriceBook::from_toml(&BOOK.replace("PRICE", "1")).expect("old book");
    let new = PriceBook::from_toml(&BOOK.replace("PRICE", "2")).expect("new book");
    let id = Uuid::now_v7();
    let acme = Budget::from_json(
        id,
        &json!({"name": "acme-monthly", "tenant_id": "acme", "period": "monthly",
                "amount_usd": "100"}),
    )
    .expect("budget");
    store::budgets::create(&control, &acme)
        .await
        .expect("budget");
    let writer = writer(&database);
    let write_with = |book: PriceBook, records: Vec<Record>| {
        let writer = Arc::clone(&writer);
        async move {
            let mut prepared = prepare::prepare(records, &book);
            writer
                .write(&mut prepared, &mut AttemptState::default())
                .await
                .expect("batch commits")
        }
    };
    // Rows priced under the old book on three days, then the live processor (already on the
    // corrected book) writes more rows into the same days while the re-pricing runs.
    let stored: Vec<UsageEvent> = (0..9).map(|n| priced_event(10 + n % 3, n)).collect();
    write_with(old.clone(), records(0, 0, &stored)).await;
    let mut out = Vec::new();
    processor::refresh::materialize(
        &control,
        chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
        chrono::NaiveDate::from_ymd_opt(2026, 2, 1).expect("day"),
        &mut out,
    )
    .await
    .expect("rollups refresh");

    // The batch stops after adding to the month's spend row, before it commits.
    install_gate(&control, "ingest_offsets").await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .await
        .expect("close the gate");
    let live: Vec<UsageEvent> = (0..6).map(|n| priced_event(10 + n % 3, 30 + n)).collect();
    let batch = tokio::spawn(write_with(new.clone(), records(0, 9, &live)));
    wait_until_waiting(&control, &["advisory"], 1, "the batch before its commit").await;
    let reprice = {
        let url = database.url();
        let new = new.clone();
        tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("reprice connection");
            tokio::spawn(connection);
            let args = processor::reprice::RepriceArgs {
                from: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
                to: chrono::NaiveDate::from_ymd_opt(2026, 2, 1).expect("day"),
                tenant: None,
                provider: None,
                model: None,
                dry_run: false,
                batch_rows: 4,
            };
            let mut out = Vec::new();
            processor::reprice::run(&mut client, &new, &args, &mut out)
                .await
                .expect("reprice")
        })
    };
    // The re-pricing reaches the spend row the batch holds, and waits for it.
    wait_until_waiting(
        &control,
        &["transactionid", "tuple"],
        1,
        "the re-pricing behind the batch's spend row",
    )
    .await;
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .await
        .expect("open the gate");
    assert_eq!(batch.await.expect("batch").new_rows.len(), 6);
    let run = reprice.await.expect("reprice");
    assert_eq!(run.corrected, 9, "the rows priced under the old book");

    // Every row at $2 now; spend and every rollup equal to the raw table.
    let raw = one_decimal(
        &control,
        "SELECT sum(estimated_cost) FROM gateway_mode_audit",
        &[],
    )
    .await;
    assert_eq!(raw, Decimal::from(30));
    assert_eq!(stored_spend(&control, id).await, Some(raw), "spend");
    let transaction = control.transaction().await.expect("begin");
    for (rollup, bucket) in [("usage_hourly", "bucket"), ("usage_daily", "day")] {
        let differing: i64 = transaction
            .query_one(
                &format!(
                    "SELECT count(*) FROM (
                         SELECT date_trunc('day', {bucket}) AS d, sum(cost) AS c FROM {rollup}
                         GROUP BY 1) r
                     FULL JOIN (
                         SELECT date_trunc('day', created_at) AS d, sum(estimated_cost) AS c
                         FROM gateway_mode_audit GROUP BY 1) a USING (d)
                     WHERE r.c IS DISTINCT FROM a.c"
                ),
                &[],
            )
            .await
            .expect("rollup")
            .get(0);
        assert_eq!(
            differing, 0,
            "days where {rollup} differs from the raw table"
        );
    }
}
