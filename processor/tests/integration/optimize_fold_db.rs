//! The optimization fold's use cases against a real TimescaleDB: what the
//! batch's bounded attribution upsert returns (the values each day, tenant
//! and key has rows under) folds the batch's use cases exactly as asking
//! `usage_attribution_daily` does, for values kept by earlier batches,
//! values past the bound, `(unlabelled)`, values this batch admits, and
//! when `use_case` is not an attribution key (the table is asked then); and
//! the step's answer holds while another batch waits for the same group.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use ledger::{PriceBook, UsageEvent};
use processor::config::DatabaseConfig;
use processor::dead_letters::{DeadLetter, DeadLetterError, DeadLetterSink};
use processor::prepare::PricedEvent;
use processor::write::{AttemptState, Writer};
use processor::{attribution, database, optimize, prepare};
use store::attribution::{Admitted, OTHER, UNLABELLED};
use store::optimize::rollup::Folded;
use uuid::Uuid;

use crate::support::{event_record, migrated_database};

#[derive(Debug, Clone, Default)]
struct NoDeadLetters;

impl DeadLetterSink for NoDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        panic!("unexpected dead letter: {}", letter.detail);
    }
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0)
        .single()
        .expect("a day")
}

fn event(tenant: &str, at: DateTime<Utc>, use_case: Option<&str>, team: &str) -> UsageEvent {
    let mut labels = BTreeMap::from([("team".to_owned(), team.to_owned())]);
    if let Some(value) = use_case {
        labels.insert("use_case".to_owned(), value.to_owned());
    }
    UsageEvent {
        id: Uuid::now_v7(),
        created_at: at,
        tenant_id: tenant.into(),
        user_id: None,
        provider: "openai".into(),
        model: "gpt-4o".into(),
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
        labels,
        received_at: Utc::now().trunc_subsecs(6),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

/// `(tenant, day, use case)` of each event, rated as the batch rates them.
fn priced(book: &PriceBook, events: &[(&str, DateTime<Utc>, Option<&str>)]) -> Vec<PricedEvent> {
    let records = events
        .iter()
        .enumerate()
        .map(|(i, (tenant, at, use_case))| {
            let team = if i % 2 == 0 { "core" } else { "edge" };
            event_record(0, i as i64, &event(tenant, *at, *use_case, team))
        })
        .collect();
    prepare::prepare(records, book).unique
}

/// The use cases `folded` names, per tenant and day.
fn use_cases(folded: &Folded<'_>) -> BTreeSet<(String, DateTime<Utc>, String)> {
    folded
        .keys
        .iter()
        .map(|k| (k.tenant_id.to_owned(), k.day, k.use_case.to_owned()))
        .collect()
}

fn named(rows: &[(&str, DateTime<Utc>, &str)]) -> BTreeSet<(String, DateTime<Utc>, String)> {
    rows.iter()
        .map(|(t, d, u)| ((*t).to_owned(), *d, (*u).to_owned()))
        .collect()
}

/// Runs the attribution step under `keys` and `bound` and the fold for
/// `rows` in one transaction, and returns the fold from the step's answer,
/// the fold from the table's, and the step's answer; rolled back unless
/// `commit`.
async fn fold_both_ways<'a>(
    pool: &deadpool_postgres::Pool,
    book: &PriceBook,
    (keys, bound): (&[&str], usize),
    rows: &'a [PricedEvent],
    commit: bool,
) -> (Folded<'a>, Folded<'a>, Admitted) {
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let new_rows: Vec<&PricedEvent> = rows.iter().collect();
    let mut client = pool.get().await.expect("a connection");
    let transaction = client.transaction().await.expect("begin");
    let admitted = attribution::record(&transaction, &keys, bound, &new_rows)
        .await
        .expect("the attribution step");
    let known = optimize::fold(&transaction, book, &new_rows, None, &admitted)
        .await
        .expect("the fold from the attribution step's answer");
    let asked = optimize::fold(&transaction, book, &new_rows, None, &Admitted::default())
        .await
        .expect("the fold from the table");
    if commit {
        transaction.commit().await.expect("commit");
    } else {
        transaction.rollback().await.expect("rollback");
    }
    (known, asked, admitted)
}

#[tokio::test]
async fn the_attribution_steps_answer_folds_use_cases_as_the_table_does() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 2,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let book = PriceBook::builtin().expect("the built-in book parses");
    let (d1, d2) = (day(2) + Duration::hours(9), day(3) + Duration::hours(9));

    // Earlier batches: acme's day 2 has both of its two values (chat,
    // search), globex's one (chat).
    let earlier = priced(
        &book,
        &[
            ("acme", d1, Some("chat")),
            ("acme", d1, Some("search")),
            ("globex", d1, Some("chat")),
        ],
    );
    fold_both_ways(&pool, &book, (&["use_case", "team"], 2), &earlier, true).await;

    let batch = priced(
        &book,
        &[
            // kept by an earlier batch
            ("acme", d1, Some("chat")),
            // past the bound: (other)
            ("acme", d1, Some("batch")),
            ("acme", d1, None),
            ("globex", d1, Some("chat")),
            // the last slot, taken by this batch (values in key order) ...
            ("globex", d1, Some("summarize")),
            // ... so this one is past the bound
            ("globex", d1, Some("translate")),
            // a day with no row yet: both admitted here
            ("acme", d2, Some("batch")),
            ("acme", d2, Some("chat")),
            // a tenant new to the rollup
            ("initech", d2, Some("chat")),
        ],
    );
    let (known, asked, admitted) =
        fold_both_ways(&pool, &book, (&["team", "use_case"], 2), &batch, false).await;
    let (d1, d2) = (day(2), day(3));
    assert_eq!(
        use_cases(&asked),
        named(&[
            ("acme", d1, "chat"),
            ("acme", d1, OTHER),
            ("acme", d1, UNLABELLED),
            ("acme", d2, "batch"),
            ("acme", d2, "chat"),
            ("globex", d1, "chat"),
            ("globex", d1, "summarize"),
            ("globex", d1, OTHER),
            ("initech", d2, "chat"),
        ]),
        "the table's answer"
    );
    assert_eq!(known, asked, "the step's answer folds as the table's");
    // and it answers for every use case of the batch: the fold asked nothing
    for row in &batch {
        let event = &row.event;
        if let Some(value) = event.labels.get("use_case") {
            let day = ledger::day::utc_day(event.created_at);
            assert!(
                admitted
                    .has_row(day, &event.tenant_id, "use_case", value)
                    .is_some(),
                "{} {day} {value}",
                event.tenant_id
            );
        }
    }

    // `use_case` not an attribution key: the step knows nothing of it, and
    // the table (where earlier batches kept chat and search) answers.
    let (known, asked, admitted) =
        fold_both_ways(&pool, &book, (&["team"], 2), &batch, false).await;
    assert_eq!(admitted.has_row(d1, "acme", "use_case", "chat"), None);
    assert_eq!(admitted.has_row(d1, "acme", "team", "core"), Some(true));
    assert_eq!(known, asked);
    assert_eq!(
        use_cases(&known),
        named(&[
            ("acme", d1, "chat"),
            ("acme", d1, OTHER),
            ("acme", d1, UNLABELLED),
            ("acme", d2, OTHER),
            ("globex", d1, "chat"),
            ("globex", d1, OTHER),
            ("initech", d2, OTHER),
        ]),
    );
}

