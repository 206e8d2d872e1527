//! Today's usage event read as rating quantities. The event's token fields
//! follow OpenAI's convention: `prompt_tokens` includes the cached and
//! cache-write tokens, `completion_tokens` includes the reasoning tokens.
//! This is the one place that knows it.

use crate::event::UsageEvent;

use super::rating::{UnpricedSide, UsageQuantities};

/// The event's tokens split into tokenledger's disjoint kinds:
/// `cache_write_tokens` are 5-minute writes, `cache_write_1h_tokens`
/// 1-hour writes. Unpriced components come out of the total they are part
/// of, so that the priced kinds cover only what the book can price.
/// Inconsistent counts (more cached than prompt tokens) cannot reach here
/// past validation; should they, the plain part saturates at zero rather
/// than going negative.
pub fn quantities(event: &UsageEvent) -> UsageQuantities {
    let prompt = u64::from(event.prompt_tokens);
    let cached = u64::from(event.cached_prompt_tokens);
    let cache_write = u64::from(event.cache_write_tokens);
    let cache_write_1h = u64::from(event.cache_write_1h_tokens);
    let completion = u64::from(event.completion_tokens);
    let reasoning = u64::from(event.reasoning_tokens);
    let unpriced = |side| {
        event
            .unpriced_tokens
            .iter()
            .filter(|(component, _)| UnpricedSide::of(component) == side)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(u64::from(*n)))
    };
    UsageQuantities {
        input_uncached: prompt
            .saturating_sub(cached)
            .saturating_sub(cache_write)
            .saturating_sub(cache_write_1h)
            .saturating_sub(unpriced(UnpricedSide::Input)),
        cache_read: cached,
        cache_write_5m: cache_write,
        cache_write_1h,
        output: completion
            .saturating_sub(reasoning)
            .saturating_sub(unpriced(UnpricedSide::Output)),
        reasoning,
        calls: event
            .calls
            .iter()
            .map(|(kind, count)| (kind.clone(), u64::from(*count)))
            .collect(),
        unpriced: event
            .unpriced_tokens
            .iter()
            .map(|(component, count)| (component.clone(), u64::from(*count)))
            .collect(),
    }
}
