//! Untrusted input end to end: what clients and other producers can put in front of the real
//! gateway and processor, and what they must not achieve. Scenarios that store events end with
//! `check_ledger` (docs/design.md, "Guarantees and failure modes").
//!
//! - `duplicates_and_conflicts`: client retries with the same `(id, created_at)` are absorbed;
//!   the same key with other content is detected, counted and dead-lettered, never merged.
//! - `poison_on_the_topic`: garbage, a wrong schema version and well-formed events that break
//!   the rules, produced straight onto every partition between valid traffic: each dead-lettered
//!   with its reason, and every partition keeps moving.
//! - `hostile_http_requests`: thousands of seeded malformed, oversized, deeply nested, wrongly
//!   typed, negative, overflowing, non-UTF-8 and unicode-trick requests against the real
//!   gateway: each a 4xx with a JSON message, no 5xx, no crash, nothing on the topic.
//! - `tenant_isolation`: a tenant key cannot write for, read the budget status of, or manage
//!   the budgets of another tenant; keys never reach logs or metrics.
//! - `a_tenant_key_cannot_lower_its_bill`: a tenant key's `estimated_cost` (even "0") and
//!   `created_at` older than its lateness are refused whole; the price book prices what it may
//!   send; service and admin keys still send their own cost and backfill.
//! - `same_key_under_two_tenants`: idempotency keys are per tenant; another tenant sending the
//!   same `(id, created_at)` first neither displaces nor dead-letters a tenant's own event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::ledger_check::{
    check_ledger, rfc3339, tenth_nanos, text_rows, unix_now, wait_for_rows, CounterEvidence,
    Expected, Ledger, Rng,
};
use e2e::usage::{
    hash_key, http_client, Gateway, Processor, Services, UsageClient, DLQ_TOPIC, USAGE_TOPIC,
};
use e2e::{header_strings, wait_for, wait_for_some};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTITIONS: i32 = 3;
const STARTUP: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(90);

/// Every record on `topic` (key, value, headers), read partition by partition from the start
/// without a consumer group, until `expected` are read or `quiet` passes without a new one.
async fn read_topic(
    services: &Services,
    topic: &str,
    partitions: i32,
    expected: usize,
    quiet: Duration,
) -> Vec<(Option<Vec<u8>>, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = services
        .broker
        .client_config()
        .set("group.id", "untrusted-input-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let mut last_new = std::time::Instant::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while records.len() < expected
            && last_new.elapsed() < quiet
            && std::time::Instant::now() < deadline
        {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let headers = header_strings(&message);
                records.push((message.payload().map(<[u8]>::to_vec), headers));
                last_new = std::time::Instant::now();
            }
        }
        records
    })
    .await
    .expect("topic reader")
}

/// Scenario 5: retries of the same `(id, created_at)` count once; the same key with different
/// content (in a later request, or twice in one request) is a conflict: counted, dead-lettered
/// with the stored and the new content hash, and the stored row keeps its first content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_conflicts() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("duplicates_and_conflicts");
    let tenants = ["acme", "globex", "initech"];
    let deadline = Duration::from_secs(30);

    let originals: Vec<Expected> = (0..60)
        .map(|_| Expected::random(&mut rng, &tenants))
        .collect();
    for chunk in originals.chunks(20) {
        client
            .send_until_accepted(chunk, deadline)
            .await
            .expect("202");
    }
    // Three retries of every request, as a client that lost the answers would send.
    for _ in 0..3 {
        for chunk in originals.chunks(20) {
            client
                .send_until_accepted(chunk, deadline)
                .await
                .expect("202");
        }
    }
    // The same event twice in one request.
    let twice = Expected::random(&mut rng, &tenants);
    client
        .send_until_accepted(&[twice.clone(), twice.clone()], deadline)
        .await
        .expect("202");
    let expected_duplicates = 3 * originals.len() + 1;

    // Conflicting reuse: same id and created_at, other content. The gateway cannot know; it
    // appends them (202), and the processor must refuse to merge them.
    let mut conflicting: Vec<Expected> = originals
        .iter()
        .step_by(6)
        .map(|original| Expected {
            prompt: original.prompt + 1,
            ..original.clone()
        })
        .collect();
    for (n, event) in conflicting.iter_mut().enumerate() {
        if n % 2 == 1 {
            // a different model, tenant unchanged
            event.prompt -= 1;
            event.model = "gpt-4o-mini-2024-07-18".into();
        }
    }
    client
        .send_until_accepted(&conflicting, deadline)
        .await
        .expect("202");
    // A conflict inside one request: the first occurrence is stored, the second refused.
    let first = Expected::random(&mut rng, &tenants);
    let second = Expected {
        completion: first.completion + 7,
        ..first.clone()
    };
    client
        .send_until_accepted(&[first.clone(), second], deadline)
        .await
        .expect("202");
    let expected_conflicts = conflicting.len() + 1;
    // The conflicting copies retried again are still conflicts, never duplicates of each other.
    client
        .send_until_accepted(&conflicting[..2], deadline)
        .await
        .expect("202");
    let expected_conflicts = expected_conflicts + 2;

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let counters = wait_for_some(CATCH_UP, || async {
        processor
            .scrape()
            .await
            .filter(|c| c.conflicts as usize >= expected_conflicts)
    })
    .await
    .expect("the processor counted the conflicts");
    assert_eq!(
        counters.duplicates as usize, expected_duplicates,
        "duplicates"
    );
    assert_eq!(counters.conflicts as usize, expected_conflicts, "conflicts");
    assert_eq!(
        counters.dead_lettered.get("conflict").copied().unwrap_or(0) as usize,
        expected_conflicts,
        "conflicts dead-lettered"
    );

    let letters = read_topic(
        &services,
        DLQ_TOPIC,
        1,
        expected_conflicts,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        letters.len(),
        expected_conflicts,
        "dead letters: {letters:?}"
    );
    for (payload, headers) in &letters {
        assert_eq!(headers.get("error").map(String::as_str), Some("conflict"));
        let detail = headers.get("error_detail").cloned().unwrap_or_default();
        assert!(detail.contains("is stored with content sha256"), "{detail}");
        let value: Value = serde_json::from_slice(payload.as_deref().unwrap_or_default())
            .expect("the dead letter carries the original record");
        let id = value["id"].as_str().unwrap_or_default();
        assert!(
            conflicting.iter().any(|c| c.id == id) || id == first.id,
            "unexpected dead letter {value}"
        );
    }
    check_ledger(
        &db,
        &ledger,
        &CounterEvidence {
            complete: vec![counters],
            ..CounterEvidence::default()
        },
    )
    .await;
}

