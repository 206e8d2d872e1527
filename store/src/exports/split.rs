//! Splitting one stored cost into its token types for an export row per
//! type, so that the parts add up to the stored cost exactly.
//!
//! The stored `estimated_cost` is per request and is the truth; the price
//! book only says how the cost of a day's tokens divides between input,
//! cache reads, cache writes, output and reasoning. Each type's weight is
//! its quantity times its list rate in force that day
//! (`ledger::PriceBook::lookup`); without a price (or when every weight is
//! zero) the weights are the token quantities. Every part but one is the
//! cost times its share, rounded toward zero at the stored scale (10
//! places); the part with the largest weight (the first of equals) takes
//! the rest, so the parts sum to the cost to the last decimal and none is
//! negative.

use chrono::{DateTime, Utc};
use ledger::pricebook::rating::COST_DECIMAL_PLACES;
use ledger::{Price, PriceBook};
use rust_decimal::{Decimal, RoundingStrategy};

/// One token type of an export row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Input,
    CacheRead,
    CacheWrite,
    Output,
    Reasoning,
}

impl TokenType {
    /// `x_TokenType` and the tail of `SkuId`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::CacheRead => "cache_read",
            Self::CacheWrite => "cache_write",
            Self::Output => "output",
            Self::Reasoning => "reasoning",
        }
    }

    /// `SkuMeter` and the words of `ChargeDescription`.
    pub fn meter(self) -> &'static str {
        match self {
            Self::Input => "Input Tokens",
            Self::CacheRead => "Cache Read Tokens",
            Self::CacheWrite => "Cache Write Tokens",
            Self::Output => "Output Tokens",
            Self::Reasoning => "Reasoning Tokens",
        }
    }
}

/// A day's tokens of one (tenant, provider, model), in tokenledger's
/// disjoint kinds (`ledger::pricebook::event_usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub output: i64,
    pub reasoning: i64,
}

/// One part: a token type, its quantity and its share of the costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub token_type: TokenType,
    pub quantity: i64,
    pub cost: Decimal,
    pub list_cost: Decimal,
}

/// The rows of a group: one per token type with tokens, reasoning merged
/// into output unless the price book prices it apart. A group without any
/// tokens still gets one input row, so its requests and cost are not lost.
pub fn token_rows(tokens: &Tokens, price: Option<&Price>) -> Vec<(TokenType, i64, Decimal)> {
    let rate = |f: fn(&Price) -> Decimal| price.map_or(Decimal::ZERO, f);
    let reasoning_apart = price.is_some_and(|p| p.reasoning.is_some());
    let mut rows = vec![
        (TokenType::Input, tokens.input, rate(|p| p.input)),
        (
            TokenType::CacheRead,
            tokens.cache_read,
            rate(Price::cache_read_rate),
        ),
        (
            TokenType::CacheWrite,
            tokens.cache_write,
            rate(Price::cache_write_5m_rate),
        ),
    ];
    if reasoning_apart {
        rows.push((TokenType::Output, tokens.output, rate(|p| p.output)));
        rows.push((
            TokenType::Reasoning,
            tokens.reasoning,
            rate(Price::reasoning_rate),
        ));
    } else {
        rows.push((
            TokenType::Output,
            tokens.output.saturating_add(tokens.reasoning),
            rate(|p| p.output),
        ));
    }
    let with_tokens: Vec<_> = rows.iter().copied().filter(|row| row.1 > 0).collect();
    if with_tokens.is_empty() {
        return rows.into_iter().take(1).collect();
    }
    with_tokens
}

/// Splits `cost` and `list_cost` of a group over its token rows (see the
/// module docs for the rule).
pub fn split(
    book: &PriceBook,
    provider: &str,
    model: &str,
    day: DateTime<Utc>,
    tokens: &Tokens,
    cost: Decimal,
    list_cost: Decimal,
) -> Vec<Part> {
    let rows = token_rows(tokens, book.lookup(provider, model, day));
    let priced: Vec<Decimal> = rows
        .iter()
        .map(|(_, quantity, rate)| Decimal::from(*quantity).checked_mul(*rate))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let weights: Vec<Decimal> = if priced.iter().any(|w| !w.is_zero()) {
        priced
    } else {
        rows.iter().map(|(_, q, _)| Decimal::from(*q)).collect()
    };
    let costs = divide(cost, &weights);
    let list_costs = divide(list_cost, &weights);
    rows.iter()
        .zip(costs.into_iter().zip(list_costs))
        .map(|((token_type, quantity, _), (cost, list_cost))| Part {
            token_type: *token_type,
            quantity: *quantity,
            cost,
            list_cost,
        })
        .collect()
}

