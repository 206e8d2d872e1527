//! Dead letters: records that cannot be stored, why, and their delivery to
//! the dead-letter topic with the original key and value.

use std::future::Future;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::batch::Record;

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
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Undecodable,
        Reason::Invalid,
        Reason::Schema,
        Reason::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::Invalid => "invalid",
            Reason::Schema => "schema",
            Reason::Conflict => "conflict",
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
}

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

/// Somewhere dead letters go. Returning `Ok` means the destination has
/// acknowledged the record durably; only then may the batch transaction
/// that moves the offset past it commit.
pub trait DeadLetterSink: Send + Sync {
    fn send(&self, letter: &DeadLetter)
        -> impl Future<Output = Result<(), DeadLetterError>> + Send;
}

/// Produces dead letters to a Kafka topic with acks=all and idempotence.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
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
        let producer = client_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(DeadLetterError::Create)?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            queue_timeout: delivery_timeout,
        })
    }
}

/// The headers of a dead letter: the reason and where the record came from,
/// so an operator can find it in the source topic and re-drive it.
pub fn headers(letter: &DeadLetter) -> Vec<(&'static str, String)> {
    vec![
        ("error", letter.reason.as_str().to_owned()),
        ("error_detail", letter.detail.clone()),
        ("source_topic", letter.record.topic.clone()),
        ("source_partition", letter.record.partition.to_string()),
        ("source_offset", letter.record.offset.to_string()),
    ]
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
        self.producer
            .send(record, self.queue_timeout)
            .await
            .map(|_| ())
            .map_err(|(source, _)| DeadLetterError::Delivery {
                topic: self.topic.clone(),
                partition: letter.record.partition,
                offset: letter.record.offset,
                source,
            })
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
            },
            reason: Reason::Undecodable,
            detail: "expected value".into(),
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
    }
}
