//! What one push sends for a crossing, and how a target's answer is read:
//! accepted, refused for its content (not worth retrying), or failed.

use std::path::Path;

use chrono::{DateTime, Utc};
use ledger::ThresholdAlert;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::OutboxError;
use crate::config::AlertingConfig;

/// How long any pushed alert stays active at least, past the end of its
/// period if need be. Long enough to outlast Alertmanager's `group_wait` and
/// be seen in its UI; an alert ending at once would resolve before anyone is
/// notified.
pub const MIN_ACTIVE_AFTER_PUSH: chrono::Duration = chrono::Duration::hours(1);
/// The label a crossing pushed after its period ended carries, set to `"true"`.
pub const LATE_LABEL: &str = "late";

/// What a target answered to one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Accepted,
    /// 400 or 422: the target refuses the content; sending it again cannot help.
    Rejected(String),
    /// Anything else (connection error, timeout, 5xx, 404, 429, ...): retried.
    Failed(String),
}

pub(super) fn is_rejection(status: StatusCode) -> bool {
    status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY
}

/// The JSON pushed for `alert` at `now` (the database's clock, which
/// `crossed_at` was taken from): `ThresholdAlert::to_alertmanager_json`,
/// active until the end of the period but at least [`MIN_ACTIVE_AFTER_PUSH`]
/// from now; when the period has ended, labelled `late="true"` with a `late`
/// annotation saying so. The label is part of the alert's identity, so a
/// late crossing can be routed, silenced or inhibited on its own.
pub fn alert_payload(alert: &ThresholdAlert, now: DateTime<Utc>) -> Value {
    let mut payload = alert.to_alertmanager_json();
    if alert.resolved_at.is_some() {
        // A resolved forecast alert ends when it was resolved.
        return payload;
    }
    let ends_at = alert.period_end.max(now + MIN_ACTIVE_AFTER_PUSH);
    payload["endsAt"] = json!(ends_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    if alert.period_end <= now {
        payload["labels"][LATE_LABEL] = json!("true");
        payload["annotations"][LATE_LABEL] = json!(format!(
            "Delivered after its period ended ({} {}): events dated in the period arrived late, \
             or delivery was held up past the period's end.",
            alert
                .period_end
                .with_timezone(&alert.timezone)
                .format("%Y-%m-%d %H:%M"),
            alert.timezone.name(),
        ));
    }
    payload
}

/// The client every push goes through: `alerting.timeout_ms` per request;
/// `https://` verified against the operating system's CAs plus
/// `alerting.tls_ca_path`, presenting `alerting.tls_cert_path` when set.
pub(super) fn client(config: &AlertingConfig) -> Result<reqwest::Client, OutboxError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| OutboxError::TlsFile {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.timeout());
    if let Some(path) = &config.tls_ca_path {
        let pem = read("alerting.tls_ca_path", path)?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            OutboxError::TlsMaterial {
                what: "alerting.tls_ca_path",
                source,
            }
        })? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_path, &config.tls_key_path) {
        let mut pem = read("alerting.tls_cert_path", cert)?;
        pem.push(b'\n');
        pem.extend(read("alerting.tls_key_path", key)?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|source| OutboxError::TlsMaterial {
                what: "alerting.tls_cert_path / tls_key_path",
                source,
            })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(OutboxError::Client)
}

/// POSTs `payload` to `url` and reads the answer.
pub(super) async fn push(http: &reqwest::Client, url: &str, payload: &Value) -> Outcome {
    let response = match http.post(url).json(payload).send().await {
        Ok(response) => response,
        // The client's error names the URL, path tokens and all; the text
        // is stored in budget_alerts and logged.
        Err(error) => {
            return Outcome::Failed(infra::secret::redact_urls_in(
                &infra::database::with_causes(&error),
            ))
        }
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Accepted;
    }
    let body = response.text().await.unwrap_or_default();
    // A target may echo the URL it was called with.
    let message = infra::secret::redact_urls_in(&format!("HTTP {status}: {}", body.trim()));
    if is_rejection(status) {
        Outcome::Rejected(message)
    } else {
        Outcome::Failed(message)
    }
}
