//! `processor migrate` on a real TimescaleDB (PostgreSQL + TimescaleDB through
//! the e2e harness): the edition is read from the database, and on the
//! Community edition nothing is skipped. The Apache edition's skipping is
//! covered by the unit tests in `migrate` and by `scripts/bench.sh --native`.

use e2e::Database;
use processor::migrate::{self, Edition, MigrationStatus};

#[tokio::test]
async fn the_community_edition_is_recognised_and_every_migration_applies() {
    let database = Database::start().await;
    let mut client = database.client().await;
    let outcomes = migrate::apply(&mut client, &migrate::embedded().expect("embedded"))
        .await
        .expect("migrations apply");
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.status == MigrationStatus::Applied),
        "{outcomes:?}"
    );
    assert_eq!(
        migrate::edition(&client).await.expect("edition"),
        Edition::Community
    );
    migrate::verify(&client, &migrate::embedded().expect("embedded"))
        .await
        .expect("verified");
}
