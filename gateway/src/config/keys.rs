//! The `[auth]` section: the API keys, each with a kind (tenant, service,
//! admin) and a trust policy, and the defaults those policies resolve from.

use std::path::PathBuf;

use infra::Secret;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Turning authentication off must be written down; the gateway then
    /// accepts any tenant's events from anyone.
    pub enabled: bool,
    /// How far before its arrival a tenant key's event may be dated, unless
    /// the key sets its own `max_lateness_ms`. Kept short so a tenant cannot
    /// move spend into budget periods that already closed.
    #[serde(
        alias = "tenant_max_lateness",
        deserialize_with = "infra::duration::millis"
    )]
    pub tenant_max_lateness_ms: u64,
    pub keys: Vec<KeyConfig>,
    /// TOML file holding a `keys` array, so key hashes need not sit in the
    /// main configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tenant_max_lateness_ms: 6 * 60 * 60 * 1000,
            keys: Vec::new(),
            keys_file: None,
        }
    }
}

/// The longest time window any setting may name (ten years): every
/// request subtracts or adds these windows to its own time, and a window
/// past what a date can hold would fail every request instead of the start.
pub const MAX_WINDOW_MS: u64 = 3650 * 24 * 60 * 60 * 1000;

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tenant_max_lateness_ms == 0 {
            return Err(ConfigError::Invalid(
                "auth.tenant_max_lateness_ms must be positive".into(),
            ));
        }
        if self.tenant_max_lateness_ms > MAX_WINDOW_MS {
            return Err(ConfigError::Invalid(format!(
                "auth.tenant_max_lateness_ms must be at most {MAX_WINDOW_MS} (ten years)"
            )));
        }
        Ok(())
    }
}

/// What a key is trusted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Bound to one tenant and untrusted: the price book prices its usage
    /// and it writes at most `auth.tenant_max_lateness_ms` back.
    Tenant,
    /// Bound to one tenant and trusted, for a tenant's own metering
    /// service: it may send `estimated_cost` and backfill the whole
    /// `validation.backfill_days` window, but not manage budgets.
    Service,
    /// Writes any tenant's events, manages budgets, trusted like a service.
    Admin,
}

/// One API key, stored only as the SHA-256 of the key (`gateway hash-key`).
/// `kind` may be left out: `tenant_id` alone makes a tenant key and
/// `admin = true` an admin key, the form keys had before kinds existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A secret too: it is all an attacker needs to test guesses offline.
    pub sha256: Secret,
    /// The key's name, `[A-Za-z0-9._:-]{1,100}`: stamped on the events it
    /// appends (`api_key`) and what a per-key budget names. Two keys may
    /// share one (a rotation: the new key keeps the old one's budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<KeyKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Whether the key's `estimated_cost` is believed; by default only
    /// service and admin keys' is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_caller_cost: Option<bool>,
    /// How far before its arrival an event of this key may be dated; by
    /// default `auth.tenant_max_lateness_ms` for a tenant key and the
    /// backfill window for the others. The backfill window binds every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(
        alias = "max_lateness",
        deserialize_with = "infra::duration::option_millis"
    )]
    pub max_lateness_ms: Option<u64>,
}

/// A key's policy once its entry is resolved against the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    pub kind: KeyKind,
    pub allow_caller_cost: bool,
    /// `None`: only the global backfill window.
    pub max_lateness_ms: Option<u64>,
}

impl KeyConfig {
    /// A tenant key in the older form: `tenant_id` and nothing else.
    pub fn tenant(sha256: impl Into<Secret>, tenant_id: &str) -> Self {
        Self::of_kind(sha256, None, Some(tenant_id))
    }

    /// An admin key in the older form: `admin = true`.
    pub fn admin(sha256: impl Into<Secret>) -> Self {
        Self {
            admin: true,
            ..Self::of_kind(sha256, None, None)
        }
    }

    pub fn of_kind(
        sha256: impl Into<Secret>,
        kind: Option<KeyKind>,
        tenant_id: Option<&str>,
    ) -> Self {
        Self {
            sha256: sha256.into(),
            name: None,
            kind,
            tenant_id: tenant_id.map(str::to_owned),
            admin: false,
            allow_caller_cost: None,
            max_lateness_ms: None,
        }
    }

    /// The key's kind and trust, or why the entry is inconsistent.
    pub fn policy(&self, auth: &AuthConfig) -> Result<KeyPolicy, &'static str> {
        let kind = match (self.kind, self.admin) {
            (Some(KeyKind::Admin) | None, true) => KeyKind::Admin,
            (Some(_), true) => return Err("admin = true contradicts the kind"),
            (Some(kind), false) => kind,
            (None, false) if self.tenant_id.is_some() => KeyKind::Tenant,
            (None, false) => return Err("needs a tenant_id, a kind or admin = true"),
        };
        match (kind, &self.tenant_id) {
            (KeyKind::Admin, Some(_)) => {
                return Err("a key is either bound to a tenant_id or admin, not both")
            }
            (KeyKind::Tenant | KeyKind::Service, None) => {
                return Err("a tenant or service key needs a tenant_id")
            }
            (_, Some(tenant)) if tenant.trim().is_empty() => {
                return Err("tenant_id must not be empty")
            }
            // `*` names every tenant in a budget; a key bound to it would
            // read and write as if it were that budget's owner.
            (_, Some(tenant)) if tenant.trim() == ledger::budget::EVERY_TENANT => {
                return Err("tenant_id must not be `*`: a key is bound to one tenant")
            }
            _ => {}
        }
        if self.max_lateness_ms == Some(0) {
            return Err("max_lateness_ms must be positive");
        }
        if self.max_lateness_ms.is_some_and(|ms| ms > MAX_WINDOW_MS) {
            return Err("max_lateness_ms must be at most ten years (315360000000)");
        }
        let trusted = kind != KeyKind::Tenant;
        Ok(KeyPolicy {
            kind,
            allow_caller_cost: self.allow_caller_cost.unwrap_or(trusted),
            max_lateness_ms: self
                .max_lateness_ms
                .or((!trusted).then_some(auth.tenant_max_lateness_ms)),
        })
    }
}

impl Config {
    /// The configuration with every inline key's resolved policy written
    /// out, so `--print-config` shows what each key may do. Entries that do
    /// not resolve are left as written; startup refuses them.
    pub(super) fn with_key_policies_shown(&self) -> Self {
        let mut shown = self.clone();
        let backfill_ms = u64::from(self.validation.backfill_days) * 24 * 60 * 60 * 1000;
        for key in &mut shown.auth.keys {
            let Ok(policy) = key.policy(&self.auth) else {
                continue;
            };
            key.kind = Some(policy.kind);
            key.admin = false;
            key.allow_caller_cost = Some(policy.allow_caller_cost);
            key.max_lateness_ms = Some(
                policy
                    .max_lateness_ms
                    .unwrap_or(backfill_ms)
                    .min(backfill_ms),
            );
        }
        shown
    }
}
