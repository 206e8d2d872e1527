//! OpenAI's two usage shapes. Both count cached tokens inside the prompt
//! count and reasoning tokens inside the output count.

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// Chat Completions: `prompt_tokens` includes
/// `prompt_tokens_details.cached_tokens`; `completion_tokens` includes
/// `completion_tokens_details.reasoning_tokens` (and accepted/rejected
/// prediction tokens, which bill as output).
pub(super) fn chat_completions(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let prompt = f.count("prompt_tokens")?;
    let cached = f.count("prompt_tokens_details.cached_tokens")?;
    let completion = f.count("completion_tokens")?;
    let reasoning = f.count("completion_tokens_details.reasoning_tokens")?;
    f.check_total("total_tokens", &[prompt, completion])?;
    Ok(UsageQuantities {
        input_uncached: f.minus(("prompt_tokens", prompt), ("cached_tokens", cached))?,
        cache_read: cached,
        output: f.minus(
            ("completion_tokens", completion),
            ("reasoning_tokens", reasoning),
        )?,
        reasoning,
        ..UsageQuantities::default()
    })
}

/// Responses: `input_tokens` includes `input_tokens_details.cached_tokens`;
/// `output_tokens` includes `output_tokens_details.reasoning_tokens`.
pub(super) fn responses(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let input = f.count("input_tokens")?;
    let cached = f.count("input_tokens_details.cached_tokens")?;
    let output = f.count("output_tokens")?;
    let reasoning = f.count("output_tokens_details.reasoning_tokens")?;
    f.check_total("total_tokens", &[input, output])?;
    Ok(UsageQuantities {
        input_uncached: f.minus(("input_tokens", input), ("cached_tokens", cached))?,
        cache_read: cached,
        output: f.minus(("output_tokens", output), ("reasoning_tokens", reasoning))?,
        reasoning,
        ..UsageQuantities::default()
    })
}
