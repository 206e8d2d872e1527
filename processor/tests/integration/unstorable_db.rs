//! Events the database refuses, and the limits that keep accepted events
//! storable, against a real TimescaleDB (PostgreSQL + TimescaleDB through the
//! e2e harness):
//!
//! - a batch holding events the database refuses for good commits the rest,
//!   and the refused ones are dead-lettered as `unstorable` with their
//!   SQLSTATE and message;
//! - at every input boundary, the gateway's parser accepts an event exactly
//!   when the processor (decode, re-validate, insert) stores it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use e2e::ledger_check::stored_row_count;
use e2e::Database;
use ledger::event::MAX_TOKEN_COUNT;
use ledger::{PriceBook, UsageEvent, ValidationLimits};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink, Reason};
use processor::prepare;
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{migrated_database, TOPIC};

const GROUP: &str = "unstorable-test";

#[derive(Debug, Clone, Default)]
struct RecordingSink {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl DeadLetterSink for RecordingSink {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
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

fn event(model: &str, prompt_tokens: u32) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - chrono::Duration::minutes(5),
        tenant_id: "acme".into(),
        user_id: None,
        provider: "openai".into(),
        model: model.into(),
        prompt_tokens,
        completion_tokens: 5,
        total_tokens: prompt_tokens + 5,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: BTreeMap::new(),
        received_at: now,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

fn record(partition: i32, offset: i64, value: Vec<u8>) -> Record {
    Record {
        topic: TOPIC.into(),
        partition,
        offset,
        key: Some(b"acme".to_vec()),
        value: Some(value),
        schema: None,
        timestamp_ms: None,
    }
}

/// The database refuses two events of a batch (a CHECK constraint stands
/// in for any data exception or constraint violation): the batch is
/// bisected, they and an in-batch repeat of one are dead-lettered with the
/// SQLSTATE, and the other events and the offsets commit in the same batch.
#[tokio::test]
async fn events_the_database_refuses_are_bisected_out_and_the_rest_commits() {
    let database = migrated_database().await;
    database
        .client()
        .await
        .batch_execute(
            "ALTER TABLE gateway_mode_audit ADD CONSTRAINT refuse_some CHECK (model <> 'refused')",
        )
        .await
        .expect("constraint");
    let sink = RecordingSink::default();
    let writer = writer(&database, sink.clone());
    let mut events: Vec<UsageEvent> = (0..20).map(|i| event("gpt-4o", 10 + i)).collect();
    events[3].model = "refused".into();
    events[14].model = "refused".into();
    let mut records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| record(i as i32 % 2, i as i64, e.to_kafka_value()))
        .collect();
    records.push(record(1, 21, events[3].to_kafka_value()));
    records.push(record(0, 22, b"garbage".to_vec()));

    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let outcome = writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("the rest commits");
    assert_eq!(outcome.new_rows.len(), 18);
    assert_eq!(outcome.dead_lettered.get(&Reason::Unstorable), Some(&3));
    assert_eq!(outcome.dead_lettered.get(&Reason::Undecodable), Some(&1));
    assert_eq!(stored_row_count(&database).await, 18);

    let letters = sink.letters.lock().expect("not poisoned").clone();
    let mut unstorable: Vec<i64> = letters
        .iter()
        .filter(|letter| letter.reason == Reason::Unstorable)
        .map(|letter| {
            let failure = letter.database.as_ref().expect("database failure");
            assert_eq!(failure.sqlstate, "23514", "check_violation");
            assert!(failure.message.contains("refuse_some"), "{failure}");
            assert!(
                letter.detail.contains("SQLSTATE 23514"),
                "{}",
                letter.detail
            );
            letter.record.offset
        })
        .collect();
    unstorable.sort();
    assert_eq!(unstorable, [3, 14, 21]);

