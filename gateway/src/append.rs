//! The [`Appender`] seam between the HTTP handlers and the log: what it
//! means to append a batch of events, and how each record's fate is
//! reported back.
//!
//! The handlers only ever see this trait, so they are tested with
//! [`crate::memory::MemoryAppender`] and run in production with
//! [`crate::kafka::KafkaAppender`].

use std::time::Duration;

use async_trait::async_trait;
use ledger::UsageEvent;

/// Why one record was not acknowledged. Every variant means "not known to
/// be durably appended": the client may retry it with the same id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The bounded producer queue is full: backpressure, not a fault.
    #[error("the producer queue is full")]
    QueueFull,
    /// An earlier record of the same request could not be queued, so this
    /// one was not attempted (queuing it would reorder the batch).
    #[error("not attempted because an earlier record of the request could not be queued")]
    NotAttempted,
    #[error("the broker did not acknowledge the record within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the broker refused the record: {0}")]
    Rejected(String),
    #[error("the producer is shutting down")]
    ShuttingDown,
    #[error("the broker is unreachable: {0}")]
    Unreachable(String),
}

impl AppendError {
    /// Seconds a client should wait before retrying. A full queue drains
    /// in well under a second; a broker outage takes longer.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::QueueFull | Self::NotAttempted => 1,
            Self::TimedOut(_) | Self::Rejected(_) | Self::ShuttingDown | Self::Unreachable(_) => 5,
        }
    }

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::QueueFull | Self::NotAttempted => "queue_full",
            Self::TimedOut(_) => "timeout",
            Self::Rejected(_) | Self::Unreachable(_) => "unavailable",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The fate of every record of one append, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReport {
    pub outcomes: Vec<Result<(), AppendError>>,
}

impl AppendReport {
    pub fn all_acknowledged(&self) -> bool {
        self.outcomes.iter().all(Result::is_ok)
    }

    pub fn acknowledged_count(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| outcome.is_ok())
            .count()
    }

    /// The error that explains the failure best: the first one that is not
    /// merely a consequence of an earlier one.
    pub fn cause(&self) -> Option<&AppendError> {
        let mut errors = self
            .outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err());
        let first = errors.next()?;
        if *first != AppendError::NotAttempted {
            return Some(first);
        }
        errors
            .find(|error| **error != AppendError::NotAttempted)
            .or(Some(first))
    }
}

/// Appends usage events to the log.
///
/// Contract: `append` returns one outcome per event, in order, and returns
/// `Ok(())` for an event only once the log has durably acknowledged it. It
/// must not wait without bound: a full queue is reported at once as
/// [`AppendError::QueueFull`], and every wait for an acknowledgement ends
/// after the implementation's delivery timeout.
#[async_trait]
pub trait Appender: Send + Sync + 'static {
    async fn append(&self, events: &[UsageEvent]) -> AppendReport;

    /// Whether the log is reachable right now (for `/readyz`).
    async fn check_ready(&self) -> Result<(), AppendError>;

    /// Refuses further appends and waits, at most `timeout`, for queued
    /// records to be delivered. Called once, at shutdown, after the HTTP
    /// servers have drained.
    async fn close(&self, timeout: Duration) -> Result<(), AppendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_skips_not_attempted() {
        let report = AppendReport {
            outcomes: vec![
                Ok(()),
                Err(AppendError::NotAttempted),
                Err(AppendError::QueueFull),
            ],
        };
        assert_eq!(report.cause(), Some(&AppendError::QueueFull));
        assert_eq!(report.acknowledged_count(), 1);
        assert!(!report.all_acknowledged());
        let ok = AppendReport {
            outcomes: vec![Ok(())],
        };
        assert_eq!(ok.cause(), None);
        assert!(ok.all_acknowledged());
    }
}
