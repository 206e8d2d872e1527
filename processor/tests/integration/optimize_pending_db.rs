//! The optimization rollup's deltas (sql/V21) on a real TimescaleDB: a batch
//! stores them in its transaction, the applier adds many batches' to the
//! tables and deletes them in one transaction. Each figure is checked
//! against the rollup recomputed from the raw table by `processor
//! rebuild-optimize` on an empty rollup, the same computation the batch
//! path folds: every event counts exactly once whatever stops an apply,
//! however many appliers run, and whenever a rebuild runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use deadpool_postgres::Pool;
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::optimize::rebuild::{self, RebuildArgs};
use processor::optimize_apply::{apply_once, drain};
use processor::record::Record;
use processor::write::{AttemptState, Writer};
use processor::{database, prepare};
use store::optimize::pending::apply;
use store::optimize::report::optimize_report;
use store::optimize::Range;
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).expect("valid day")
}

fn at(d: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, 8, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::seconds(i64::from(second))
}

/// Two tenants, priced and unpriced models, three use cases and
/// unlabelled usage, cached and uncached, over two days: every batch
/// touches most of the same rollup rows, as real traffic does.
fn traffic(count: u32) -> Vec<UsageEvent> {
    (0..count)
        .map(|i| {
            let (provider, model) = match i % 4 {
                0 => ("openai", "gpt-4o-mini"),
                1 => ("anthropic", "claude-sonnet-4-5"),
                2 => ("openai", "gpt-4o"),
                _ => ("mystery", "unknown-model"),
            };
            let prompt = 200 + (i * 7_919) % 30_000;
            let completion = 20 + (i * 37) % 2_000;
            let mut labels = BTreeMap::new();
            if i % 5 != 0 {
                let use_case = ["chat", "search", "summarize"][(i / 2 % 3) as usize];
                labels.insert("use_case".to_owned(), use_case.to_owned());
            }
            UsageEvent {
                id: Uuid::now_v7(),
                created_at: at(10 + i % 2, i),
                tenant_id: if i % 3 == 0 { "globex" } else { "acme" }.into(),
                user_id: None,
                provider: provider.into(),
                model: model.into(),
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_prompt_tokens: if i % 2 == 0 { prompt / 4 } else { 0 },
                cache_write_tokens: if i % 7 == 0 { 100 } else { 0 },
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
            }
        })
        .collect()
}

type Tables = (Vec<serde_json::Value>, Vec<serde_json::Value>);

struct Ledger {
    _database: e2e::Database,
    pool: Pool,
    client: tokio_postgres::Client,
    writer: Writer<NoDeadLetters>,
    book: PriceBook,
    next_offset: i64,
}

impl Ledger {
    async fn start() -> Self {
        let database = migrated_database().await;
        let pool = database::pool(&DatabaseConfig {
            url: database.url().into(),
            pool_size: 4,
            timeout_ms: 20_000,
        })
        .expect("pool");
        let book = PriceBook::builtin().expect("the built-in book parses");
        let writer = Writer::new(pool.clone(), "optimize-pending", NoDeadLetters, TIMEOUT)
            .with_attribution_keys(vec!["use_case".into()])
            .with_price_book(Arc::new(book.clone()));
        let client = database.client().await;
        Self {
            _database: database,
            pool,
            client,
            writer,
            book,
            next_offset: 0,
        }
    }

    /// Commits `events` as one batch.
    async fn batch(&mut self, events: &[UsageEvent]) {
        let records: Vec<Record> = events
            .iter()
            .map(|e| {
                self.next_offset += 1;
                event_record(0, self.next_offset, e)
            })
            .collect();
        let mut prepared = prepare::prepare(records, &self.book);
        self.writer
            .write(&mut prepared, &mut AttemptState::default())
            .await
            .expect("batch commits");
    }

    async fn pending(&self) -> i64 {
        self.client
            .query_one("SELECT count(*) AS n FROM usage_optimize_pending", &[])
            .await
            .expect("pending rows")
            .get("n")
    }

