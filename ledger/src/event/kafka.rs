//! The usage event's record value on Kafka, the topic's public contract
//! (docs/kafka/usage.v1.schema.json): the gateway writes the derived serde
//! form; any other producer may write the shape the HTTP API accepts, with
//! an `id` always (a producer's retry must carry the same one). Both are
//! re-checked on decode because anyone with topic access can write to it.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::{EventError, FieldError, UsageEvent, ValidationLimits};

/// Value of the `schema` header on every Kafka record the gateway writes.
pub const KAFKA_SCHEMA: &str = "usage.v1";

/// Fields a producer may add to the HTTP API's: what the gateway adds.
pub const PRODUCER_FIELDS: [&str; 4] = ["received_at", "request_id", "call_identity", "api_key"];

impl UsageEvent {
    /// The Kafka record value.
    pub fn to_kafka_value(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers and maps of strings
        // cannot fail; an empty value would be dead-lettered, never lost.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a Kafka record value; a value without
    /// `received_at` is taken as received when it was created.
    pub fn from_kafka_value(bytes: &[u8]) -> Result<Self, EventError> {
        Self::from_kafka_record(bytes, None)
    }

    /// Decodes and checks a Kafka record value. `record_time` (the record's
    /// timestamp) stands in for a missing `received_at`, else `created_at`.
    pub fn from_kafka_record(
        bytes: &[u8],
        record_time: Option<DateTime<Utc>>,
    ) -> Result<Self, EventError> {
        // The gateway's own form first: it is every record on the hot path.
        if let Ok(event) = serde_json::from_slice::<Self>(bytes) {
            event.check_invariants()?;
            return Ok(event);
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| single("", format!("undecodable record: {err}")))?;
        let Value::Object(mut object) = value else {
            return Err(single("", "the record value must be a JSON object"));
        };
        if !object.get("id").is_some_and(Value::is_string) {
            return Err(single(
                "id",
                "is required on Kafka: a producer's retry must carry the same id",
            ));
        }
        let received_at = match object.remove(PRODUCER_FIELDS[0]) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(
                DateTime::parse_from_rfc3339(&text)
                    .map_err(|err| single("received_at", format!("is not RFC 3339: {err}")))?
                    .with_timezone(&Utc),
            ),
            Some(_) => return Err(single("received_at", "must be an RFC 3339 string")),
        };
        let request_id = match object.remove(PRODUCER_FIELDS[1]) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text),
            Some(_) => return Err(single("request_id", "must be a string")),
        };
        let call_identity = match object.remove(PRODUCER_FIELDS[2]) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => flag,
            Some(_) => return Err(single("call_identity", "must be true or false")),
        };
        let api_key = match object.remove(PRODUCER_FIELDS[3]) {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name),
            Some(_) => return Err(single("api_key", "must be a string")),
        };
        // Kafka has no receive window of its own: the gateway's applies to
        // HTTP clients, and the topic keeps what a producer wrote.
        let unbounded = ValidationLimits {
            max_future_skew: Duration::days(365_000),
            backfill_window: Duration::days(365_000),
            max_batch_events: 1,
        };
        let anchor = received_at
            .or(record_time)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let mut event = Self::from_request_value(&Value::Object(object), anchor, &unbounded)?;
        event.received_at = received_at.or(record_time).unwrap_or(event.created_at);
        event.request_id = request_id;
        event.call_identity = call_identity;
        event.api_key = api_key;
        event.check_invariants()?;
        Ok(event)
    }
}

fn single(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        errors: vec![FieldError::new(field, message)],
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn record_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 8, 0, 0)
            .single()
            .expect("valid time")
    }

    fn http_shape() -> Value {
        json!({
            "id": "0193a3a0-0000-7000-8000-000000000001",
            "created_at": "2026-12-04T07:59:58.123456Z",
            "tenant_id": "acme",
            "provider": "openai",
            "model": "gpt-4o",
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "labels": {"team": "search"},
        })
    }

    fn decode(value: &Value, time: Option<DateTime<Utc>>) -> Result<UsageEvent, EventError> {
        UsageEvent::from_kafka_record(value.to_string().as_bytes(), time)
    }

    #[test]
    fn the_http_shape_is_accepted_with_totals_and_receipt_filled_in() {
        let event = decode(&http_shape(), Some(record_time())).expect("accepted");
        assert_eq!(event.total_tokens, 120);
        assert_eq!(event.received_at, record_time());
        assert_eq!(event.labels["team"], "search");
        let without_record_time = decode(&http_shape(), None).expect("accepted");
        assert_eq!(without_record_time.received_at, event.created_at);

        let mut explicit = http_shape();
        explicit["total_tokens"] = json!(120);
        explicit["received_at"] = json!("2026-12-04T08:00:01Z");
        explicit["request_id"] = json!("req-1");
        let event = decode(&explicit, Some(record_time())).expect("accepted");
        assert_eq!(event.received_at.to_rfc3339(), "2026-12-04T08:00:01+00:00");
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn the_gateway_form_round_trips() {
        let event = decode(&http_shape(), Some(record_time())).expect("accepted");
        let again = UsageEvent::from_kafka_record(&event.to_kafka_value(), None).expect("decodes");
        assert_eq!(again, event);
    }

    #[test]
    fn what_is_still_refused_says_why() {
        let cases = [
            ("id", json!(null), "is required on Kafka"),
            (
                "total_tokens",
                json!(7),
                "must equal prompt_tokens + completion_tokens",
            ),
            ("received_at", json!("yesterday"), "RFC 3339"),
            ("colour", json!("red"), "unknown field"),
            ("prompt_tokens", json!(-1), ""),
        ];
        for (field, value, message) in cases {
            let mut shape = http_shape();
            if value.is_null() {
                shape.as_object_mut().expect("object").remove(field);
            } else {
                shape[field] = value;
            }
            let error = decode(&shape, Some(record_time())).expect_err(field);
            assert!(
                error
                    .errors
                    .iter()
                    .any(|e| e.field == field && e.message.contains(message)),
                "{field}: {error}"
            );
        }
        let error = UsageEvent::from_kafka_record(b"[1]", None).expect_err("array");
        assert!(error.to_string().contains("JSON object"));
    }
}
