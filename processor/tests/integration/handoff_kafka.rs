//! The consumer's hand-over to several writers against a real
//! Kafka-protocol broker (tansu): a writer whose channel is full holds back
//! only its own partitions; the others keep receiving records, and the
//! held-back partition continues where it stopped, nothing skipped or
//! repeated, once its writer drains.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::Broker;
use processor::config::Config;
use processor::consumer::{ConsumerDeps, GroupMember};
use processor::metrics::Metrics;
use processor::offsets::OffsetFloors;
use processor::record::Record;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::migrated_database;

const WAIT: Duration = Duration::from_secs(60);

async fn produce(producer: &FutureProducer, topic: &str, partition: i32, count: usize) {
    for n in 0..count {
        let value = format!("record {n} of partition {partition}");
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .key(b"tenant".as_slice())
            .payload(value.as_bytes());
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("the broker acknowledges");
    }
}

/// Receives `count` records from `receiver` within [`WAIT`]; their
/// (partition, offset), in arrival order.
async fn receive(receiver: &mut mpsc::Receiver<Record>, count: usize) -> Vec<(i32, i64)> {
    let mut seen = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < count {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(record)) => seen.push((record.partition, record.offset)),
            Ok(None) => panic!("the consumer closed its channel after {seen:?}"),
            Err(_) => panic!(
                "{} of {count} records arrived within {WAIT:?}: {seen:?}",
                seen.len()
            ),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_channel_does_not_hold_back_the_other_writers_partitions() {
    let broker = Broker::start().await;
    let database = migrated_database().await;
    let topic = "handoff-events";
    let mut config = Config::default();
    config.kafka.brokers = broker.bootstrap();
    config.kafka.topic = topic.into();
    config.kafka.dlq_topic = format!("{topic}.dlq");
    config.kafka.group_id = format!("{topic}-group");
    config.kafka.session_timeout_ms = 6000;
    config.kafka.topic_partitions = 2;
    config.kafka.properties =
        BTreeMap::from([("broker.address.family".to_string(), "v4".to_string())]).into();
    config.database.url = database.url().into();
    processor::consumer::ensure_topics(&config.kafka, Duration::from_secs(30))
        .await
        .expect("topics created");
    let producer: FutureProducer = broker.client_config().create().expect("producer");
    // Writer 0 owns partition 0, writer 1 partition 1.
    produce(&producer, topic, 0, 20).await;

    let shutdown = CancellationToken::new();
    let (member, mut receivers) = GroupMember::start(
        &config.kafka,
        ConsumerDeps {
            pool: processor::database::pool(&config.database).expect("pool"),
            floors: OffsetFloors::default(),
            metrics: Arc::new(Metrics::new(100, 100).expect("metrics")),
            shutdown: shutdown.clone(),
            db_timeout: Duration::from_secs(10),
            channel_capacity: 2,
            writers: 2,
        },
    )
    .expect("the consumer starts");
    let mut second = receivers.pop().expect("writer 1");
    let mut first = receivers.pop().expect("writer 0");

    // Writer 0 takes nothing: its channel fills with partition 0's first two
    // records and the consumer holds the third.
    let deadline = tokio::time::Instant::now() + WAIT;
    while first.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 0's records never reached writer 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only now does partition 1 get records: they reach writer 1 although
    // writer 0 is still full.
    produce(&producer, topic, 1, 30).await;
    let delivered = receive(&mut second, 30).await;
    assert_eq!(delivered, (0..30).map(|o| (1, o)).collect::<Vec<_>>());
    assert_eq!(first.len(), 2, "writer 0 took nothing, so got nothing more");

    // Writer 0 drains: partition 0 resumes where it stopped.
    let drained = receive(&mut first, 20).await;
    assert_eq!(drained, (0..20).map(|o| (0, o)).collect::<Vec<_>>());

    shutdown.cancel();
    drop((first, second));
    member
        .stop(Duration::from_secs(30))
        .await
        .expect("the consumer stops");
}
