//! Anthropic Messages usage. `input_tokens` EXCLUDES cache reads and cache
//! writes: they are counted apart, so the prompt is the sum of the three.

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// `cache_creation_input_tokens` is split by lifetime in
/// `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`;
/// without the split (older responses) every write is a 5-minute write, the
/// only kind there was. `server_tool_use.web_search_requests` counts billed
/// searches; web fetches cost only their tokens and are not counted.
pub(super) fn messages(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let written = f.count("cache_creation_input_tokens")?;
    let five_minutes = f.count("cache_creation.ephemeral_5m_input_tokens")?;
    let one_hour = f.count("cache_creation.ephemeral_1h_input_tokens")?;
    let split = f.object.get("cache_creation").is_some_and(|v| !v.is_null());
    let (cache_write_5m, cache_write_1h) = if split {
        if five_minutes.checked_add(one_hour) != Some(written) {
            return Err(UsageFormatError::Inconsistent {
                format: f.format,
                message: format!(
                    "cache_creation splits {five_minutes} + {one_hour} tokens, \
                     cache_creation_input_tokens is {written}"
                ),
            });
        }
        (five_minutes, one_hour)
    } else {
        (written, 0)
    };
    // `output_tokens` includes the thinking that `output_tokens_details`
    // counts apart; Anthropic bills both at the output rate.
    let output = f.count("output_tokens")?;
    let thinking = f.count("output_tokens_details.thinking_tokens")?;
    let mut quantities = UsageQuantities {
        input_uncached: f.count("input_tokens")?,
        cache_read: f.count("cache_read_input_tokens")?,
        cache_write_5m,
        cache_write_1h,
        output: f.minus(("output_tokens", output), ("thinking_tokens", thinking))?,
        reasoning: thinking,
        ..UsageQuantities::default()
    };
    let searches = f.count("server_tool_use.web_search_requests")?;
    if searches > 0 {
        quantities.calls.insert("web_search".into(), searches);
    }
    Ok(quantities)
}
