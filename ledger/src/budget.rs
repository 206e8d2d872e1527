//! Budgets: what a budget covers, its calendar periods in its own time
//! zone, which thresholds a spend has reached, and the words and labels of
//! the alert a threshold raises. No I/O: the processor and the gateway
//! store and evaluate budgets with these functions.
//!
//! - A budget covers one tenant, or every tenant (`tenant_id = "*"`, spend
//!   kept per tenant), optionally narrowed to a provider, a model and one
//!   label value.
//! - Periods are calendar days or months in the budget's IANA time zone
//!   (UTC by default): `[local midnight, next local midnight)`, so a DST
//!   day lasts 23 or 25 hours and a month starts at its local midnight.
//! - A threshold `t` (percent of the amount, 1..=1000) is reached when
//!   `spend × 100 >= amount × t`; exact decimal arithmetic, no floats.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::event::{
    check_identifier, check_provider, is_invisible, printable, type_name, FieldError,
    MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_MODEL_CHARS, MAX_TENANT_ID_CHARS,
};
use crate::UsageEvent;

/// The `tenant_id` of a budget that applies to each tenant separately.
pub const EVERY_TENANT: &str = "*";
/// Thresholds of a budget that does not name its own, in percent.
pub const DEFAULT_THRESHOLDS: [u16; 4] = [50, 75, 90, 100];
/// Highest threshold: overrun alerts up to 10× the amount.
pub const MAX_THRESHOLD_PERCENT: u16 = 1000;
pub const MAX_THRESHOLDS: usize = 20;
pub const MAX_BUDGET_NAME_CHARS: usize = 100;
/// Upper bound of a budget amount in USD.
pub const MAX_AMOUNT_USD: i64 = 1_000_000_000;
/// Decimal places an amount may have (the spend column's scale).
pub const MAX_AMOUNT_SCALE: u32 = 10;
/// The `alertname` label of every budget alert.
pub const ALERT_NAME: &str = "LLMBudgetThreshold";
/// The runbook section for budget alerts.
pub const RUNBOOK_URL: &str =
    "https://github.com/tokenledger/tokenledger/blob/main/docs/runbooks.md#llmbudgetthreshold";

const KNOWN_FIELDS: &[&str] = &[
    "name",
    "tenant_id",
    "provider",
    "model",
    "label",
    "period",
    "timezone",
    "amount_usd",
    "thresholds",
    "hard_limit",
];

/// A budget's calendar period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "daily" => Ok(Period::Daily),
            "monthly" => Ok(Period::Monthly),
            _ => Err(format!(
                "must be \"daily\" or \"monthly\", got {:?}",
                printable(text)
            )),
        }
    }
}

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
    pub provider: Option<String>,
    pub model: Option<String>,
    pub label: Option<LabelMatch>,
}

impl Scope {
    /// Whether `event`'s cost counts toward a budget with this scope.
    pub fn matches(&self, event: &UsageEvent) -> bool {
        self.tenant.covers(&event.tenant_id)
            && self
                .provider
                .as_ref()
                .is_none_or(|provider| *provider == event.provider)
            && self
                .model
                .as_ref()
                .is_none_or(|model| *model == event.model)
            && self
                .label
                .as_ref()
                .is_none_or(|label| event.labels.get(&label.key) == Some(&label.value))
    }

