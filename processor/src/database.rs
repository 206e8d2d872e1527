//! Database connections: the pool the pipeline writes through, and single
//! connections for `migrate` and `report`.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Client, NoTls};

use crate::config::{redact_database_url, DatabaseConfig};

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database.url {url:?} is not a valid connection string: {source}")]
    BadUrl {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("connecting to the database at {url} did not finish within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
}

fn parse(config: &DatabaseConfig) -> Result<tokio_postgres::Config, DatabaseError> {
    let mut parsed: tokio_postgres::Config =
        config.url.parse().map_err(|source| DatabaseError::BadUrl {
            url: redact_database_url(&config.url),
            source,
        })?;
    parsed.connect_timeout(config.timeout());
    if parsed.get_application_name().is_none() {
        parsed.application_name("tokenledger-processor");
    }
    Ok(parsed)
}

impl DatabaseConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A pool whose every wait (for a free connection, to connect, to recycle)
/// is bounded by `database.timeout_ms`.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DatabaseError> {
    let manager = Manager::from_config(
        parse(config)?,
        NoTls,
        ManagerConfig {
            // Fast: no query on checkout. A broken connection fails its
            // transaction, which is retried, and the writer drops it.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(config.timeout());
    Ok(Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .build()?)
}

/// One connection, its driver task spawned on the current runtime.
pub async fn connect(config: &DatabaseConfig) -> Result<Client, DatabaseError> {
    let url = redact_database_url(&config.url);
    let parsed = parse(config)?;
    let connecting = parsed.connect(NoTls);
    let (client, connection) = tokio::time::timeout(config.timeout(), connecting)
        .await
        .map_err(|_| DatabaseError::ConnectTimeout {
            url: url.clone(),
            timeout: config.timeout(),
        })?
        .map_err(|source| DatabaseError::Connect { url, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "database connection closed with an error");
        }
    });
    Ok(client)
}