    /// Both rollup tables, every column but `updated_at`, in key order.
    async fn tables(&self) -> Tables {
        let rows = |sql: &'static str| async move {
            self.client
                .query(sql, &[])
                .await
                .expect(sql)
                .iter()
                .map(|r| r.get::<_, serde_json::Value>("r"))
                .collect::<Vec<_>>()
        };
        (
            rows(
                "SELECT to_jsonb(t) - 'updated_at' AS r FROM usage_optimize_daily t
                  ORDER BY day, tenant_id, provider, model, use_case",
            )
            .await,
            rows(
                "SELECT to_jsonb(t) AS r FROM usage_optimize_histogram t
                  ORDER BY day, tenant_id, provider, model, use_case, metric, bucket",
            )
            .await,
        )
    }

    /// The tables as they are, then the rollup recomputed from the raw
    /// table on an emptied rollup (nothing pending): what they must hold.
    async fn actual_and_from_raw(&mut self) -> (Tables, Tables) {
        assert_eq!(self.pending().await, 0, "every delta applied");
        let actual = self.tables().await;
        self.client
            .batch_execute("DELETE FROM usage_optimize_daily; DELETE FROM usage_optimize_histogram")
            .await
            .expect("rollup emptied");
        self.rebuild().await;
        let fresh = self.tables().await;
        assert!(!fresh.0.is_empty() && !fresh.1.is_empty());
        (actual, fresh)
    }

    /// Asserts that the tables hold exactly what the raw table gives
    /// ([`Self::actual_and_from_raw`]); the tables as they were.
    async fn assert_equal_to_raw(&mut self) -> Tables {
        let (actual, expected) = self.actual_and_from_raw().await;
        assert_eq!(actual.0, expected.0, "usage_optimize_daily");
        assert_eq!(actual.1, expected.1, "usage_optimize_histogram");
        actual
    }

    async fn rebuild(&mut self) {
        rebuild::run(
            &mut self.client,
            &self.book,
            &RebuildArgs {
                from: day(1),
                to: day(31),
                tenant: None,
            },
            &mut Vec::new(),
        )
        .await
        .expect("rebuild");
    }

    async fn report(&self) -> serde_json::Value {
        let range = Range {
            from: day(1),
            to: day(31),
            tenant: None,
        };
        serde_json::to_value(optimize_report(&self.client, &range).await.expect("report"))
            .expect("json")
    }
}

/// Ten batches over the same days, tenants, models and use cases applied in
/// one transaction leave the rows the per-batch upserts left: the same as
/// the raw table recomputed, to the last decimal and histogram bucket.
#[tokio::test]
async fn many_batches_applied_at_once_equal_the_rollup_of_the_raw_table() {
    let mut ledger = Ledger::start().await;
    let events = traffic(400);
    for chunk in events.chunks(40) {
        ledger.batch(chunk).await;
    }
    assert_eq!(ledger.pending().await, 10, "one pending row per batch");
    assert!(ledger.tables().await.0.is_empty(), "nothing applied yet");
    let applied = apply_once(&ledger.pool, 64)
        .await
        .expect("apply")
        .expect("the turn is free");
    assert_eq!(applied.batches, 10);
    assert_eq!(applied.events, 400);
    ledger.assert_equal_to_raw().await;
}

/// A batch computes its rollup before its transaction, over every event it
/// holds; events it finds stored already (redelivered after a commit whose
/// offsets were lost) are not counted again, whether some or all of the
/// batch.
#[tokio::test]
async fn redelivered_events_in_a_batch_are_counted_once() {
    let mut ledger = Ledger::start().await;
    let events = traffic(120);
    ledger.batch(&events[..60]).await;
    // half stored already, half new, interleaved
    let mixed: Vec<UsageEvent> = events[30..60]
        .iter()
        .zip(&events[60..90])
        .flat_map(|(old, new)| [old.clone(), new.clone()])
        .collect();
    ledger.batch(&mixed).await;
    // every event stored already
    ledger.batch(&events[..90]).await;
    ledger.batch(&events[90..]).await;
    let applied = apply_once(&ledger.pool, 64)
        .await
        .expect("apply")
        .expect("the turn is free");
    assert_eq!(applied.events, 120, "each event counted once");
    ledger.assert_equal_to_raw().await;
}

/// The report and the endpoint read the deltas of committed batches too:
/// exact as soon as a batch commits, and unchanged by the apply.
#[tokio::test]
async fn the_report_counts_a_committed_batch_before_it_is_applied() {
    let mut ledger = Ledger::start().await;
    let events = traffic(120);
    ledger.batch(&events[..60]).await;
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    ledger.batch(&events[60..]).await;
    assert_eq!(ledger.pending().await, 1);
    let before = ledger.report().await;
    let requests: i64 = before["prompt_length_by_tenant"]
        .as_array()
        .expect("by tenant")
        .iter()
        .map(|t| t["requests"].as_i64().expect("requests"))
        .sum();
    assert_eq!(requests, 120, "both batches counted, once");
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    assert_eq!(ledger.pending().await, 0);
    assert_eq!(ledger.report().await, before);
}

/// An applier that dies mid-apply (its transaction never commits) leaves
/// the batch's delta pending; the next apply counts it once, and one more
/// apply finds nothing.
#[tokio::test]
async fn a_crash_between_the_batch_commit_and_the_apply_counts_the_batch_once() {
    let mut ledger = Ledger::start().await;
    let events = traffic(90);
    ledger.batch(&events[..45]).await;
    ledger.batch(&events[45..]).await;
    {
        let mut client = ledger.pool.get().await.expect("connection");
        let transaction = client.transaction().await.expect("begin");
        let applied = apply(&*transaction, 64)
            .await
            .expect("apply")
            .expect("the turn is free");
        assert_eq!(applied.batches, 2, "claimed and summed, not committed");
        // dropped without commit: the database rolls it back, as when the
        // processor is killed here
    }
    assert_eq!(ledger.pending().await, 2, "the deltas survive");
    assert!(ledger.tables().await.0.is_empty());
    let applied = drain(&ledger.pool, TIMEOUT).await.expect("drain");
    assert_eq!(applied.batches, 2);
    let again = drain(&ledger.pool, TIMEOUT).await.expect("drain");
    assert_eq!(again.batches, 0);
    ledger.assert_equal_to_raw().await;
}

