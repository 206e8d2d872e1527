//! Negotiated prices: a tenant's contract terms, effective-dated, as a
//! multiplier of the list price or as rates that replace it, for all
//! models, one provider, or one model.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::entry::{entry_id, Effective, Tariff};

/// What a tenant pays instead of the list price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantTerms {
    /// The list cost times this (0.85 for a 15% discount).
    Multiplier(Decimal),
    /// Rates of their own; the list price is still computed beside them.
    Tariff(Tariff),
}

/// One `[[tenant]]` line of the price file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRule {
    pub tenant: String,
    /// The provider as the usage names it (lower case), or `*`. A contract
    /// with Azure is not a contract with OpenAI, so aliases are not applied.
    pub provider: String,
    /// A listed model name (its snapshots and aliases included), or `*`.
    pub model: String,
    pub effective: Effective,
    pub contract: Option<String>,
    pub terms: TenantTerms,
}

impl TenantRule {
    /// A stable key, e.g. `tenant:acme:openai/*@2026-01-01`.
    pub fn id(&self) -> String {
        format!(
            "tenant:{}:{}",
            self.tenant,
            entry_id(&self.provider, &self.model, self.effective.from)
        )
    }

    /// 2 for a model rule, 1 for a provider rule, 0 for a tenant-wide rule:
    /// the most specific rule in force wins.
    fn specificity(&self) -> u8 {
        match (self.provider.as_str(), self.model.as_str()) {
            (_, model) if model != "*" => 2,
            ("*", _) => 0,
            _ => 1,
        }
    }
}

/// The rule that sets `tenant`'s price for this usage at `at`: the most
/// specific one in force, and among those the one in force most recently.
/// `model_names` are the names the usage's model is known by (as sent, its
/// snapshot forms and the listed name it resolved to).
pub(crate) fn applicable<'a>(
    rules: &'a [TenantRule],
    tenant: &str,
    provider: &str,
    model_names: &[&str],
    at: DateTime<Utc>,
) -> Option<&'a TenantRule> {
    rules
        .iter()
        .filter(|rule| {
            rule.tenant == tenant
                && (rule.provider == "*" || rule.provider == provider)
                && (rule.model == "*" || model_names.contains(&rule.model.as_str()))
                && rule.effective.contains(at)
        })
        .max_by_key(|rule| (rule.specificity(), rule.effective.from))
}