/// A record for the topic: payload, `schema` header, the dead-letter reason it must get.
type Poison = (Option<Vec<u8>>, Option<&'static str>, &'static str);

/// A usage event in its Kafka form (the serde form of `ledger::UsageEvent`).
fn kafka_form(event: &Expected) -> Value {
    json!({
        "id": event.id,
        "created_at": rfc3339(event.created_at),
        "tenant_id": event.tenant,
        "provider": event.provider,
        "model": event.model,
        "prompt_tokens": event.prompt,
        "completion_tokens": event.completion,
        "total_tokens": event.total(),
        "estimated_cost": format!("{}.{:06}", event.cost_micros / 1_000_000, event.cost_micros % 1_000_000),
        "received_at": rfc3339(unix_now()),
    })
}

/// Scenario 6: poison produced straight onto every partition, between valid traffic through
/// the gateway: each record dead-lettered with its reason (undecodable, schema, invalid), the
/// dead-letter counter exact, and every partition's stored offset moves past its poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_on_the_topic() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("poison_on_the_topic");
    let tenants = ["acme", "globex", "initech", "umbrella"];
    let deadline = Duration::from_secs(30);
    let send_valid = |rng: &mut Rng| {
        let events: Vec<Expected> = (0..25).map(|_| Expected::random(rng, &tenants)).collect();
        let client = client.clone();
        async move {
            client
                .send_until_accepted(&events, deadline)
                .await
                .expect("202")
        }
    };
    send_valid(&mut rng).await;

    let valid = |rng: &mut Rng| kafka_form(&Expected::random(rng, &tenants));
    let with = |mut value: Value, field: &str, new: Value| {
        value[field] = new;
        serde_json::to_vec(&value).expect("json")
    };
    // (payload, schema header, expected reason)
    let mut poison: Vec<Poison> = vec![
        (
            Some(b"\x00\xff not json at all".to_vec()),
            None,
            "undecodable",
        ),
        (None, None, "undecodable"),
        (Some(br#"{"hello":"world"}"#.to_vec()), None, "undecodable"),
        (Some(b"[1,2,3]".to_vec()), None, "undecodable"),
        (
            Some(with(valid(&mut rng), "prompt_tokens", json!(-5))),
            None,
            "undecodable",
        ),
        (
            Some(with(valid(&mut rng), "colour", json!("blue"))),
            None,
            "undecodable",
        ),
        (Some(b"{\"id\":\"\xff\xfe\"}".to_vec()), None, "undecodable"),
    ];
    let truncated = serde_json::to_vec(&valid(&mut rng)).expect("json");
    poison.push((
        Some(truncated[..truncated.len() / 2].to_vec()),
        None,
        "undecodable",
    ));
    let future_schema = serde_json::to_vec(&valid(&mut rng)).expect("json");
    poison.push((Some(future_schema), Some("usage.v2"), "schema"));
    poison.push((
        Some(with(
            valid(&mut rng),
            "id",
            json!("00000000-0000-0000-0000-000000000000"),
        )),
        Some("usage.v1"),
        "invalid",
    ));
    poison.push((
        Some(with(valid(&mut rng), "tenant_id", json!("acme\u{200b}"))),
        None,
        "invalid",
    ));
    poison.push((
        Some(with(valid(&mut rng), "provider", json!("Open AI"))),
        None,
        "invalid",
    ));
    poison.push((
        Some(with(valid(&mut rng), "estimated_cost", json!("-1.5"))),
        None,
        "invalid",
    ));
    let mut too_big = valid(&mut rng);
    too_big["prompt_tokens"] = json!(3_000_000_000u64);
    too_big["completion_tokens"] = json!(0);
    too_big["total_tokens"] = json!(3_000_000_000u64);
    poison.push((
        Some(serde_json::to_vec(&too_big).expect("json")),
        None,
        "invalid",
    ));
    let mut reasoning = valid(&mut rng);
    reasoning["reasoning_tokens"] = json!(reasoning["completion_tokens"].as_i64().unwrap_or(0) + 1);
    poison.push((
        Some(serde_json::to_vec(&reasoning).expect("json")),
        None,
        "invalid",
    ));

    let producer: FutureProducer = services.broker.client_config().create().expect("producer");
    let mut expected_reasons: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_poison: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for (payload, schema, reason) in &poison {
            let mut record = FutureRecord::<str, [u8]>::to(USAGE_TOPIC)
                .partition(partition)
                .key("acme");
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(schema) = schema {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "schema",
                    value: Some(*schema),
                }));
            }
            let delivered = producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(error, _)| error)
                .expect("the broker takes the poison");
            last_poison.insert(delivered.partition, delivered.offset);
            *expected_reasons.entry((*reason).to_owned()).or_default() += 1;
        }
        send_valid(&mut rng).await;
    }
    // A valid event produced straight onto the topic lands like the gateway's.
    let direct = Expected::random(&mut rng, &tenants);
    producer
        .send(
            FutureRecord::<str, [u8]>::to(USAGE_TOPIC)
                .key(direct.tenant.as_str())
                .payload(
                    serde_json::to_vec(&kafka_form(&direct))
                        .expect("json")
                        .as_slice(),
                ),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("the broker takes the event");
    ledger.acknowledge(std::slice::from_ref(&direct));
    for _ in 0..3 {
        send_valid(&mut rng).await;
    }

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    let total_poison = poison.len() * PARTITIONS as usize;
    let counters = wait_for_some(CATCH_UP, || async {
        processor
            .scrape()
            .await
            .filter(|c| c.dead_lettered.values().sum::<i64>() as usize >= total_poison)
    })
    .await
    .expect("the processor counted the dead letters");
    let counted: BTreeMap<String, i64> = counters
        .dead_lettered
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(counted, expected_reasons, "dead letters by reason");

    let letters = read_topic(
        &services,
        DLQ_TOPIC,
        1,
        total_poison,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(letters.len(), total_poison);
    let mut by_partition_reason: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, headers) in &letters {
        assert!(
            !headers.get("error_detail").is_none_or(String::is_empty),
            "a dead letter without a detail: {headers:?}"
        );
        *by_partition_reason
            .entry((
                headers.get("source_partition").cloned().unwrap_or_default(),
                headers.get("error").cloned().unwrap_or_default(),
            ))
            .or_default() += 1;
    }
    for partition in 0..PARTITIONS {
        for (reason, count) in &expected_reasons {
            assert_eq!(
                by_partition_reason
                    .get(&(partition.to_string(), reason.clone()))
                    .copied()
                    .unwrap_or(0) as i64,
                count / i64::from(PARTITIONS),
                "partition {partition}, reason {reason}: {by_partition_reason:?}"
            );
        }
    }
    // Every partition moved past its poison: valid events behind it landed (check_ledger) and
    // the stored offsets cover every record on the partition.
    let stored: Vec<(i32, i64)> = db
        .query(
            "SELECT partition, next_offset FROM ingest_offsets WHERE topic = $1 ORDER BY partition",
            &[&USAGE_TOPIC],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(stored.len(), PARTITIONS as usize, "{stored:?}");
    for (partition, next_offset) in &stored {
        let poison_offset = last_poison.get(partition).copied().unwrap_or(i64::MAX);
        assert!(
            *next_offset > poison_offset,
            "partition {partition} stopped at {next_offset}, its last poison is at {poison_offset}"
        );
    }
    check_ledger(
        &db,
        &ledger,
        &CounterEvidence {
            complete: vec![counters],
            ..CounterEvidence::default()
        },
    )
    .await;
}

const MAX_BODY_BYTES: usize = 256 * 1024;

/// JSON strings whose bytes are not UTF-8 (invalid, overlong, a surrogate, a lone continuation).
const NON_UTF8_VALUES: [&[u8]; 4] = [
    b"\"ac\xffme\"",
    b"\"\xc0\xaf\"",
    b"\"\xed\xa0\x80\"",
    b"\"a\x80\"",
];

/// Bodies that are not a usage event or a batch of them.
const NOT_A_BATCH: [&[u8]; 10] = [
    b"[]",
    b"1",
    b"\"event\"",
    b"null",
    b"true",
    b"[1]",
    b"[[]]",
    b"{}",
    b"   ",
    b"",
];

/// One hostile request: its kind (for the report), method, path, headers and body.
#[derive(Debug, Clone)]
struct Hostile {
    kind: &'static str,
    method: reqwest::Method,
    path: &'static str,
    content_type: Option<&'static str>,
    key: Option<String>,
    body: Vec<u8>,
}

/// Replaces the first `"field": <value>` of a serialized event with `"field": <raw>`.
fn with_raw(event: &Value, field: &str, raw: &[u8]) -> Vec<u8> {
    let mut event = event.clone();
    event[field] = json!("__RAW__");
    let text = serde_json::to_vec(&event).expect("json");
    let marker = b"\"__RAW__\"";
    let at = text
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker");
    [&text[..at], raw, &text[at + marker.len()..]].concat()
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> Vec<u8> {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth)).into_bytes()
}

