//! Turning SIGTERM / SIGINT into a graceful shutdown: the first signal
//! cancels the shutdown token, a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal, as a shell reports death by SIGINT.
pub const FORCED_EXIT_CODE: i32 = 130;

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("cannot install a signal handler")]
    Install(#[from] std::io::Error),
}

/// Installs the handlers now (so a signal arriving during startup is not
/// lost to the default action) and waits for signals in the background.
pub fn spawn_signal_handler(token: CancellationToken) -> Result<JoinHandle<()>, ShutdownError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let first = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = first, "shutting down: no new connections, draining in-flight requests (signal again to exit at once)");
        token.cancel();
        let second = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::warn!(signal = second, "second signal: exiting without draining");
        std::process::exit(FORCED_EXIT_CODE);
    }))
}
