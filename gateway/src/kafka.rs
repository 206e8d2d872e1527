//! The production [`Appender`]: an idempotent librdkafka producer writing
//! each event to the usage topic, keyed by tenant.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use infra::kafka::{LogContext, Replaceable};
use ledger::{UsageEvent, KAFKA_SCHEMA};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;

use crate::append::{AppendError, AppendReport, Appender};
use crate::config::KafkaConfig;

/// The metadata request behind `/readyz` must answer well within the one
/// second a Kubernetes probe waits by default.
const READINESS_METADATA_TIMEOUT: Duration = Duration::from_millis(800);

/// librdkafka enforces `message.timeout.ms` itself; this margin only
/// guards against a delivery report that never comes.
const DELIVERY_WAIT_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka producer")]
    Create(#[from] KafkaError),
}

/// One librdkafka producer and its fatal-error flag.
struct ProducerHandle {
    producer: FutureProducer<LogContext>,
    fatal: Arc<AtomicBool>,
}

impl ProducerHandle {
    fn create(config: &ClientConfig) -> Result<Self, KafkaError> {
        let context = LogContext::default();
        let fatal = context.fatal_flag();
        let producer = config.create_with_context(context)?;
        Ok(Self { producer, fatal })
    }
}

pub struct KafkaAppender {
    /// Replaced when the broker stops accepting the producer's identity:
    /// records the old producer still holds are reported to their clients
    /// as not acknowledged, and their retries go through the new one.
    producers: Replaceable<ProducerHandle>,
    topic: String,
    delivery_wait: Duration,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for KafkaAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAppender")
            .field("topic", &self.topic)
            .field("delivery_wait", &self.delivery_wait)
            .finish_non_exhaustive()
    }
}

/// The headers of every usage record the gateway writes: what the value is
/// and which schema it follows.
pub fn record_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "schema",
            value: Some(KAFKA_SCHEMA),
        })
}

/// The librdkafka settings the gateway's guarantees rest on, then the
/// operator's extra properties (which config validation keeps from
/// overriding the former).
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        // 202 promises the record survives a broker loss, and retries after
        // a lost acknowledgement must not duplicate or reorder it.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            config.queue_max_messages.to_string(),
        )
        .set("linger.ms", config.linger_ms.to_string())
        .set("compression.type", config.compression.as_librdkafka())
        // Same key-to-partition mapping as the Java client, so any other
        // producer writing the topic keeps a tenant on one partition.
        .set("partitioner", "murmur2_random");
    for (name, value) in &config.properties {
        client.set(name, value);
    }
    client
}

impl KafkaAppender {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            producers: Replaceable::new(
                producer_config(config),
                ProducerHandle::create,
                "Kafka producer",
            )?,
            topic: config.topic.clone(),
            delivery_wait: config.message_timeout() + DELIVERY_WAIT_MARGIN,
            shut_down: AtomicBool::new(false),
        })
    }

    /// The producer appends use now.
    pub fn producer(&self) -> FutureProducer<LogContext> {
        self.handle().producer.clone()
    }

    pub fn has_fatal_error(&self) -> bool {
        self.handle().fatal.load(Ordering::Relaxed)
    }

    fn handle(&self) -> Arc<ProducerHandle> {
        self.producers.current()
    }

    fn enqueue(
        &self,
        producer: &FutureProducer<LogContext>,
        event: &UsageEvent,
    ) -> Result<DeliveryFuture, AppendError> {
        let value = event.to_kafka_value();
        let headers = record_headers();
        // No explicit timestamp: the record gets its produce time. Using
        // `created_at` would let a backfilled event fall straight out of
        // time-based retention before the processor has read it.
        let record = FutureRecord::to(&self.topic)
            .key(event.tenant_id.as_str())
            .payload(value.as_slice())
            .headers(headers);
        producer
            .send_result(record)
            .map_err(|(error, _record)| classify_enqueue_error(&error))
    }
}

