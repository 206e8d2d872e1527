//! Today's usage event read as rating quantities. The event's token fields
//! follow OpenAI's convention: `prompt_tokens` includes the cached and
//! cache-write tokens, `completion_tokens` includes the reasoning tokens.
//! This is the one place that knows it.

use crate::event::UsageEvent;

use super::rating::UsageQuantities;

/// The event's tokens split into tokenledger's disjoint kinds:
/// `cache_write_tokens` are 5-minute writes, `cache_write_1h_tokens`
/// 1-hour writes.
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
    UsageQuantities {
        input_uncached: prompt
            .saturating_sub(cached)
            .saturating_sub(cache_write)
            .saturating_sub(cache_write_1h),
        cache_read: cached,
        cache_write_5m: cache_write,
        cache_write_1h,
        output: completion.saturating_sub(reasoning),
        reasoning,
        calls: event
            .calls
            .iter()
            .map(|(kind, count)| (kind.clone(), u64::from(*count)))
            .collect(),
    }
}
