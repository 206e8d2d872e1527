//! Budgets: what a budget covers, its calendar periods in its own time
//! zone, which thresholds a spend has reached, and the words and labels of
//! the alert a threshold raises. No I/O: the processor and the gateway
//! store and evaluate budgets with these functions (the `store` crate maps
//! them to and from their tables).
//!
//! - A budget covers one tenant, or every tenant (`tenant_id = "*"`, spend
//!   kept per tenant), optionally narrowed to a provider, a model and one
//!   label value and one user (`user_id`), or applying to every user of
//!   its tenants separately (`user_id = "*"`, spend kept per user).
//! - Periods are calendar days, weeks or months in the budget's IANA time
//!   zone (UTC by default): `[local midnight, next local midnight)`, so a
//!   DST day lasts 23 or 25 hours and a month starts at its local midnight;
//!   or `rolling_30d`, the trailing 30 local days (today included).
//! - A threshold `t` (percent of the amount, 1..=1000) is reached when
//!   `spend × 100 >= amount × t`; exact decimal arithmetic, no floats.
//!
//! Layout: this module holds the budget and its scope (the spend rule:
//! which events count); [`period`] the calendar periods; [`thresholds`]
//! reaching and crossing thresholds; [`alert`] the text and labels of an
//! alert; [`parse`] the validation of a definition from JSON or TOML.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{PriceBook, UsageEvent};

pub mod alert;
pub mod forecast;
pub mod parse;
pub mod period;
pub mod reservation;
pub mod thresholds;

pub use alert::{
    format_usd, severity, AlertKind, ThresholdAlert, ALERT_NAME, FORECAST_ALERT_NAME, RUNBOOK_URL,
};
pub use parse::{MAX_AMOUNT_SCALE, MAX_AMOUNT_USD, MAX_BUDGET_NAME_CHARS};
pub use period::{period_bounds, periods_containing, Period, PeriodBounds, ROLLING_DAYS};
pub use thresholds::{
    crossed, has_reached, reached, spend_ratio, threshold_amount, DEFAULT_THRESHOLDS,
    MAX_THRESHOLDS, MAX_THRESHOLD_PERCENT,
};

/// The `tenant_id` of a budget that applies to each tenant separately.
pub const EVERY_TENANT: &str = "*";

/// Which tenants a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantScope {
    /// Every tenant, each with its own spend.
    Every,
    One(String),
}

impl TenantScope {
    pub fn as_str(&self) -> &str {
        match self {
            TenantScope::Every => EVERY_TENANT,
            TenantScope::One(tenant) => tenant,
        }
    }

    pub fn covers(&self, tenant_id: &str) -> bool {
        match self {
            TenantScope::Every => true,
            TenantScope::One(tenant) => tenant == tenant_id,
        }
    }
}

/// The `user_id` of a budget that applies to each user separately.
pub const EVERY_USER: &str = "*";

/// Which users' usage a budget counts, and whether per user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserScope {
    /// Every user's usage together: one spend per tenant.
    All,
    /// Only this user's usage.
    One(String),
    /// Every user separately, each with its own spend; usage that names
    /// no user is one more "user", keyed `""`.
    Each,
}

impl UserScope {
    /// The `user_id` column of the budget's definition.
    pub fn as_column(&self) -> Option<&str> {
        match self {
            UserScope::All => None,
            UserScope::One(user) => Some(user),
            UserScope::Each => Some(EVERY_USER),
        }
    }

    /// The definition's `user_id` column read back.
    pub fn from_column(column: Option<String>) -> UserScope {
        match column {
            None => UserScope::All,
            Some(user) if user == EVERY_USER => UserScope::Each,
            Some(user) => UserScope::One(user),
        }
    }

    /// The user part of the spend key that usage of `user` counts under:
    /// the user for an each-user budget (`""` when none is named), `""`
    /// for every other budget (one spend for all the users it counts).
    pub fn spend_key(&self, user: Option<&str>) -> String {
        match self {
            UserScope::Each => user.unwrap_or_default().to_owned(),
            UserScope::All | UserScope::One(_) => String::new(),
        }
    }

    /// Which events the spend row keyed `key_user` counts, for the spend
    /// rule in SQL: `None` every user's, `Some("")` those naming no user.
    pub fn filter<'a>(&'a self, key_user: &'a str) -> Option<&'a str> {
        match self {
            UserScope::All => None,
            UserScope::One(user) => Some(user),
            UserScope::Each => Some(key_user),
        }
    }

    pub fn is_each(&self) -> bool {
        matches!(self, UserScope::Each)
    }
}

/// One label that an event must carry with this exact value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelMatch {
    pub key: String,
    pub value: String,
}

/// What a budget counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub tenant: TenantScope,
    /// Every user's events together, one user's (narrowed like by a
    /// provider or label), or each user's separately.
    pub user: UserScope,
    /// Only the usage appended with this API key (the key's name, which
    /// the gateway stamps on the event as `api_key`; never its hash).
    pub api_key: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub label: Option<LabelMatch>,
}

