//! Cost by use case inside the batch transaction: which label keys an
//! operator attributes cost by (`attribution.labels`), and adding each
//! batch's new rows to the daily rollup per value of each key
//! (`usage_attribution_daily`, SQL in [`store::attribution`]).
//!
//! The writer calls [`record`] with exactly the rows the transaction
//! inserted, as it does for budget spend, so an event is counted once no
//! matter how often it is delivered, and the rollup commits or rolls back
//! with the rows and the offsets. Labels stay out of Prometheus: the keys'
//! values are unbounded, and the rollup is where they are reported.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use ledger::PricingStatus;
use serde::{Deserialize, Serialize};
use store::attribution::{Admitted, AttributionKey, LabelCost, Sums, UNLABELLED};

use crate::stream::prepare::PricedEvent;

/// `[attribution]`: the label keys cost is attributed by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Label keys (at most [`store::attribution::MAX_KEYS`]) whose values get a daily rollup of
    /// cost and tokens per tenant; usage without the label counts as
    /// `(unlabelled)`. Empty: no rollup.
    pub labels: Vec<String>,
    /// Distinct values of one key a tenant may add to the rollup in one UTC
    /// day; further values count under `(other)` (`(unlabelled)` is not
    /// counted).
    pub max_values_per_day: usize,
}

/// The default of `attribution.max_values_per_day`.
pub const DEFAULT_MAX_VALUES_PER_DAY: usize = 200;

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            labels: vec!["use_case".to_owned()],
            max_values_per_day: DEFAULT_MAX_VALUES_PER_DAY,
        }
    }
}

impl AttributionConfig {
    /// The rule the gateway applies to label keys, a bounded list, and no
    /// key named twice.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_values_per_day == 0 {
            return Err("attribution.max_values_per_day must be at least 1".to_owned());
        }
        store::attribution::validate_label_keys("attribution.labels", &self.labels)
    }
}

