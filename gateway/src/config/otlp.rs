//! `[otlp]`: how the OTLP receiver attributes spans to tenants, labels
//! and users.

use ledger::event::MAX_LABELS;
use ledger::otlp::OtlpSettings;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[otlp]` section: how spans are attributed to tenants and labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// With an admin key, the span attribute (then resource attribute)
    /// naming the tenant.
    pub tenant_attribute: String,
    /// Span or resource attributes copied into the event's labels.
    pub label_attributes: Vec<String>,
    /// Span or resource attributes naming the end user, first found wins.
    pub user_attributes: Vec<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        let settings = OtlpSettings::default();
        Self {
            tenant_attribute: settings.tenant_attribute,
            label_attributes: settings.label_attributes,
            user_attributes: settings.user_attributes,
        }
    }
}

impl OtlpConfig {
    pub fn settings(&self) -> OtlpSettings {
        OtlpSettings {
            tenant_attribute: self.tenant_attribute.clone(),
            label_attributes: self.label_attributes.clone(),
            user_attributes: self.user_attributes.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tenant_attribute.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "otlp.tenant_attribute must name an attribute".into(),
            ));
        }
        if self.label_attributes.len() > MAX_LABELS {
            return Err(ConfigError::Invalid(format!(
                "otlp.label_attributes names {} attributes; an event has at most {MAX_LABELS} labels",
                self.label_attributes.len()
            )));
        }
        Ok(())
    }
}