/// A request the gateway must refuse with a 4xx: every generated case is invalid by the event
/// contract or the HTTP rules (nothing here may be a valid event in disguise).
fn hostile(rng: &mut Rng, key: &str, other_key_tenant: &str) -> Hostile {
    let event = Expected::random(rng, &["acme"]).json();
    let numeric = [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_prompt_tokens",
        "reasoning_tokens",
    ];
    let identifiers = ["tenant_id", "model", "user_id"];
    let mut request = Hostile {
        kind: "",
        method: reqwest::Method::POST,
        path: "/v1/usage",
        content_type: Some("application/json"),
        key: Some(key.to_owned()),
        body: Vec::new(),
    };
    let batch = |event: &Value| serde_json::to_vec(&json!([event])).expect("json");
    let (kind, body): (&'static str, Vec<u8>) = match rng.range(0, 20) {
        0 => {
            let text = batch(&event);
            let cut = rng.range(1, text.len() as u64 - 1) as usize;
            ("truncated", text[..cut].to_vec())
        }
        1 => {
            let len = rng.range(1, 2_000) as usize;
            (
                "random_bytes",
                (0..len).map(|_| rng.next_u64() as u8).collect(),
            )
        }
        2 => {
            let field = *rng.pick(&identifiers);
            let raw = *rng.pick(&NON_UTF8_VALUES);
            ("non_utf8", with_raw(&event, field, raw))
        }
        3 => {
            let depth = *rng.pick(&[129usize, 1_000, 20_000, 200_000]);
            let body = match rng.range(0, 3) {
                0 => nested(depth, "[", "]", ""),
                1 => nested(depth, "{\"a\":", "}", "1"),
                _ => with_raw(&event, "labels", &nested(depth, "{\"k\":", "}", "\"v\"")),
            };
            ("deep_nesting", body)
        }
        4 => {
            let size = MAX_BODY_BYTES + rng.range(1, 200_000) as usize;
            let mut body = b"[".to_vec();
            body.resize(size - 1, b' ');
            body.push(b']');
            ("oversized", body)
        }
        5 | 6 => {
            let field = *rng.pick(&numeric);
            let raw = *rng.pick(&[
                &b"\"12\""[..],
                b"1.5",
                b"true",
                b"null",
                b"[]",
                b"{}",
                b"-1",
                b"-4294967296",
                b"4294967296",
                b"18446744073709551616",
                b"1e400",
                b"99999999999999999999999999999",
                b"1e2",
                b"NaN",
                b"0x10",
                b"+5",
                b"05",
            ]);
            // null is "absent" for the optional counts; only the required ones must refuse it
            let field = if raw == b"null" {
                "prompt_tokens"
            } else {
                field
            };
            ("wrong_number", with_raw(&event, field, raw))
        }
        7 | 8 => {
            let field = *rng.pick(&identifiers);
            let value = rng
                .pick(&[
                    json!(42),
                    json!(null),
                    json!(""),
                    json!(" acme"),
                    json!("acme "),
                    json!("ac\u{200b}me"),
                    json!("\u{202e}emca"),
                    json!("a\u{0000}b"),
                    json!("a\nb"),
                    json!("\u{feff}acme"),
                    json!("x".repeat(5_000)),
                    json!(["acme"]),
                    json!({"tenant": "acme"}),
                ])
                .clone();
            // null is "absent" for the optional user_id
            let field = if value.is_null() { "tenant_id" } else { field };
            (
                "bad_identifier",
                with_raw(&event, field, &serde_json::to_vec(&value).expect("json")),
            )
        }
        9 => {
            let (field, value) = rng
                .pick(&[
                    ("id", json!("not-a-uuid")),
                    ("id", json!("00000000-0000-0000-0000-000000000000")),
                    ("id", json!("ffffffff-ffff-ffff-ffff-ffffffffffff")),
                    ("id", json!(12345)),
                    ("created_at", json!("yesterday")),
                    ("created_at", json!("2026-13-01T00:00:00Z")),
                    ("created_at", json!("2999-01-01T00:00:00Z")),
                    ("created_at", json!("1999-01-01T00:00:00Z")),
                    ("created_at", json!(1_700_000_000)),
                    ("provider", json!("open ai")),
                    ("provider", json!("openai\u{200b}")),
                    ("provider", json!("")),
                    ("provider", json!("ｏｐｅｎａｉ")),
                ])
                .clone();
            let mut event = event.clone();
            event[field] = value;
            ("bad_field", batch(&event))
        }
        10 => {
            let value = rng
                .pick(&[
                    json!("-0.01"),
                    json!("abc"),
                    json!(0.01),
                    json!("0.00000000001"),
                    json!("1000000000"),
                    json!(""),
                    json!(true),
                ])
                .clone();
            let mut event = event.clone();
            event["estimated_cost"] = value;
            ("bad_cost", batch(&event))
        }
        11 => {
            let labels = rng
                .pick(&[
                    json!("team-a"),
                    json!({"k": 1}),
                    json!({"bad key!": "v"}),
                    json!({"k": "v\u{200b}"}),
                    json!({"k": "v\u{0007}"}),
                    json!({"": "v"}),
                    json!((0..40)
                        .map(|n| (format!("k{n}"), json!("v")))
                        .collect::<serde_json::Map<_, _>>()),
                ])
                .clone();
            let mut event = event.clone();
            event["labels"] = labels;
            ("bad_labels", batch(&event))
        }
        12 => {
            let body = *rng.pick(&NOT_A_BATCH);
            ("shape", body.to_vec())
        }
        13 => {
            let many: Vec<Value> = (0..1_001).map(|_| json!({"x": 1})).collect();
            ("too_many", serde_json::to_vec(&many).expect("json"))
        }
        14 => {
            let mut events: Vec<Value> = (0..rng.range(1, 20))
                .map(|_| Expected::random(rng, &["acme"]).json())
                .collect();
            let mut bad = Expected::random(rng, &["acme"]).json();
            bad["completion_tokens"] = json!(-3);
            let at = rng.range(0, events.len() as u64 + 1) as usize;
            events.insert(at, bad);
            ("all_or_nothing", serde_json::to_vec(&events).expect("json"))
        }
        15 => {
            let mut event = event.clone();
            if rng.chance(1, 2) {
                event["colour"] = json!("blue");
            } else {
                event["tenant_id\u{200b}"] = event["tenant_id"].clone();
            }
            ("unknown_field", batch(&event))
        }
        16 => {
            request.content_type = *rng.pick(&[
                None,
                Some("text/plain"),
                Some("application/xml"),
                Some("application/jsonp"),
                Some("multipart/form-data"),
            ]);
            ("content_type", batch(&event))
        }
        17 => {
            request.key = rng
                .pick(&[
                    None,
                    Some("wrong-key-0123456789".to_owned()),
                    Some(String::new()),
                    Some(format!("{key}x")),
                ])
                .clone();
            ("auth", batch(&event))
        }
        18 => {
            let mut event = event.clone();
            event["tenant_id"] = json!(other_key_tenant);
            ("foreign_tenant", batch(&event))
        }
        _ => {
            let mut body = b"\xef\xbb\xbf".to_vec();
            body.extend(batch(&event));
            ("bom", body)
        }
    };
    request.kind = kind;
    request.body = body;
    request
}

