//! Postgres connections: a pool whose every wait is bounded, and single
//! connections for one-shot commands, every one made here with the TLS the
//! connection string asks for ([`tls`]). Connection strings are
//! [`Secret`]s; errors show them redacted.

mod config;
pub mod tls;

pub use config::{DatabaseConfig, DatabaseUrl};

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database.url {url:?} is not a valid connection string: {source}")]
    BadUrl {
        /// Redacted.
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("database.url {url}: {source}")]
    Tls {
        /// Redacted.
        url: String,
        source: tls::TlsError,
    },
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// Shows the whole chain of causes: tokio-postgres's own message for a
    /// failed TLS handshake ("error performing TLS handshake") omits what
    /// was wrong (an unknown issuer, a name mismatch).
    #[error("cannot connect to the database at {url}: {}", with_causes(.error))]
    Connect {
        /// Redacted.
        url: String,
        error: tokio_postgres::Error,
    },
    #[error("connecting to the database at {url} did not finish within {timeout:?}")]
    ConnectTimeout {
        /// Redacted.
        url: String,
        timeout: Duration,
    },
}

/// An error's message followed by each cause's that it does not already
/// contain: the top-level messages of TLS and HTTP clients ("error
/// performing TLS handshake", "error sending request") leave out why.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text = format!("{text}: {next_text}");
        }
        cause = next.source();
    }
    text
}

/// Where and how to connect.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseSettings<'a> {
    /// A libpq-style connection string (`host=… user=…` or `postgres://…`).
    pub url: &'a Secret,
    pub pool_size: usize,
    /// Upper bound on connecting, on waiting for a pooled connection and on
    /// recycling one.
    pub timeout: Duration,
    /// Shown in `pg_stat_activity` unless the connection string names one.
    pub application_name: &'static str,
    /// Statements run once on every new pooled connection before its first
    /// use (session state such as temporary tables); a failure fails that
    /// connection's checkout like a failed connect.
    pub session_setup: Option<&'static str>,
    /// `statement_timeout` of every pooled connection: a query the caller
    /// stopped waiting for also stops in the database instead of holding a
    /// backend (and whatever it locks) until it finishes.
    pub statement_timeout: Option<Duration>,
}

impl DatabaseSettings<'_> {
    /// The parsed connection string and the TLS connector its `ssl*`
    /// keywords ask for.
    fn parse(&self) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DatabaseError> {
        let tls_error = |source| DatabaseError::Tls {
            url: self.url.redacted(),
            source,
        };
        let (rest, options) = tls::split(self.url.expose()).map_err(tls_error)?;
        let mut parsed: tokio_postgres::Config =
            rest.parse().map_err(|source| DatabaseError::BadUrl {
                url: self.url.redacted(),
                source,
            })?;
        parsed.ssl_mode(options.mode().negotiation());
        parsed.connect_timeout(self.timeout);
        if parsed.get_application_name().is_none() {
            parsed.application_name(self.application_name);
        }
        Ok((parsed, options.connector().map_err(tls_error)?))
    }
}

/// A pool whose every wait (for a free connection, to connect, to recycle)
/// is bounded by `settings.timeout`. Connections are made lazily, so a
/// database that is down when the pool is built fails only its users.
pub fn pool(settings: &DatabaseSettings<'_>) -> Result<Pool, DatabaseError> {
    let (parsed, tls) = settings.parse()?;
    let manager = Manager::from_config(
        parsed,
        tls,
        ManagerConfig {
            // Fast: no query on checkout. A broken connection fails its
            // query or transaction, which the caller retries or reports.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(settings.timeout);
    let mut builder = Pool::builder(manager);
    let mut setup = String::new();
    if let Some(limit) = settings.statement_timeout {
        setup.push_str(&format!(
            "SET statement_timeout = {};\n",
            limit.as_millis().max(1)
        ));
    }
    if let Some(session_setup) = settings.session_setup {
        setup.push_str(session_setup);
    }
    if !setup.is_empty() {
        let setup: std::sync::Arc<str> = setup.into();
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            let setup = setup.clone();
            Box::pin(async move {
                client
                    .batch_execute(&setup)
                    .await
                    .map_err(HookError::Backend)
            })
        }));
    }
    Ok(builder
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .build()?)
}

/// One connection, its driver task spawned on the current runtime.
pub async fn connect(settings: &DatabaseSettings<'_>) -> Result<Client, DatabaseError> {
    let (parsed, tls) = settings.parse()?;
    let url = settings.url.redacted();
    let (client, connection) = tokio::time::timeout(settings.timeout, parsed.connect(tls))
        .await
        .map_err(|_| DatabaseError::ConnectTimeout {
            url: url.clone(),
            timeout: settings.timeout,
        })?
        .map_err(|error| DatabaseError::Connect { url, error })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "database connection closed with an error");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &Secret) -> DatabaseSettings<'_> {
        DatabaseSettings {
            url,
            pool_size: 2,
            timeout: Duration::from_millis(500),
            application_name: "tokenledger-test",
            session_setup: None,
            statement_timeout: None,
        }
    }

    #[test]
    fn a_bad_connection_string_is_reported_without_its_password() {
        let url = Secret::from("host=db password=hunter2 port=notaport");
        let error = pool(&settings(&url)).expect_err("bad port refused");
        let text = error.to_string();
        assert!(text.contains("port=notaport"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn a_pool_is_built_without_connecting() {
        // Nothing listens on port 1: building must still succeed.
        let url = Secret::from("host=127.0.0.1 port=1 user=u password=hunter2");
        let pool = pool(&settings(&url)).expect("pool builds lazily");
        assert_eq!(pool.status().max_size, 2);
        let error = connect(&settings(&url)).await.expect_err("nothing listens");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
