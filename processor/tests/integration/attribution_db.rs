//! Cost by use case against a real TimescaleDB (PostgreSQL + TimescaleDB
//! through the e2e harness): the batch transaction adds exactly the new rows
//! to `usage_attribution_daily`, a replay adds nothing, the rollup agrees
//! with a rebuild from the raw table, and `processor report` shows it.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use processor::{database, prepare, report};
use rust_decimal::Decimal;
use store::attribution::UNLABELLED;
use uuid::Uuid;

use crate::support::event_record;
use crate::support::migrated_database;

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

fn event(tenant: &str, at: DateTime<Utc>, use_case: Option<&str>, model: &str) -> UsageEvent {
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: at,
        tenant_id: tenant.into(),
        user_id: None,
        provider: "openai".into(),
        model: model.into(),
        prompt_tokens: 1_000,
        completion_tokens: 200,
        total_tokens: 1_200,
        cached_prompt_tokens: 100,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: use_case
            .map(|value| [("use_case".to_owned(), value.to_owned())].into())
            .unwrap_or_default(),
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

type RollupRow = (String, String, String, String, i64, i64, Decimal, i64);

async fn rollup(client: &tokio_postgres::Client) -> Vec<RollupRow> {
    client
        .query(
            "SELECT to_char(day, 'YYYY-MM-DD'), tenant_id::text, label_key, label_value,
                    requests, total_tokens, cost, unpriced_requests
             FROM usage_attribution_daily ORDER BY 1, 2, 3, 4, 5, 6, 7, 8",
            &[],
        )
        .await
        .expect("rollup")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect()
}

#[tokio::test]
async fn batches_add_new_rows_once_and_agree_with_a_rebuild_from_raw() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let keys = vec!["use_case".to_owned(), "team".to_owned()];
    let writer = Writer::new(
        pool,
        "attribution-test",
        NoDeadLetters,
        Duration::from_secs(20),
    )
    .with_attribution_keys(keys.clone());

    let now = Utc::now().trunc_subsecs(6);
    let late = now - chrono::Duration::days(20);
    let events = [
        event("acme", now, Some("support-bot"), "gpt-4o"),
        event("acme", now, Some("support-bot"), "gpt-4o-mini"),
        event("acme", now, None, "gpt-4o"),
        event("acme", now, Some("code-gen"), "no-such-model"),
        event("globex", late, Some("support-bot"), "gpt-4o"),
    ];
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| event_record(0, i as i64, e))
        .collect();
    let book = PriceBook::builtin().expect("the built-in book parses");
    for _ in 0..2 {
        // the second pass is a redelivery: nothing new, nothing added
        let mut prepared = prepare::prepare(records.clone(), &book);
        writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits");
    }

    let client = database.client().await;
    let from_batches = rollup(&client).await;
    let acme_unlabelled = from_batches
        .iter()
        .find(|r| r.1 == "acme" && r.2 == "use_case" && r.3 == UNLABELLED)
        .expect("unlabelled bucket");
    assert_eq!(acme_unlabelled.4, 1);
    let unpriced = from_batches
        .iter()
        .find(|r| r.3 == "code-gen")
        .expect("unpriced model is kept");
    assert_eq!((unpriced.6, unpriced.7), (Decimal::ZERO, 1));
    // every event counts once per key: as 'team' all are unlabelled
    let team_requests: i64 = from_batches
        .iter()
        .filter(|r| r.2 == "team")
        .map(|r| r.4)
        .sum();
    assert_eq!(team_requests, 5);
    // per key, the values sum to the raw table's cost
    let raw_cost: Decimal = client
        .query_one("SELECT sum(estimated_cost) FROM gateway_mode_audit", &[])
        .await
        .expect("raw")
        .get(0);
    assert!(raw_cost > Decimal::ZERO);
    for key in &keys {
        let cost: Decimal = from_batches
            .iter()
            .filter(|r| &r.2 == key)
            .map(|r| r.6)
            .sum();
        assert_eq!(cost, raw_cost, "{key}");
    }

    let mut client = client;
    let transaction = client.transaction().await.expect("begin");
    let start = processor::attribution::utc_day(now - chrono::Duration::days(30));
    store::attribution::rebuild(
        &transaction,
        &keys,
        start,
        now + chrono::Duration::days(1),
        100,
    )
    .await
    .expect("rebuild");
    transaction.commit().await.expect("commit");
    assert_eq!(
        rollup(&client).await,
        from_batches,
        "rebuild equals batches"
    );

    let gathered = report::gather(&client, 7).await.expect("report");
    let table = gathered.to_table();
    assert!(table.contains("cost by use case"), "{table}");
    assert!(table.contains("use_case=support-bot"), "{table}");
    assert!(table.contains("use_case=(unlabelled)"), "{table}");
    // the late event is outside the last 7 days
    let support_bot = gathered
        .cost_by_use_case
        .iter()
        .find(|r| r.label_key == "use_case" && r.label_value == "support-bot")
        .expect("support-bot");
    assert_eq!(support_bot.sums.requests, 2);
}

