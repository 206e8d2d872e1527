//! Turning SIGTERM / SIGINT into a graceful shutdown: the first signal
//! cancels the shutdown token, a second one exits at once, and a shutdown
//! that overruns its deadline exits too.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal, as a shell reports death by SIGINT.
pub const FORCED_EXIT_CODE: i32 = 130;
/// Exit status when the graceful shutdown overran its deadline.
pub const OVERRUN_EXIT_CODE: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot install a signal handler")]
    Install(#[from] std::io::Error),
}

/// What the process does once asked to stop, for the log line, and how
/// long it may take before the handler exits the process itself (`None`
/// when the caller bounds the shutdown on its own).
#[derive(Debug, Clone, Copy)]
pub struct Graceful {
    /// E.g. "committing the in-flight batch".
    pub doing: &'static str,
    pub deadline: Option<Duration>,
}

/// Installs the handlers now, so a signal arriving during startup is not
/// lost to the default action, and waits for signals in the background.
pub fn spawn_handler(
    token: CancellationToken,
    graceful: Graceful,
) -> Result<JoinHandle<()>, SignalError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let first = next_signal(&mut terminate, &mut interrupt).await;
        match graceful.deadline {
            Some(deadline) => tracing::info!(
                signal = first,
                timeout_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "shutting down: {} (signal again to exit at once)",
                graceful.doing
            ),
            None => tracing::info!(
                signal = first,
                "shutting down: {} (signal again to exit at once)",
                graceful.doing
            ),
        }
        token.cancel();
        let overrun = async {
            match graceful.deadline {
                Some(deadline) => tokio::time::sleep(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            second = next_signal(&mut terminate, &mut interrupt) => {
                tracing::warn!(signal = second, "second signal: exiting without finishing the shutdown");
                std::process::exit(FORCED_EXIT_CODE);
            }
            () = overrun => {
                tracing::error!("the graceful shutdown did not finish within its timeout; exiting");
                std::process::exit(OVERRUN_EXIT_CODE);
            }
        }
    }))
}

async fn next_signal(terminate: &mut Signal, interrupt: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}