    /// Short human description of the narrowing beyond the tenant, e.g.
    /// `openai/gpt-4o, label team=support`; empty when there is none.
    pub fn narrowing(&self) -> String {
        let mut parts = Vec::new();
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
}

/// The half-open UTC interval `[start, end)` of one period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodBounds {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl PeriodBounds {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// The calendar period of kind `period` in `timezone` that contains `at`.
///
/// A period starts at the first instant of its first local day. Where a DST
/// change skips local midnight (some zones switch at 00:00), the day starts
/// when the clocks resume; where midnight happens twice, at the first.
pub fn period_bounds(period: Period, timezone: Tz, at: DateTime<Utc>) -> PeriodBounds {
    let local_date = at.with_timezone(&timezone).date_naive();
    let (first_day, next_first_day) = match period {
        Period::Daily => (local_date, local_date.succ_opt()),
        Period::Monthly => {
            let first = local_date.with_day(1).unwrap_or(local_date);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            (first, next)
        }
    };
    PeriodBounds {
        start: start_of_local_day(timezone, first_day),
        end: next_first_day.map_or(DateTime::<Utc>::MAX_UTC, |day| {
            start_of_local_day(timezone, day)
        }),
    }
}

/// The first instant whose local date in `timezone` is `day`.
fn start_of_local_day(timezone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    if let Some(start) = timezone.from_local_datetime(&midnight).earliest() {
        return start.with_timezone(&Utc);
    }
    // Midnight falls into a DST gap: the day begins where the gap ends.
    // Gaps are whole minutes long and never longer than a day.
    for minutes in 1..=24 * 60 {
        let candidate = midnight + Duration::minutes(minutes);
        if let Some(start) = timezone.from_local_datetime(&candidate).earliest() {
            return start.with_timezone(&Utc);
        }
    }
    // Unreachable for any real zone; fall back to the UTC reading.
    Utc.from_utc_datetime(&midnight)
}

/// The spend at which threshold `percent` of `amount` is reached.
pub fn threshold_amount(amount: Decimal, percent: u16) -> Decimal {
    amount * Decimal::from(percent) / Decimal::ONE_HUNDRED
}

/// Whether `spend` has reached `percent` of `amount` (`spend × 100 >=
/// amount × percent`, exact).
pub fn has_reached(spend: Decimal, amount: Decimal, percent: u16) -> bool {
    spend * Decimal::ONE_HUNDRED >= amount * Decimal::from(percent)
}

/// The thresholds `spend` has reached, ascending.
pub fn reached(spend: Decimal, amount: Decimal, thresholds: &[u16]) -> Vec<u16> {
    thresholds
        .iter()
        .copied()
        .filter(|percent| has_reached(spend, amount, *percent))
        .collect()
}

/// The thresholds a spend moving from `old` to `new` crosses: reached at
/// `new` but not at `old`, ascending. A jump from 40 % to 95 % crosses 50,
/// 75 and 90 at once.
pub fn crossed(old: Decimal, new: Decimal, amount: Decimal, thresholds: &[u16]) -> Vec<u16> {
    thresholds
        .iter()
        .copied()
        .filter(|percent| has_reached(new, amount, *percent) && !has_reached(old, amount, *percent))
        .collect()
}

/// `spend / amount` (0 for a non-positive amount), for gauges and status.
pub fn spend_ratio(spend: Decimal, amount: Decimal) -> Decimal {
    if amount <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    spend / amount
}

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

impl Budget {
    /// Whether `event`'s cost counts toward this budget.
    pub fn matches(&self, event: &UsageEvent) -> bool {
        self.scope.matches(event)
    }

    /// The period of this budget that contains `at` (an event's
    /// `created_at`: late events count toward their own period).
    pub fn period_of(&self, at: DateTime<Utc>) -> PeriodBounds {
        period_bounds(self.period, self.timezone, at)
    }

