//! An in-memory [`Appender`] that records what it acknowledged and can be
//! told to fail, so handlers are tested without a broker.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use ledger::UsageEvent;

use crate::append::{AppendError, AppendReport, Appender};

/// How the next append behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Acknowledge every record.
    AcknowledgeAll,
    /// Acknowledge the first `n` records, then fail the next one with
    /// `error` and leave the rest [`AppendError::NotAttempted`], which is
    /// how a bounded producer queue behaves.
    AcknowledgeFirst { n: usize, error: AppendError },
    /// Fail every record with `error` (e.g. a broker timeout).
    FailAll(AppendError),
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryAppenderError {
    #[error("the memory appender's lock was poisoned by a panicking test")]
    Poisoned,
}

#[derive(Debug, Default)]
struct Inner {
    acknowledged: Vec<UsageEvent>,
    scripts: VecDeque<Script>,
    ready: Option<AppendError>,
}

#[derive(Debug, Default)]
pub struct MemoryAppender {
    inner: Mutex<Inner>,
}

impl MemoryAppender {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the behaviour of the next append; without a script, appends
    /// acknowledge everything.
    pub fn push_script(&self, script: Script) {
        if let Ok(mut inner) = self.lock() {
            inner.scripts.push_back(script);
        }
    }

    /// Makes `/readyz` report `error` (or ready again with `None`).
    pub fn set_not_ready(&self, error: Option<AppendError>) {
        if let Ok(mut inner) = self.lock() {
            inner.ready = error;
        }
    }

    /// Every event acknowledged so far, in order.
    pub fn acknowledged(&self) -> Vec<UsageEvent> {
        self.lock()
            .map(|inner| inner.acknowledged.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, MemoryAppenderError> {
        self.inner.lock().map_err(|_| MemoryAppenderError::Poisoned)
    }
}

#[async_trait]
impl Appender for MemoryAppender {
    async fn append(&self, events: &[UsageEvent]) -> AppendReport {
        let Ok(mut inner) = self.lock() else {
            return AppendReport {
                outcomes: vec![Err(AppendError::ShuttingDown); events.len()],
            };
        };
        let script = inner.scripts.pop_front().unwrap_or(Script::AcknowledgeAll);
        let mut outcomes = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let outcome = match &script {
                Script::AcknowledgeAll => Ok(()),
                Script::AcknowledgeFirst { n, .. } if index < *n => Ok(()),
                Script::AcknowledgeFirst { n, error } if index == *n => Err(error.clone()),
                Script::AcknowledgeFirst { .. } => Err(AppendError::NotAttempted),
                Script::FailAll(error) => Err(error.clone()),
            };
            if outcome.is_ok() {
                inner.acknowledged.push(event.clone());
            }
            outcomes.push(outcome);
        }
        AppendReport { outcomes }
    }

    async fn check_ready(&self) -> Result<(), AppendError> {
        match self.lock() {
            Ok(inner) => inner.ready.clone().map_or(Ok(()), Err),
            Err(_) => Err(AppendError::ShuttingDown),
        }
    }

    async fn close(&self, _timeout: Duration) -> Result<(), AppendError> {
        Ok(())
    }
}