/// Status and body, or why there was no answer.
type Answer = Result<(u16, Vec<u8>), String>;

async fn send_hostile(http: &reqwest::Client, url: &str, request: &Hostile) -> Answer {
    let mut builder = http
        .request(request.method.clone(), url)
        .body(request.body.clone());
    if let Some(content_type) = request.content_type {
        builder = builder.header("content-type", content_type);
    }
    if let Some(key) = &request.key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            Ok((status, body))
        }
        Err(error) => Err(format!("{error:?}")),
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Sends raw bytes on a new connection and returns the status line's code, if any answer came.
async fn raw_http(addr: &str, bytes: &[u8]) -> Option<u16> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = socket.write_all(bytes).await;
    let _ = socket.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Scenario 7: thousands of hostile requests against the real gateway binary over a socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_requests() {
    const REQUESTS: usize = 3_000;
    let services = Services::start(PARTITIONS).await;
    let acme_key = "hostile-acme-key-0123456789abcdef";
    let globex_key = "hostile-globex-key-0123456789abcdef";
    let config = format!(
        "[[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"globex\"\n",
        hash_key(acme_key),
        hash_key(globex_key)
    );
    let max_body = MAX_BODY_BYTES.to_string();
    let mut gateway = Gateway::start(
        "gateway",
        &services.brokers,
        &config,
        &[("TOKENLEDGER_HTTP__MAX_BODY_BYTES", max_body.as_str())],
        true,
    )
    .await;
    let mut rng = Rng::from_env("hostile_http_requests");
    let requests: Vec<Hostile> = (0..REQUESTS)
        .map(|_| hostile(&mut rng, acme_key, "globex"))
        .collect();
    let http = http_client();
    let started = Instant::now();
    let answers: Vec<(Hostile, Answer)> =
        futures::stream::iter(requests.into_iter().map(|request| {
            let http = http.clone();
            let url = format!("{}{}", gateway.url, request.path);
            async move {
                // A refusal before the body was read (401, 413, 415) closes the connection;
                // a request racing that close on a reused connection gets no answer and is
                // sent again once on a fresh connection, as an HTTP client would.
                let mut answer = send_hostile(&http, &url, &request).await;
                if answer.is_err() {
                    answer = send_hostile(&fresh_client(), &url, &request).await;
                }
                (request, answer)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut by_kind: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    for (request, answer) in &answers {
        match answer {
            Ok((status, body)) => {
                *by_kind
                    .entry(request.kind)
                    .or_default()
                    .entry(*status)
                    .or_default() += 1;
                let message = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if !(400..500).contains(status) || message.trim().is_empty() {
                    failures.push(format!(
                        "{}: {status} {:?} for {:?}",
                        request.kind,
                        String::from_utf8_lossy(&body[..body.len().min(300)]),
                        String::from_utf8_lossy(&request.body[..request.body.len().min(600)])
                    ));
                }
            }
            Err(error) => failures.push(format!("{}: no answer ({error})", request.kind)),
        }
    }
    eprintln!("hostile_http_requests: {REQUESTS} requests in {elapsed:?}: {by_kind:?}");
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} hostile requests were not a 4xx with a JSON message, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );

    // Protocol-level abuse on raw sockets: a 4xx or a closed connection, never a 5xx or a crash.
    let addr = gateway.url.trim_start_matches("http://").to_owned();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    let chunked_oversized = format!(
        "POST /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme_key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n{}0\r\n\r\n",
        chunk.repeat(6)
    );
    let short_body = format!(
        "POST /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme_key}\r\n\
         Content-Type: application/json\r\nContent-Length: 500\r\n\r\n[{{\"a\":"
    );
    let huge_header = format!(
        "POST /v1/usage HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(200_000)
    );
    let both_lengths = format!(
        "POST /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme_key}\r\n\
         Content-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let raw_cases: [(&str, Vec<u8>); 6] = [
        ("chunked_oversized", chunked_oversized.into_bytes()),
        ("short_body", short_body.into_bytes()),
        ("huge_header", huge_header.into_bytes()),
        ("both_lengths", both_lengths.into_bytes()),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n".to_vec(),
        ),
        (
            "bad_request_line",
            b"POST  /v1/usage  HTTP/9.9\r\n\r\n".to_vec(),
        ),
    ];
    for (name, bytes) in &raw_cases {
        let status = raw_http(&addr, bytes).await;
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "raw {name}: answered {status:?}"
        );
        if *name == "chunked_oversized" {
            assert_eq!(status, Some(413), "a streamed body over the limit");
        }
    }

    gateway.process.assert_running();
    let metrics = gateway.metrics().await;
    let server_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tokenledger_gateway_requests_total") && l.contains("status=\"5"))
        .collect();
    assert!(server_errors.is_empty(), "5xx answered: {server_errors:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "tokenledger_gateway_events_accepted_total 0"),
        "the gateway accepted events"
    );
    let on_topic = read_topic(
        &services,
        USAGE_TOPIC,
        PARTITIONS,
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(
        on_topic.is_empty(),
        "records reached the topic: {}",
        on_topic.len()
    );
    gateway.wait_ready(Duration::from_secs(5)).await;
}

