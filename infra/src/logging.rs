//! One way to log for both binaries: lines on stderr, text or JSON
//! (`--log-format`), filtered by `TOKENLEDGER_LOG`.
//!
//! stderr, because stdout carries what a command prints for a caller to
//! read (`--print-config`, `gateway hash-key`, `processor report --format
//! json`, `processor migrate`); logs there would corrupt it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LOG_FILTER_ENV;

/// The filter when `TOKENLEDGER_LOG` is unset, empty or unparsable.
/// tokio-postgres logs each server notice at info, which is noise here.
pub const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// The shape of a log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z  INFO target: message key=value`.
    #[default]
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Installs the process's log subscriber. A `TOKENLEDGER_LOG` that does not
/// parse falls back to [`DEFAULT_FILTER`] with a warning rather than
/// stopping the service over its logging.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let requested = std::env::var(LOG_FILTER_ENV)
        .ok()
        .filter(|value| !value.trim().is_empty());
    let (filter, refused) = match requested.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (EnvFilter::new(DEFAULT_FILTER), Some(error)),
        None => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| LoggingError::Install(error.to_string()))?;
    if let Some(error) = refused {
        tracing::warn!(
            filter = requested.as_deref().unwrap_or_default(),
            %error,
            default = DEFAULT_FILTER,
            "{LOG_FILTER_ENV} is not a valid filter; using the default"
        );
    }
    Ok(())
}
