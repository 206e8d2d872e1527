//! The comparison itself, pure: provider usage and cost against the
//! ledger's, per day, tenant and model, with the cost variance broken down
//! by cause so that the causes add up exactly to the variance.
//!
//! Attribution, per group (all in exact decimals; the provider's rate of a
//! kind is its cost over its tokens):
//! - neither side has tokens the other lacks entirely → the whole group is
//!   `unseen_by_ledger` (provider only) or `unseen_by_provider` (ledger only);
//! - otherwise the ledger's tokens are valued at the provider's rates:
//!   `price_difference` = ledger cost − that value (the same tokens at a
//!   different price); the net token difference at the provider's average
//!   rate is unseen usage; what is left of the volume difference is
//!   `token_kind_mismatch` (the same tokens counted as another kind).
//!
//! Charges the provider bills without tokens (a tool, a line item of
//! unknown shape) are `unseen_by_ledger`.

use std::collections::BTreeMap;

use super::{CostLine, LedgerGroup, TokenCounts, UsageLine, TOKEN_KINDS};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

/// The tenant of provider usage whose project or workspace is not mapped.
pub const UNMAPPED: &str = "(unmapped)";

/// Digits kept in the intermediate values of the attribution.
const WORKING_DP: u32 = 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Causes {
    pub unseen_by_ledger: Decimal,
    pub unseen_by_provider: Decimal,
    pub price_difference: Decimal,
    pub token_kind_mismatch: Decimal,
}

impl Causes {
    pub const NAMES: [&'static str; 4] = [
        "unseen_by_ledger",
        "unseen_by_provider",
        "price_difference",
        "token_kind_mismatch",
    ];

    pub fn get(&self, name: &str) -> Decimal {
        match name {
            "unseen_by_ledger" => self.unseen_by_ledger,
            "unseen_by_provider" => self.unseen_by_provider,
            "price_difference" => self.price_difference,
            "token_kind_mismatch" => self.token_kind_mismatch,
            _ => Decimal::ZERO,
        }
    }

    pub fn sum(&self) -> Decimal {
        self.unseen_by_ledger
            + self.unseen_by_provider
            + self.price_difference
            + self.token_kind_mismatch
    }

    fn add(&mut self, other: &Causes) {
        self.unseen_by_ledger += other.unseen_by_ledger;
        self.unseen_by_provider += other.unseen_by_provider;
        self.price_difference += other.price_difference;
        self.token_kind_mismatch += other.token_kind_mismatch;
    }
}

/// A token kind priced differently by the provider than by the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindRate {
    pub kind: &'static str,
    /// USD per million tokens the provider's bill implies.
    pub provider_usd_per_million: Decimal,
    /// The book's rate of the entry the ledger used, when the book has it.
    pub book_usd_per_million: Option<Decimal>,
}

/// A kind whose token count differs between the two sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindDelta {
    pub kind: &'static str,
    pub provider: i64,
    pub ledger: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupComparison {
    pub day: NaiveDate,
    pub tenant_id: String,
    pub model: String,
    pub provider_tokens: TokenCounts,
    pub ledger_tokens: TokenCounts,
    pub provider_cost_usd: Decimal,
    pub ledger_cost_usd: Decimal,
    /// ledger − provider.
    pub variance_usd: Decimal,
    pub causes: Causes,
    pub price_entries: Vec<String>,
    pub cost_sources: Vec<String>,
    /// Set when `price_difference` is not zero.
    pub rates: Vec<KindRate>,
    pub kind_deltas: Vec<KindDelta>,
}

/// Totals of a tenant, or of everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub provider_tokens: i64,
    pub ledger_tokens: i64,
    pub provider_cost_usd: Decimal,
    pub ledger_cost_usd: Decimal,
    pub variance_usd: Decimal,
    pub causes: Causes,
}

impl Summary {
    fn add(&mut self, group: &GroupComparison) {
        self.provider_tokens += group.provider_tokens.total();
        self.ledger_tokens += group.ledger_tokens.total();
        self.provider_cost_usd += group.provider_cost_usd;
        self.ledger_cost_usd += group.ledger_cost_usd;
        self.variance_usd += group.variance_usd;
        self.causes.add(&group.causes);
    }

    /// Ledger tokens / provider tokens; `None` when the provider has none.
    pub fn coverage(&self) -> Option<f64> {
        (self.provider_tokens > 0).then(|| self.ledger_tokens as f64 / self.provider_tokens as f64)
    }