    let client = database.client().await;
    let offsets: Vec<(i32, i64)> = client
        .query(
            "SELECT partition, next_offset FROM ingest_offsets WHERE consumer_group = $1 \
             ORDER BY partition",
            &[&GROUP],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(offsets, [(0, 23), (1, 22)], "offsets past every record");
}

/// One boundary case: the event as a client sends it.
fn case(name: String, fields: &[(&str, Value)]) -> (String, Value) {
    let mut event = json!({
        "id": Uuid::now_v7().to_string(),
        "created_at": (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339(),
        "tenant_id": "acme",
        "provider": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
    });
    for (field, value) in fields {
        event[*field] = value.clone();
    }
    (name, event)
}

/// Every boundary of the event rules: for each count 0, the largest, one
/// more and the u32 edge; costs at their value and scale limits; every
/// string and label at its length limit and one beyond (multi-byte
/// characters, since limits count characters).
fn boundary_cases() -> Vec<(String, Value)> {
    let max = u64::from(MAX_TOKEN_COUNT);
    let mut cases = Vec::new();
    for value in [
        0,
        1,
        max - 1,
        max,
        max + 1,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
    ] {
        let v = json!(value);
        let zero = json!(0);
        cases.push(case(
            format!("prompt_tokens={value}"),
            &[
                ("prompt_tokens", v.clone()),
                ("completion_tokens", zero.clone()),
                ("total_tokens", v.clone()),
            ],
        ));
        cases.push(case(
            format!("completion_tokens={value}"),
            &[
                ("prompt_tokens", zero.clone()),
                ("completion_tokens", v.clone()),
                ("total_tokens", v.clone()),
            ],
        ));
        cases.push(case(
            format!("cached_prompt_tokens={value}"),
            &[
                ("prompt_tokens", v.clone()),
                ("completion_tokens", zero.clone()),
                ("total_tokens", v.clone()),
                ("cached_prompt_tokens", v.clone()),
            ],
        ));
        cases.push(case(
            format!("cache_write_tokens={value}"),
            &[
                ("prompt_tokens", v.clone()),
                ("completion_tokens", zero.clone()),
                ("total_tokens", v.clone()),
                ("cache_write_tokens", v.clone()),
            ],
        ));
        cases.push(case(
            format!("reasoning_tokens={value}"),
            &[
                ("prompt_tokens", zero.clone()),
                ("completion_tokens", v.clone()),
                ("total_tokens", v.clone()),
                ("reasoning_tokens", v.clone()),
            ],
        ));
    }
    let half = max / 2;
    cases.push(case(
        "prompt+completion=max".into(),
        &[
            ("prompt_tokens", json!(half)),
            ("completion_tokens", json!(max - half)),
            ("total_tokens", json!(max)),
        ],
    ));
    cases.push(case(
        "prompt+completion=max+1".into(),
        &[
            ("prompt_tokens", json!(half + 1)),
            ("completion_tokens", json!(max - half)),
            ("total_tokens", json!(max + 1)),
        ],
    ));
    for cost in [
        "0",
        "0.0000000001",
        "0.00000000001",
        "999999.9999999999",
        "1000000",
        "1000000.0000000000",
        "1000000.0000000001",
        "1000001",
        "12345.12345678901",
        "-0.0000000001",
    ] {
        cases.push(case(
            format!("estimated_cost={cost}"),
            &[("estimated_cost", json!(cost))],
        ));
    }
    let text = |c: char, n: usize| json!(std::iter::repeat_n(c, n).collect::<String>());
    for (field, limit) in [("tenant_id", 255), ("user_id", 255), ("model", 100)] {
        for n in [limit, limit + 1] {
            cases.push(case(
                format!("{field} of {n} chars"),
                &[(field, text('ß', n))],
            ));
        }
    }
    for n in [100, 101] {
        cases.push(case(
            format!("provider of {n} chars"),
            &[("provider", text('p', n))],
        ));
    }
    let labels = |count: usize, key_len: usize, value_len: usize| {
        let map: serde_json::Map<String, Value> = (0..count)
            .map(|i| {
                let key = format!("{i:02}{}", "k".repeat(key_len - 2));
                (key, text('€', value_len))
            })
            .collect();
        Value::Object(map)
    };
    for (count, key_len, value_len) in [
        (16, 64, 255),
        (17, 8, 8),
        (1, 65, 8),
        (1, 8, 256),
        (1, 8, 0),
    ] {
        cases.push(case(
            format!("{count} labels, keys of {key_len}, values of {value_len} chars"),
            &[("labels", labels(count, key_len, value_len))],
        ));
    }
    cases
}

/// What the gateway accepts, the processor stores, and only that: each
/// boundary event goes through the gateway's parser; an accepted one is
/// sent in the gateway's Kafka form through `prepare` and the insert into a
/// real database, a refused one straight onto the topic (as any producer
/// could) and must be dead-lettered by `prepare`.
#[tokio::test]
async fn at_every_boundary_the_gateway_accepts_exactly_what_the_processor_stores() {
    let database = migrated_database().await;
    let writer = writer(&database, RecordingSink::default());
    let limits = ValidationLimits::default();
    let now = Utc::now().trunc_subsecs(6);
    let mut accepted: Vec<(String, UsageEvent)> = Vec::new();
    let mut mismatches = Vec::new();
    for (offset, (name, body)) in boundary_cases().into_iter().enumerate() {
        let body_bytes = serde_json::to_vec(&body).expect("json");
        match ledger::event::parse_batch(&body_bytes, now, &limits) {
            Ok(mut events) => {
                let mut event = events.remove(0);
                event.request_id = Some("req-boundary".into());
                accepted.push((name, event));
            }
            Err(_) => {
                // The same event as a producer would put it on the topic.
                let mut kafka = body.clone();
                kafka["received_at"] = json!(now.to_rfc3339());
                kafka["request_id"] = json!("req-boundary");
                let value = serde_json::to_vec(&kafka).expect("json");
                let prepared = prepare::prepare(
                    vec![record(0, offset as i64, value)],
                    &PriceBook::builtin().expect("the built-in book parses"),
                );
                if !prepared.unique.is_empty() {
                    mismatches.push(format!(
                        "{name}: refused by the gateway, kept by the processor"
                    ));
                }
            }
        }
    }
    let records: Vec<Record> = accepted
        .iter()
        .enumerate()
        .map(|(offset, (_, event))| record(0, offset as i64, event.to_kafka_value()))
        .collect();
    let mut prepared = prepare::prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    for (index, letter) in &prepared.poison {
        mismatches.push(format!(
            "{}: accepted by the gateway, dead-lettered by the processor as {}: {}",
            accepted[*index].0,
            letter.reason.as_str(),
            letter.detail
        ));
    }
    let outcome = writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("accepted events commit");
    for (reason, count) in &outcome.dead_lettered {
        if *reason == Reason::Unstorable {
            mismatches.push(format!("{count} accepted events refused by the database"));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert_eq!(outcome.new_rows.len(), accepted.len());

    let client = database.client().await;
    for (name, event) in &accepted {
        let row = client
            .query_one(
                "SELECT prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, \
                 cache_write_tokens, reasoning_tokens, tenant_id, model, labels::text \
                 FROM gateway_mode_audit WHERE id = $1",
                &[&event.id],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: not stored: {e}"));
        let counts: Vec<i64> = (0..6).map(|i| i64::from(row.get::<_, i32>(i))).collect();
        let sent = [
            event.prompt_tokens,
            event.completion_tokens,
            event.total_tokens,
            event.cached_prompt_tokens,
            event.cache_write_tokens,
            event.reasoning_tokens,
        ]
        .map(i64::from);
        assert_eq!(counts, sent, "{name}: counts stored exactly");
        assert_eq!(row.get::<_, String>(6), event.tenant_id, "{name}");
        assert_eq!(row.get::<_, String>(7), event.model, "{name}");
        let labels: BTreeMap<String, String> =
            serde_json::from_str(&row.get::<_, String>(8)).expect("labels");
        assert_eq!(labels, event.labels, "{name}: labels stored exactly");
    }
    // Both sides of the boundaries were exercised.
    assert!(accepted.len() >= 30, "{} accepted", accepted.len());
    assert!(
        boundary_cases().len() - accepted.len() >= 20,
        "{} refused",
        boundary_cases().len() - accepted.len()
    );
}
