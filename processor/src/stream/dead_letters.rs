//! Dead letters: records that cannot be stored, why, and their delivery to
//! the dead-letter topic with the original key and value.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use infra::kafka::Replaceable;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::record::Record;
use crate::stream::write_errors::DatabaseFailure;

/// Why a record went to the dead-letter topic: the `error` header and the
/// `reason` label of `tokenledger_events_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not JSON, or JSON that is not a usage event.
    Undecodable,
    /// A usage event that breaks the event contract or the storage limits.
    Invalid,
    /// A `schema` header other than the one this processor understands.
    Schema,
    /// An `(id, created_at)` already stored with different content.
    Conflict,
    /// A valid event the database refused permanently (a data exception
    /// or constraint violation, SQLSTATE classes 22, 23 and 54), found by
    /// bisecting its batch; the headers carry the SQLSTATE and message.
    Unstorable,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Undecodable,
        Reason::Invalid,
        Reason::Schema,
        Reason::Conflict,
        Reason::Unstorable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::Invalid => "invalid",
            Reason::Schema => "schema",
            Reason::Conflict => "conflict",
            Reason::Unstorable => "unstorable",
        }
    }
}

/// A record on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub record: Record,
    pub reason: Reason,
    /// Human-readable detail (the validation errors, the stored hash…).
    pub detail: String,
    /// The database's refusal, for [`Reason::Unstorable`].
    pub database: Option<DatabaseFailure>,
}

impl DeadLetter {
    /// The same letter without the record's value, for a record too large
    /// for the dead-letter topic: the headers still say where the original
    /// is in the source topic (until its retention deletes it).
    pub fn without_value(&self) -> DeadLetter {
        let size = self.record.value.as_ref().map_or(0, Vec::len);
        let mut detail: String = self.detail.chars().take(MAX_DETAIL_CHARS).collect();
        detail.push_str(&format!(
            "; the record's value ({size} bytes) is too large for the dead-letter topic and was left out"
        ));
        DeadLetter {
            record: Record {
                value: None,
                ..self.record.clone()
            },
            reason: self.reason,
            detail,
            database: self.database.clone(),
        }
    }
}

/// How much of a detail a letter without its value keeps.
const MAX_DETAIL_CHARS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot create the dead-letter producer: {0}")]
    Create(rdkafka::error::KafkaError),
    #[error("dead-letter topic {topic} did not acknowledge the record from partition {partition} offset {offset}: {source}")]
    Delivery {
        topic: String,
        partition: i32,
        offset: i64,
        source: rdkafka::error::KafkaError,
    },
}

impl DeadLetterError {
    /// Whether the topic refused the record for its size: sending it again
    /// fails the same way.
    pub fn is_too_large(&self) -> bool {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        matches!(
            self,
            DeadLetterError::Delivery {
                source: KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::InvalidRecord
                ),
                ..
            }
        )
    }
}

/// Somewhere dead letters go. Returning `Ok` means the destination has
/// acknowledged the record durably; only then may the batch transaction
/// that moves the offset past it commit.
pub trait DeadLetterSink: Send + Sync {
    fn send(&self, letter: &DeadLetter)
        -> impl Future<Output = Result<(), DeadLetterError>> + Send;
}

/// Produces dead letters to a Kafka topic with acks=all and idempotence.
///
/// The producer is made when the first letter is sent, not before: a
/// `FutureProducer`'s polling thread spins through the last millisecond of
/// each of its 100 ms polls (rdkafka truncates the remaining wait to whole
/// milliseconds), about 1% of a core for as long as it lives, while most
/// processors never dead-letter anything. The settings are checked at
/// start-up all the same, by a producer made and dropped there.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    /// Replaced when the broker refuses the producer's identity: without a
    /// new producer no batch holding a dead letter could commit again. The
    /// batch that saw the error is retried through the new one.
    producer: Arc<tokio::sync::OnceCell<Replaceable<FutureProducer>>>,
    config: ClientConfig,
    topic: String,
    queue_timeout: Duration,
}

