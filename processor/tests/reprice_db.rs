//! `processor reprice` on the real database: rows priced under an old
//! book, a price file change, a re-pricing, and afterwards rows, rollups,
//! budget spend and threshold crossings that agree with each other.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use ledger::{PriceBook, UsageEvent};
use processor::budgets;
use processor::config::DatabaseConfig;
use processor::database;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare;
use processor::record::Record;
use processor::reprice::{self, RepriceArgs};
use processor::write::{AttemptState, Writer};
use rust_decimal::Decimal;
use uuid::Uuid;

mod support;
use support::migrated_database;

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

/// $1 per million input tokens; `acme-new` is not listed yet.
const OLD_BOOK: &str = r#"
[[price]]
provider = "acme-ai"
model = "acme-large"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "1"
output = "4"
"#;

/// The price of acme-large corrected to $2, and acme-new listed.
const NEW_BOOK: &str = r#"
[[price]]
provider = "acme-ai"
model = "acme-large"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "2"
output = "4"

[[price]]
provider = "acme-ai"
model = "acme-new"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "3"
output = "3"
"#;

const BUDGET: &str = r#"
[[budgets]]
name = "acme-monthly"
tenant_id = "acme"
period = "monthly"
amount_usd = "10.00"
"#;

fn event(tenant: &str, model: &str, prompt: u32, at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: at,
        tenant_id: tenant.into(),
        user_id: None,
        provider: "acme-ai".into(),
        model: model.into(),
        prompt_tokens: prompt,
        completion_tokens: 0,
        total_tokens: prompt,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
    }
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0)
        .single()
        .expect("valid time")
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, d).expect("valid day")
}