/// An HTTP call with an optional bearer key; returns status and JSON body (Null if none).
async fn call(method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = http_client().request(method.parse().expect("method"), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_refused(what: &str, (status, body): &(u16, Value), want: u16) {
    assert_eq!(*status, want, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {body}"
    );
}

/// Scenario 8: tenant isolation through the real gateway with keys bound to tenants (allowed
/// their own cost, which every [`Expected`] event carries, so the ledger knows each row's cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation() {
    let services = Services::start(PARTITIONS).await;
    let admin_key = "isolation-admin-key-0123456789abcdef";
    let acme_key = "isolation-acme-key-0123456789abcdef";
    let globex_key = "isolation-globex-key-0123456789abcdef";
    let stranger_key = "isolation-unknown-key-0123456789abcdef";
    let config = format!(
        "[[auth.keys]]\nsha256 = \"{}\"\nadmin = true\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\nallow_caller_cost = true\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"globex\"\nallow_caller_cost = true\n",
        hash_key(admin_key),
        hash_key(acme_key),
        hash_key(globex_key)
    );
    let db_url = services.database.url();
    let mut gateway = Gateway::start(
        "gateway",
        &services.brokers,
        &config,
        &[
            ("TOKENLEDGER_DATABASE__URL", db_url.as_str()),
            ("TOKENLEDGER_LOG", "debug"),
        ],
        true,
    )
    .await;
    let mut processor: Processor = services.processor("processor", &[("TOKENLEDGER_LOG", "debug")]);
    processor.wait_assigned(STARTUP).await;
    let ledger = Ledger::new();
    let acme = UsageClient::new(&gateway.url, &ledger).with_key(acme_key);
    let globex = UsageClient::new(&gateway.url, &ledger).with_key(globex_key);
    let mut rng = Rng::from_env("tenant_isolation");
    let deadline = Duration::from_secs(30);
    for _ in 0..5 {
        let events: Vec<Expected> = (0..20)
            .map(|_| Expected::random(&mut rng, &["acme"]))
            .collect();
        acme.send_until_accepted(&events, deadline)
            .await
            .expect("acme writes acme");
        let events: Vec<Expected> = (0..20)
            .map(|_| Expected::random(&mut rng, &["globex"]))
            .collect();
        globex
            .send_until_accepted(&events, deadline)
            .await
            .expect("globex writes globex");
    }

    // Writing for another tenant: refused whole, nothing appended.
    let usage = format!("{}/v1/usage", gateway.url);
    let foreign = Expected::random(&mut rng, &["globex"]).json();
    let own = Expected::random(&mut rng, &["acme"]).json();
    assert_refused(
        "acme writes globex",
        &call("POST", &usage, Some(acme_key), Some(json!([foreign]))).await,
        403,
    );
    assert_refused(
        "acme writes acme and globex in one batch",
        &call("POST", &usage, Some(acme_key), Some(json!([own, foreign]))).await,
        403,
    );
    for (tenant, want) in [
        ("ACME", 403),
        ("acme ", 400),
        ("ac\u{200b}me", 400),
        ("*", 403),
    ] {
        let mut event = Expected::random(&mut rng, &["acme"]).json();
        event["tenant_id"] = json!(tenant);
        assert_refused(
            &format!("acme writes {tenant:?}"),
            &call("POST", &usage, Some(acme_key), Some(json!([event]))).await,
            want,
        );
    }
    for key in [None, Some(stranger_key), Some("")] {
        assert_refused(
            &format!("write with key {key:?}"),
            &call("POST", &usage, key, Some(json!([own]))).await,
            401,
        );
    }

    // Budget status: own tenant only.
    let status_url = format!("{}/v1/budgets/status", gateway.url);
    assert_refused(
        "acme reads globex's budget status",
        &call(
            "GET",
            &format!("{status_url}?tenant_id=globex"),
            Some(acme_key),
            None,
        )
        .await,
        403,
    );
    assert_refused(
        "no key reads budget status",
        &call("GET", &format!("{status_url}?tenant_id=acme"), None, None).await,
        401,
    );

    // Admin endpoints refuse tenant keys, whatever the method.
    let budgets_url = format!("{}/v1/budgets", gateway.url);
    let (status, listed) = call("GET", &budgets_url, Some(admin_key), None).await;
    assert_eq!(status, 200, "{listed}");
    let some_id = listed["budgets"][0]["id"]
        .as_str()
        .expect("a budget id")
        .to_owned();
    let new_budget = json!({
        "name": "acme-sneaky", "tenant_id": "acme", "period": "monthly", "amount_usd": "1000000"
    });
    let one = format!("{budgets_url}/{some_id}");
    for key in [acme_key, globex_key] {
        for (method, url, body) in [
            ("GET", budgets_url.as_str(), None),
            ("POST", budgets_url.as_str(), Some(new_budget.clone())),
            ("GET", one.as_str(), None),
            ("PUT", one.as_str(), Some(new_budget.clone())),
            ("DELETE", one.as_str(), None),
        ] {
            assert_refused(
                &format!("tenant key {method} {url}"),
                &call(method, url, Some(key), body).await,
                403,
            );
        }
    }
    let (status, after) = call("GET", &budgets_url, Some(admin_key), None).await;
    assert_eq!(
        (status, &after),
        (200, &listed),
        "tenant keys changed the budgets"
    );

    let db = services.database.client().await;
    wait_for_rows(&db, ledger.len(), CATCH_UP).await;
    // acme's status shows acme's spend only: the monthly budget equals acme's month in the table.
    let (status, own_status) = call("GET", &status_url, Some(acme_key), None).await;
    assert_eq!(status, 200, "{own_status}");
    assert_eq!(own_status["tenant_id"], "acme");
    let monthly = own_status["budgets"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "faults-monthly"))
        .cloned()
        .expect("the monthly budget applies to acme");
    let period_start = monthly["period_start"]
        .as_str()
        .expect("period_start")
        .to_owned();
    let period_end = monthly["period_end"]
        .as_str()
        .expect("period_end")
        .to_owned();
    let row = e2e::ledger_check::text_rows(
        &db,
        &format!(
            "SELECT COALESCE(sum(estimated_cost), 0)::text FROM gateway_mode_audit
             WHERE tenant_id = 'acme' AND created_at >= '{period_start}' AND created_at < '{period_end}'"
        ),
    )
    .await;
    let acme_spend = e2e::ledger_check::tenth_nanos(row[0][0].as_deref().unwrap_or("0"));
    let shown = e2e::ledger_check::tenth_nanos(monthly["spend_usd"].as_str().unwrap_or("0"));
    assert_eq!(
        shown, acme_spend,
        "acme's status shows acme's spend: {monthly}"
    );

    // Keys never reach logs or metrics.
    let texts = [
        ("gateway log", gateway.process.log_contents()),
        ("processor log", processor.process.log_contents()),
        ("gateway metrics", gateway.metrics().await),
        (
            "processor metrics",
            e2e::usage::http_client()
                .get(format!("{}/metrics", processor.metrics_url))
                .send()
                .await
                .expect("processor metrics")
                .text()
                .await
                .unwrap_or_default(),
        ),
    ];
    for (what, text) in &texts {
        assert!(!text.is_empty(), "{what} is empty");
        for key in [admin_key, acme_key, globex_key, stranger_key] {
            assert!(!text.contains(key), "{what} contains an API key");
            assert!(
                !text.contains(&key[..20]),
                "{what} contains part of an API key"
            );
        }
    }
    gateway.process.assert_running();
    let evidence = CounterEvidence {
        complete: vec![processor.final_scrape().await],
        ..CounterEvidence::default()
    };
    check_ledger(&db, &ledger, &evidence).await;
}

