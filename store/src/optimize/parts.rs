//! The book's list price of one request split by token kind, each part
//! priced under the card the whole request was priced with.
//!
//! Every part is the difference of two ratings by the ledger's own
//! [`PriceBook::rate`]: the request as it was, and the request with the
//! part's tokens taken out of the charge. Prompt tokens are taken out by
//! moving them to an unpriced prompt component, which keeps the prompt
//! length (it picks the long-context tier) while the book charges nothing
//! for them; output tokens do not pick a tier and are simply dropped. So
//! tiers, service tiers and provider defaults apply exactly as they do to
//! real usage, and no rate is looked up here.

use ledger::pricebook::event_usage::quantities;
use ledger::pricebook::rating::UNPRICED_INPUT;
use ledger::pricebook::{RatingRequest, UsageQuantities};
use ledger::{PriceBook, UsageEvent};
use rust_decimal::Decimal;

/// The parts of one request's list price.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    pub list_cost: Decimal,
    /// Uncached input, cache reads and cache writes.
    pub input: Decimal,
    /// Output and reasoning.
    pub output: Decimal,
    pub cache_read: Decimal,
    /// The cache reads at the uncached input rate.
    pub cache_read_at_input: Decimal,
    /// 5-minute and 1-hour cache writes.
    pub cache_write: Decimal,
    /// The cache writes at the uncached input rate.
    pub cache_write_at_input: Decimal,
}

/// The list price of `event`'s usage at its own model and time, split;
/// `None` when the book has no list price for it.
pub fn parts(book: &PriceBook, event: &UsageEvent) -> Option<Parts> {
    let q = quantities(event);
    let list = |q: &UsageQuantities| {
        book.rate(&RatingRequest {
            tenant: &event.tenant_id,
            provider: &event.provider,
            model: &event.model,
            at: event.created_at,
            service_tier: event.service_tier.unwrap_or_default(),
            quantities: q,
            supplied_cost: None,
        })
        .list_cost
    };
    let full = list(&q)?;
    // the cost of `q` less the cost with `edit` applied, skipped (0) when
    // the edit changes nothing
    let without = |tokens: u64, edit: &dyn Fn(&mut UsageQuantities)| -> Option<Decimal> {
        if tokens == 0 {
            return Some(Decimal::ZERO);
        }
        let mut edited = q.clone();
        edit(&mut edited);
        Some(full - list(&edited)?)
    };
    let read = q.cache_read;
    let writes = q.cache_write_5m + q.cache_write_1h;
    let prompt = q.input_uncached + read + writes;
    let output = without(q.output + q.reasoning, &|e| {
        (e.output, e.reasoning) = (0, 0)
    })?;
    // without per-call charges the input is all that is left once the output
    // is out: one rating fewer for nearly every request
    let input = if q.calls.values().all(|n| *n == 0) {
        full - output
    } else {
        without(prompt, &|e| {
            let n = e.input_uncached + e.cache_read + e.cache_write_5m + e.cache_write_1h;
            uncharge(e, n);
            (
                e.input_uncached,
                e.cache_read,
                e.cache_write_5m,
                e.cache_write_1h,
            ) = (0, 0, 0, 0);
        })?
    };
    let cache_read = without(read, &|e| {
        uncharge(e, e.cache_read);
        e.cache_read = 0;
    })?;
    let cache_write = without(writes, &|e| {
        uncharge(e, e.cache_write_5m + e.cache_write_1h);
        (e.cache_write_5m, e.cache_write_1h) = (0, 0);
    })?;
    // the same tokens back in the charge as uncached input
    let at_input = |tokens: u64, edit: &dyn Fn(&mut UsageQuantities)| -> Option<Decimal> {
        if tokens == 0 {
            return Some(Decimal::ZERO);
        }
        let mut moved = q.clone();
        edit(&mut moved);
        moved.input_uncached += tokens;
        Some(list(&moved)? - full)
    };
    let cache_read_at_input = at_input(read, &|e| {
        e.cache_read = 0;
    })? + cache_read;
    let cache_write_at_input = at_input(writes, &|e| {
        (e.cache_write_5m, e.cache_write_1h) = (0, 0);
    })? + cache_write;
    Some(Parts {
        list_cost: full,
        input,
        output,
        cache_read,
        cache_read_at_input,
        cache_write,
        cache_write_at_input,
    })
}

/// Keeps `tokens` in the prompt's length but out of the charge.
fn uncharge(q: &mut UsageQuantities, tokens: u64) {
    *q.unpriced.entry(UNPRICED_INPUT[0].to_owned()).or_default() += tokens;
}

/// Whether the model's price in force at `event`'s time has a rate of its
/// own for cache reads, i.e. whether caching could have made it cheaper.
pub fn supports_caching(book: &PriceBook, event: &UsageEvent) -> bool {
    book.resolve(&event.provider, &event.model, event.created_at)
        .is_ok_and(|r| r.entry.tariff.standard.base.cache_read.is_some())
}