#[tokio::test]
async fn a_price_fix_repriced_keeps_rows_rollups_spend_and_crossings_consistent() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(pool, "reprice-test", NoDeadLetters, Duration::from_secs(20));
    let mut client = database.client().await;
    let parsed = budgets::parse_file(Path::new("budgets.toml"), BUDGET).expect("budget");
    budgets::apply(&mut client, &parsed, false)
        .await
        .expect("budget applies");

    // acme: 3 × 1M tokens of acme-large at $1 = $3 (30 %), and 1M tokens of
    // acme-new, unpriced. globex: 1M of acme-large on another day.
    let events = [
        event("acme", "acme-large", 1_000_000, at(10, 1)),
        event("acme", "acme-large", 1_000_000, at(10, 2)),
        event("acme", "acme-large", 1_000_000, at(11, 3)),
        event("acme", "acme-new", 1_000_000, at(11, 4)),
        event("globex", "acme-large", 1_000_000, at(12, 5)),
    ];
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| Record {
            topic: "usage-events".into(),
            partition: 0,
            offset: offset as i64,
            key: None,
            value: Some(e.to_kafka_value()),
            schema: Some(ledger::KAFKA_SCHEMA.as_bytes().to_vec()),
            timestamp_ms: None,
        })
        .collect();
    let old = PriceBook::from_toml(OLD_BOOK).expect("old book");
    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");
    let mut prepared = prepare::prepare(records, &old);
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
    let mut out = Vec::new();
    processor::refresh::materialize(&client, day(1), day(31), &mut out)
        .await
        .expect("rollups refresh");
    assert_eq!(spend(&client).await, Decimal::new(3, 0));
    assert!(crossings(&client).await.is_empty());

    let args = RepriceArgs {
        from: day(1),
        to: day(31),
        tenant: None,
        provider: None,
        model: None,
        dry_run: true,
        batch_rows: 2,
    };
    let mut out = Vec::new();
    let dry = reprice::run(&mut client, &new, &args, &mut out)
        .await
        .expect("dry run");
    let printed = String::from_utf8_lossy(&out);
    assert_eq!(dry.scanned, 5);
    assert_eq!(dry.corrected, 5, "{printed}");
    let acme_large = &dry.totals[&("acme".to_string(), "acme-ai/acme-large".to_string())];
    assert_eq!(
        (acme_large.before, acme_large.after),
        (Decimal::new(3, 0), Decimal::new(6, 0))
    );
    assert!(printed.contains("acme-ai/acme-new"), "{printed}");
    assert_eq!(
        audit_total(&client).await,
        Decimal::new(4, 0),
        "a dry run writes nothing"
    );

    // Only acme's rows, in pages of 2 rows.
    let args = RepriceArgs {
        tenant: Some("acme".into()),
        dry_run: false,
        ..args
    };
    let mut out = Vec::new();
    let run = reprice::run(&mut client, &new, &args, &mut out)
        .await
        .expect("reprice");
    let printed = String::from_utf8_lossy(&out);
    assert_eq!((run.scanned, run.corrected), (4, 4), "{printed}");

    // Rows: acme 3 × $2 + $3 (now priced), globex untouched at $1.
    assert_eq!(audit_total(&client).await, Decimal::new(10, 0));
    let row = client
        .query_one(
            "SELECT pricing_status, price_entry, price_book_version, cost_source, repriced_at IS NOT NULL
             FROM gateway_mode_audit WHERE model = 'acme-new'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, String>(0),
        "priced",
        "unpriced rows become priced by the command"
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("acme-ai/acme-new@2025-01-01")
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some(new.version())
    );
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("book"));
    assert!(row.get::<_, bool>(4));

    // The audit trail: one correction per changed row, before and after.
    let trail = client
        .query_one(
            "SELECT count(*), sum(old_cost), sum(new_cost), count(DISTINCT run_id)
             FROM cost_corrections",
            &[],
        )
        .await
        .expect("corrections");
    assert_eq!(trail.get::<_, i64>(0), 4);
    assert_eq!(trail.get::<_, Decimal>(1), Decimal::new(3, 0));
    assert_eq!(trail.get::<_, Decimal>(2), Decimal::new(9, 0));
    assert_eq!(trail.get::<_, i64>(3), 1);

    // Rollups agree with the rows, per day.
    let mismatches = client
        .query(
            "SELECT a.day FROM
               (SELECT time_bucket('1 day', created_at) AS day, sum(estimated_cost) AS cost
                FROM gateway_mode_audit GROUP BY 1) a
             FULL JOIN (SELECT day, sum(cost) AS cost FROM usage_daily GROUP BY 1) r
               ON a.day = r.day
             WHERE a.cost IS DISTINCT FROM r.cost",
            &[],
        )
        .await
        .expect("rollups");
    assert!(
        mismatches.is_empty(),
        "rollups disagree with the rows on {} days",
        mismatches.len()
    );

    // Budget spend is recomputed ($9 of $10), and the thresholds it now
    // reaches (50, 75 and 90 %) are recorded as crossed.
    assert_eq!(spend(&client).await, Decimal::new(9, 0));
    assert_eq!(crossings(&client).await, vec![50, 75, 90]);
    assert_eq!(run.crossings_recorded, 3);

    // A second run finds nothing to correct.
    let mut out = Vec::new();
    let again = reprice::run(&mut client, &new, &args, &mut out)
        .await
        .expect("second reprice");
    assert_eq!(again.corrected, 0);
    assert_eq!(again.restated, 0);
}

async fn audit_total(client: &tokio_postgres::Client) -> Decimal {
    client
        .query_one("SELECT sum(estimated_cost) FROM gateway_mode_audit", &[])
        .await
        .expect("total")
        .get(0)
}

async fn spend(client: &tokio_postgres::Client) -> Decimal {
    client
        .query_one(
            "SELECT COALESCE(sum(spend_usd), 0) FROM budget_spend WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .expect("spend")
        .get(0)
}

async fn crossings(client: &tokio_postgres::Client) -> Vec<i16> {
    client
        .query(
            "SELECT threshold FROM budget_alerts ORDER BY threshold",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|row| row.get(0))
        .collect()
}
