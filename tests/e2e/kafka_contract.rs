//! The Kafka topic's public contract, docs/kafka/usage.v1.schema.json, held to the Rust types:
//! every value the gateway writes validates against it, the HTTP API's shape with an id does
//! too, its properties are exactly the fields the processor reads, and a property is required
//! by the schema exactly when the processor refuses a record without it.

use std::collections::BTreeSet;

use ledger::event::{parse_batch, KNOWN_FIELDS};
use ledger::{UsageEvent, ValidationLimits};
use serde_json::{json, Value};

fn schema() -> Value {
    let path = e2e::repo_root().join("docs/kafka/usage.v1.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// A producer's event in the HTTP shape, with every optional field set.
fn full_http_shape() -> Value {
    json!({
        "id": "019ae2c4-3b00-7000-8000-000000000042",
        "created_at": "2026-12-04T08:00:00.123456Z",
        "tenant_id": "acme",
        "user_id": "u-1",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "prompt_tokens": 1000,
        "completion_tokens": 200,
        "total_tokens": 1200,
        "cached_prompt_tokens": 600,
        "cache_write_tokens": 100,
        "reasoning_tokens": 50,
        "estimated_cost": "0.0123",
        "labels": {"team": "search", "feature.name": "summaries"},
        "received_at": "2026-12-04T08:00:01Z",
        "request_id": "req-7",
    })
}

#[test]
fn every_value_the_gateway_writes_validates() {
    let validator = validator();
    let bodies = [
        json!({"tenant_id": "acme", "provider": "openai", "model": "gpt-4o",
               "prompt_tokens": 10, "completion_tokens": 2}),
        {
            let mut full = full_http_shape();
            let object = full.as_object_mut().expect("object");
            object.remove("received_at");
            object.remove("request_id");
            let yesterday = now() - chrono::Duration::days(1);
            object.insert("created_at".into(), json!(yesterday.to_rfc3339()));
            full
        },
    ];
    for body in bodies {
        let limits = ValidationLimits::default();
        let events = parse_batch(body.to_string().as_bytes(), now(), &limits).expect("valid");
        for mut event in events {
            event.request_id = Some("req-1".into());
            let value: Value = serde_json::from_slice(&event.to_kafka_value()).expect("JSON");
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{value}: {errors:?}");
        }
    }
}

#[test]
fn the_http_shape_with_an_id_validates_and_decodes() {
    let validator = validator();
    let value = full_http_shape();
    assert!(validator.is_valid(&value));
    let event = UsageEvent::from_kafka_record(value.to_string().as_bytes(), None)
        .expect("the processor accepts it");
    assert_eq!(event.total_tokens, 1200);
}

#[test]
fn the_schemas_properties_are_the_fields_the_processor_reads() {
    let schema = schema();
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    let mut fields: BTreeSet<&str> = KNOWN_FIELDS.iter().copied().collect();
    fields.extend(ledger::event::PRODUCER_FIELDS);
    assert_eq!(properties, fields);
    assert_eq!(schema["additionalProperties"], false);

    // Required by the schema exactly when the processor refuses a record without it.
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let validator = validator();
    for field in properties {
        let mut value = full_http_shape();
        value.as_object_mut().expect("object").remove(field);
        let decoded = UsageEvent::from_kafka_record(value.to_string().as_bytes(), None);
        assert_eq!(
            decoded.is_err(),
            required.contains(field),
            "{field}: processor says {decoded:?}"
        );
        assert_eq!(
            validator.is_valid(&value),
            !required.contains(field),
            "{field}"
        );
    }
}

#[test]
fn the_schema_refuses_what_the_processor_refuses() {
    let validator = validator();
    for (field, bad) in [
        ("prompt_tokens", json!(-1)),
        ("prompt_tokens", json!("10")),
        ("provider", json!("Open AI")),
        ("estimated_cost", json!(0.5)),
        ("labels", json!({"bad key!": "x"})),
        ("colour", json!("red")),
    ] {
        let mut value = full_http_shape();
        value[field] = bad;
        assert!(
            !validator.is_valid(&value),
            "schema accepts {field}={}",
            value[field]
        );
        assert!(
            UsageEvent::from_kafka_record(value.to_string().as_bytes(), None).is_err(),
            "processor accepts {field}={}",
            value[field]
        );
    }
}

/// A non-Rust producer (confluent-kafka from PyPI) writes the HTTP API's shape with ids straight
/// to the real broker: every event lands once, its retry is a duplicate, and the two records the
/// processor must refuse are dead-lettered.
#[tokio::test]
async fn a_python_producer_writes_straight_to_the_topic() {
    use e2e::ledger_check::{int, text_rows, wait_for_rows};
    use e2e::usage::{Services, USAGE_TOPIC};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(90);
    const COUNT: usize = 16;
    let services = Services::start(1).await;
    let mut processor = services.processor("processor", &[]);
    processor.wait_assigned(WAIT).await;

    let python = e2e::required_path("TOKENLEDGER_PYTHON_BIN");
    let script = e2e::repo_root().join("tests/python/kafka_produce.py");
    let count = COUNT.to_string();
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args(["--bootstrap", &services.broker.bootstrap()])
        .args([
            "--topic",
            USAGE_TOPIC,
            "--tenant",
            "py-producer",
            "--count",
            &count,
        ])
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the producer finishes in time")
        .expect("the producer runs");
    assert!(
        output.status.success(),
        "kafka_produce.py failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");

    let client = services.database.client().await;
    wait_for_rows(&client, COUNT, WAIT).await;
    let counters = e2e::wait_for_some(WAIT, || async {
        let counters = processor.scrape().await?;
        let dead: i64 = counters.dead_lettered.values().sum();
        (counters.inserted + counters.duplicates + dead >= 2 * COUNT as i64 + 2).then_some(counters)
    })
    .await
    .expect("the processor reads every record");
    assert_eq!(counters.inserted, COUNT as i64, "{counters:?}");
    assert_eq!(counters.duplicates, COUNT as i64, "{counters:?}");
    assert_eq!(
        counters.dead_lettered.values().sum::<i64>(),
        2,
        "{counters:?}"
    );

    let rows = text_rows(
        &client,
        "SELECT count(*)::text, sum(prompt_tokens)::text, sum(completion_tokens)::text, \
         count(*) FILTER (WHERE pricing_status = 'priced')::text, \
         count(*) FILTER (WHERE received_at IS NOT NULL AND labels->>'producer' = 'confluent-kafka')::text \
         FROM gateway_mode_audit WHERE tenant_id = 'py-producer'",
    )
    .await;
    let row = &rows[0];
    assert_eq!(int(&row[0]), COUNT as i64);
    assert_eq!(Some(int(&row[1])), summary["prompt_tokens"].as_i64());
    assert_eq!(Some(int(&row[2])), summary["completion_tokens"].as_i64());
    assert_eq!(int(&row[3]), COUNT as i64, "every row is priced");
    assert_eq!(int(&row[4]), COUNT as i64);
    let stored: BTreeSet<String> = text_rows(
        &client,
        "SELECT id::text FROM gateway_mode_audit WHERE tenant_id = 'py-producer'",
    )
    .await
    .into_iter()
    .filter_map(|row| row[0].clone())
    .collect();
    let produced: BTreeSet<String> = summary["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored, produced);
}