/// The backends waiting on an advisory lock.
async fn waiting_on_advisory_locks(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// A batch that waits for another's lock on a (day, tenant, key) reads
/// that group's values only once it holds the lock, so it sees (and
/// answers with) the value the other admitted: the lock and the read are
/// sent together, and the read must still run after the lock is taken.
#[tokio::test]
async fn a_batch_waiting_for_a_groups_lock_reads_the_values_admitted_before_it() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 3,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let book = PriceBook::builtin().expect("the built-in book parses");
    let at = day(2) + Duration::hours(9);
    let keys = vec!["use_case".to_owned()];
    let first = priced(&book, &[("acme", at, Some("beta"))]);
    let second = priced(&book, &[("acme", at, Some("alpha"))]);

    let mut holder = pool.get().await.expect("a connection");
    let holding = holder.transaction().await.expect("begin");
    let first_rows: Vec<&PricedEvent> = first.iter().collect();
    attribution::record(&holding, &keys, 1, &first_rows)
        .await
        .expect("the first batch's attribution step");

    let waiter = {
        let pool = pool.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut client = pool.get().await.expect("a connection");
            let transaction = client.transaction().await.expect("begin");
            let rows: Vec<&PricedEvent> = second.iter().collect();
            let admitted = attribution::record(&transaction, &keys, 1, &rows)
                .await
                .expect("the second batch's attribution step");
            transaction.commit().await.expect("commit");
            admitted
        })
    };
    let observer = database.client().await;
    let waited = e2e::wait_for(std::time::Duration::from_secs(20), || async {
        waiting_on_advisory_locks(&observer).await >= 1
    })
    .await;
    assert!(waited, "the second batch never waited for the group's lock");
    holding.commit().await.expect("commit");
    let admitted = waiter.await.expect("the second batch");

    let day = day(2);
    assert_eq!(
        admitted.has_row(day, "acme", "use_case", "beta"),
        Some(true)
    );
    assert_eq!(
        admitted.has_row(day, "acme", "use_case", "alpha"),
        Some(false),
        "the bound of 1 was taken by the first batch"
    );
    let values: Vec<String> = observer
        .query(
            "SELECT label_value FROM usage_attribution_daily ORDER BY label_value",
            &[],
        )
        .await
        .expect("the rollup")
        .iter()
        .map(|row| row.get("label_value"))
        .collect();
    assert_eq!(values, vec![OTHER.to_owned(), "beta".to_owned()]);
}