impl std::fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaDeadLetters {
    /// `delivery_timeout` bounds how long one record may take to be
    /// acknowledged before the batch is retried.
    pub fn new(
        mut client_config: ClientConfig,
        topic: &str,
        delivery_timeout: Duration,
    ) -> Result<Self, DeadLetterError> {
        client_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        // A wrong setting must stop the start, as it did when the producer
        // was made here: one without a polling thread is made and dropped
        // (librdkafka checks some settings only together, when a client is
        // made).
        let _checked: rdkafka::producer::BaseProducer =
            client_config.create().map_err(DeadLetterError::Create)?;
        Ok(Self {
            producer: Arc::new(tokio::sync::OnceCell::new()),
            config: client_config,
            topic: topic.to_owned(),
            queue_timeout: delivery_timeout,
        })
    }

    /// The producer, made on first use.
    async fn producer(&self) -> Result<&Replaceable<FutureProducer>, DeadLetterError> {
        self.producer
            .get_or_try_init(|| async {
                Replaceable::new(
                    self.config.clone(),
                    ClientConfig::create,
                    "dead-letter producer",
                )
                .map_err(DeadLetterError::Create)
            })
            .await
    }

    /// Whether a letter has been sent, i.e. the producer exists.
    #[cfg(test)]
    fn started(&self) -> bool {
        self.producer.initialized()
    }

    #[cfg(test)]
    fn current(&self) -> Arc<FutureProducer> {
        self.producer
            .get()
            .expect("a letter was sent before")
            .current()
    }
}