/// Scenario 9: a tenant key cannot lower its own bill through the real gateway and processor:
/// `estimated_cost` (even "0") and a `created_at` further back than its lateness (6 hours by
/// default) are refused whole and nothing of those batches is stored; what it may send is priced
/// from the price book. A service key of the same tenant and an admin key still send their own
/// cost and backfill days back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_cannot_lower_its_bill() {
    let services = Services::start(PARTITIONS).await;
    let tenant_key = "bill-acme-tenant-key-0123456789abcdef";
    let service_key = "bill-acme-service-key-0123456789abcdef";
    let admin_key = "bill-admin-key-0123456789abcdef";
    // The tenant key in the form keys had before kinds existed: tenant_id alone.
    let config = format!(
        "[[auth.keys]]\nsha256 = \"{}\"\ntenant_id = \"acme\"\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\nkind = \"service\"\ntenant_id = \"acme\"\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\nadmin = true\n",
        hash_key(tenant_key),
        hash_key(service_key),
        hash_key(admin_key)
    );
    let mut gateway = Gateway::start("gateway", &services.brokers, &config, &[], true).await;
    let mut processor: Processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let usage = format!("{}/v1/usage", gateway.url);
    let mut rng = Rng::from_env("a_tenant_key_cannot_lower_its_bill");
    // A priced model and known token counts, dated `ago_secs` back, with or without a cost.
    let mut event = |ago_secs: i64, cost: Option<&str>| {
        let mut event = json!({
            "id": rng.uuid(),
            "created_at": rfc3339(unix_now() - ago_secs),
            "tenant_id": "acme",
            "provider": "openai",
            "model": "gpt-4o",
            "prompt_tokens": 100_000,
            "completion_tokens": 10_000,
        });
        if let Some(cost) = cost {
            event["estimated_cost"] = json!(cost);
        }
        event
    };
    const DAY: i64 = 24 * 60 * 60;

    let refused_cost = json!([
        event(60, None),
        event(60, Some("0")),
        event(60, Some("0.000001"))
    ]);
    let (status, body) = call("POST", &usage, Some(tenant_key), Some(refused_cost.clone())).await;
    assert_refused(
        "tenant key sends estimated_cost",
        &(status, body.clone()),
        403,
    );
    assert_eq!(body["error"], "caller_cost_not_allowed", "{body}");
    let indexes: Vec<u64> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            assert_eq!(e["field"], "estimated_cost", "{e}");
            e["index"].as_u64().expect("index")
        })
        .collect();
    assert_eq!(indexes, vec![1, 2], "{body}");

    let refused_late = json!([event(60, None), event(2 * DAY, None)]);
    let (status, body) = call("POST", &usage, Some(tenant_key), Some(refused_late.clone())).await;
    assert_refused(
        "tenant key backdates two days",
        &(status, body.clone()),
        400,
    );
    assert_eq!(body["error"], "too_late", "{body}");
    assert_eq!(body["max_lateness_ms"], 6 * 60 * 60 * 1000, "{body}");
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    assert_eq!(body["errors"][0]["field"], "created_at", "{body}");

    let own = event(60, None);
    let service = event(2 * DAY, Some("0.25"));
    let admin = event(20 * DAY, Some("0.5"));
    for (key, event) in [
        (tenant_key, &own),
        (service_key, &service),
        (admin_key, &admin),
    ] {
        let (status, body) = call("POST", &usage, Some(key), Some(json!([event]))).await;
        assert_eq!(status, 202, "{body}");
    }

    let db = services.database.client().await;
    wait_for_rows(&db, 3, CATCH_UP).await;
    let rows = e2e::ledger_check::text_rows(
        &db,
        "SELECT id::text, estimated_cost::text, pricing_status FROM gateway_mode_audit",
    )
    .await;
    let stored: BTreeMap<String, (String, String)> = rows
        .into_iter()
        .map(|row| {
            let text = |i: usize| row[i].clone().unwrap_or_default();
            (text(0), (text(1), text(2)))
        })
        .collect();
    let id = |event: &Value| event["id"].as_str().expect("id").to_owned();
    for refused in refused_cost
        .as_array()
        .into_iter()
        .chain(refused_late.as_array())
        .flatten()
    {
        assert!(
            !stored.contains_key(&id(refused)),
            "an event of a refused batch was stored: {refused}"
        );
    }
    assert_eq!(stored.len(), 3, "{stored:?}");
    let (cost, status) = &stored[&id(&own)];
    assert_eq!(
        status, "priced",
        "the tenant key's event is priced from the price book"
    );
    assert!(
        e2e::ledger_check::tenth_nanos(cost) > 0,
        "100k prompt and 10k completion tokens of gpt-4o cost something: {cost}"
    );
    for (event, want) in [(&service, "0.25"), (&admin, "0.5")] {
        let (cost, status) = &stored[&id(event)];
        assert_eq!(status, "provided", "{event}");
        assert_eq!(
            e2e::ledger_check::tenth_nanos(cost),
            e2e::ledger_check::tenth_nanos(want),
            "{event}"
        );
    }

    let metrics = gateway.metrics().await;
    for expected in [
        "tokenledger_gateway_events_rejected_total{reason=\"caller_cost\"} 3",
        "tokenledger_gateway_events_rejected_total{reason=\"too_late\"} 2",
        "tokenledger_gateway_events_accepted_total 3",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
    gateway.process.assert_running();
    processor.process.assert_running();
    gateway.wait_ready(Duration::from_secs(5)).await;
}

