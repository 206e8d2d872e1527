//! Gemini `usageMetadata`. `promptTokenCount` includes
//! `cachedContentTokenCount`; `thoughtsTokenCount` is counted apart from
//! `candidatesTokenCount` (and billed at the output rate).

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// `toolUsePromptTokenCount` (results of tools such as search, fed back to
/// the model) is prompt the caller did not send, billed as input.
pub(super) fn generate_content(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let prompt = f.count("promptTokenCount")?;
    let cached = f.count("cachedContentTokenCount")?;
    let tool_prompt = f.count("toolUsePromptTokenCount")?;
    let uncached = f.minus(
        ("promptTokenCount", prompt),
        ("cachedContentTokenCount", cached),
    )?;
    Ok(UsageQuantities {
        input_uncached: uncached
            .checked_add(tool_prompt)
            .ok_or_else(|| f.field("toolUsePromptTokenCount", "too large"))?,
        cache_read: cached,
        output: f.count("candidatesTokenCount")?,
        reasoning: f.count("thoughtsTokenCount")?,
        ..UsageQuantities::default()
    })
}
