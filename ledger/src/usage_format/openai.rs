//! OpenAI's two usage shapes. Both count cached tokens and cache writes
//! inside the prompt count and reasoning tokens inside the output count.
//!
//! Cache writes: OpenAI lists one price for input and one for cached input
//! on the models of the book, with no charge for writing the cache, so a
//! write is billed at the entry's cache-write rate, which is its input rate
//! unless the entry lists one (docs/pricing.md). Writes kept for 12 hours
//! have no price anywhere in the book and are counted as unpriced; so are
//! audio tokens, which OpenAI bills at audio rates the book does not carry.

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// `prompt - cached - writes - audio`, refusing parts larger than the whole.
fn uncached(
    f: &Fields<'_>,
    whole: (&str, u64),
    parts: &[(&str, u64)],
) -> Result<u64, UsageFormatError> {
    let sum = parts
        .iter()
        .try_fold(0u64, |sum, (_, n)| sum.checked_add(*n));
    let names: Vec<&str> = parts.iter().map(|(name, _)| *name).collect();
    f.minus(whole, (&names.join(" + "), sum.unwrap_or(u64::MAX)))
}

fn with_unpriced(mut q: UsageQuantities, parts: &[(&str, u64)]) -> UsageQuantities {
    for (component, n) in parts.iter().filter(|(_, n)| *n > 0) {
        q.unpriced.insert((*component).to_owned(), *n);
    }
    q
}

/// Chat Completions: `prompt_tokens` includes
/// `prompt_tokens_details.cached_tokens`, `.cache_write_tokens` and
/// `.audio_tokens`; `completion_tokens` includes
/// `completion_tokens_details.reasoning_tokens` and `.audio_tokens` (and
/// accepted/rejected prediction tokens, which bill as output).
pub(super) fn chat_completions(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let prompt = f.count("prompt_tokens")?;
    let cached = f.count("prompt_tokens_details.cached_tokens")?;
    let written = f.count("prompt_tokens_details.cache_write_tokens")?;
    let audio_in = f.count("prompt_tokens_details.audio_tokens")?;
    let completion = f.count("completion_tokens")?;
    let reasoning = f.count("completion_tokens_details.reasoning_tokens")?;
    let audio_out = f.count("completion_tokens_details.audio_tokens")?;
    f.check_total("total_tokens", &[prompt, completion])?;
    let quantities = UsageQuantities {
        input_uncached: uncached(
            f,
            ("prompt_tokens", prompt),
            &[
                ("cached_tokens", cached),
                ("cache_write_tokens", written),
                ("audio_tokens", audio_in),
            ],
        )?,
        cache_read: cached,
        cache_write_5m: written,
        output: uncached(
            f,
            ("completion_tokens", completion),
            &[("reasoning_tokens", reasoning), ("audio_tokens", audio_out)],
        )?,
        reasoning,
        ..UsageQuantities::default()
    };
    Ok(with_unpriced(
        quantities,
        &[("input_audio", audio_in), ("output_audio", audio_out)],
    ))
}

/// Responses: `input_tokens` includes `input_tokens_details.cached_tokens`
/// and `.cache_write_tokens`, which `.cache_write_tokens_details` splits
/// into 30-minute and 12-hour retention; `output_tokens` includes
/// `output_tokens_details.reasoning_tokens`.
pub(super) fn responses(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let input = f.count("input_tokens")?;
    let cached = f.count("input_tokens_details.cached_tokens")?;
    let written = f.count("input_tokens_details.cache_write_tokens")?;
    let output = f.count("output_tokens")?;
    let reasoning = f.count("output_tokens_details.reasoning_tokens")?;
    f.check_total("total_tokens", &[input, output])?;
    let split = f
        .object
        .get("input_tokens_details")
        .and_then(|details| details.get("cache_write_tokens_details"))
        .is_some_and(|v| !v.is_null());
    let (short, long) = if split {
        let short = f.count("input_tokens_details.cache_write_tokens_details.ttl_30m_tokens")?;
        let long = f.count("input_tokens_details.cache_write_tokens_details.ttl_12h_tokens")?;
        if short.checked_add(long) != Some(written) {
            return Err(UsageFormatError::Inconsistent {
                format: f.format,
                message: format!(
                    "cache_write_tokens_details splits {short} + {long} tokens, \
                     cache_write_tokens is {written}"
                ),
            });
        }
        (short, long)
    } else {
        (written, 0)
    };
    let quantities = UsageQuantities {
        input_uncached: uncached(
            f,
            ("input_tokens", input),
            &[("cached_tokens", cached), ("cache_write_tokens", written)],
        )?,
        cache_read: cached,
        cache_write_5m: short,
        output: f.minus(("output_tokens", output), ("reasoning_tokens", reasoning))?,
        reasoning,
        ..UsageQuantities::default()
    };
    Ok(with_unpriced(
        quantities,
        &[("input_cache_write_12h", long)],
    ))
}