/// The headers of a dead letter: the reason and where the record came from,
/// so an operator can find it in the source topic and re-drive it.
pub fn headers(letter: &DeadLetter) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("error", letter.reason.as_str().to_owned()),
        ("error_detail", letter.detail.clone()),
        ("source_topic", letter.record.topic.to_string()),
        ("source_partition", letter.record.partition.to_string()),
        ("source_offset", letter.record.offset.to_string()),
    ];
    if let Some(database) = &letter.database {
        headers.push(("sqlstate", database.sqlstate.clone()));
        headers.push(("sqlstate_message", database.message.clone()));
    }
    headers
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let header_values = headers(letter);
        let mut owned_headers = OwnedHeaders::new_with_capacity(header_values.len());
        for (key, value) in &header_values {
            owned_headers = owned_headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(owned_headers);
        if let Some(key) = &letter.record.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &letter.record.value {
            record = record.payload(value.as_slice());
        }
        let producers = self.producer().await?;
        let producer = producers.current();
        match producer.send(record, self.queue_timeout).await {
            Ok(_) => Ok(()),
            Err((source, _)) => {
                if infra::kafka::producer_fenced(&source) {
                    producers.replace(&producer);
                }
                Err(DeadLetterError::Delivery {
                    topic: self.topic.clone(),
                    partition: letter.record.partition,
                    offset: letter.record.offset,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_reason_and_origin() {
        let letter = DeadLetter {
            record: Record {
                topic: "usage-events".into(),
                partition: 2,
                offset: 41,
                key: Some(b"acme".to_vec()),
                value: Some(b"not json".to_vec()),
                schema: None,
                timestamp_ms: None,
            },
            reason: Reason::Undecodable,
            detail: "expected value".into(),
            database: None,
        };
        let headers = headers(&letter);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(get("error"), Some("undecodable"));
        assert_eq!(get("source_topic"), Some("usage-events"));
        assert_eq!(get("source_partition"), Some("2"));
        assert_eq!(get("source_offset"), Some("41"));
        assert_eq!(get("sqlstate"), None);
    }

    #[test]
    fn unstorable_letters_carry_the_sqlstate_and_message() {
        let mut letter = letter(7);
        letter.reason = Reason::Unstorable;
        letter.database = Some(DatabaseFailure {
            sqlstate: "22003".into(),
            message: "numeric field overflow".into(),
        });
        let headers = headers(&letter);
        assert!(headers.contains(&("error", "unstorable".into())));
        assert!(headers.contains(&("sqlstate", "22003".into())));
        assert!(headers.contains(&("sqlstate_message", "numeric field overflow".into())));
        let small = letter.without_value();
        assert_eq!(small.record.value, None);
        assert_eq!(small.record.offset, 7);
        assert!(small.detail.contains("8 bytes"), "{}", small.detail);
        assert_eq!(small.database, letter.database);
    }

    fn letter(offset: i64) -> DeadLetter {
        DeadLetter {
            record: Record {
                topic: "usage-events".into(),
                partition: 0,
                offset,
                key: Some(b"acme".to_vec()),
                value: Some(b"not json".to_vec()),
                schema: None,
                timestamp_ms: None,
            },
            reason: Reason::Undecodable,
            detail: "expected value".into(),
            database: None,
        }
    }

    /// No producer (and no polling thread) until the first letter; a
    /// wrong setting still fails at start-up.
    #[tokio::test]
    async fn the_producer_is_made_by_the_first_letter_and_settings_are_checked_at_start() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::DefaultProducerContext;

        for (key, value) in [
            ("compression.type", "no-such-codec"),
            // refused only in combination with idempotence, set by `new`
            ("max.in.flight.requests.per.connection", "10"),
        ] {
            let mut wrong = ClientConfig::new();
            wrong.set(key, value);
            let error = KafkaDeadLetters::new(wrong, "usage-events.dlq", Duration::from_secs(5))
                .expect_err("a wrong setting is refused at start");
            assert!(
                matches!(error, DeadLetterError::Create(_)),
                "{key}: {error}"
            );
        }

        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster starts");
        cluster
            .create_topic("usage-events.dlq", 1, 1)
            .expect("topic created");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let sink = KafkaDeadLetters::new(config, "usage-events.dlq", Duration::from_secs(5))
            .expect("settings accepted");
        assert!(!sink.started(), "no producer before the first letter");
        sink.send(&letter(1)).await.expect("delivered");
        assert!(sink.started());
    }

    /// A record larger than the producer may send fails as too large (so
    /// the writer does not retry it forever), and the same letter without
    /// its value goes through.
    #[tokio::test]
    async fn a_too_large_letter_is_recognised_and_goes_through_without_its_value() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::DefaultProducerContext;

        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster starts");
        cluster
            .create_topic("usage-events.dlq", 1, 1)
            .expect("topic created");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("message.max.bytes", "2000");
        let sink = KafkaDeadLetters::new(config, "usage-events.dlq", Duration::from_secs(5))
            .expect("producer");
        let mut big = letter(3);
        big.record.value = Some(vec![b'x'; 10_000]);
        let error = sink.send(&big).await.expect_err("too large");
        assert!(error.is_too_large(), "{error}");
        sink.send(&big.without_value())
            .await
            .expect("delivered without its value");
    }

    /// The broker refusing the producer's identity (here injected on the
    /// mock cluster; after an outage it is the epoch bump) fails the send at
    /// hand, and the next one goes through a new producer instead of failing
    /// forever.
    #[tokio::test]
    async fn a_fenced_producer_is_replaced_and_the_retry_is_delivered() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::DefaultProducerContext;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster starts");
        cluster
            .create_topic("usage-events.dlq", 1, 1)
            .expect("topic created");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let sink = KafkaDeadLetters::new(config, "usage-events.dlq", Duration::from_secs(5))
            .expect("producer");

        sink.send(&letter(1))
            .await
            .expect("delivered before any fault");
        let before = sink.current();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
        let error = sink.send(&letter(2)).await.expect_err("fenced");
        assert!(
            matches!(&error, DeadLetterError::Delivery { source, .. } if infra::kafka::producer_fenced(source)),
            "{error}"
        );
        assert!(!Arc::ptr_eq(&before, &sink.current()), "replaced");
        sink.send(&letter(2))
            .await
            .expect("the retry goes through the new producer");
    }
}