    /// |variance| / provider cost; `None` when the provider billed nothing.
    pub fn variance_ratio(&self) -> Option<f64> {
        use rust_decimal::prelude::ToPrimitive;
        (!self.provider_cost_usd.is_zero())
            .then(|| (self.variance_usd.abs() / self.provider_cost_usd).to_f64())
            .flatten()
    }
}

/// The provider's side of one group, summed from its reports.
#[derive(Debug, Clone, Default)]
struct ProviderSide {
    tokens: TokenCounts,
    cost_by_kind: BTreeMap<&'static str, Decimal>,
    /// Cost of lines that name no token kind.
    cost_other: Decimal,
}

/// What the comparison needs besides the rows: who a scope is, what a
/// model's name is on both sides, what the book charges.
pub trait Lookup {
    /// The tenant a project / workspace is mapped to.
    fn tenant(&self, scope_id: &str) -> Option<String>;
    /// The name both sides' names of a model reduce to (the book entry's).
    fn model_key(&self, model: &str, day: NaiveDate) -> String;
    /// The book's rate (USD per million) of `kind` for `model` on `day`.
    fn book_rate(&self, model: &str, kind: &str, day: NaiveDate) -> Option<Decimal>;
    /// Whether the provider's usage report tells cache writes apart;
    /// when not, the ledger's writes are compared as uncached input.
    fn reports_cache_writes(&self) -> bool;
}

type Key = (NaiveDate, String, String);

/// Compares the days in `days` (those both reports cover).
pub fn compare(
    lookup: &dyn Lookup,
    days: &[NaiveDate],
    usage: &[(NaiveDate, UsageLine)],
    cost: &[(NaiveDate, CostLine)],
    ledger: &[LedgerGroup],
) -> Vec<GroupComparison> {
    let covered = |day: &NaiveDate| days.binary_search(day).is_ok();
    let tenant_of = |scope: &str| lookup.tenant(scope).unwrap_or_else(|| UNMAPPED.to_owned());
    let mut provider: BTreeMap<Key, ProviderSide> = BTreeMap::new();
    for (day, line) in usage.iter().filter(|(day, _)| covered(day)) {
        let key = (
            *day,
            tenant_of(&line.scope_id),
            lookup.model_key(&line.model, *day),
        );
        provider.entry(key).or_default().tokens.add(&line.tokens);
    }
    for (day, line) in cost.iter().filter(|(day, _)| covered(day)) {
        let model = line
            .model
            .as_deref()
            .map(|model| lookup.model_key(model, *day))
            .unwrap_or_default();
        let side = provider
            .entry((*day, tenant_of(&line.scope_id), model))
            .or_default();
        match line
            .token_kind
            .as_deref()
            .and_then(|kind| TOKEN_KINDS.iter().find(|known| **known == kind))
        {
            Some(kind) => *side.cost_by_kind.entry(kind).or_default() += line.amount_usd,
            None => side.cost_other += line.amount_usd,
        }
    }
    let mut ledger_by_key: BTreeMap<Key, LedgerGroup> = BTreeMap::new();
    for group in ledger.iter().filter(|group| covered(&group.day)) {
        let key = (
            group.day,
            group.tenant_id.clone(),
            lookup.model_key(&group.model, group.day),
        );
        let entry = ledger_by_key.entry(key).or_insert_with(|| LedgerGroup {
            tokens: TokenCounts::default(),
            cost_usd: Decimal::ZERO,
            rows: 0,
            price_entries: Vec::new(),
            cost_sources: Vec::new(),
            ..group.clone()
        });
        let mut tokens = group.tokens;
        if !lookup.reports_cache_writes() {
            tokens.input_uncached += tokens.cache_write_5m + tokens.cache_write_1h;
            tokens.cache_write_5m = 0;
            tokens.cache_write_1h = 0;
        }
        entry.tokens.add(&tokens);
        entry.cost_usd += group.cost_usd;
        entry.rows += group.rows;
        for (into, from) in [
            (&mut entry.price_entries, &group.price_entries),
            (&mut entry.cost_sources, &group.cost_sources),
        ] {
            for value in from {
                if !into.contains(value) {
                    into.push(value.clone());
                }
            }
        }
    }
    let mut keys: Vec<Key> = provider.keys().cloned().collect();
    keys.extend(ledger_by_key.keys().cloned());
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let side = provider.remove(&key).unwrap_or_default();
            let ledger = ledger_by_key.remove(&key);
            attribute(lookup, key, side, ledger)
        })
        .collect()
}