/// `amount` divided in proportion to `weights`, summing to `amount` exactly.
pub fn divide(amount: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
    let mut parts = vec![Decimal::ZERO; weights.len()];
    let Some(largest) =
        (0..weights.len()).reduce(|best, i| if weights[i] > weights[best] { i } else { best })
    else {
        return parts;
    };
    let total: Decimal = weights.iter().copied().sum();
    let mut rest = amount;
    if !total.is_zero() {
        for (index, weight) in weights.iter().enumerate() {
            if index == largest {
                continue;
            }
            let part = weight
                .checked_div(total)
                .and_then(|share| amount.checked_mul(share))
                .unwrap_or_default()
                .round_dp_with_strategy(COST_DECIMAL_PLACES, RoundingStrategy::ToZero);
            parts[index] = part;
            rest -= part;
        }
    }
    parts[largest] = rest;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parts_sum_exactly_and_the_largest_takes_the_remainder() {
        let amount = Decimal::new(1, 10); // 1e-10: three ways, two get 0
        let parts = divide(amount, &[Decimal::ONE, Decimal::TWO, Decimal::ONE]);
        assert_eq!(parts, [Decimal::ZERO, amount, Decimal::ZERO]);
        let amount = Decimal::new(10_000_000_001, 10);
        let weights = [Decimal::new(3, 0), Decimal::new(7, 0), Decimal::new(11, 0)];
        let parts = divide(amount, &weights);
        assert_eq!(parts.iter().copied().sum::<Decimal>(), amount);
        assert!(parts.iter().all(|p| *p >= Decimal::ZERO && p.scale() <= 10));
        assert!(parts[0] < parts[1] && parts[1] < parts[2], "{parts:?}");
        assert_eq!(divide(amount, &[]), Vec::<Decimal>::new());
        assert_eq!(divide(amount, &[Decimal::ZERO; 2]), [amount, Decimal::ZERO]);
    }

    #[test]
    fn a_priced_model_splits_by_rate_and_an_unpriced_one_by_tokens() {
        let book = PriceBook::builtin().expect("the built-in book parses");
        let day = Utc
            .with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
            .single()
            .expect("day");
        let tokens = Tokens {
            input: 1_000,
            cache_read: 1_000,
            cache_write: 0,
            output: 1_000,
            reasoning: 0,
        };
        let cost = Decimal::new(123_456_789, 10);
        let parts = split(&book, "openai", "gpt-4o", day, &tokens, cost, cost);
        let types: Vec<&str> = parts.iter().map(|p| p.token_type.as_str()).collect();
        assert_eq!(types, ["input", "cache_read", "output"]);
        assert_eq!(parts.iter().map(|p| p.cost).sum::<Decimal>(), cost);
        // output costs more per token than input, input more than cache reads
        assert!(parts[2].cost > parts[0].cost && parts[0].cost > parts[1].cost);

        let parts = split(
            &book,
            "acme-ai",
            "none",
            day,
            &tokens,
            Decimal::ZERO,
            Decimal::ZERO,
        );
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.cost.is_zero()));
        let none = split(
            &book,
            "acme-ai",
            "none",
            day,
            &Tokens::default(),
            cost,
            cost,
        );
        assert_eq!(none.len(), 1);
        assert_eq!((none[0].token_type, none[0].cost), (TokenType::Input, cost));
    }

    #[test]
    fn reasoning_is_a_row_only_where_it_is_priced_apart() {
        let apart = Price {
            reasoning: Some(Decimal::ONE),
            ..Price::default()
        };
        let tokens = Tokens {
            output: 5,
            reasoning: 7,
            ..Tokens::default()
        };
        let merged = token_rows(&tokens, Some(&Price::default()));
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].0, merged[0].1), (TokenType::Output, 12));
        let rows = token_rows(&tokens, Some(&apart));
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].0, rows[1].1), (TokenType::Reasoning, 7));
    }
}