/// A `rebuild-attribution` that commits while a batch's attribution step
/// runs changes the groups the step answers for; the step reads them only
/// once the rebuild is done, so its answer is still the table's.
#[tokio::test]
async fn a_rebuild_committing_during_the_attribution_step_leaves_its_answer_the_tables() {
    let database = migrated_database().await;
    let pool = database::pool(&DatabaseConfig {
        url: database.url().into(),
        pool_size: 3,
        timeout_ms: 20_000,
    })
    .expect("pool");
    let book = PriceBook::builtin().expect("the built-in book parses");
    let at = day(2) + Duration::hours(9);
    // Stored while `use_case` was not an attribution key: only the raw
    // table has alpha, which a rebuild of the key admits.
    let stored = Writer::new(pool.clone(), "fold-rebuild", NoDeadLetters, TIMEOUT)
        .with_attribution_keys(vec!["team".to_owned()]);
    let records = vec![event_record(
        0,
        0,
        &event("acme", at, Some("alpha"), "core"),
    )];
    stored
        .write(
            &mut prepare::prepare(records, &book),
            &mut AttemptState::default(),
        )
        .await
        .expect("the stored batch commits");
    // ... while the rollup has beta, from before (bound 1: full)
    let beta = priced(&book, &[("acme", at, Some("beta"))]);
    fold_both_ways(&pool, &book, (&["use_case"], 1), &beta, true).await;

    let mut rebuilder = database.client().await;
    let rebuilding = rebuilder.transaction().await.expect("begin");
    store::attribution::rebuild(&rebuilding, &["use_case".to_owned()], day(2), day(3), 1)
        .await
        .expect("the rebuild");

    let batch = priced(&book, &[("acme", at, Some("alpha"))]);
    let waiter = {
        let pool = pool.clone();
        let book = book.clone();
        tokio::spawn(async move {
            let (known, asked, _) =
                fold_both_ways(&pool, &book, (&["use_case"], 1), &batch, true).await;
            (use_cases(&known), use_cases(&asked))
        })
    };
    let observer = database.client().await;
    let waited = e2e::wait_for(std::time::Duration::from_secs(20), || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND wait_event = 'relation'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            >= 1
    })
    .await;
    assert!(waited, "the batch never waited for the rebuild");
    rebuilding.commit().await.expect("the rebuild commits");
    let (known, asked) = waiter.await.expect("the batch");
    assert_eq!(
        asked,
        named(&[("acme", day(2), "alpha")]),
        "the table's answer"
    );
    assert_eq!(known, asked, "the step's answer");
}
