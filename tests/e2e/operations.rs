//! Operator commands against a real TimescaleDB (PostgreSQL 15 + TimescaleDB Community):
//!
//! - `concurrent_migrations_apply_each_version_once`: three `processor migrate` runs started
//!   together on a fresh database, held at the migration's advisory lock (which the test holds)
//!   until all three wait there, then let go at once: all succeed, and every migration is
//!   applied by exactly one of them (the others report it as already applied).
//! - `refresh_materializes_rows_older_than_the_policy_windows`: the refresh policies reach back
//!   over the 35-day lateness window plus an outage margin, and `processor refresh --from --to`
//!   materializes rows older than that window, which the policies never will.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{wait_for, Binary, ChildProcess, Database};
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(120);
/// Concurrent `processor migrate` runs.
const RUNS: usize = 3;
/// `processor::migrate::MIGRATE_LOCK_KEY`, the advisory lock every run takes ("tokenled").
const MIGRATE_LOCK_KEY: i64 = 0x746f_6b65_6e6c_6564;
const ROLLUPS: [&str; 4] = ["usage_hourly", "usage_daily", "tenant_daily", "model_daily"];
/// The gateway accepts events this many days late.
const LATENESS_DAYS: i64 = 35;

fn spawn_processor(database: &Database, name: &str, args: &[&str]) -> ChildProcess {
    let url = database.url();
    ChildProcess::spawn(
        name,
        Binary::path("processor"),
        args,
        &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
    )
}

