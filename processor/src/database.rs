//! The processor's database connections, on [`infra::database`]: the pool
//! the pipeline writes through, and single connections for `migrate`,
//! `report` and `budgets apply`.

use deadpool_postgres::Pool;
use tokio_postgres::Client;

pub use infra::database::DatabaseError;

use crate::config::DatabaseConfig;

/// How the processor's connections show in `pg_stat_activity`.
const APPLICATION_NAME: &str = "tokenledger-processor";

/// A pool whose every wait (for a free connection, to connect, to recycle)
/// is bounded by `database.timeout_ms`. Every connection has the batch
/// writer's staging table ([`crate::stream::write::copy`]) from its start, so a
/// batch never pays a statement to create it.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DatabaseError> {
    infra::database::pool(&infra::database::DatabaseSettings {
        session_setup: Some(crate::stream::write::copy::CREATE_STAGING),
        // Each batch step has its own bound (`Writer::bounded`), and
        // reports and reprices may run long by design.
        statement_timeout: None,
        ..config.settings(APPLICATION_NAME)
    })
}

/// One connection, its driver task spawned on the current runtime.
pub async fn connect(config: &DatabaseConfig) -> Result<Client, DatabaseError> {
    infra::database::connect(&config.settings(APPLICATION_NAME)).await
}
