//! [`AppState`], what every handler shares (the appender, the keys, the
//! metrics, readiness, the shutdown token), and the request-handling
//! [`Settings`] it carries.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use ledger::event::ValidationLimits;
use tokio_util::sync::CancellationToken;

use crate::append::Appender;
use crate::auth::KeyRing;
use crate::config::{Config, ConnectionLimits};

use crate::metrics::{Metrics, MetricsError};
use crate::readiness::{Readiness, DEFAULT_CACHE_TTL};

#[derive(Debug, thiserror::Error)]
pub enum AppStateError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// The request-handling settings taken from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: ValidationLimits,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub connections: ConnectionLimits,
    /// How `POST /v1/traces` attributes spans.
    pub otlp: ledger::otlp::OtlpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            limits: config.validation.limits(),
            max_body_bytes: config.http.max_body_bytes,
            request_timeout: config.http.request_timeout(),
            connections: ConnectionLimits::from_config(&config.http),
            otlp: config.otlp.settings(),
        }
    }
}

/// Everything a handler needs; cloning is cheap (`Arc`s and small values).
#[derive(Clone)]
pub struct AppState {
    pub appender: Arc<dyn Appender>,
    pub keys: Arc<KeyRing>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub settings: Arc<Settings>,
    /// Cancelled when shutdown begins; `/readyz` fails from then on.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        appender: Arc<dyn Appender>,
        keys: KeyRing,
        settings: Settings,
    ) -> Result<Self, AppStateError> {
        let shutdown = CancellationToken::new();
        let readiness = Readiness::new(appender.clone(), shutdown.clone(), DEFAULT_CACHE_TTL);
        Ok(Self {
            appender,
            keys: Arc::new(keys),
            metrics: Arc::new(Metrics::new()?),
            readiness: Arc::new(readiness),
            settings: Arc::new(settings),
            shutdown,
        })
    }
}

impl FromRef<AppState> for Arc<KeyRing> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}
