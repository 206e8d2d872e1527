//! Gemini `usageMetadata`. `promptTokenCount` includes
//! `cachedContentTokenCount`; `thoughtsTokenCount` is counted apart from
//! `candidatesTokenCount` (and billed at the output rate). The wire spells
//! the fields in camelCase; the Python SDK's `model_dump()` in snake_case
//! (`prompt_token_count`); both are read.

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// `toolUsePromptTokenCount` (results of tools such as search, fed back to
/// the model) is prompt the caller did not send, billed as input.
pub(super) fn generate_content(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let prompt = f.count_either("promptTokenCount", "prompt_token_count")?;
    let cached = f.count_either("cachedContentTokenCount", "cached_content_token_count")?;
    let tool_prompt = f.count_either("toolUsePromptTokenCount", "tool_use_prompt_token_count")?;
    let uncached = f.minus(
        ("promptTokenCount", prompt),
        ("cachedContentTokenCount", cached),
    )?;
    Ok(UsageQuantities {
        input_uncached: uncached
            .checked_add(tool_prompt)
            .ok_or_else(|| f.field("toolUsePromptTokenCount", "too large"))?,
        cache_read: cached,
        output: f.count_either("candidatesTokenCount", "candidates_token_count")?,
        reasoning: f.count_either("thoughtsTokenCount", "thoughts_token_count")?,
        ..UsageQuantities::default()
    })
}