fn classify_enqueue_error(error: &KafkaError) -> AppendError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => AppendError::QueueFull,
        _ => AppendError::Rejected(error.to_string()),
    }
}

fn classify_delivery_error(error: &KafkaError, waited: Duration) -> AppendError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => AppendError::TimedOut(waited),
        Some(RDKafkaErrorCode::AllBrokersDown) | Some(RDKafkaErrorCode::BrokerTransportFailure) => {
            AppendError::Unreachable(error.to_string())
        }
        _ => AppendError::Rejected(error.to_string()),
    }
}

#[async_trait]
impl Appender for KafkaAppender {
    async fn append(&self, events: &[UsageEvent]) -> AppendReport {
        let handle = self.handle();
        if self.shut_down.load(Ordering::Relaxed) || handle.fatal.load(Ordering::Relaxed) {
            return AppendReport {
                outcomes: vec![Err(AppendError::ShuttingDown); events.len()],
            };
        }
        // Queue everything first (so the records share produce requests),
        // stopping at the first record that cannot be queued: waiting for
        // room would make the queue bound meaningless.
        let mut pending: Vec<Result<DeliveryFuture, AppendError>> =
            Vec::with_capacity(events.len());
        let mut stopped = false;
        for event in events {
            if stopped {
                pending.push(Err(AppendError::NotAttempted));
                continue;
            }
            let queued = self.enqueue(&handle.producer, event);
            stopped = queued.is_err();
            pending.push(queued);
        }
        // Records already queued are awaited even after a failure: they may
        // still be appended, and the client must learn which were.
        let started = Instant::now();
        let deadline = started + self.delivery_wait;
        let fenced = AtomicBool::new(false);
        let outcomes = join_all(pending.into_iter().map(|queued| {
            let fenced = &fenced;
            async move {
                let delivery = queued?;
                match tokio::time::timeout_at(deadline, delivery).await {
                    Ok(Ok(Ok(_delivery))) => Ok(()),
                    Ok(Ok(Err((error, _message)))) => {
                        if infra::kafka::producer_fenced(&error) {
                            fenced.store(true, Ordering::Relaxed);
                        }
                        Err(classify_delivery_error(&error, started.elapsed()))
                    }
                    Ok(Err(_canceled)) => Err(AppendError::ShuttingDown),
                    Err(_elapsed) => Err(AppendError::TimedOut(started.elapsed())),
                }
            }
        }))
        .await;
        if fenced.load(Ordering::Relaxed) && !self.shut_down.load(Ordering::Relaxed) {
            self.producers.replace(&handle);
        }
        AppendReport { outcomes }
    }

    async fn check_ready(&self) -> Result<(), AppendError> {
        if self.has_fatal_error() {
            return Err(AppendError::Rejected(
                "the producer hit a fatal error".into(),
            ));
        }
        let producer = self.producer();
        let topic = self.topic.clone();
        // fetch_metadata blocks the calling thread until the broker answers.
        let checked = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), READINESS_METADATA_TIMEOUT)
                .map_err(|error| AppendError::Unreachable(error.to_string()))?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(AppendError::Unreachable(format!(
                    "topic {topic:?} not in metadata"
                )));
            };
            if let Some(error) = found.error() {
                return Err(AppendError::Unreachable(format!(
                    "topic {topic:?}: {:?}",
                    RDKafkaErrorCode::from(error)
                )));
            }
            if found.partitions().is_empty() {
                return Err(AppendError::Unreachable(format!(
                    "topic {topic:?} has no partitions"
                )));
            }
            Ok(())
        })
        .await;
        checked.unwrap_or_else(|join_error| Err(AppendError::Rejected(join_error.to_string())))
    }

    async fn close(&self, timeout: Duration) -> Result<(), AppendError> {
        self.shut_down.store(true, Ordering::Relaxed);
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(classify_delivery_error(&error, timeout)),
            Err(join_error) => Err(AppendError::Rejected(join_error.to_string())),
        }
    }
}