/// Two appliers at once (two processors): while one holds the turn the
/// other skips it, and drained together every batch counts once.
#[tokio::test]
async fn two_appliers_at_once_apply_each_batch_once() {
    let mut ledger = Ledger::start().await;
    let events = traffic(300);
    for chunk in events.chunks(30) {
        ledger.batch(chunk).await;
    }
    let mut first = ledger.pool.get().await.expect("connection");
    let first = first.transaction().await.expect("begin");
    let mut second = ledger.pool.get().await.expect("connection");
    let second = second.transaction().await.expect("begin");
    let applied = apply(&*first, 4).await.expect("apply").expect("free");
    assert_eq!(applied.batches, 4);
    assert_eq!(
        apply(&*second, 64).await.expect("apply"),
        None,
        "the turn is taken"
    );
    second.rollback().await.expect("rollback");
    first.commit().await.expect("commit");
    assert_eq!(ledger.pending().await, 6);

    let (a, b) = tokio::join!(drain(&ledger.pool, TIMEOUT), drain(&ledger.pool, TIMEOUT));
    let applied = a.expect("drain").batches + b.expect("drain").batches;
    // the one that found the turn taken may leave rows to the next turn
    let rest = drain(&ledger.pool, TIMEOUT).await.expect("drain").batches;
    assert_eq!(applied + rest, 6);
    ledger.assert_equal_to_raw().await;
}

/// A rebuild of a day while a committed batch's delta is still pending:
/// the raw rows it reads include that batch, so adding the delta later
/// as well would count the batch twice. The rebuild applies the deltas it
/// sees first, under the applier's lock, in the snapshot it reads.
#[tokio::test]
async fn a_rebuild_with_a_batch_pending_counts_the_batch_once() {
    let mut ledger = Ledger::start().await;
    let events = traffic(120);
    ledger.batch(&events[..60]).await;
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    ledger.batch(&events[60..]).await;
    assert_eq!(ledger.pending().await, 1);
    ledger.rebuild().await;
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    ledger.assert_equal_to_raw().await;
}

/// Batches committing while rebuilds and appliers run, all at once: each
/// rebuild's snapshot has a batch's rows and its delta, or neither, so
/// every batch still counts once.
#[tokio::test]
async fn batches_committing_during_rebuilds_and_applies_count_once() {
    let mut ledger = Ledger::start().await;
    let events = traffic(480);
    ledger.batch(&events[..40]).await;
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    let writer = Writer::new(
        ledger.pool.clone(),
        "optimize-pending",
        NoDeadLetters,
        TIMEOUT,
    )
    .with_attribution_keys(vec!["use_case".into()])
    .with_price_book(Arc::new(ledger.book.clone()));
    let book = ledger.book.clone();
    let first_offset = ledger.next_offset + 1;
    let writing = async {
        for (n, chunk) in events[40..].chunks(40).enumerate() {
            let records: Vec<Record> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| event_record(0, first_offset + (n * 40 + i) as i64, e))
                .collect();
            let mut prepared = prepare::prepare(records, &book);
            writer
                .write(&mut prepared, &mut AttemptState::default())
                .await
                .expect("batch commits");
        }
    };
    let Ledger {
        ref mut client,
        ref pool,
        ..
    } = ledger;
    let rebuilding = async {
        for _ in 0..4 {
            rebuild::run(
                client,
                &book,
                &RebuildArgs {
                    from: day(1),
                    to: day(31),
                    tenant: None,
                },
                &mut Vec::new(),
            )
            .await
            .expect("rebuild");
        }
    };
    let applying = async {
        for _ in 0..6 {
            drain(pool, TIMEOUT).await.expect("drain");
        }
    };
    tokio::join!(writing, rebuilding, applying);
    drain(&ledger.pool, TIMEOUT).await.expect("drain");
    let actual = ledger.assert_equal_to_raw().await;
    let requests: i64 = actual
        .0
        .iter()
        .map(|r| r["requests"].as_i64().expect("requests"))
        .sum();
    assert_eq!(requests, 480);
}

/// An apply whose rows take several upsert statements
/// (`store::optimize::rollup::ROWS_PER_STATEMENT` each) adds exactly what
/// one statement did: the tables equal the raw table recomputed.
#[tokio::test]
async fn an_apply_upserted_in_chunks_equals_the_rollup_of_the_raw_table() {
    let mut ledger = Ledger::start().await;
    let events = traffic(6_000);
    for chunk in events.chunks(1_000) {
        ledger.batch(chunk).await;
    }
    let applied = apply_once(&ledger.pool, 64)
        .await
        .expect("apply")
        .expect("the turn is free");
    assert_eq!(applied.events, 6_000);
    let chunk = store::optimize::rollup::ROWS_PER_STATEMENT as u64;
    assert!(
        applied.histogram_rows > chunk,
        "{} histogram rows: one statement's worth",
        applied.histogram_rows
    );
    ledger.assert_equal_to_raw().await;
}
