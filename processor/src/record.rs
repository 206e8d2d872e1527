//! One Kafka record, owned: what the consumer thread hands to the pipeline,
//! and the one function that copies a librdkafka message into it.

use std::sync::Arc;

use rdkafka::message::{Headers, Message};

/// One Kafka record, owned, as the consumer thread hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Shared by every record of the topic: one allocation per topic, not
    /// per record.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The `schema` header, when the record has one.
    pub schema: Option<Vec<u8>>,
    /// The record's timestamp (milliseconds since the epoch), when the
    /// broker reports one: a producer writing straight to the topic may
    /// leave `received_at` out, and this stands in for it.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Copies what the pipeline needs out of a message librdkafka owns.
    /// Every record of a topic shares `topic`, replaced when the topic
    /// changes.
    pub fn from_message(message: &impl Message, topic: &mut Arc<str>) -> Self {
        if **topic != *message.topic() {
            *topic = Arc::from(message.topic());
        }
        Self {
            topic: topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            schema: message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|header| header.key == "schema")
                    .and_then(|header| header.value.map(<[u8]>::to_vec))
            }),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}
