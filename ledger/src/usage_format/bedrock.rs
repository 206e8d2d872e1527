//! Amazon Bedrock Converse `usage`. Like Anthropic's, `inputTokens`
//! excludes `cacheReadInputTokens` and `cacheWriteInputTokens`.

use serde_json::Value;

use super::{Fields, UsageFormatError};
use crate::pricebook::UsageQuantities;

/// `cacheWriteInputTokens` is split by lifetime in `cacheDetails`
/// (`[{"ttl": "1h", "inputTokens": n}, {"ttl": "5m", ...}]`); without the
/// split every write is a 5-minute write, Converse's default lifetime.
pub(super) fn converse(f: &Fields<'_>) -> Result<UsageQuantities, UsageFormatError> {
    let written = f.count("cacheWriteInputTokens")?;
    let (cache_write_5m, cache_write_1h) = match f.object.get("cacheDetails") {
        None | Some(Value::Null) => (written, 0),
        Some(Value::Array(details)) if details.is_empty() => (written, 0),
        Some(Value::Array(details)) => {
            let (mut five, mut hour) = (0u64, 0u64);
            for detail in details {
                let tokens = detail
                    .get("inputTokens")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        f.field("cacheDetails", "inputTokens must be a non-negative integer")
                    })?;
                let slot = match detail.get("ttl").and_then(Value::as_str) {
                    Some("5m") => &mut five,
                    Some("1h") => &mut hour,
                    _ => return Err(f.field("cacheDetails", "ttl must be \"5m\" or \"1h\"")),
                };
                *slot = slot
                    .checked_add(tokens)
                    .ok_or_else(|| f.field("cacheDetails", "too large"))?;
            }
            if five.checked_add(hour) != Some(written) {
                return Err(UsageFormatError::Inconsistent {
                    format: f.format,
                    message: format!(
                        "cacheDetails splits {five} + {hour} tokens, \
                         cacheWriteInputTokens is {written}"
                    ),
                });
            }
            (five, hour)
        }
        Some(_) => return Err(f.field("cacheDetails", "must be an array")),
    };
    Ok(UsageQuantities {
        input_uncached: f.count("inputTokens")?,
        cache_read: f.count("cacheReadInputTokens")?,
        cache_write_5m,
        cache_write_1h,
        output: f.count("outputTokens")?,
        ..UsageQuantities::default()
    })
}