impl Scope {
    /// Whether `event`'s cost counts toward a budget with this scope: the
    /// spend rule; the model by [`Scope::matches_model`]. The `store`
    /// crate's spend-from-audit query applies the same rule (the model part
    /// through this very function, on the names the audit rows hold); its
    /// tests prove the two agree.
    pub fn matches(&self, event: &UsageEvent, book: &PriceBook) -> bool {
        self.tenant.covers(&event.tenant_id)
            && match &self.user {
                UserScope::All | UserScope::Each => true,
                UserScope::One(user) => event.user_id.as_ref() == Some(user),
            }
            && self
                .api_key
                .as_ref()
                .is_none_or(|key| event.api_key.as_ref() == Some(key))
            && self
                .provider
                .as_ref()
                .is_none_or(|provider| *provider == event.provider)
            && self.matches_model(&event.provider, &event.model, book)
            && self
                .label
                .as_ref()
                .is_none_or(|label| event.labels.get(&label.key) == Some(&label.value))
    }

    /// Whether the scope's model (if any) counts a usage of `model` sent to
    /// `provider`: the budget's model is one of the names the price book
    /// knows `model` by ([`PriceBook::model_names`]: the name itself, its
    /// dated snapshots and Bedrock profile and version forms, its aliases).
    /// A budget on `gpt-4o` counts `gpt-4o-2024-08-06`; one on
    /// `gpt-4o-2024-08-06` counts only that snapshot. The one rule for the
    /// batch, the spend-from-audit query and the status endpoint's filter.
    pub fn matches_model(&self, provider: &str, model: &str, book: &PriceBook) -> bool {
        self.model.as_ref().is_none_or(|wanted| {
            wanted == model || book.model_names(provider, model).contains(wanted)
        })
    }

    /// Short human description of the narrowing beyond the tenant, e.g.
    /// `openai/gpt-4o, label team=support`; empty when there is none.
    pub fn narrowing(&self) -> String {
        let mut parts = Vec::new();
        match &self.user {
            UserScope::All => {}
            UserScope::One(user) => parts.push(format!("user {user}")),
            UserScope::Each => parts.push("each user".to_owned()),
        }
        if let Some(key) = &self.api_key {
            parts.push(format!("API key {key}"));
        }
        match (&self.provider, &self.model) {
            (Some(provider), Some(model)) => parts.push(format!("{provider}/{model}")),
            (Some(provider), None) => parts.push(format!("provider {provider}")),
            (None, Some(model)) => parts.push(format!("model {model}")),
            (None, None) => {}
        }
        if let Some(label) = &self.label {
            parts.push(format!("label {}={}", label.key, label.value));
        }
        parts.join(", ")
    }
}

/// A budget as stored and evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: Uuid,
    /// Unique, human-readable; the `budget` label of its alerts.
    pub name: String,
    pub scope: Scope,
    pub period: Period,
    pub timezone: Tz,
    pub amount_usd: Decimal,
    /// Percent of the amount, ascending, unique, each 1..=1000.
    pub thresholds: Vec<u16>,
    /// Whether an application should refuse calls once the amount is spent
    /// (reported by the gateway's status endpoint; tokenledger itself
    /// refuses nothing).
    pub hard_limit: bool,
    /// Whether the processor exports this budget's burn-rate forecast
    /// (`tokenledger_budget_forecast_ratio`), which the
    /// `LLMBudgetForecastExceeded` rule alerts on.
    pub forecast_alert: bool,
}

impl Budget {
    /// Whether `event`'s cost counts toward this budget (see
    /// [`Scope::matches`]).
    pub fn matches(&self, event: &UsageEvent, book: &PriceBook) -> bool {
        self.scope.matches(event, book)
    }

    /// The period of this budget that contains `at` (an event's
    /// `created_at`: late events count toward their own period).
    pub fn period_of(&self, at: DateTime<Utc>) -> PeriodBounds {
        period_bounds(self.period, self.timezone, at)
    }

    /// Every period of this budget an event at `at` counts toward, as of
    /// `now` (see [`periods_containing`]): one, except for a rolling window.
    pub fn periods_counting(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Vec<PeriodBounds> {
        periods_containing(self.period, self.timezone, at, now)
    }

    /// The JSON form the API answers with (the input shape plus `id`).
    pub fn to_json(&self) -> Value {
        let label = self
            .scope
            .label
            .as_ref()
            .map(|label| json!({ "key": label.key, "value": label.value }));
        json!({
            "id": self.id,
            "name": self.name,
            "tenant_id": self.scope.tenant.as_str(),
            "user_id": self.scope.user.as_column(),
            "api_key": self.scope.api_key,
            "provider": self.scope.provider,
            "model": self.scope.model,
            "label": label,
            "period": self.period.as_str(),
            "timezone": self.timezone.name(),
            "amount_usd": self.amount_usd.normalize().to_string(),
            "thresholds": self.thresholds,
            "hard_limit": self.hard_limit,
            "forecast_alert": self.forecast_alert,
        })
    }
}

#[cfg(test)]
mod tests;