    /// Validates a budget definition as the API and the budgets file take
    /// it, reporting every problem at once.
    pub fn from_json(id: Uuid, value: &Value) -> Result<Budget, Vec<FieldError>> {
        let Value::Object(object) = value else {
            return Err(vec![field_error(
                "",
                format!("a budget must be a JSON object, got {}", type_name(value)),
            )]);
        };
        let mut errors = Vec::new();
        for key in object.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                errors.push(field_error(
                    printable(key),
                    format!(
                        "unknown field; known fields are {}",
                        KNOWN_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let name = take(
            &mut errors,
            "name",
            required(object, "name").and_then(parse_name),
        );
        let tenant = take(
            &mut errors,
            "tenant_id",
            required(object, "tenant_id").and_then(parse_tenant_scope),
        );
        let provider = take(
            &mut errors,
            "provider",
            optional(object, "provider").map_or(Ok(None), |v| parse_provider(v).map(Some)),
        );
        let model = take(
            &mut errors,
            "model",
            optional(object, "model").map_or(Ok(None), |v| parse_model(v).map(Some)),
        );
        let label = take(
            &mut errors,
            "label",
            optional(object, "label").map_or(Ok(None), |v| parse_label(v).map(Some)),
        );
        let period = take(
            &mut errors,
            "period",
            required(object, "period").and_then(|v| expect_str(v)?.parse::<Period>()),
        );
        let timezone = take(
            &mut errors,
            "timezone",
            optional(object, "timezone").map_or(Ok(Tz::UTC), parse_timezone),
        );
        let amount_usd = take(
            &mut errors,
            "amount_usd",
            required(object, "amount_usd").and_then(parse_amount),
        );
        let thresholds = take(
            &mut errors,
            "thresholds",
            optional(object, "thresholds")
                .map_or(Ok(DEFAULT_THRESHOLDS.to_vec()), parse_thresholds),
        );
        let hard_limit = take(
            &mut errors,
            "hard_limit",
            optional(object, "hard_limit").map_or(Ok(false), |v| {
                v.as_bool()
                    .ok_or_else(|| format!("must be true or false, got {}", type_name(v)))
            }),
        );
        match (
            name, tenant, provider, model, label, period, timezone, amount_usd, thresholds,
            hard_limit,
        ) {
            (
                Some(name),
                Some(tenant),
                Some(provider),
                Some(model),
                Some(label),
                Some(period),
                Some(timezone),
                Some(amount_usd),
                Some(thresholds),
                Some(hard_limit),
            ) if errors.is_empty() => Ok(Budget {
                id,
                name,
                scope: Scope {
                    tenant,
                    provider,
                    model,
                    label,
                },
                period,
                timezone,
                amount_usd,
                thresholds,
                hard_limit,
            }),
            _ => Err(errors),
        }
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
            "provider": self.scope.provider,
            "model": self.scope.model,
            "label": label,
            "period": self.period.as_str(),
            "timezone": self.timezone.name(),
            "amount_usd": self.amount_usd.normalize().to_string(),
            "thresholds": self.thresholds,
            "hard_limit": self.hard_limit,
        })
    }
}

/// The value of a field's parse, or `None` with its error recorded.
fn take<T>(errors: &mut Vec<FieldError>, field: &str, result: Result<T, String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(field_error(field, message));
            None
        }
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    match object.get(field) {
        None | Some(Value::Null) => Err("is required".into()),
        Some(value) => Ok(value),
    }
}

/// A field that may be absent or null.
fn optional<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|value| !value.is_null())
}

fn expect_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", type_name(value)))
}

