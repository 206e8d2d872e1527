//! The run loop against a real Kafka-protocol broker (tansu) and a real
//! TimescaleDB: poison goes to the dead-letter topic without blocking the
//! partition, assignment starts at the offsets stored in the database, and
//! a group of two processors with members joining and leaving stores every
//! event exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use e2e::ledger_check::stored_row_count;
use e2e::{header_strings, wait_for_some, Broker, Database};
use ledger::UsageEvent;
use processor::config::Config;
use processor::pipeline;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::migrated_database;

const WAIT: Duration = Duration::from_secs(60);

fn config(broker: &Broker, database: &Database, topic: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = broker.bootstrap();
    config.kafka.topic = topic.into();
    config.kafka.dlq_topic = format!("{topic}.dlq");
    config.kafka.group_id = format!("{topic}-group");
    // tansu completes a group join in about half the session timeout.
    config.kafka.session_timeout_ms = 6000;
    config.kafka.topic_partitions = 2;
    config.kafka.properties =
        BTreeMap::from([("broker.address.family".to_string(), "v4".to_string())]).into();
    config.database.url = database.url().into();
    config.database.pool_size = 2;
    config.batch.max_events = 50;
    config.batch.max_latency_ms = 100;
    config.metrics.listen = "127.0.0.1:0".into();
    config.shutdown_timeout_ms = 10_000;
    config
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), pipeline::RunError>>,
}

impl Running {
    fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { pipeline::run(&config, token).await });
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the pipeline stops within 30 s")
            .expect("the pipeline task does not panic");
        result.expect("the pipeline stops cleanly");
    }
}

fn event(tenant: &str, n: u32) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - chrono::Duration::seconds(i64::from(n % 100)),
        tenant_id: tenant.into(),
        user_id: None,
        provider: "anthropic".into(),
        model: "claude-3-5-sonnet".into(),
        prompt_tokens: 100 + n,
        completion_tokens: 10,
        total_tokens: 110 + n,
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

fn producer(broker: &Broker) -> FutureProducer {
    broker.client_config().create().expect("producer")
}

async fn produce(producer: &FutureProducer, topic: &str, partition: i32, value: &[u8]) -> i64 {
    let headers = OwnedHeaders::new().insert(Header {
        key: "schema",
        value: Some(ledger::KAFKA_SCHEMA),
    });
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(b"tenant".as_slice())
        .payload(value)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(error, _)| error)
        .expect("the broker acknowledges")
}

async fn wait_for_rows(database: &Database, expected: i64) {
    let reached = wait_for_some(WAIT, || async {
        (stored_row_count(database).await >= expected).then_some(())
    })
    .await;
    let count = stored_row_count(database).await;
    assert!(
        reached.is_some(),
        "expected {expected} rows within {WAIT:?}, have {count}"
    );
}

