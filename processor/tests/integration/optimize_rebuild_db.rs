//! The optimization rollup kept equal to a fresh computation from the raw
//! table when stored cost changes: `processor reprice` (also when a run is
//! interrupted and resumed) and `processor rebuild-optimize` (usage stored
//! before the rollup existed). The fresh computation is the batch path on
//! a second database that stored the same events under the new price book
//! from the start; every column of both rollup tables must agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::optimize::rebuild::{self, RebuildArgs};
use processor::record::Record;
use processor::reprice::{self, RepriceArgs};
use processor::write::{AttemptState, Writer};
use processor::{database, prepare};
use rust_decimal::Decimal;
use store::optimize::report::optimize_report;
use store::optimize::Range;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

/// acme-large at $1/$4 per million with cache reads; acme-new unlisted.
const OLD_BOOK: &str = r#"
[[price]]
provider = "acme-ai"
model = "acme-large"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "1"
cache_read = "0.1"
output = "4"
"#;

/// acme-large's input corrected to $2 (its cache reads to $0.25), and
/// acme-new listed: costs, list-cost parts and histograms all move.
const NEW_BOOK: &str = r#"
[[price]]
provider = "acme-ai"
model = "acme-large"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "2"
cache_read = "0.25"
output = "4"

[[price]]
provider = "acme-ai"
model = "acme-new"
effective_from = "2025-01-01T00:00:00Z"
source = "https://example.com/pricing"
input = "3"
output = "3"
"#;

fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, hour, minute, 0)
        .single()
        .expect("valid time")
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, d).expect("valid day")
}

/// Two tenants, two models (one unpriced under the old book), three use
/// cases and unlabelled usage, cached and uncached, over three days.
fn traffic() -> Vec<UsageEvent> {
    let mut events = Vec::new();
    for i in 0..36u32 {
        let tenant = if (i / 3) % 3 == 0 { "globex" } else { "acme" };
        let model = if i % 4 == 0 { "acme-new" } else { "acme-large" };
        let prompt = 1_000 + i * 7_919 % 50_000;
        let cached = if i % 2 == 0 { prompt / 3 } else { 0 };
        let completion = 100 + i * 37;
        let mut labels = BTreeMap::new();
        if i % 5 != 0 {
            let use_case = ["chat", "search", "summarize"][(i / 2 % 3) as usize];
            labels.insert("use_case".to_owned(), use_case.to_owned());
        }
        events.push(UsageEvent {
            id: Uuid::now_v7(),
            created_at: at(10 + i % 3, i % 24, i),
            tenant_id: tenant.into(),
            user_id: None,
            provider: "acme-ai".into(),
            model: model.into(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_prompt_tokens: cached,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
            service_tier: None,
            calls: Default::default(),
            unpriced_tokens: Default::default(),
            estimated_cost: None,
            labels,
            received_at: Utc::now().trunc_subsecs(6),
            request_id: None,
            call_identity: false,
            reservation_id: None,
            api_key: None,
        });
    }
    events
}

/// A migrated database with `events` written by the batch path under
/// `book`, the use-case rollup on.
async fn stored(events: &[UsageEvent], book: &str) -> (e2e::Database, tokio_postgres::Client) {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(
        pool.clone(),
        "optimize-rebuild",
        NoDeadLetters,
        Duration::from_secs(20),
    )
    .with_attribution_keys(vec!["use_case".into()])
    .with_price_book(Arc::new(PriceBook::from_toml(book).expect("book")));
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| event_record(0, offset as i64, e))
        .collect();
    let book = PriceBook::from_toml(book).expect("book");
    let mut prepared = prepare::prepare(records, &book);
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
    processor::optimize_apply::drain(&pool, Duration::from_secs(20))
        .await
        .expect("the deltas apply");
    let client = database.client().await;
    (database, client)
}

/// Every row of `table` but its `updated_at`, each column as text (numbers
/// normalized, so 2 and 2.000 agree), in key order.
async fn dump(client: &tokio_postgres::Client, table: &str) -> Vec<BTreeMap<String, String>> {
    let rows = client
        .query(
            &format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5, 6, 7"),
            &[],
        )
        .await
        .expect(table);
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .filter(|c| c.name() != "updated_at")
                .map(|c| {
                    let name = c.name();
                    let value = match *c.type_() {
                        Type::NUMERIC => row
                            .get::<_, Option<Decimal>>(name)
                            .map(|d| d.normalize().to_string()),
                        Type::INT8 => row.get::<_, Option<i64>>(name).map(|n| n.to_string()),
                        Type::INT4 => row.get::<_, Option<i32>>(name).map(|n| n.to_string()),
                        Type::TEXT | Type::VARCHAR => row.get::<_, Option<String>>(name),
                        Type::TIMESTAMPTZ => row
                            .get::<_, Option<DateTime<Utc>>>(name)
                            .map(|t| t.to_rfc3339()),
                        ref other => panic!("{table}.{name}: unexpected type {other}"),
                    };
                    (name.to_owned(), value.unwrap_or_else(|| "NULL".into()))
                })
                .collect()
        })
        .collect()
}

/// Both rollup tables of `client`.
async fn rollup(
    client: &tokio_postgres::Client,
) -> (Vec<BTreeMap<String, String>>, Vec<BTreeMap<String, String>>) {
    (
        dump(client, "usage_optimize_daily").await,
        dump(client, "usage_optimize_histogram").await,
    )
}

fn reprice_args(batch_rows: u32) -> RepriceArgs {
    RepriceArgs {
        from: day(1),
        to: day(31),
        tenant: None,
        provider: None,
        model: None,
        dry_run: false,
        batch_rows,
    }
}

