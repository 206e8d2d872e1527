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

use crate::support;
use crate::support::migrated_database;

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
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
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
    // January lies beyond the compression policy's 7 days: compressed, as
    // the policy leaves it (now, not whenever its job next runs).
    client
        .batch_execute(
            "SELECT compress_chunk(c, if_not_compressed => true)
             FROM show_chunks('gateway_mode_audit') c",
        )
        .await
        .expect("chunks compress");
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

/// Every budget tenant gets a monthly spend row.
const EVERY_TENANT_BUDGET: &str = r#"
[[budgets]]
name = "everyone-monthly"
tenant_id = "*"
period = "monthly"
amount_usd = "100.00"
"#;

/// A migrated database with [`EVERY_TENANT_BUDGET`], `events` written under
/// [`OLD_BOOK`] with the `use_case` rollup on, and the rollups
/// materialized over January.
async fn stored(events: &[UsageEvent]) -> (e2e::Database, tokio_postgres::Client) {
    stored_with_bound(events, processor::attribution::DEFAULT_MAX_VALUES_PER_DAY).await
}

/// [`stored`] with the use-case rollup bounded to `max_values_per_day`.
async fn stored_with_bound(
    events: &[UsageEvent],
    max_values_per_day: usize,
) -> (e2e::Database, tokio_postgres::Client) {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let writer = Writer::new(pool, "reprice-test", NoDeadLetters, Duration::from_secs(20))
        .with_attribution_keys(vec!["use_case".into()])
        .with_attribution_bound(max_values_per_day);
    let mut client = database.client().await;
    let parsed =
        budgets::parse_file(Path::new("budgets.toml"), EVERY_TENANT_BUDGET).expect("budget");
    budgets::apply(&mut client, &parsed, false)
        .await
        .expect("budget applies");
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| support::event_record(0, offset as i64, e))
        .collect();
    let old = PriceBook::from_toml(OLD_BOOK).expect("old book");
    let mut prepared = prepare::prepare(records, &old);
    writer
        .write(&mut prepared, &mut AttemptState::default())
        .await
        .expect("batch commits");
    processor::refresh::materialize(&client, day(1), day(31), &mut Vec::new())
        .await
        .expect("rollups refresh");
    (database, client)
}

fn labelled(mut event: UsageEvent, use_case: &str) -> UsageEvent {
    event.labels.insert("use_case".into(), use_case.into());
    event
}

fn args(tenant: Option<&str>, batch_rows: u32) -> RepriceArgs {
    RepriceArgs {
        from: day(1),
        to: day(31),
        tenant: tenant.map(str::to_owned),
        provider: None,
        model: None,
        dry_run: false,
        batch_rows,
    }
}

async fn cost_and_status(
    client: &tokio_postgres::Client,
    tenant: &str,
    id: Uuid,
) -> (Decimal, String) {
    let row = client
        .query_one(
            "SELECT estimated_cost, pricing_status FROM gateway_mode_audit
             WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await
        .expect("one row");
    (row.get(0), row.get(1))
}

/// Every figure derived from cost disagrees with the raw table nowhere:
/// the hourly and daily rollups per day, the use-case rollup per day and
/// tenant, and budget spend per tenant. Returns the disagreements.
async fn disagreements(client: &tokio_postgres::Client) -> Vec<String> {
    let checks = [
        (
            "usage_daily",
            "SELECT a.day::text FROM
               (SELECT time_bucket('1 day', created_at) AS day, sum(estimated_cost) AS cost
                FROM gateway_mode_audit GROUP BY 1) a
             FULL JOIN (SELECT day, sum(cost) AS cost FROM usage_daily GROUP BY 1) r
               ON a.day = r.day
             WHERE a.cost IS DISTINCT FROM r.cost",
        ),
        (
            "usage_hourly",
            "SELECT a.hour::text FROM
               (SELECT time_bucket('1 hour', created_at) AS hour, sum(estimated_cost) AS cost
                FROM gateway_mode_audit GROUP BY 1) a
             FULL JOIN (SELECT bucket AS hour, sum(cost) AS cost FROM usage_hourly GROUP BY 1) r
               ON a.hour = r.hour
             WHERE a.cost IS DISTINCT FROM r.cost",
        ),
        (
            "usage_attribution_daily",
            "SELECT a.day::text || ' ' || a.tenant_id FROM
               (SELECT time_bucket('1 day', created_at) AS day, tenant_id,
                       sum(estimated_cost) AS cost,
                       count(*) FILTER (WHERE pricing_status = 'unpriced') AS unpriced
                FROM gateway_mode_audit GROUP BY 1, 2) a
             FULL JOIN (SELECT day, tenant_id, sum(cost) AS cost,
                               sum(unpriced_requests) AS unpriced
                        FROM usage_attribution_daily WHERE label_key = 'use_case'
                        GROUP BY 1, 2) r
               ON a.day = r.day AND a.tenant_id = r.tenant_id
             WHERE a.cost IS DISTINCT FROM r.cost OR a.unpriced IS DISTINCT FROM r.unpriced",
        ),
        (
            "budget_spend",
            "SELECT a.tenant_id FROM
               (SELECT tenant_id, sum(estimated_cost) AS cost FROM gateway_mode_audit
                GROUP BY 1) a
             FULL JOIN (SELECT tenant_id, sum(spend_usd) AS cost FROM budget_spend
                        GROUP BY 1) s
               ON a.tenant_id = s.tenant_id
             WHERE a.cost IS DISTINCT FROM s.cost",
        ),
    ];
    let mut found = Vec::new();
    for (figure, sql) in checks {
        for row in client.query(sql, &[]).await.expect(figure) {
            found.push(format!("{figure}: {}", row.get::<_, String>(0)));
        }
    }
    found
}

#[tokio::test]
async fn reprice_of_one_tenant_leaves_another_tenants_row_with_the_same_id_alone() {
    // Ids are unique per tenant: acme and globex both sent this id at the
    // same instant, for a model the old book does not list.
    let shared_id = Uuid::now_v7();
    let mut acme = event("acme", "acme-new", 1_000_000, at(10, 1));
    acme.id = shared_id;
    let mut globex = event("globex", "acme-new", 1_000_000, at(10, 1));
    globex.id = shared_id;
    let (_database, mut client) = stored(&[
        labelled(acme, "chat"),
        labelled(globex, "search"),
        event("globex", "acme-large", 1_000_000, at(10, 2)),
    ])
    .await;
    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");

    // One row per page, so a page boundary falls between the two rows.
    let run = reprice::run(&mut client, &new, &args(Some("acme"), 1), &mut Vec::new())
        .await
        .expect("reprice acme");
    assert_eq!((run.scanned, run.corrected), (1, 1));
    assert_eq!(
        cost_and_status(&client, "acme", shared_id).await,
        (Decimal::new(3, 0), "priced".into())
    );
    assert_eq!(
        cost_and_status(&client, "globex", shared_id).await,
        (Decimal::ZERO, "unpriced".into()),
        "a re-pricing of acme changed globex's row"
    );
    let corrected_tenants: Vec<String> = client
        .query("SELECT DISTINCT tenant_id FROM cost_corrections", &[])
        .await
        .expect("corrections")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(corrected_tenants, vec!["acme".to_string()]);
    assert_eq!(disagreements(&client).await, Vec::<String>::new());

    // Every tenant, still a row per page: globex's row with the same key
    // as acme's is not skipped at the boundary, and its correction is kept.
    let run = reprice::run(&mut client, &new, &args(None, 1), &mut Vec::new())
        .await
        .expect("reprice everyone");
    assert_eq!((run.scanned, run.corrected), (3, 2));
    assert_eq!(
        cost_and_status(&client, "globex", shared_id).await,
        (Decimal::new(3, 0), "priced".into())
    );
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM cost_corrections WHERE run_id = $1",
            &[&run.run_id],
        )
        .await
        .expect("corrections")
        .get(0);
    assert_eq!(kept, 2, "one correction per changed row");
    assert_eq!(disagreements(&client).await, Vec::<String>::new());
}

