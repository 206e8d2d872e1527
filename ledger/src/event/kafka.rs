//! The usage event's record value on Kafka: the derived serde form,
//! re-checked on decode because anyone with topic access can write to it.

use super::{EventError, FieldError, UsageEvent};

/// Value of the `schema` header on every Kafka record the gateway writes.
pub const KAFKA_SCHEMA: &str = "usage.v1";

impl UsageEvent {
    /// The Kafka record value.
    pub fn to_kafka_value(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers and maps of strings
        // cannot fail; an empty value would be dead-lettered, never lost.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a Kafka record value.
    pub fn from_kafka_value(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes).map_err(|err| EventError {
            errors: vec![FieldError::new("", format!("undecodable record: {err}"))],
        })?;
        event.check_invariants()?;
        Ok(event)
    }
}
