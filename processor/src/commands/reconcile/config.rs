//! `[reconcile]`: where the providers' admin APIs are, their keys, which
//! provider project / workspace / API key is which tenant, and the floor
//! and ceiling a reconciliation must stay within.

use std::collections::BTreeMap;
use std::time::Duration;

use infra::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Below this coverage (ledger tokens / provider tokens) of any tenant,
    /// `processor reconcile report` exits non-zero.
    pub coverage_floor: f64,
    /// Above this cost variance (|ledger − provider| / provider cost) of
    /// any tenant, `processor reconcile report` exits non-zero.
    pub variance_ceiling: f64,
    /// Upper bound on one request to a provider.
    pub timeout_ms: u64,
    /// Attempts per page before a fetch gives up (429, 5xx, timeouts).
    pub max_attempts: u32,
    /// First backoff after a 5xx or a timeout, doubled each attempt; a 429
    /// waits what its `retry-after` says instead.
    pub retry_base_ms: u64,
    /// A `retry-after` longer than this is waited for this long.
    pub max_retry_after_ms: u64,
    pub openai: OpenAiSettings,
    pub anthropic: AnthropicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSettings {
    pub base_url: String,
    /// An organization admin key (`sk-admin-…`); or `admin_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<Secret>,
    /// `proj_…` → tenant. Per project, not per API key: the cost report
    /// cannot be grouped by key, so a key mapping could split tokens but
    /// never dollars.
    pub project_tenants: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicSettings {
    pub base_url: String,
    /// An Admin API key (`sk-ant-admin…`); or `admin_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<Secret>,
    pub anthropic_version: String,
    /// `wrkspc_…` → tenant; `"default"` names the default workspace, which
    /// the reports give no id.
    pub workspace_tenants: BTreeMap<String, String>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            coverage_floor: 0.99,
            variance_ceiling: 0.01,
            timeout_ms: 30_000,
            max_attempts: 6,
            retry_base_ms: 1_000,
            max_retry_after_ms: 120_000,
            openai: OpenAiSettings::default(),
            anthropic: AnthropicSettings::default(),
        }
    }
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com".into(),
            admin_key: None,
            project_tenants: BTreeMap::new(),
        }
    }
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".into(),
            admin_key: None,
            anthropic_version: "2023-06-01".into(),
            workspace_tenants: BTreeMap::new(),
        }
    }
}

impl ReconcileConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// What the comparison of `provider`'s reports takes from here.
    pub fn terms(&self, provider: super::Provider) -> store::reconcile::Terms {
        store::reconcile::Terms {
            coverage_floor: self.coverage_floor,
            variance_ceiling: self.variance_ceiling,
            tenants: match provider {
                super::Provider::Openai => self.openai.project_tenants.clone(),
                super::Provider::Anthropic => self.anthropic.workspace_tenants.clone(),
            },
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.coverage_floor) {
            return Err("reconcile.coverage_floor must be between 0 and 1".into());
        }
        if !self.variance_ceiling.is_finite() || self.variance_ceiling < 0.0 {
            return Err("reconcile.variance_ceiling must be 0 or more".into());
        }
        if self.max_attempts == 0 {
            return Err("reconcile.max_attempts must be at least 1".into());
        }
        for (name, url) in [
            ("reconcile.openai.base_url", &self.openai.base_url),
            ("reconcile.anthropic.base_url", &self.anthropic.base_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{name} must be an http(s) URL"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::path::Path;

    use figment::Jail;

    use crate::config::Config;

    #[test]
    fn admin_keys_come_from_files_map_tenants_and_never_print() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("openai.key", "sk-admin-hunter2\n")?;
            jail.create_file(
                "processor.toml",
                r#"
                [reconcile]
                coverage_floor = 0.995
                [reconcile.openai]
                admin_key_file = "openai.key"
                project_tenants = { "proj_abc" = "acme" }
                [reconcile.anthropic]
                admin_key = "sk-ant-admin01-hunter2"
                workspace_tenants = { "wrkspc_01" = "acme", "default" = "globex" }
                "#,
            )?;
            let config =
                Config::load(Some(Path::new("processor.toml"))).map_err(|e| e.to_string())?;
            let reconcile = &config.reconcile;
            assert_eq!(reconcile.coverage_floor, 0.995);
            assert_eq!(
                reconcile.openai.admin_key.as_ref().map(|k| k.expose()),
                Some("sk-admin-hunter2"),
                "the file's content, trailing newline dropped"
            );
            assert_eq!(
                reconcile
                    .openai
                    .project_tenants
                    .get("proj_abc")
                    .map(String::as_str),
                Some("acme")
            );
            assert_eq!(
                reconcile
                    .anthropic
                    .workspace_tenants
                    .get("default")
                    .map(String::as_str),
                Some("globex")
            );
            let printed = config.to_redacted_toml().map_err(|e| e.to_string())?;
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(
                printed.contains("openai.key"),
                "the file is named: {printed}"
            );
            Ok(())
        });
    }

    #[test]
    fn bounds_are_validated() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOKENLEDGER_RECONCILE__COVERAGE_FLOOR", "1.5");
            let err = Config::load(None).expect_err("a floor above 1");
            assert!(err.to_string().contains("coverage_floor"), "{err}");
            Ok(())
        });
    }
}