/// Fails every write once the first page's progress line is written: the
/// run stops right after its first page committed, as a killed one would.
struct StopAfterFirstPage(Vec<u8>);

impl std::io::Write for StopAfterFirstPage {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        if String::from_utf8_lossy(&self.0).contains("corrected so far") {
            return Err(std::io::Error::other("stopped after the first page"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue: `processor reprice` corrected every derived figure but the
/// optimization rollup, so the optimize report kept the old cost.
#[tokio::test]
async fn a_reprice_leaves_the_optimization_rollup_as_a_fresh_computation_gives() {
    let events = traffic();
    let (_fresh_db, fresh) = stored(&events, NEW_BOOK).await;
    let expected = rollup(&fresh).await;
    let (_database, mut client) = stored(&events, OLD_BOOK).await;
    assert_ne!(
        rollup(&client).await.0,
        expected.0,
        "the price change moves the rollup"
    );

    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");
    let run = reprice::run(&mut client, &new, &reprice_args(5), &mut Vec::new())
        .await
        .expect("reprice");
    assert_eq!(run.corrected, events.len() as u64);
    let (daily, histogram) = rollup(&client).await;
    assert_eq!(daily, expected.0, "usage_optimize_daily after the reprice");
    assert_eq!(
        histogram, expected.1,
        "usage_optimize_histogram after the reprice"
    );
}

/// A run stopped after its first page leaves that page's day pending; the
/// next run rebuilds it before it goes on. The first page is the only row
/// of its day and tenant, so only that resume can correct it.
#[tokio::test]
async fn an_interrupted_reprice_leaves_the_optimization_rollup_fresh_after_the_next_run() {
    let mut events = traffic();
    let mut first = events[0].clone();
    first.id = Uuid::now_v7();
    first.created_at = at(9, 8, 0);
    first.tenant_id = "initech".into();
    first.model = "acme-large".into();
    events.insert(0, first);
    let (_fresh_db, fresh) = stored(&events, NEW_BOOK).await;
    let expected = rollup(&fresh).await;
    let (_database, mut client) = stored(&events, OLD_BOOK).await;
    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");

    let stopped = reprice::run(
        &mut client,
        &new,
        &reprice_args(1),
        &mut StopAfterFirstPage(Vec::new()),
    )
    .await;
    assert!(stopped.is_err(), "the run stops after its first page");
    let initech = "SELECT cost::text FROM usage_optimize_daily WHERE tenant_id = 'initech'";
    let stale: String = client
        .query_one(initech, &[])
        .await
        .expect("initech")
        .get(0);
    let mut out = Vec::new();
    let run = reprice::run(&mut client, &new, &reprice_args(4), &mut out)
        .await
        .expect("the next run");
    assert_eq!(run.corrected, events.len() as u64 - 1);
    let printed = String::from_utf8(out).expect("utf-8");
    assert!(
        printed.contains("optimization rollup of 2026-01-09 initech rebuilt from 1 rows"),
        "{printed}"
    );
    let fixed: String = client
        .query_one(initech, &[])
        .await
        .expect("initech")
        .get(0);
    assert_ne!(
        fixed, stale,
        "the stopped run's page is corrected by the next run"
    );
    assert_eq!(rollup(&client).await, expected);
}

/// Usage stored without the rollup (before V14): `processor
/// rebuild-optimize` computes it from the raw table, per day and tenant,
/// and the report then answers what the batch path would have.
#[tokio::test]
async fn rebuild_optimize_computes_the_rollup_of_usage_stored_without_it() {
    let events = traffic();
    let (_database, mut client) = stored(&events, NEW_BOOK).await;
    let expected = rollup(&client).await;
    let range = Range {
        from: day(1),
        to: day(31),
        tenant: None,
    };
    let report = serde_json::to_value(optimize_report(&client, &range).await.expect("report"))
        .expect("json");
    client
        .batch_execute("DELETE FROM usage_optimize_daily; DELETE FROM usage_optimize_histogram")
        .await
        .expect("rollup emptied");
    let book = PriceBook::from_toml(NEW_BOOK).expect("book");

    let mut out = Vec::new();
    let acme_only = RebuildArgs {
        from: day(1),
        to: day(31),
        tenant: Some("acme".into()),
    };
    rebuild::run(&mut client, &book, &acme_only, &mut out)
        .await
        .expect("rebuild of acme");
    let acme: Vec<_> = expected
        .0
        .iter()
        .filter(|r| r["tenant_id"] == "acme")
        .cloned()
        .collect();
    assert!(!acme.is_empty());
    assert_eq!(dump(&client, "usage_optimize_daily").await, acme);

    let every_tenant = RebuildArgs {
        tenant: None,
        ..acme_only
    };
    let mut out = Vec::new();
    let rebuilt = rebuild::run(&mut client, &book, &every_tenant, &mut out)
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.rows, events.len() as u64);
    let printed = String::from_utf8(out).expect("utf-8");
    assert!(
        printed.contains("2026-01-10 acme:") && printed.contains("2026-01-12 globex:"),
        "progress per day and tenant:\n{printed}"
    );
    assert_eq!(rollup(&client).await, expected);
    let again = serde_json::to_value(optimize_report(&client, &range).await.expect("report"))
        .expect("json");
    assert_eq!(again, report);
}

#[test]
fn rebuild_optimize_has_help() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["rebuild-optimize", "--help"])
        .output()
        .expect("processor runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for expected in [
        "Recompute the optimization rollup",
        "--from",
        "--to",
        "--tenant",
    ] {
        assert!(help.contains(expected), "{expected} in:\n{help}");
    }
}
