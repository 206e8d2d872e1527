//! What every admin API of the gateway shares (budgets, reservations,
//! exports, reports, reconciliation): one pool of connections to the
//! processor's database with one rule for timeouts, and the admin guard.
//! The read-only APIs answer with one error type, [`AdminApiError`], named
//! after each API; the budget API keeps its own (field-by-field
//! validation); this module's failures convert into both.

use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object, Pool};
use infra::database::DatabaseSettings;

use crate::auth::Authenticated;
use crate::config::DatabaseConfig;

mod error;

pub use error::{database, parse_day, AdminApi, AdminApiError, Invalid, NoDatabase};

/// Why the database did not answer an admin API request.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseFailure {
    #[error("no answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("{0}")]
    Unavailable(String),
}

/// The caller is not an admin key; each API says what it guards.
#[derive(Debug, Clone, Copy)]
pub struct NotAdmin;

/// The one admin guard.
pub fn require_admin(who: &Authenticated) -> Result<(), NotAdmin> {
    if who.admin {
        Ok(())
    } else {
        Err(NotAdmin)
    }
}

/// How the admin APIs connect, when `config.url` is set.
pub fn pool_settings(config: &DatabaseConfig) -> Option<DatabaseSettings<'_>> {
    Some(DatabaseSettings {
        // Tenants' requests reach the database: none may hold a backend
        // past the time the gateway waits for it.
        statement_timeout: Some(config.timeout()),
        ..config.settings("tokenledger-gateway")?
    })
}

/// The admin APIs' database. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct AdminDatabase {
    pool: Pool,
    timeout: Duration,
}

impl AdminDatabase {
    /// A pool for `config.url`, or `None` without one. Connections are made
    /// lazily, so a database that is down at startup only fails admin
    /// requests, not the gateway.
    pub fn connect_lazily(config: &DatabaseConfig) -> Result<Option<Self>, String> {
        let Some(settings) = pool_settings(config) else {
            return Ok(None);
        };
        let pool = infra::database::pool(&settings).map_err(|error| error.to_string())?;
        Ok(Some(Self {
            pool,
            timeout: config.timeout(),
        }))
    }

    /// Runs `work` on a pooled connection within the database timeout. A
    /// connection whose work timed out may still be running the statement
    /// (until `statement_timeout` stops it) or be mid-transaction: it is
    /// closed rather than handed to the next request.
    pub async fn with_client<T, E: From<DatabaseFailure>>(
        &self,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, E>,
    ) -> Result<T, E> {
        let started = tokio::time::Instant::now();
        let mut client = self.pooled().await?;
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, work(&mut client)).await {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(client));
                Err(DatabaseFailure::TimedOut(self.timeout).into())
            }
        }
    }

    /// A connection taken out of the pool for one long statement (an export
    /// streamed as the client reads it, which may rightly outlast the
    /// statement timeout): the timeout is lifted on this connection only,
    /// and the connection is closed when dropped instead of returning to
    /// the pool with the setting.
    pub async fn detached_client(&self) -> Result<ClientWrapper, DatabaseFailure> {
        let client = Object::take(self.pooled().await?);
        tokio::time::timeout(
            self.timeout,
            client.batch_execute("SET statement_timeout = 0"),
        )
        .await
        .map_err(|_| DatabaseFailure::TimedOut(self.timeout))?
        .map_err(|error| DatabaseFailure::Unavailable(error.to_string()))?;
        Ok(client)
    }

    async fn pooled(&self) -> Result<Object, DatabaseFailure> {
        tokio::time::timeout(self.timeout, self.pool.get())
            .await
            .map_err(|_| DatabaseFailure::TimedOut(self.timeout))?
            .map_err(|error| DatabaseFailure::Unavailable(error.to_string()))
    }
}