/// Scenario 9: idempotency keys are per tenant. Tenant B sends an event with tenant A's id and
/// `created_at` before A does (guessed, copied from a shared log, or by chance); A's own event
/// must still be stored and counted in A's rollups, budget spend and counters, not dead-lettered
/// as a conflict. The same holds inside one request. A conflict within one tenant is still a
/// conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_under_two_tenants() {
    let services = Services::start(PARTITIONS).await;
    let gateway = services.gateway("gateway", &[]).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(STARTUP).await;
    let ledger = Ledger::new();
    let client = UsageClient::new(&gateway.url, &ledger);
    let mut rng = Rng::from_env("same_key_under_two_tenants");
    let deadline = Duration::from_secs(30);
    let db = services.database.client().await;
    let stored_under = |id: String| {
        let db = &db;
        async move {
            text_rows(
                db,
                &format!(
                    "SELECT tenant_id, prompt_tokens FROM gateway_mode_audit \
                     WHERE id = '{id}' ORDER BY tenant_id"
                ),
            )
            .await
        }
    };

    // Large costs, so that both tenants cross thresholds of the test budgets.
    let acme = Expected {
        tenant: "acme".into(),
        cost_micros: 120_000,
        ..Expected::random(&mut rng, &["acme"])
    };
    let globex = Expected {
        tenant: "globex".into(),
        prompt: acme.prompt + 11,
        cost_micros: 70_000,
        ..acme.clone()
    };
    client
        .send_until_accepted(std::slice::from_ref(&globex), deadline)
        .await
        .expect("202");
    let globex_first = wait_for(CATCH_UP, || async {
        !stored_under(globex.id.clone()).await.is_empty()
    })
    .await;
    assert!(globex_first, "globex's event was stored first");
    client
        .send_until_accepted(std::slice::from_ref(&acme), deadline)
        .await
        .expect("202");

    // The same key for two tenants inside one request (one batch).
    let initech = Expected {
        tenant: "initech".into(),
        cost_micros: 90_000,
        ..Expected::random(&mut rng, &["initech"])
    };
    let umbrella = Expected {
        tenant: "umbrella".into(),
        completion: initech.completion + 3,
        ..initech.clone()
    };
    client
        .send_until_accepted(&[initech.clone(), umbrella.clone()], deadline)
        .await
        .expect("202");

    // Within one tenant the key still identifies one event: other content is a conflict.
    let globex_conflict = Expected {
        prompt: globex.prompt + 1,
        ..globex.clone()
    };
    client
        .send_until_accepted(std::slice::from_ref(&globex_conflict), deadline)
        .await
        .expect("202");
    // Traffic around it, so the rows share batches and buckets with others.
    let others: Vec<Expected> = (0..30)
        .map(|_| Expected::random(&mut rng, &["acme", "globex", "initech", "umbrella"]))
        .collect();
    client
        .send_until_accepted(&others, deadline)
        .await
        .expect("202");

    // Every record sent is either inserted or a conflict; wait until all are accounted for.
    let acknowledged = ledger.len();
    let counters = wait_for_some(CATCH_UP, || async {
        processor
            .scrape()
            .await
            .filter(|c| (c.inserted + c.conflicts) as usize > acknowledged)
    })
    .await
    .expect("the processor handled every record");
    assert_eq!(
        stored_under(acme.id.clone()).await,
        vec![
            vec![Some("acme".to_owned()), Some(acme.prompt.to_string())],
            vec![Some("globex".to_owned()), Some(globex.prompt.to_string())],
        ],
        "one id, two tenants: two events, each with its own content"
    );
    assert_eq!(
        stored_under(initech.id.clone()).await,
        vec![
            vec![Some("initech".to_owned()), Some(initech.prompt.to_string())],
            vec![
                Some("umbrella".to_owned()),
                Some(umbrella.prompt.to_string())
            ],
        ],
        "one id, two tenants in one batch: two events"
    );
    assert_eq!(counters.inserted as usize, acknowledged, "inserted");
    assert_eq!(
        counters.conflicts, 1,
        "only globex's own reuse is a conflict"
    );
    assert_eq!(
        counters.dead_lettered.get("conflict").copied().unwrap_or(0),
        1,
        "conflicts dead-lettered"
    );
    let letters = read_topic(&services, DLQ_TOPIC, 1, 2, Duration::from_secs(5)).await;
    assert_eq!(letters.len(), 1, "dead letters: {letters:?}");
    let letter: Value = serde_json::from_slice(letters[0].0.as_deref().unwrap_or_default())
        .expect("the dead letter carries the original record");
    assert_eq!(letter["tenant_id"], "globex", "{letter}");
    assert_eq!(letter["prompt_tokens"], globex_conflict.prompt, "{letter}");

    // Each tenant's spend holds its own events, acme's included.
    let acknowledged_events = ledger.snapshot();
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        let want: i128 = acknowledged_events
            .values()
            .filter(|e| e.tenant == tenant)
            .map(Expected::cost)
            .sum();
        let spend = text_rows(
            &db,
            &format!(
                "SELECT COALESCE(sum(s.spend_usd), 0)::text FROM budget_spend s \
                 JOIN budgets b ON b.id = s.budget_id \
                 WHERE b.name = 'faults-monthly' AND s.tenant_id = '{tenant}'"
            ),
        )
        .await;
        assert_eq!(
            tenth_nanos(spend[0][0].as_deref().unwrap_or("0")),
            want,
            "{tenant}'s monthly budget spend"
        );
    }
    check_ledger(
        &db,
        &ledger,
        &CounterEvidence {
            complete: vec![counters],
            ..CounterEvidence::default()
        },
    )
    .await;
}
