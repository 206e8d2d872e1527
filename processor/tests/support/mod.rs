//! What processor's database tests share.

use e2e::Database;
use processor::migrate;

/// A fresh database with the processor's embedded migrations applied.
pub async fn migrated_database() -> Database {
    let database = Database::start().await;
    let mut client = database.client().await;
    migrate::apply(&mut client, &migrate::embedded().expect("embedded"))
        .await
        .expect("migrations apply");
    database
}
