//! The operator commands: the one-shot subcommands of `processor` besides `run`, one module
//! each, and the connection every one of them but `migrate` and `prices` starts with.

pub mod budgets;
pub mod export;
pub mod migrate;
pub mod offsets;
pub mod optimize;
pub mod prices;
pub mod rebuild_attribution;
pub mod reconcile;
pub mod refresh;
pub mod report;
pub mod reprice;

use tokio_postgres::Client;

use crate::config::DatabaseConfig;
use crate::database::{self, DatabaseError};
use crate::migrate::MigrateError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Schema(#[from] MigrateError),
}

/// One connection to a database whose schema is the one this binary was built for: a command
/// refuses to read or change tables whose shape it does not know (run `processor migrate`).
pub async fn connect_verified(config: &DatabaseConfig) -> Result<Client, ConnectError> {
    let client = database::connect(config).await?;
    crate::migrate::verify(&client, &crate::migrate::embedded()?).await?;
    Ok(client)
}
