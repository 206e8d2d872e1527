//! Today's usage event read as rating quantities. The event's token fields
//! follow OpenAI's convention: `prompt_tokens` includes the cached and
//! cache-write tokens, `completion_tokens` includes the reasoning tokens.
//! This is the one place that knows it; when the event gains fields
//! (1-hour cache writes, service tier, call counts) they are read here.

use crate::event::UsageEvent;

use super::rating::UsageQuantities;

/// The event's tokens split into tokenledger's disjoint kinds. A cache
/// write on the event is a 5-minute write, the only kind it can express.
/// Inconsistent counts (more cached than prompt tokens) cannot reach here
/// past validation; should they, the plain part saturates at zero rather
/// than going negative.
pub fn quantities(event: &UsageEvent) -> UsageQuantities {
    let prompt = u64::from(event.prompt_tokens);
    let cached = u64::from(event.cached_prompt_tokens);
    let cache_write = u64::from(event.cache_write_tokens);
    let completion = u64::from(event.completion_tokens);
    let reasoning = u64::from(event.reasoning_tokens);
    UsageQuantities {
        input_uncached: prompt.saturating_sub(cached).saturating_sub(cache_write),
        cache_read: cached,
        cache_write_5m: cache_write,
        cache_write_1h: 0,
        output: completion.saturating_sub(reasoning),
        reasoning,
        calls: Default::default(),
    }
}