fn attribute(
    lookup: &dyn Lookup,
    (day, tenant_id, model): Key,
    side: ProviderSide,
    ledger: Option<LedgerGroup>,
) -> GroupComparison {
    let cost_by_kind = side.cost_by_kind;
    let mut cost_other = side.cost_other;
    let mut token_cost: Decimal = cost_by_kind.values().copied().sum();
    // A cost report that gives the model's cost but not per kind (an
    // OpenAI line item of another shape): the tokens carry it at one
    // average rate, and no kind can be told from another.
    let uniform = cost_by_kind.is_empty() && side.tokens.total() > 0 && !cost_other.is_zero();
    if uniform {
        token_cost = cost_other;
        cost_other = Decimal::ZERO;
    }
    let provider_cost = token_cost + cost_other;
    let (ledger_tokens, ledger_cost, price_entries, cost_sources) = match &ledger {
        Some(group) => (
            group.tokens,
            group.cost_usd,
            group.price_entries.clone(),
            group.cost_sources.clone(),
        ),
        None => (
            TokenCounts::default(),
            Decimal::ZERO,
            Vec::new(),
            Vec::new(),
        ),
    };
    let provider_total = Decimal::from(side.tokens.total());
    let ledger_total = Decimal::from(ledger_tokens.total());
    let mut causes = Causes::default();
    let mut rates = Vec::new();
    let mut kind_deltas = Vec::new();
    if provider_total.is_zero() {
        causes.unseen_by_provider = ledger_cost;
        causes.unseen_by_ledger = -provider_cost;
    } else if ledger_total.is_zero() && ledger_cost.is_zero() {
        causes.unseen_by_ledger = -provider_cost;
    } else {
        // The provider's rate of each kind: its cost over its tokens, or
        // the group's average for a kind it billed none of (or when the
        // report gives no split).
        let value_at_provider_rates = |tokens: i64, kind: &str| -> Decimal {
            let provider_tokens = side.tokens.get(kind);
            let tokens = Decimal::from(tokens);
            if provider_tokens > 0 && !uniform {
                let cost = cost_by_kind.get(kind).copied().unwrap_or_default();
                (tokens * cost / Decimal::from(provider_tokens)).round_dp(WORKING_DP)
            } else {
                (tokens * token_cost / provider_total).round_dp(WORKING_DP)
            }
        };
        let ledger_value: Decimal = TOKEN_KINDS
            .iter()
            .map(|kind| value_at_provider_rates(ledger_tokens.get(kind), kind))
            .sum();
        causes.price_difference = ledger_cost - ledger_value;
        let volume = ledger_value - token_cost;
        let unseen =
            ((ledger_total - provider_total) * token_cost / provider_total).round_dp(WORKING_DP);
        if unseen.is_sign_negative() {
            causes.unseen_by_ledger = unseen;
        } else {
            causes.unseen_by_provider = unseen;
        }
        causes.unseen_by_ledger -= cost_other;
        causes.token_kind_mismatch = volume - unseen;
        for kind in TOKEN_KINDS {
            let (provider_tokens, ledger_kind) = (side.tokens.get(kind), ledger_tokens.get(kind));
            if provider_tokens != ledger_kind {
                kind_deltas.push(KindDelta {
                    kind,
                    provider: provider_tokens,
                    ledger: ledger_kind,
                });
            }
            if !causes.price_difference.is_zero() && provider_tokens > 0 && !uniform {
                let cost = cost_by_kind.get(kind).copied().unwrap_or_default();
                rates.push(KindRate {
                    kind,
                    provider_usd_per_million: (cost * Decimal::from(1_000_000)
                        / Decimal::from(provider_tokens))
                    .round_dp(6),
                    book_usd_per_million: ledger
                        .as_ref()
                        .and_then(|group| lookup.book_rate(&group.model, kind, day)),
                });
            }
        }
    }
    let variance = ledger_cost - provider_cost;
    debug_assert_eq!(causes.sum(), variance, "causes add up to the variance");
    GroupComparison {
        day,
        tenant_id,
        model,
        provider_tokens: side.tokens,
        ledger_tokens,
        provider_cost_usd: provider_cost,
        ledger_cost_usd: ledger_cost,
        variance_usd: variance,
        causes,
        price_entries,
        cost_sources,
        rates,
        kind_deltas,
    }
}