/// The store's step-tagged error, told as an attribution step.
#[derive(Debug, thiserror::Error)]
#[error("database error during attribution ({}): {}", .0.step, .0.source)]
pub struct AttributionError(#[from] store::DbError);

impl AttributionError {
    /// The database error, which decides whether a retry can help.
    pub fn database_error(&self) -> &tokio_postgres::Error {
        &self.0.source
    }
}

pub use ledger::day::utc_day;

/// What `new_rows` add to the rollup: per key, one row per (day, tenant,
/// value, provider, model), sorted.
pub fn rollup(keys: &[String], new_rows: &[&PricedEvent]) -> Vec<(AttributionKey, Sums)> {
    // Keyed by borrowed strings, in `AttributionKey`'s order (its fields in
    // declaration order): the owned key is made once per row of the rollup,
    // not once per event and label key.
    let mut sums: BTreeMap<(_, &str, &str, &str, &str, &str), Sums> = BTreeMap::new();
    for row in new_rows {
        let event = &row.event;
        let one = Sums {
            requests: 1,
            prompt_tokens: event.prompt_tokens.into(),
            completion_tokens: event.completion_tokens.into(),
            total_tokens: event.total_tokens.into(),
            cached_prompt_tokens: event.cached_prompt_tokens.into(),
            cache_write_tokens: event.cache_write_tokens.into(),
            reasoning_tokens: event.reasoning_tokens.into(),
            cost: row.cost.usd,
            unpriced_requests: i64::from(row.cost.status == PricingStatus::Unpriced),
        };
        let day = utc_day(event.created_at);
        for key in keys {
            let value = event.labels.get(key).map_or(UNLABELLED, String::as_str);
            let rollup_key = (
                day,
                event.tenant_id.as_str(),
                key.as_str(),
                value,
                event.provider.as_str(),
                event.model.as_str(),
            );
            sums.entry(rollup_key).or_default().add(&one);
        }
    }
    sums.into_iter()
        .map(
            |((day, tenant_id, label_key, label_value, provider, model), sums)| {
                let key = AttributionKey {
                    day,
                    tenant_id: tenant_id.to_owned(),
                    label_key: label_key.to_owned(),
                    label_value: label_value.to_owned(),
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                };
                (key, sums)
            },
        )
        .collect()
}

/// Adds the new rows to the rollup, in the batch's transaction; returns
/// the values each (day, tenant, key) of theirs has rows under now, which
/// the optimization fold needs (nothing when no key is configured).
pub async fn record(
    transaction: &Transaction<'_>,
    keys: &[String],
    max_values_per_day: usize,
    new_rows: &[&PricedEvent],
) -> Result<Admitted, AttributionError> {
    if keys.is_empty() || new_rows.is_empty() {
        return Ok(Admitted::default());
    }
    Ok(
        store::attribution::add_bounded(transaction, rollup(keys, new_rows), max_values_per_day)
            .await?,
    )
}

/// The "cost by use case" section of `processor report`: per key, its
/// values by cost.
pub fn table(rows: &[LabelCost], days: u32) -> String {
    let mut out = format!("\ncost by use case (usage_attribution_daily, last {days} days)\n");
    if rows.is_empty() {
        out.push_str("(no rows)\n");
        return out;
    }
    let width = rows
        .iter()
        .map(|r| r.label_key.len() + 1 + r.label_value.chars().count())
        .max()
        .unwrap_or(0)
        .max("label".len());
    out.push_str(&format!(
        "{:<width$}  {:>10}  {:>14}  {:>18}  {:>8}\n",
        "label", "requests", "total_tokens", "cost_usd", "unpriced"
    ));
    for row in rows {
        let label = format!("{}={}", row.label_key, row.label_value);
        out.push_str(&format!(
            "{label:<width$}  {:>10}  {:>14}  {:>18}  {:>8}\n",
            row.sums.requests,
            row.sums.total_tokens,
            row.sums.cost.round_dp(6),
            row.sums.unpriced_requests
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use ledger::pricebook::Cost;
    use rust_decimal::Decimal;

    fn priced(tenant: &str, at: DateTime<Utc>, labels: &[(&str, &str)], cost: i64) -> PricedEvent {
        let mut event = ledger::UsageEvent {
            id: uuid::Uuid::new_v4(),
            created_at: at,
            tenant_id: tenant.into(),
            user_id: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            prompt_tokens: 100,
            completion_tokens: 20,
            total_tokens: 120,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
            service_tier: None,
            calls: Default::default(),
            unpriced_tokens: Default::default(),
            estimated_cost: None,
            labels: BTreeMap::new(),
            received_at: at,
            request_id: None,
            call_identity: false,
            reservation_id: None,
            api_key: None,
        };
        event.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PricedEvent {
            event,
            cost: Cost {
                usd: Decimal::new(cost, 4),
                status: if cost == 0 {
                    PricingStatus::Unpriced
                } else {
                    PricingStatus::Priced
                },
            },
            pricing: Default::default(),
            content_sha256: [0; 32],
            record_index: 0,
            source_partition: 0,
            source_offset: 0,
        }
    }

    #[test]
    fn every_key_gets_every_event_and_unlabelled_is_a_bucket() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 31, 23, 59, 59)
            .single()
            .expect("t");
        let next = Utc
            .with_ymd_and_hms(2026, 2, 1, 0, 0, 0)
            .single()
            .expect("t");
        let rows = [
            priced("acme", at, &[("use_case", "chat"), ("team", "core")], 5),
            priced("acme", at, &[("use_case", "chat")], 7),
            priced("acme", next, &[], 0),
        ];
        let refs: Vec<&PricedEvent> = rows.iter().collect();
        let keys = vec!["use_case".to_owned(), "team".to_owned()];
        let rollup = rollup(&keys, &refs);
        let find = |day: DateTime<Utc>, key: &str, value: &str| {
            rollup
                .iter()
                .find(|(k, _)| k.day == day && k.label_key == key && k.label_value == value)
                .map(|(_, s)| s.clone())
        };
        let day = utc_day(at);
        assert_eq!(
            day,
            Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0)
                .single()
                .expect("t")
        );
        let chat = find(day, "use_case", "chat").expect("chat");
        assert_eq!((chat.requests, chat.cost), (2, Decimal::new(12, 4)));
        assert_eq!(find(day, "team", "core").expect("core").requests, 1);
        assert_eq!(
            find(day, "team", UNLABELLED).expect("unlabelled").cost,
            Decimal::new(7, 4)
        );
        let feb = find(next, "use_case", UNLABELLED).expect("february");
        assert_eq!((feb.requests, feb.unpriced_requests), (1, 1));
        // per key, the values add up to the whole cost
        for key in &keys {
            let cost: Decimal = rollup
                .iter()
                .filter(|(k, _)| &k.label_key == key)
                .map(|(_, s)| s.cost)
                .sum();
            assert_eq!(cost, Decimal::new(12, 4), "{key}");
        }
        assert!(
            rollup.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "sorted"
        );
    }

    /// The rows come out in `AttributionKey`'s order, one per key: the
    /// order every writer upserts in.
    #[test]
    fn rows_come_out_once_each_in_key_order() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 31, 12, 0, 0)
            .single()
            .expect("t");
        let mut rows = Vec::new();
        for (n, tenant) in ["globex", "acme", "initech", "acme"].iter().enumerate() {
            for value in ["chat", "search", "batch"] {
                let mut row = priced(tenant, at, &[("use_case", value), ("team", "core")], 5);
                row.event.model = if n % 2 == 0 { "gpt-4o" } else { "o1" }.into();
                rows.push(row);
            }
        }
        let refs: Vec<&PricedEvent> = rows.iter().collect();
        let keys = vec!["use_case".to_owned(), "team".to_owned()];
        let rollup = rollup(&keys, &refs);
        let mut expected: Vec<AttributionKey> = rollup.iter().map(|(k, _)| k.clone()).collect();
        expected.sort();
        expected.dedup();
        let got: Vec<AttributionKey> = rollup.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(got, expected);
        let requests: i64 = rollup.iter().map(|(_, sums)| sums.requests).sum();
        assert_eq!(requests, 2 * 12, "every event under each of the two keys");
    }

    #[test]
    fn the_key_list_is_bounded_and_well_formed() {
        let config = |labels: &[&str]| AttributionConfig {
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            ..AttributionConfig::default()
        };
        assert!(AttributionConfig::default().validate().is_ok());
        assert!(config(&["use_case", "feature", "team"]).validate().is_ok());
        assert!(config(&[]).validate().is_ok());
        assert!(config(&["a", "b", "c", "d", "e", "f", "g", "h", "i"])
            .validate()
            .is_err());
        assert!(config(&["team", "team"]).validate().is_err());
        assert!(config(&[""]).validate().is_err());
        assert!(config(&["use case"]).validate().is_err());
    }
}