/// Waits until `config`'s group has stored, for each `(partition, end)`, a next offset of at
/// least `end`: a processor has committed through those records, so whatever it read of them is
/// in the database.
async fn wait_for_stored_offsets(database: &Database, config: &Config, ends: &[(i32, i64)]) {
    let stored = || async {
        let rows = database
            .client()
            .await
            .query(
                "SELECT partition, next_offset FROM ingest_offsets
                 WHERE consumer_group = $1 AND topic = $2",
                &[&config.kafka.group_id, &config.kafka.topic],
            )
            .await
            .expect("ingest_offsets");
        rows.iter()
            .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1)))
            .collect::<BTreeMap<i32, i64>>()
    };
    let reached = wait_for_some(WAIT, || async {
        let stored = stored().await;
        ends.iter()
            .all(|(partition, end)| stored.get(partition).is_some_and(|s| s >= end))
            .then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "stored offsets {:?} within {WAIT:?}, expected at least {ends:?}",
        stored().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_does_not_block_the_events_behind_it() {
    let (broker, database) = tokio::join!(Broker::start(), migrated_database());
    let topic = "poison";
    broker.create_topic(topic, 2).await;
    let producer = producer(&broker);
    let mut ids = Vec::new();
    for n in 0..10 {
        let e = event("acme", n);
        ids.push(e.id);
        produce(&producer, topic, 0, &e.to_kafka_value()).await;
    }
    let poison_offset = produce(&producer, topic, 0, b"{\"this is\": \"not an event\"}").await;
    for n in 10..20 {
        let e = event("acme", n);
        ids.push(e.id);
        produce(&producer, topic, 0, &e.to_kafka_value()).await;
    }

    let running = Running::start(config(&broker, &database, topic));
    wait_for_rows(&database, 20).await;

    let dlq: BaseConsumer = broker
        .client_config()
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    dlq.subscribe(&[&format!("{topic}.dlq")])
        .expect("subscribe");
    let letter = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = dlq.poll(Duration::from_millis(200)) {
                let headers = header_strings(&message);
                return Some((headers, message.payload().map(<[u8]>::to_vec)));
            }
        }
        None
    })
    .await
    .expect("reader")
    .expect("a dead letter arrives");
    let (headers, payload) = letter;
    assert_eq!(
        headers.get("error").map(String::as_str),
        Some("undecodable")
    );
    assert_eq!(headers.get("source_topic").map(String::as_str), Some(topic));
    assert_eq!(
        headers.get("source_partition").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        headers.get("source_offset"),
        Some(&poison_offset.to_string())
    );
    assert_eq!(
        payload.as_deref(),
        Some(b"{\"this is\": \"not an event\"}".as_slice())
    );

    running.stop().await;
    let client = database.client().await;
    let stored: i64 = client
        .query_one(
            "SELECT next_offset FROM ingest_offsets WHERE topic = $1 AND partition = 0",
            &[&topic],
        )
        .await
        .expect("offset row")
        .get(0);
    assert_eq!(stored, 21, "the offset moved past the poison record");
    assert_eq!(stored_row_count(&database).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_starts_at_the_offsets_stored_in_the_database() {
    let (broker, database) = tokio::join!(Broker::start(), migrated_database());
    let topic = "resume";
    broker.create_topic(topic, 2).await;
    let producer = producer(&broker);
    let mut events = Vec::new();
    for n in 0..10 {
        let e = event("acme", n);
        produce(&producer, topic, 0, &e.to_kafka_value()).await;
        events.push(e);
    }
    let config = config(&broker, &database, topic);
    // As if a previous run had stored offsets 0..5 (their rows are
    // deliberately absent, so re-reading them would show).
    database
        .client()
        .await
        .execute(
            "INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset)
             VALUES ($1, $2, 0, 5)",
            &[&config.kafka.group_id, &topic],
        )
        .await
        .expect("seed offsets");

    let running = Running::start(config.clone());
    wait_for_rows(&database, 5).await;
    // Committed through the end of the log: a start before offset 5 would have stored those
    // records by now.
    wait_for_stored_offsets(&database, &config, &[(0, 10)]).await;
    running.stop().await;

    let client = database.client().await;
    let stored_ids: Vec<Uuid> = client
        .query(
            "SELECT id FROM gateway_mode_audit ORDER BY source_offset",
            &[],
        )
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<Uuid> = events[5..].iter().map(|e| e.id).collect();
    assert_eq!(stored_ids, expected, "exactly the records from offset 5 on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_the_group_store_every_event_once() {
    let (broker, database) = tokio::join!(Broker::start(), migrated_database());
    let topic = "rebalance";
    broker.create_topic(topic, 2).await;
    let config = config(&broker, &database, topic);
    let producer = producer(&broker);

    let first = Running::start(config.clone());
    let total: u32 = 600;
    let mut second = None;
    let mut produced = std::collections::BTreeSet::new();
    for n in 0..total {
        let e = event(&format!("tenant-{}", n % 7), n);
        produce(&producer, topic, (n % 2) as i32, &e.to_kafka_value()).await;
        produced.insert(e.id);
        if n == 200 {
            second = Some(Running::start(config.clone()));
        }
        if n == 400 {
            // leave while the other member keeps going
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    first.stop().await;
    wait_for_rows(&database, i64::from(total)).await;
    // The remaining member has committed through the end of both partitions: anything it read
    // again is in the table by now.
    let half = i64::from(total / 2);
    wait_for_stored_offsets(&database, &config, &[(0, half), (1, half)]).await;
    second.expect("started").stop().await;

    let client = database.client().await;
    let stored: Vec<Uuid> = client
        .query("SELECT id FROM gateway_mode_audit", &[])
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored.len(), produced.len(), "one row per event");
    assert_eq!(
        stored
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        produced,
        "exactly the produced events"
    );
}