async fn finish(mut process: ChildProcess) -> String {
    let status = process.wait_exit(WAIT).await;
    let output = process.log_contents();
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: {status:?}; output:\n{output}",
        process.name()
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_version_once() {
    let database = Database::start().await;
    // The overlap, made certain: the test holds the migration lock, so every run has connected
    // and asked for it before any of them applies anything; then they are let go together.
    let holder = database.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .expect("take the migration lock");
    let url = database.url();
    let runs: Vec<ChildProcess> = (0..RUNS)
        .map(|n| {
            ChildProcess::spawn(
                &format!("migrate-{n}"),
                Binary::path("processor"),
                &["migrate"],
                &[("TOKENLEDGER_DATABASE__URL", url.as_str())],
            )
        })
        .collect();
    let all_waiting = wait_for(WAIT, || async {
        holder
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted
                   AND (classid::bigint << 32) | objid::bigint = $1",
                &[&MIGRATE_LOCK_KEY],
            )
            .await
            .expect("pg_locks")
            .get::<_, i64>(0)
            == RUNS as i64
    })
    .await;
    assert!(
        all_waiting,
        "the {RUNS} runs did not all wait for the migration lock"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .expect("release the migration lock");
    let mut outputs = Vec::new();
    for run in runs {
        outputs.push(finish(run).await);
    }
    // Every migration the binary knows shows in each run's report, applied or already applied.
    let names: BTreeSet<&str> = outputs
        .iter()
        .flat_map(|output| output.lines())
        .filter_map(|line| {
            line.strip_prefix("already applied")
                .or_else(|| line.strip_prefix("applied"))
                .map(str::trim)
        })
        .collect();
    assert!(
        names.len() >= 3,
        "no migration report:\n{}",
        outputs.join("\n")
    );
    for name in &names {
        let applied = outputs
            .iter()
            .filter(|output| {
                output
                    .lines()
                    .any(|line| line.strip_prefix("applied").map(str::trim) == Some(*name))
            })
            .count();
        assert_eq!(
            applied,
            1,
            "{name} applied by {applied} of {RUNS} concurrent runs:\n{}",
            outputs.join("\n-----\n")
        );
    }
    let recorded: i64 = database
        .client()
        .await
        .query_one("SELECT count(*) FROM tokenledger_schema_migrations", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(recorded, names.len() as i64);
}

/// Days a refresh policy reaches back (its `start_offset`).
async fn policy_days(db: &tokio_postgres::Client, view: &str) -> f64 {
    db.query_one(
        "SELECT (extract(epoch FROM (config->>'start_offset')::interval) / 86400)::float8
         FROM timescaledb_information.jobs
         WHERE proc_name = 'policy_refresh_continuous_aggregate'
           AND hypertable_name IN (SELECT unnest(ARRAY[view_name::text,
                                                        materialization_hypertable_name::text])
                                   FROM timescaledb_information.continuous_aggregates
                                   WHERE view_name = $1)",
        &[&view],
    )
    .await
    .unwrap_or_else(|e| panic!("the refresh policy of {view}: {e}"))
    .get::<_, f64>(0)
}

async fn run_policies(db: &tokio_postgres::Client) {
    let jobs: Vec<i32> = db
        .query(
            "SELECT job_id FROM timescaledb_information.jobs
             WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(jobs.len(), ROLLUPS.len(), "one policy per rollup");
    // created in hierarchy order: hourly first. The scheduler runs the same jobs in the
    // background; while it refreshes an overlapping window, TimescaleDB refuses another refresh
    // (55P03) instead of waiting, so the call is repeated until the scheduler's run is done.
    for job in jobs {
        let ran = wait_for(Duration::from_secs(120), || async {
            match db.batch_execute(&format!("CALL run_job({job})")).await {
                Ok(()) => true,
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => false,
                Err(e) => panic!("run_job({job}): {e:?}"),
            }
        })
        .await;
        assert!(
            ran,
            "run_job({job}) was refused for 120 s by a concurrent refresh"
        );
    }
}

async fn insert_row(db: &tokio_postgres::Client, id: &str, days_ago: i64, tenant: &str) {
    db.execute(
        "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens,
             completion_tokens, total_tokens, estimated_cost, created_at, pricing_status,
             received_at, payload_sha256, source_partition, source_offset)
         VALUES ($1::text::uuid, $2, 'openai', 'gpt-4o', 100, 20, 120, 0.5,
                 date_trunc('hour', now()) - make_interval(days => $3::int) + interval '10 minutes',
                 'provided', now(), '\\x00', 0, 0)",
        &[&id, &tenant, &(days_ago as i32)],
    )
    .await
    .expect("insert a row");
}

/// Requests per rollup for `tenant` (all rows, whether materialized or computed in real time).
async fn requests(db: &tokio_postgres::Client, view: &str, tenant: &str) -> i64 {
    let tenant_column = if view == "model_daily" {
        "provider || '/' || model"
    } else {
        "tenant_id"
    };
    let key = if view == "model_daily" {
        "openai/gpt-4o"
    } else {
        tenant
    };
    db.query_one(
        &format!(
            "SELECT COALESCE(sum(requests), 0)::BIGINT FROM {view} WHERE {tenant_column} = $1"
        ),
        &[&key],
    )
    .await
    .unwrap_or_else(|e| panic!("{view}: {e}"))
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_materializes_rows_older_than_the_policy_windows() {
    let database = Database::start().await;
    finish(spawn_processor(&database, "migrate", &["migrate"])).await;
    let db = database.client().await;

    // The windows: the lateness plus an outage margin of at least a week; the daily rollups
    // read the hourly one, so they reach back further.
    let hourly = policy_days(&db, "usage_hourly").await;
    assert!(
        hourly >= (LATENESS_DAYS + 7) as f64,
        "usage_hourly's policy reaches back {hourly} days"
    );
    for view in &ROLLUPS[1..] {
        let days = policy_days(&db, view).await;
        assert!(
            days > hourly,
            "{view} reaches back {days} days, hourly {hourly}"
        );
    }

    // A row from two days ago and one from beyond every window (an event accepted late and
    // stored after an outage longer than the margin). The policies materialize the first only,
    // which also moves the rollups' watermarks past the old row: below a watermark, only
    // materialized rows show.
    let old_days = hourly.ceil() as i64 + 10;
    insert_row(&db, "0190d5d4-0000-7000-8000-000000000001", 2, "fresh").await;
    insert_row(&db, "0190d5d4-0000-7000-8000-000000000002", old_days, "old").await;
    run_policies(&db).await;
    for view in ROLLUPS {
        if view != "model_daily" {
            assert_eq!(
                requests(&db, view, "old").await,
                0,
                "{view}: the policies left the old row out (the precondition of this test)"
            );
        }
    }

    // `processor refresh` over the old row's day materializes it in every rollup.
    let day = db
        .query_one(
            "SELECT to_char((now() - make_interval(days => $1::int)) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                    to_char((now() - make_interval(days => $1::int - 1)) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            &[&(old_days as i32)],
        )
        .await
        .expect("dates");
    let (from, to): (String, String) = (day.get(0), day.get(1));
    let output = finish(spawn_processor(
        &database,
        "refresh",
        &["refresh", "--from", &from, "--to", &to],
    ))
    .await;
    for view in ROLLUPS {
        assert!(output.contains(view), "progress names {view}:\n{output}");
    }
    for view in ROLLUPS {
        let expected = if view == "model_daily" { 2 } else { 1 };
        let tenant = if view == "model_daily" { "" } else { "old" };
        assert_eq!(
            requests(&db, view, tenant).await,
            expected,
            "{view} after `processor refresh --from {from} --to {to}`:\n{output}"
        );
    }
}
