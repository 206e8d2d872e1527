//! What processor's database tests share.

pub mod fake_providers;

use e2e::Database;
use processor::migrate;

/// A fresh database with the processor's embedded migrations applied.
pub async fn migrated_database() -> Database {
    let database = Database::start().await;
    let mut client = database.client().await;
    migrate::apply(&mut client, &migrate::embedded().expect("embedded"))
        .await
        .expect("migrations apply");
    database
}

/// The topic the database tests' records come from.
pub const TOPIC: &str = "usage-events";

/// `event` as the gateway writes it to the topic (key = tenant, `schema`
/// header), at `partition` and `offset`.
pub fn event_record(
    partition: i32,
    offset: i64,
    event: &ledger::UsageEvent,
) -> processor::record::Record {
    processor::record::Record {
        topic: TOPIC.into(),
        partition,
        offset,
        key: Some(event.tenant_id.as_bytes().to_vec()),
        value: Some(event.to_kafka_value()),
        schema: Some(ledger::KAFKA_SCHEMA.as_bytes().to_vec()),
        timestamp_ms: None,
    }
}