/// Issue: `usage_attribution_daily` took one row per distinct label value a
/// tenant sent, without bound. Past `attribution.max_values_per_day`
/// distinct values of a key for a tenant and day, new values count under
/// `(other)`; a value already admitted that day keeps its row, another
/// tenant's values are its own, and each key's values still sum to the raw
/// cost. A rebuild from the raw table applies the same bound.
#[tokio::test]
async fn label_values_past_the_daily_bound_count_under_other() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let keys = vec!["use_case".to_owned()];
    let writer = Writer::new(
        pool,
        "attribution-bound-test",
        NoDeadLetters,
        Duration::from_secs(20),
    )
    .with_attribution_keys(keys.clone())
    .with_attribution_bound(3);
    let book = PriceBook::builtin().expect("the built-in book parses");
    let now = Utc::now().trunc_subsecs(6);
    let mut offset = 0_i64;
    let mut write = async |events: Vec<UsageEvent>| {
        let records: Vec<Record> = events
            .iter()
            .map(|e| {
                offset += 1;
                event_record(0, offset, e)
            })
            .collect();
        let mut prepared = prepare::prepare(records, &book);
        writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits");
    };
    write(
        ["v1", "v2", "v3", "v4", "v5"]
            .iter()
            .map(|v| event("acme", now, Some(v), "gpt-4o"))
            .chain([event("globex", now, Some("g1"), "gpt-4o")])
            .collect(),
    )
    .await;
    write(vec![
        event("acme", now, Some("v1"), "gpt-4o-mini"),
        event("acme", now, Some("v6"), "gpt-4o"),
        event("acme", now, None, "gpt-4o"),
    ])
    .await;

    let client = database.client().await;
    let from_batches = rollup(&client).await;
    let acme_values: std::collections::BTreeMap<String, i64> = from_batches
        .iter()
        .filter(|r| r.1 == "acme")
        .fold(Default::default(), |mut values, r| {
            *values.entry(r.3.clone()).or_default() += r.4;
            values
        });
    let expected: std::collections::BTreeMap<String, i64> = [
        ("(other)", 3),
        (UNLABELLED, 1),
        ("v1", 2),
        ("v2", 1),
        ("v3", 1),
    ]
    .into_iter()
    .map(|(v, n)| (v.to_owned(), n))
    .collect();
    assert_eq!(acme_values, expected);
    assert!(from_batches.iter().any(|r| r.1 == "globex" && r.3 == "g1"));
    let raw_cost: Decimal = client
        .query_one("SELECT sum(estimated_cost) FROM gateway_mode_audit", &[])
        .await
        .expect("raw")
        .get(0);
    assert_eq!(from_batches.iter().map(|r| r.6).sum::<Decimal>(), raw_cost);

    let mut client = client;
    let transaction = client.transaction().await.expect("begin");
    let start = processor::attribution::utc_day(now);
    store::attribution::rebuild(
        &transaction,
        &keys,
        start,
        now + chrono::Duration::days(1),
        3,
    )
    .await
    .expect("rebuild");
    transaction.commit().await.expect("commit");
    assert_eq!(
        rollup(&client).await,
        from_batches,
        "rebuild equals batches"
    );
}
