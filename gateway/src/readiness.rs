//! Readiness: whether the gateway can take traffic right now, i.e. it is
//! not shutting down and the broker answers. The broker check is cached
//! briefly and single-flighted so frequent probes cost one metadata request
//! per second at most.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::append::{AppendError, Appender};

pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Broker(AppendError),
}

pub struct Readiness {
    appender: Arc<dyn Appender>,
    shutdown: CancellationToken,
    ttl: Duration,
    // A tokio mutex held across the check: concurrent probes wait for the
    // one in progress instead of each sending a metadata request.
    last: Mutex<Option<(Instant, Result<(), AppendError>)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ttl", &self.ttl)
            .field("shutting_down", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    pub fn new(appender: Arc<dyn Appender>, shutdown: CancellationToken, ttl: Duration) -> Self {
        Self {
            appender,
            shutdown,
            ttl,
            last: Mutex::new(None),
        }
    }

    pub async fn check(&self) -> Result<(), NotReady> {
        // Failing readiness first lets a load balancer stop routing here
        // while in-flight requests drain.
        if self.shutdown.is_cancelled() {
            return Err(NotReady::ShuttingDown);
        }
        let mut last = self.last.lock().await;
        if let Some((checked_at, result)) = last.as_ref() {
            if checked_at.elapsed() < self.ttl {
                return result.clone().map_err(NotReady::Broker);
            }
        }
        let result = self.appender.check_ready().await;
        *last = Some((Instant::now(), result.clone()));
        result.map_err(NotReady::Broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryAppender;

    #[tokio::test(start_paused = true)]
    async fn result_is_cached_for_the_ttl() {
        let appender = Arc::new(MemoryAppender::new());
        let readiness = Readiness::new(
            appender.clone(),
            CancellationToken::new(),
            DEFAULT_CACHE_TTL,
        );
        assert!(readiness.check().await.is_ok());
        appender.set_not_ready(Some(AppendError::Unreachable("down".into())));
        assert!(readiness.check().await.is_ok(), "cached within the ttl");
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(readiness.check().await.is_err(), "rechecked after the ttl");
    }

    #[tokio::test]
    async fn shutting_down_is_not_ready() {
        let token = CancellationToken::new();
        let readiness = Readiness::new(
            Arc::new(MemoryAppender::new()),
            token.clone(),
            DEFAULT_CACHE_TTL,
        );
        token.cancel();
        assert_eq!(readiness.check().await, Err(NotReady::ShuttingDown));
    }
}
