//! Each stored row says how its cost was made, on the real database:
//! "why is this row $4.20" is one SELECT.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use ledger::pricebook::ServiceTier;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::write::{AttemptState, Writer};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::support::event_record;
use crate::support::migrated_database;

#[derive(Debug, Clone, Default)]
struct RefusingSink;

impl DeadLetterSink for RefusingSink {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("nothing here should be dead-lettered: {}", letter.detail);
    }
}

fn event(model: &str, prompt: u32, output: u32) -> UsageEvent {
    let now = Utc::now().trunc_subsecs(6);
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: now - chrono::Duration::minutes(5),
        tenant_id: "acme".into(),
        user_id: None,
        provider: "anthropic".into(),
        model: model.into(),
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt + output,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: now,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

#[tokio::test]
async fn why_is_this_row_4_20_is_answered_from_sql() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(
        pool,
        "provenance-test",
        RefusingSink,
        Duration::from_secs(20),
    );

    // 250,000 prompt tokens is above Sonnet 4.5's 200k tier, so every token
    // is billed at $6 / $22.50 per million: $1.50 + $2.70 = $4.20.
    let long = event("claude-sonnet-4-5-20250929", 250_000, 120_000);
    let mut batch = event("claude-sonnet-4-5", 1_000, 0);
    batch.service_tier = Some(ServiceTier::Batch);
    batch.cache_write_1h_tokens = 1_000;
    batch.calls = [("web_search".to_string(), 2)].into();
    let unknown = event("claude-sonnet-4-5-pro", 10, 10);
    let book = PriceBook::builtin().expect("the built-in book parses");
    let mut prepared = prepare::prepare(
        vec![
            event_record(0, 0, &long),
            event_record(0, 1, &batch),
            event_record(0, 2, &unknown),
        ],
        &book,
    );
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");

    let client = database.client().await;
    let row = client
        .query_one(
            "SELECT estimated_cost, list_cost, price_entry, price_book_version, pricing_rule,
                    cost_source, pricing_status
             FROM gateway_mode_audit WHERE id = $1",
            &[&long.id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, Decimal>(0), Decimal::new(420, 2));
    assert_eq!(row.get::<_, Option<Decimal>>(1), Some(Decimal::new(420, 2)));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("anthropic/claude-sonnet-4-5@2025-09-29")
    );
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some(book.version())
    );
    let rule: String = row.get(4);
    assert!(
        rule.contains("snapshot") && rule.contains("long context >200000"),
        "{rule}"
    );
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("book"));
    assert_eq!(row.get::<_, String>(6), "priced");

    let row = client
        .query_one(
            "SELECT cache_write_1h_tokens, service_tier, calls->>'web_search', estimated_cost,
                    pricing_rule
             FROM gateway_mode_audit WHERE id = $1",
            &[&batch.id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, Option<i32>>(0), Some(1_000));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("batch"));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("2"));
    // batch ×0.5 of 1,000 × $6/M (1-hour write) plus 2 searches at $10/1,000
    assert_eq!(row.get::<_, Decimal>(3), Decimal::new(23, 3));
    let rule: String = row.get(4);
    assert!(rule.contains("batch"), "{rule}");

    let row = client
        .query_one(
            "SELECT pricing_status, cost_source, price_entry, pricing_rule
             FROM gateway_mode_audit WHERE id = $1",
            &[&unknown.id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "unpriced");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert!(row.get::<_, String>(3).contains("unknown model"));
}
