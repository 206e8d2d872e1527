//! Amazon Bedrock Converse `usage`. Like Anthropic's, `inputTokens`
//! excludes `cacheReadInputTokens` and `cacheWriteInputTokens`.

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// Converse reports one cache-write count; its default lifetime is five
/// minutes, so that is what it is billed as.
pub(super) fn converse(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    Ok(UsageQuantities {
        input_uncached: f.count("inputTokens")?,
        cache_read: f.count("cacheReadInputTokens")?,
        cache_write_5m: f.count("cacheWriteInputTokens")?,
        output: f.count("outputTokens")?,
        ..UsageQuantities::default()
    })
}