/// Per tenant and overall.
pub fn summarize(groups: &[GroupComparison]) -> (BTreeMap<String, Summary>, Summary) {
    let mut tenants: BTreeMap<String, Summary> = BTreeMap::new();
    let mut total = Summary::default();
    for group in groups {
        tenants
            .entry(group.tenant_id.clone())
            .or_default()
            .add(group);
        total.add(group);
    }
    (tenants, total)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    struct Stub;

    impl Lookup for Stub {
        fn tenant(&self, scope_id: &str) -> Option<String> {
            scope_id.strip_prefix("proj_").map(str::to_owned)
        }
        fn model_key(&self, model: &str, _day: NaiveDate) -> String {
            model.trim_end_matches("-2024-08-06").to_owned()
        }
        fn book_rate(&self, _model: &str, _kind: &str, _day: NaiveDate) -> Option<Decimal> {
            None
        }
        fn reports_cache_writes(&self) -> bool {
            true
        }
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 1).expect("day")
    }

    fn tokens() -> impl Strategy<Value = TokenCounts> {
        (
            0i64..2_000_000_000,
            0i64..2_000_000_000,
            0i64..50_000_000,
            0i64..50_000_000,
            0i64..500_000_000,
        )
            .prop_map(|(a, b, c, d, e)| TokenCounts {
                input_uncached: a,
                cache_read: b,
                cache_write_5m: c,
                cache_write_1h: d,
                output: e,
            })
    }

    /// A cost with 10 decimal places, as the audit table stores it.
    fn cost() -> impl Strategy<Value = Decimal> {
        (0i64..100_000_000_000_000).prop_map(|units| Decimal::new(units, 10))
    }

    fn provider_lines(tokens: TokenCounts, costs: &[Decimal]) -> (UsageLine, Vec<CostLine>) {
        let usage = UsageLine {
            scope_id: "proj_acme".into(),
            api_key_id: None,
            model: "gpt-4o-2024-08-06".into(),
            service_tier: None,
            tokens,
            requests: None,
            raw: Value::Null,
        };
        let cost = TOKEN_KINDS
            .iter()
            .zip(costs)
            .map(|(kind, amount)| CostLine {
                scope_id: "proj_acme".into(),
                model: Some("gpt-4o-2024-08-06".into()),
                token_kind: Some((*kind).into()),
                line_item: None,
                amount_usd: *amount,
                raw: Value::Null,
            })
            .collect();
        (usage, cost)
    }

    fn ledger(tokens: TokenCounts, cost_usd: Decimal) -> LedgerGroup {
        LedgerGroup {
            day: day(),
            tenant_id: "acme".into(),
            model: "gpt-4o".into(),
            tokens,
            cost_usd,
            rows: 1,
            price_entries: vec!["openai/gpt-4o@2024-05-13".into()],
            cost_sources: vec!["book".into()],
        }
    }

    proptest! {
        /// Whatever the two sides hold, the causes add up to the variance
        /// exactly, and the totals are the sums of what each side has.
        #[test]
        fn causes_always_add_up_to_the_variance(
            provider_tokens in tokens(),
            ledger_tokens in tokens(),
            costs in proptest::collection::vec(cost(), 5),
            ledger_cost in cost(),
        ) {
            let (usage, cost_lines) = provider_lines(provider_tokens, &costs);
            let usage = [(day(), usage)];
            let cost_lines: Vec<_> = cost_lines.into_iter().map(|line| (day(), line)).collect();
            let groups = compare(&Stub, &[day()], &usage, &cost_lines, &[ledger(ledger_tokens, ledger_cost)]);
            prop_assert_eq!(groups.len(), 1);
            let group = &groups[0];
            let billed: Decimal = costs.iter().sum();
            prop_assert_eq!(group.provider_cost_usd, billed);
            prop_assert_eq!(group.ledger_cost_usd, ledger_cost);
            prop_assert_eq!(group.causes.sum(), group.variance_usd);
            prop_assert_eq!(group.variance_usd, ledger_cost - billed);
        }

        /// The same tokens at the provider's own cost: no cause at all.
        #[test]
        fn a_ledger_that_matches_the_bill_has_no_difference(
            provider_tokens in tokens(),
            costs in proptest::collection::vec(cost(), 5),
        ) {
            let (usage, cost_lines) = provider_lines(provider_tokens, &costs);
            let usage = [(day(), usage)];
            let cost_lines: Vec<_> = cost_lines.into_iter().map(|line| (day(), line)).collect();
            let billed: Decimal = costs.iter().sum();
            let groups = compare(&Stub, &[day()], &usage, &cost_lines, &[ledger(provider_tokens, billed)]);
            prop_assert_eq!(&groups[0].causes, &Causes::default());
            prop_assert!(groups[0].kind_deltas.is_empty());
        }
    }

    #[test]
    fn a_day_not_covered_by_both_reports_is_not_compared() {
        let (usage, _) = provider_lines(
            TokenCounts {
                output: 10,
                ..TokenCounts::default()
            },
            &[],
        );
        let groups = compare(
            &Stub,
            &[],
            &[(day(), usage)],
            &[],
            &[ledger(TokenCounts::default(), Decimal::ONE)],
        );
        assert!(groups.is_empty());
    }
}
