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

/// The `alertname` label of every budget alert.
pub const ALERT_NAME: &str = "LLMBudgetThreshold";
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

/// One recorded threshold crossing, with everything its alert says. Built
/// from a `budget_alerts` row, which snapshots the budget's name, period and
/// amount, so the alert reads the same after the budget is edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdAlert {
    pub budget_id: Uuid,
    pub budget_name: String,
    pub tenant_id: String,
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
    pub fn labels(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("alertname", ALERT_NAME.to_owned()),
            ("tenant_id", self.tenant_id.clone()),
            ("budget", self.budget_name.clone()),
            ("threshold", self.threshold.to_string()),
            ("period", self.period.as_str().to_owned()),
            ("period_start", self.period_label()),
            ("severity", severity(self.threshold).to_owned()),
        ])
    }

    /// `75% of the monthly budget used: $750.00 of $1000.00 (tenant acme)`.
    pub fn summary(&self) -> String {
        format!(
            "{}% of the {} budget used: {} of {} (tenant {})",
            self.threshold,
            self.period,
            format_usd(threshold_amount(self.amount_usd, self.threshold)),
            format_usd(self.amount_usd),
            self.tenant_id
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
        format!(
            "Budget {}{scope} of tenant {}: {} spent of {} ({percent:.1}%) when the {}% threshold was recorded at {}. Period {} to {} {}.",
            self.budget_name,
            self.tenant_id,
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
    /// of the period.
    pub fn to_alertmanager_json(&self) -> Value {
        json!({
            "labels": self.labels(),
            "annotations": {
                "summary": self.summary(),
                "description": self.description(),
                "runbook_url": RUNBOOK_URL,
            },
            "startsAt": self.crossed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "endsAt": self.period_end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }
}
