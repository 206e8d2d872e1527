//! Serving the API and admin routers on their listeners until the shutdown
//! token is cancelled, then draining within the shutdown timeout and
//! closing the appender.

use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use axum::Router;

use crate::app::{admin_router, router_with, AppState};
use crate::connection;
use crate::metrics::Port;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{which} server failed")]
    Server {
        which: &'static str,
        source: io::Error,
    },
    #[error("{which} server task panicked or was aborted")]
    Task {
        which: &'static str,
        source: tokio::task::JoinError,
    },
}

/// How the shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request was answered and every queued record
    /// delivered.
    Completely,
    /// The shutdown timeout expired first; some records may not have been
    /// acknowledged (their requests were not answered 202).
    TimedOut,
}

/// Serves until `state.shutdown` is cancelled (by a signal, or by the
/// caller), then stops accepting, waits for in-flight requests and closes
/// the appender, all within `shutdown_timeout`.
pub async fn serve(
    api_listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
) -> Result<Drained, ServeError> {
    serve_with(
        api_listener,
        admin_listener,
        state,
        Router::new(),
        shutdown_timeout,
    )
    .await
}

/// [`serve`] with `extra` routes (the budget API) on the API port.
pub async fn serve_with(
    api_listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    extra: Router<AppState>,
    shutdown_timeout: Duration,
) -> Result<Drained, ServeError> {
    let token = state.shutdown.clone();
    let api = tokio::spawn(connection::serve(
        api_listener,
        router_with(state.clone(), extra),
        Port::Api,
        state.clone(),
    ));
    let admin = tokio::spawn(connection::serve(
        admin_listener,
        admin_router(state.clone()),
        Port::Admin,
        state.clone(),
    ));

    token.cancelled().await;
    let deadline = Instant::now() + shutdown_timeout;
    let mut drained = Drained::Completely;
    for (which, server) in [("api", api), ("admin", admin)] {
        match tokio::time::timeout_at(deadline, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(source))) => return Err(ServeError::Server { which, source }),
            Ok(Err(source)) => return Err(ServeError::Task { which, source }),
            Err(_elapsed) => {
                tracing::warn!(
                    server = which,
                    "shutdown timeout expired with requests still in flight"
                );
                drained = Drained::TimedOut;
            }
        }
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if let Err(error) = state.appender.close(remaining).await {
        tracing::warn!(%error, "producer did not flush every record before the shutdown timeout");
        drained = Drained::TimedOut;
    }
    Ok(drained)
}