/// Fails every write once the first page's progress line is written, i.e.
/// right after the first page committed: the run stops there, as a killed
/// one would, deterministically.
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

#[tokio::test]
async fn an_interrupted_reprice_leaves_no_derived_figure_stale_after_the_next_run() {
    let (_database, mut client) = stored(&[
        labelled(event("acme", "acme-large", 1_000_000, at(10, 1)), "chat"),
        labelled(event("acme", "acme-new", 1_000_000, at(11, 2)), "chat"),
        event("acme", "acme-large", 1_000_000, at(12, 3)),
        labelled(event("globex", "acme-new", 1_000_000, at(13, 4)), "search"),
    ])
    .await;
    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");

    let stopped = reprice::run(
        &mut client,
        &new,
        &args(None, 1),
        &mut StopAfterFirstPage(Vec::new()),
    )
    .await;
    assert!(stopped.is_err(), "the run stops after its first page");
    assert_eq!(
        audit_total(&client).await,
        Decimal::new(1 + 1, 0) + Decimal::new(1, 0),
        "the first page (acme's first row, $1 -> $2) committed, nothing else"
    );

    let run = reprice::run(&mut client, &new, &args(None, 1), &mut Vec::new())
        .await
        .expect("the next run");
    assert_eq!(run.corrected, 3, "the rows the first run did not reach");
    assert_eq!(audit_total(&client).await, Decimal::new(2 + 3 + 2 + 3, 0));
    assert_eq!(disagreements(&client).await, Vec::<String>::new());
}

/// Issue: the use-case rollup folds values past its daily bound into
/// `(other)`; a re-pricing's correction looked for the event's own value,
/// found no row, and the change was lost from the rollup. It now goes to
/// the row the event was counted under.
#[tokio::test]
async fn a_reprice_corrects_the_other_row_of_values_past_the_daily_bound() {
    let (_database, mut client) = stored_with_bound(
        &[
            labelled(event("acme", "acme-large", 1_000_000, at(10, 1)), "chat"),
            labelled(event("acme", "acme-large", 1_000_000, at(10, 2)), "search"),
            labelled(event("acme", "acme-new", 1_000_000, at(10, 3)), "code"),
        ],
        1,
    )
    .await;
    let other: i64 = client
        .query_one(
            "SELECT sum(requests)::BIGINT FROM usage_attribution_daily
             WHERE label_value = '(other)'",
            &[],
        )
        .await
        .expect("other")
        .get(0);
    assert_eq!(other, 2, "two values past the bound of one");
    let new = PriceBook::from_toml(NEW_BOOK).expect("new book");
    let run = reprice::run(&mut client, &new, &args(None, 100), &mut Vec::new())
        .await
        .expect("reprice");
    assert_eq!(run.corrected, 3);
    assert_eq!(disagreements(&client).await, Vec::<String>::new());
}
