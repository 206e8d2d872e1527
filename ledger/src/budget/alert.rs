//! The alert a threshold crossing raises: its labels (its identity in
//! Alertmanager), its summary and description, and the JSON Alertmanager's
//! v2 API takes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};
use uuid::Uuid;

use super::thresholds::{spend_ratio, threshold_amount};
use super::Period;

/// The `alertname` label of every threshold alert.
pub const ALERT_NAME: &str = "LLMBudgetThreshold";
/// The `alertname` label of a forecast alert (`kind="forecast"`).
pub const FORECAST_ALERT_NAME: &str = "LLMBudgetForecast";
/// The runbook section for forecast alerts.
pub const FORECAST_RUNBOOK_URL: &str =
    "https://github.com/tokenledger/tokenledger/blob/main/docs/runbooks.md#llmbudgetforecast";

/// What a `budget_alerts` row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Spend reached a threshold.
    Threshold,
    /// The burn-rate forecast of the period's end exceeds the amount.
    Forecast,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Threshold => "threshold",
            AlertKind::Forecast => "forecast",
        }
    }
}

/// The runbook section for budget alerts.
pub const RUNBOOK_URL: &str =
    "https://github.com/tokenledger/tokenledger/blob/main/docs/runbooks.md#llmbudgetthreshold";

/// US dollars with cents: `$750.00`; more places only when the amount has
/// them (`$0.005`), so a small amount never shows as `$0.00`.
pub fn format_usd(amount: Decimal) -> String {
    let normalized = amount.normalize();
    let places = normalized.scale().max(2);
    let rounded = amount.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    format!("${rounded:.prec$}", prec = places as usize)
}

/// Alert severity: warning below 100 %, critical from 100 % on.
pub fn severity(percent: u16) -> &'static str {
    if percent >= 100 {
        "critical"
    } else {
        "warning"
    }
}

/// One recorded threshold crossing (or forecast above the amount), with
/// everything its alert says. Built from a `budget_alerts` row, which
/// snapshots the budget's name, period and amount, so the alert reads the
/// same after the budget is edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdAlert {
    pub budget_id: Uuid,
    pub budget_name: String,
    pub tenant_id: String,
    /// The user of an each-user budget (`user_id = "*"`); empty otherwise.
    pub user_id: String,
    pub kind: AlertKind,
    pub period: Period,
    pub timezone: Tz,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub threshold: u16,
    pub amount_usd: Decimal,
    /// The spend when the crossing was recorded (may be past the threshold
    /// when one batch crossed several).
    pub spend_usd: Decimal,
    /// Empty, or what the budget is narrowed to (see [`Scope::narrowing`]).
    pub narrowing: String,
    pub crossed_at: DateTime<Utc>,
    /// When a forecast alert's forecast dropped back below the amount.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl ThresholdAlert {
    /// The first local day of the period, e.g. `2026-01-01`.
    pub fn period_label(&self) -> String {
        self.period_start
            .with_timezone(&self.timezone)
            .format("%Y-%m-%d")
            .to_string()
    }

    /// The alert's identity in Alertmanager. `period_start` keeps a late
    /// crossing of last month apart from this month's alert.
    /// An each-user budget's alerts carry `user_id`, one per user; a
    /// forecast alert carries `kind="forecast"` instead of a threshold.
    pub fn labels(&self) -> BTreeMap<&'static str, String> {
        let mut labels = BTreeMap::from([
            ("tenant_id", self.tenant_id.clone()),
            ("budget", self.budget_name.clone()),
            ("period", self.period.as_str().to_owned()),
            ("period_start", self.period_label()),
        ]);
        match self.kind {
            AlertKind::Threshold => {
                labels.insert("alertname", ALERT_NAME.to_owned());
                labels.insert("threshold", self.threshold.to_string());
                labels.insert("severity", severity(self.threshold).to_owned());
            }
            AlertKind::Forecast => {
                labels.insert("alertname", FORECAST_ALERT_NAME.to_owned());
                labels.insert("kind", AlertKind::Forecast.as_str().to_owned());
                labels.insert("severity", "warning".to_owned());
            }
        }
        if !self.user_id.is_empty() {
            labels.insert("user_id", self.user_id.clone());
        }
        labels
    }

    fn whose(&self) -> String {
        if self.user_id.is_empty() {
            format!("tenant {}", self.tenant_id)
        } else {
            format!("tenant {}, user {}", self.tenant_id, self.user_id)
        }
    }

    /// `75% of the monthly budget used: $750.00 of $1000.00 (tenant acme)`.
    pub fn summary(&self) -> String {
        if self.kind == AlertKind::Forecast {
            return format!(
                "The {} budget is forecast to run out: {} projected of {} ({})",
                self.period,
                format_usd(self.spend_usd),
                format_usd(self.amount_usd),
                self.whose()
            );
        }
        format!(
            "{}% of the {} budget used: {} of {} ({})",
            self.threshold,
            self.period,
            format_usd(threshold_amount(self.amount_usd, self.threshold)),
            format_usd(self.amount_usd),
            self.whose()
        )
    }

    /// The details: which budget, the actual spend, the period.
    pub fn description(&self) -> String {
        let percent = (spend_ratio(self.spend_usd, self.amount_usd) * Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero);
        let scope = if self.narrowing.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.narrowing)
        };
        let local = |at: DateTime<Utc>| {
            at.with_timezone(&self.timezone)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        };
        if self.kind == AlertKind::Forecast {
            return format!(
                "Budget {}{scope} of {}: at the spend rate of the trailing window, {} of {} \
                 ({percent:.1}%) by the end of the period, as forecast at {}. Period {} to {} {}.",
                self.budget_name,
                self.whose(),
                format_usd(self.spend_usd),
                format_usd(self.amount_usd),
                local(self.crossed_at),
                local(self.period_start),
                local(self.period_end),
                self.timezone.name(),
            );
        }
        format!(
            "Budget {}{scope} of {}: {} spent of {} ({percent:.1}%) when the {}% threshold was recorded at {}. Period {} to {} {}.",
            self.budget_name,
            self.whose(),
            format_usd(self.spend_usd),
            format_usd(self.amount_usd),
            self.threshold,
            local(self.crossed_at),
            local(self.period_start),
            local(self.period_end),
            self.timezone.name(),
        )
    }

    /// One element of the array `POST /api/v2/alerts` takes (and the
    /// optional webhook receives): active from the crossing until the end
    /// of the period, or until a forecast alert was resolved.
    pub fn to_alertmanager_json(&self) -> Value {
        let runbook = match self.kind {
            AlertKind::Threshold => RUNBOOK_URL,
            AlertKind::Forecast => FORECAST_RUNBOOK_URL,
        };
        let ends_at = self.resolved_at.unwrap_or(self.period_end);
        json!({
            "labels": self.labels(),
            "annotations": {
                "summary": self.summary(),
                "description": self.description(),
                "runbook_url": runbook,
            },
            "startsAt": self.crossed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "endsAt": ends_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }
}
