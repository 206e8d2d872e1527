//! The admin APIs' shared database against a real PostgreSQL + TimescaleDB:
//! what a timed-out request and a streamed export leave in the pool.

use std::time::Duration;

use e2e::Database;
use gateway::admin::{AdminDatabase, DatabaseFailure};
use gateway::config::DatabaseConfig;

fn one_connection(database: &Database, timeout_ms: u64) -> AdminDatabase {
    AdminDatabase::connect_lazily(&DatabaseConfig {
        url: Some(database.url().into()),
        pool_size: 1,
        timeout_ms,
    })
    .expect("pool builds")
    .expect("a url is set")
}

async fn backend_pid(database: &AdminDatabase) -> i32 {
    database
        .with_client(async |client| {
            let row = client.query_one("SELECT pg_backend_pid()", &[]).await?;
            Ok::<i32, TestError>(row.get(0))
        })
        .await
        .expect("the pool answers")
}

#[derive(Debug)]
struct TestError(String);

impl From<DatabaseFailure> for TestError {
    fn from(failure: DatabaseFailure) -> Self {
        Self(failure.to_string())
    }
}

impl From<tokio_postgres::Error> for TestError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self(error.to_string())
    }
}

/// A request cut off by the timeout may leave its statement running or its
/// transaction open: its connection must not serve the next request.
#[tokio::test]
async fn a_timed_out_request_does_not_hand_its_connection_to_the_next() {
    let database = Database::start().await;
    let admin = one_connection(&database, 1_000);
    let first = backend_pid(&admin).await;

    let outcome = admin
        .with_client(async |client| {
            // The pool's statement timeout equals the request timeout; lifted here so
            // the request's own timeout is what cuts the work off.
            client
                .batch_execute("SET statement_timeout = 0; BEGIN; SELECT pg_sleep(30)")
                .await?;
            Ok::<(), TestError>(())
        })
        .await;
    let error = outcome.expect_err("the work outlasts the timeout");
    assert!(error.0.contains("no answer within 1000 ms"), "{error:?}");

    // The single slot is free again, on another backend (a fresh session:
    // no transaction or statement left over).
    let next = backend_pid(&admin).await;
    assert_ne!(next, first, "the timed-out connection was handed out again");
}

/// An export lifts the statement timeout on its own connection; the pool's
/// connections keep theirs, and the export's connection is not pooled.
#[tokio::test]
async fn a_detached_connection_lifts_the_timeout_for_itself_only() {
    let database = Database::start().await;
    let admin = one_connection(&database, 1_000);
    let pooled = backend_pid(&admin).await;

    let detached = admin.detached_client().await.expect("a connection");
    let row = detached
        .query_one(
            "SELECT pg_backend_pid(), current_setting('statement_timeout')",
            &[],
        )
        .await
        .expect("query");
    let (detached_pid, timeout): (i32, String) = (row.get(0), row.get(1));
    assert_eq!(timeout, "0");
    // Longer than the pool's statement timeout: not cancelled.
    detached
        .batch_execute("SELECT pg_sleep(1.5)")
        .await
        .expect("an export's statement may outlast the request timeout");

    // With the detached connection still open, the pool (size 1) serves
    // requests: taking it out freed the slot.
    let (pid, timeout) = tokio::time::timeout(
        Duration::from_secs(10),
        admin.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT pg_backend_pid(), current_setting('statement_timeout')",
                    &[],
                )
                .await?;
            Ok::<(i32, String), TestError>((row.get(0), row.get(1)))
        }),
    )
    .await
    .expect("the pool is not exhausted by a detached connection")
    .expect("the pool answers");
    assert_ne!(pid, detached_pid);
    assert_eq!(
        timeout, "1s",
        "the pooled connection keeps the statement timeout"
    );
    assert_eq!(
        detached_pid, pooled,
        "the idle pooled connection was taken out"
    );
    drop(detached);
    assert_eq!(
        backend_pid(&admin).await,
        pid,
        "the pool kept the connection it made"
    );
}
