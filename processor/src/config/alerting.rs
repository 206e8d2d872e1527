//! The `alerting` section: where budget threshold crossings are pushed
//! (Alertmanager, a webhook), over which TLS, and how often.

use std::path::PathBuf;
use std::time::Duration;

use infra::Secret;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Delivery of budget threshold crossings (see `alert_outbox`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alertmanager's base URL (`http://alertmanager:9093`); crossings are
    /// POSTed to `<url>/api/v2/alerts`. Without it crossings are recorded
    /// in `budget_alerts` but pushed nowhere. A secret: it may carry
    /// credentials (`http://user:password@…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager_url: Option<Secret>,
    /// A URL that receives the same JSON array as Alertmanager; a secret
    /// like `alertmanager_url` (user info, `?token=…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<Secret>,
    /// A PEM file of CA certificates trusted for `https://` Alertmanager
    /// and webhook URLs, in addition to the operating system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_path: Option<PathBuf>,
    /// A client certificate (PEM, chain first) presented to `https://`
    /// receivers that ask for one; needs `tls_key_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_path: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_path: Option<PathBuf>,
    /// How often the outbox looks for crossings to push.
    #[serde(alias = "poll_interval", deserialize_with = "infra::duration::millis")]
    pub poll_interval_ms: u64,
    /// Upper bound of the pause between attempts at an alert that failed.
    #[serde(alias = "max_backoff", deserialize_with = "infra::duration::millis")]
    pub max_backoff_ms: u64,
    /// Upper bound on one HTTP request.
    #[serde(alias = "timeout", deserialize_with = "infra::duration::millis")]
    pub timeout_ms: u64,
    /// Alerts per request.
    pub batch_size: usize,
    /// Most `tokenledger_budget_spend_ratio` series exported (the highest
    /// ratios win).
    pub max_ratio_series: usize,
    /// Seconds of the trailing window whose spend rate the burn-rate
    /// forecasts carry to the end of each budget's period.
    pub forecast_window_s: u32,
    /// How often the forecasts of budgets with `forecast_alert` are
    /// computed for `tokenledger_budget_forecast_ratio`.
    pub forecast_interval_ms: u64,
    /// For tests only: push a crossing only once it has been recorded for
    /// this long, leaving a window between commit and push. 0 in production.
    #[serde(alias = "push_delay", deserialize_with = "infra::duration::millis")]
    pub push_delay_ms: u64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            alertmanager_url: None,
            webhook_url: None,
            tls_ca_path: None,
            tls_cert_path: None,
            tls_key_path: None,
            poll_interval_ms: 1_000,
            max_backoff_ms: 60_000,
            timeout_ms: 5_000,
            batch_size: 100,
            max_ratio_series: 5_000,
            forecast_window_s: 86_400,
            forecast_interval_ms: 15_000,
            push_delay_ms: 0,
        }
    }
}

impl AlertingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("alerting.alertmanager_url", &self.alertmanager_url),
            ("alerting.webhook_url", &self.webhook_url),
        ] {
            let Some(url) = url else { continue };
            let text = url.expose();
            if !text.starts_with("http://") && !text.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be an http:// or https:// URL, got {:?}",
                    url.redacted()
                )));
            }
        }
        if self.tls_cert_path.is_some() != self.tls_key_path.is_some() {
            return Err(ConfigError::Invalid(
                "alerting.tls_cert_path and alerting.tls_key_path go together".into(),
            ));
        }
        if self.poll_interval_ms == 0 || self.timeout_ms == 0 || self.batch_size == 0 {
            return Err(ConfigError::Invalid(
                "alerting.poll_interval_ms, timeout_ms and batch_size must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
