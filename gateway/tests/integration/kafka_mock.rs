//! The real producer path against librdkafka's in-process mock cluster:
//! what lands on the topic, and how broker outages and the queue bound
//! turn into 503s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use axum::body::Body;
use axum::http::Request;
use gateway::config::KafkaConfig;
use gateway::kafka::KafkaAppender;
use gateway::{AppState, Appender, Settings};
use ledger::{UsageEvent, KAFKA_SCHEMA};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const TOPIC: &str = "usage-events";
const PARTITIONS: i32 = 3;
/// librdkafka's mock cluster numbers its brokers from 1.
const BROKER: i32 = 1;

fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster starts");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("topic created");
    cluster
}

fn kafka_config(cluster: &MockCluster<'static, DefaultProducerContext>) -> KafkaConfig {
    KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        message_timeout_ms: 1_500,
        ..KafkaConfig::default()
    }
}

struct KafkaApp {
    appender: Arc<KafkaAppender>,
    router: axum::Router,
}

fn kafka_app(config: &KafkaConfig) -> KafkaApp {
    let appender = Arc::new(KafkaAppender::new(config).expect("producer"));
    let dyn_appender: Arc<dyn Appender> = appender.clone();
    let settings = Settings {
        request_timeout: config.message_timeout() + Duration::from_secs(3),
        ..Settings::default()
    };
    let state = AppState::new(dyn_appender, key_ring(), settings).expect("state");
    KafkaApp {
        appender,
        router: gateway::router(state),
    }
}

/// Every record on the topic, read from the beginning of each partition
/// without a consumer group (a group join costs seconds on the mock).
struct Record {
    key: String,
    partition: i32,
    headers: HashMap<String, String>,
    event: UsageEvent,
}

fn consume_all(bootstrap: &str, expected: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "gateway-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&partitions).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Poll a little past `expected` so that extra records would be seen.
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                quiet_since = None;
                let key =
                    String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let event = UsageEvent::from_kafka_value(message.payload().expect("payload"))
                    .expect("value decodes as a usage event");
                records.push(Record {
                    key,
                    partition: message.partition(),
                    headers,
                    event,
                });
            }
            Some(Err(error)) => panic!("consume error: {error}"),
            None if records.len() >= expected => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
            None => {}
        }
    }
    records
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("array expected, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect()
}

#[tokio::test]
async fn accepted_events_are_on_the_topic_with_key_headers_and_value() {
    let cluster = mock_cluster();
    let config = kafka_config(&cluster);
    let app = kafka_app(&config);
    let batch = json!([event("acme"), event("globex"), event("acme")]);
    let mut request = post_json(Some(ADMIN_KEY), &batch);
    request
        .headers_mut()
        .insert("x-request-id", "mock-req-1".parse().expect("header"));
    let (status, _, body) = send_json(&app.router, request).await;
    assert_eq!(status, 202, "{body}");
    let ids = strings(&body["ids"]);

    let bootstrap = cluster.bootstrap_servers();
    let records = tokio::task::spawn_blocking(move || consume_all(&bootstrap, 3))
        .await
        .expect("consumer thread");
    assert_eq!(records.len(), 3, "exactly the accepted events");
    let mut seen_ids = Vec::new();
    for record in &records {
        assert_eq!(record.key, record.event.tenant_id, "key = tenant_id");
        assert_eq!(
            record.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(
            record.headers.get("schema").map(String::as_str),
            Some(KAFKA_SCHEMA)
        );
        assert_eq!(record.event.request_id.as_deref(), Some("mock-req-1"));
        assert_eq!(record.event.model, "gpt-4o");
        seen_ids.push(record.event.id.to_string());
    }
    seen_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen_ids, expected);

    // A tenant's events share a partition (ordering per tenant).
    let acme_partitions: Vec<i32> = records
        .iter()
        .filter(|record| record.key == "acme")
        .map(|record| record.partition)
        .collect();
    assert_eq!(acme_partitions.len(), 2);
    assert_eq!(acme_partitions[0], acme_partitions[1]);
    app.appender
        .close(Duration::from_secs(2))
        .await
        .expect("flushes");
}

#[tokio::test]
async fn a_down_broker_is_503_within_the_message_timeout_then_recovers() {
    let cluster = mock_cluster();
    let config = kafka_config(&cluster);
    let app = kafka_app(&config);
    let (status, _, _) = send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "warm-up append");
    let (status, _, _) = send_json(
        &app.router,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 200, "ready while the broker is up");

    cluster.broker_down(BROKER).expect("broker down");
    let started = Instant::now();
    let (status, headers, body) = send_json(
        &app.router,
        post_json(Some(ACME_KEY), &json!([event("acme"), event("acme")])),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(strings(&body["ids"]).len(), 2);
    assert!(strings(&body["acknowledged"]).is_empty(), "{body}");
    assert!(
        took < config.message_timeout() + Duration::from_millis(1_000),
        "answered after {took:?}, message timeout is {:?}",
        config.message_timeout()
    );
    // The cached readiness result expires after a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _, _) = send_json(
        &app.router,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 503, "not ready while the broker is down");

    cluster.broker_up(BROKER).expect("broker up");
    // A client retries after Retry-After; the producer reconnects meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    let mut recovered = false;
    while Instant::now() < deadline {
        let (status, _, body) =
            send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
        if status == 202 {
            recovered = true;
            break;
        }
        assert_eq!(status, 503, "{body}");
        last = body;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        recovered,
        "no 202 after the broker came back; last answer {last}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _, _) = send_json(
        &app.router,
        Request::get("/readyz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, 200, "ready again");
}

#[tokio::test]
async fn a_full_producer_queue_is_503_at_once_instead_of_growing() {
    let cluster = mock_cluster();
    let config = KafkaConfig {
        queue_max_messages: 5,
        message_timeout_ms: 3_000,
        ..kafka_config(&cluster)
    };
    let app = kafka_app(&config);
    let (status, _, _) = send_json(&app.router, post_json(Some(ACME_KEY), &event("acme"))).await;
    assert_eq!(status, 202, "warm-up append");
    // Slow acknowledgements keep the first records in the queue while the
    // rest of the batch tries to join them.
    cluster
        .broker_round_trip_time(BROKER, Duration::from_millis(500))
        .expect("rtt");

    let batch = Value::Array((0..20).map(|_| event("acme")).collect());
    let (status, headers, body) = send_json(&app.router, post_json(Some(ACME_KEY), &batch)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "queue_full", "{body}");
    assert_eq!(headers["retry-after"], "1");
    let ids = strings(&body["ids"]);
    let acknowledged = strings(&body["acknowledged"]);
    let not_acknowledged = strings(&body["not_acknowledged"]);
    assert_eq!(ids.len(), 20);
    assert_eq!(
        acknowledged,
        ids[..5].to_vec(),
        "the queued prefix was delivered"
    );
    assert_eq!(not_acknowledged, ids[5..].to_vec());

    let bootstrap = cluster.bootstrap_servers();
    let records = tokio::task::spawn_blocking(move || consume_all(&bootstrap, 6))
        .await
        .expect("consumer thread");
    let mut on_topic: Vec<String> = records.iter().map(|r| r.event.id.to_string()).collect();
    on_topic.sort();
    let mut reported = acknowledged.clone();
    assert_eq!(
        on_topic.len(),
        6,
        "warm-up + the 5 acknowledged, nothing else"
    );
    reported.retain(|id| on_topic.contains(id));
    assert_eq!(reported.len(), 5, "every acknowledged id is on the topic");
}