fn parse_name(value: &Value) -> Result<String, String> {
    let name = expect_str(value)?;
    let chars = name.chars().count();
    if name.is_empty() || chars > MAX_BUDGET_NAME_CHARS {
        return Err(format!(
            "must be 1-{MAX_BUDGET_NAME_CHARS} characters, got {chars}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(
            "must be ASCII letters, digits, '-', '_', '.' or ':' (it becomes an alert label)"
                .into(),
        );
    }
    Ok(name.to_owned())
}

fn parse_tenant_scope(value: &Value) -> Result<TenantScope, String> {
    let tenant = expect_str(value)?;
    if tenant == EVERY_TENANT {
        return Ok(TenantScope::Every);
    }
    check_identifier(tenant, MAX_TENANT_ID_CHARS)
        .map_err(|message| format!("{message} (or \"*\" for every tenant)"))?;
    Ok(TenantScope::One(tenant.to_owned()))
}

fn parse_provider(value: &Value) -> Result<String, String> {
    // Events' providers are lower-cased by the gateway; so are budgets'.
    let provider = expect_str(value)?.to_ascii_lowercase();
    check_provider(&provider)?;
    Ok(provider)
}

fn parse_model(value: &Value) -> Result<String, String> {
    let model = expect_str(value)?;
    check_identifier(model, MAX_MODEL_CHARS)?;
    Ok(model.to_owned())
}

fn parse_label(value: &Value) -> Result<LabelMatch, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "must be an object {{\"key\": …, \"value\": …}}, got {}",
            type_name(value)
        ));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "key" && *k != "value") {
        return Err(format!(
            "unknown field {:?}; a label is {{\"key\": …, \"value\": …}}",
            printable(unknown)
        ));
    }
    let key = object
        .get("key")
        .ok_or("needs \"key\"")
        .map_err(str::to_owned)
        .and_then(|v| expect_str(v).map_err(|m| format!("key {m}")))?;
    let value = object
        .get("value")
        .ok_or("needs \"value\"")
        .map_err(str::to_owned)
        .and_then(|v| expect_str(v).map_err(|m| format!("value {m}")))?;
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !key_ok {
        return Err(format!(
            "key must be 1-{MAX_LABEL_KEY_CHARS} ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    if value.chars().count() > MAX_LABEL_VALUE_CHARS
        || value.chars().any(|c| c.is_control() || is_invisible(c))
    {
        return Err(format!(
            "value must be at most {MAX_LABEL_VALUE_CHARS} characters without control or invisible characters"
        ));
    }
    Ok(LabelMatch {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_timezone(value: &Value) -> Result<Tz, String> {
    let name = expect_str(value)?;
    name.parse::<Tz>().map_err(|_| {
        format!(
            "{:?} is not an IANA time zone name (e.g. \"UTC\", \"Europe/Berlin\", \"America/New_York\")",
            printable(name)
        )
    })
}

fn parse_amount(value: &Value) -> Result<Decimal, String> {
    let amount =
        match value {
            Value::String(text) => Decimal::from_str(text.trim())
                .map_err(|_| "must be a decimal string such as \"1000.00\"".to_string())?,
            // Whole numbers survive JSON intact; fractions may not.
            Value::Number(number) => match number.as_i64() {
                Some(whole) => Decimal::from(whole),
                None => return Err(
                    "must be a decimal string such as \"1000.50\" (JSON fractions lose precision)"
                        .into(),
                ),
            },
            other => {
                return Err(format!(
                    "must be a decimal string such as \"1000.00\", got {}",
                    type_name(other)
                ))
            }
        };
    if amount <= Decimal::ZERO {
        return Err("must be greater than 0".into());
    }
    if amount > Decimal::from(MAX_AMOUNT_USD) {
        return Err(format!("must be at most {MAX_AMOUNT_USD}"));
    }
    if amount.normalize().scale() > MAX_AMOUNT_SCALE {
        return Err(format!(
            "must have at most {MAX_AMOUNT_SCALE} decimal places"
        ));
    }
    Ok(amount.normalize())
}

fn parse_thresholds(value: &Value) -> Result<Vec<u16>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "must be an array of percentages such as [50, 75, 90, 100], got {}",
            type_name(value)
        ));
    };
    if items.is_empty() || items.len() > MAX_THRESHOLDS {
        return Err(format!(
            "must hold 1-{MAX_THRESHOLDS} percentages, got {}",
            items.len()
        ));
    }
    let mut thresholds = Vec::with_capacity(items.len());
    for item in items {
        let percent = item
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=MAX_THRESHOLD_PERCENT).contains(n))
            .ok_or_else(|| {
                format!(
                    "each threshold must be a whole percentage 1-{MAX_THRESHOLD_PERCENT}, got {item}"
                )
            })?;
        thresholds.push(percent);
    }
    thresholds.sort_unstable();
    if let Some(pair) = thresholds.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("threshold {} is listed twice", pair[0]));
    }
    Ok(thresholds)
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

#[cfg(test)]
mod tests;
