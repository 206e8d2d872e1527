//! Provider-native usage objects read into tokenledger's quantities, by
//! each provider's own conventions. Clients send what the provider returned
//! and tokenledger does the translation, which is where cached tokens get
//! double counted when every client does it by hand: OpenAI's prompt count
//! includes its cached tokens, Anthropic's input count excludes cache reads
//! and writes, Gemini counts thinking apart from candidates, and Bedrock
//! Converse has names of its own.
//!
//! Every count is optional (providers omit zero fields) but, when present,
//! must be a non-negative integer; counts that contradict each other (more
//! cached than prompt tokens) are refused rather than clamped, because a
//! clamped count is a wrong bill.

mod anthropic;
mod bedrock;
mod gemini;
mod openai;
mod shape;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pricebook::{ServiceTier, UsageQuantities};

/// Which provider API a usage object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UsageFormat {
    /// `usage` of an OpenAI Chat Completions response (also Azure OpenAI,
    /// and the OpenAI-compatible APIs of DeepSeek, xAI and Mistral).
    #[serde(rename = "openai.chat_completions")]
    OpenAiChatCompletions,
    /// `usage` of an OpenAI Responses API response.
    #[serde(rename = "openai.responses")]
    OpenAiResponses,
    /// `usage` of an Anthropic Messages response (also on Vertex AI).
    #[serde(rename = "anthropic.messages")]
    AnthropicMessages,
    /// `usageMetadata` of a Gemini `generateContent` response.
    #[serde(rename = "gemini.generate_content")]
    GeminiGenerateContent,
    /// `usage` of an Amazon Bedrock Converse response.
    #[serde(rename = "bedrock.converse")]
    BedrockConverse,
}

impl UsageFormat {
    pub const ALL: [UsageFormat; 5] = [
        Self::OpenAiChatCompletions,
        Self::OpenAiResponses,
        Self::AnthropicMessages,
        Self::GeminiGenerateContent,
        Self::BedrockConverse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAiChatCompletions => "openai.chat_completions",
            Self::OpenAiResponses => "openai.responses",
            Self::AnthropicMessages => "anthropic.messages",
            Self::GeminiGenerateContent => "gemini.generate_content",
            Self::BedrockConverse => "bedrock.converse",
        }
    }

    /// The key under which a full response body carries the usage object.
    fn usage_key(self) -> &'static str {
        match self {
            Self::GeminiGenerateContent => "usageMetadata",
            _ => "usage",
        }
    }
}

impl fmt::Display for UsageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UsageFormat {
    type Err = UsageFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.as_str() == text)
            .ok_or_else(|| UsageFormatError::UnknownFormat(text.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageFormatError {
    #[error("unknown usage format {0:?}")]
    UnknownFormat(String),
    #[error("{format} usage must be a JSON object")]
    NotAnObject { format: UsageFormat },
    #[error("{format} usage is empty: expected an object with some of {expected}")]
    Empty {
        format: UsageFormat,
        expected: String,
    },
    #[error("{format} usage has none of its count fields ({expected}) with a value")]
    NoCounts {
        format: UsageFormat,
        expected: String,
    },
    #[error(
        "{format} usage has fields of {looks_like} usage ({fields}); \
         send usage_format {looks_like} if that is where it came from"
    )]
    OtherFormat {
        format: UsageFormat,
        looks_like: UsageFormat,
        fields: String,
    },
    #[error("{format} usage field {field}: {message}")]
    Field {
        format: UsageFormat,
        field: String,
        message: String,
    },
    #[error("{format} usage is inconsistent: {message}")]
    Inconsistent {
        format: UsageFormat,
        message: String,
    },
}

/// What a provider's response says about the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeUsage {
    pub quantities: UsageQuantities,
    /// The service tier the provider reports having served the request at.
    pub service_tier: Option<ServiceTier>,
    /// The model the provider reports (a dated snapshot, usually).
    pub model: Option<String>,
}

/// Reads a provider's usage object (the value of `usage`, or Gemini's
/// `usageMetadata`) into quantities.
pub fn quantities(format: UsageFormat, usage: &Value) -> Result<UsageQuantities, UsageFormatError> {
    let object = usage
        .as_object()
        .ok_or(UsageFormatError::NotAnObject { format })?;
    shape::recognise(format, object)?;
    let fields = Fields { format, object };
    let mut quantities = match format {
        UsageFormat::OpenAiChatCompletions => openai::chat_completions(&fields),
        UsageFormat::OpenAiResponses => openai::responses(&fields),
        UsageFormat::AnthropicMessages => anthropic::messages(&fields),
        UsageFormat::GeminiGenerateContent => gemini::generate_content(&fields),
        UsageFormat::BedrockConverse => bedrock::converse(&fields),
    }?;
    // A count tokenledger does not know is kept beside the priced ones: the
    // book cannot price it, and the rating says so.
    quantities
        .unpriced
        .extend(shape::unknown_counts(format, object));
    Ok(quantities)
}

/// Reads a whole response body: its usage object, and the model and
/// service tier where the provider reports them.
pub fn from_response(format: UsageFormat, body: &Value) -> Result<NativeUsage, UsageFormatError> {
    let usage = body
        .get(format.usage_key())
        .ok_or_else(|| UsageFormatError::Field {
            format,
            field: format.usage_key().to_owned(),
            message: "missing from the response".into(),
        })?;
    let quantities = quantities(format, usage)?;
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let (model, tier) = match format {
        UsageFormat::OpenAiChatCompletions | UsageFormat::OpenAiResponses => {
            (text(body.get("model")), text(body.get("service_tier")))
        }
        UsageFormat::AnthropicMessages => {
            (text(body.get("model")), text(usage.get("service_tier")))
        }
        UsageFormat::GeminiGenerateContent => (text(body.get("modelVersion")), None),
        UsageFormat::BedrockConverse => (None, None),
    };
    let service_tier = tier
        .map(|tier| {
            tier.parse::<ServiceTier>()
                .map_err(|err| UsageFormatError::Field {
                    format,
                    field: "service_tier".into(),
                    message: err.to_string(),
                })
        })
        .transpose()?;
    Ok(NativeUsage {
        quantities,
        service_tier,
        model,
    })
}

/// Typed access to a usage object's counts.
struct Fields<'a> {
    format: UsageFormat,
    object: &'a Map<String, Value>,
}

impl Fields<'_> {
    /// The count at `path` (`a.b` for a nested object); 0 when absent or
    /// null, an error when not a non-negative integer.
    fn count(&self, path: &str) -> Result<u64, UsageFormatError> {
        let mut parts = path.split('.');
        let mut value = parts.next().and_then(|first| self.object.get(first));
        for part in parts {
            value = match value {
                None | Some(Value::Null) => None,
                Some(Value::Object(inner)) => inner.get(part),
                Some(_) => return Err(self.field(path, "the enclosing value is not an object")),
            };
        }
        match value {
            None | Some(Value::Null) => Ok(0),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| self.field(path, "must be a non-negative integer")),
        }
    }

    /// A count SDKs spell two ways (Gemini's wire camelCase and its Python
    /// SDK's snake_case): either spelling, and both only when they agree.
    fn count_either(&self, wire: &str, sdk: &str) -> Result<u64, UsageFormatError> {
        let present = |key: &str| self.object.get(key).is_some_and(|v| !v.is_null());
        match (present(wire), present(sdk)) {
            (true, true) => {
                let (a, b) = (self.count(wire)?, self.count(sdk)?);
                if a == b {
                    Ok(a)
                } else {
                    Err(UsageFormatError::Inconsistent {
                        format: self.format,
                        message: format!("{wire} is {a} but {sdk} is {b}"),
                    })
                }
            }
            (false, true) => self.count(sdk),
            _ => self.count(wire),
        }
    }

    fn field(&self, path: &str, message: &str) -> UsageFormatError {
        UsageFormatError::Field {
            format: self.format,
            field: path.to_owned(),
            message: message.to_owned(),
        }
    }

    /// `whole - part`, refusing a part larger than its whole.
    fn minus(&self, whole: (&str, u64), part: (&str, u64)) -> Result<u64, UsageFormatError> {
        whole
            .1
            .checked_sub(part.1)
            .ok_or_else(|| UsageFormatError::Inconsistent {
                format: self.format,
                message: format!("{} ({}) exceeds {} ({})", part.0, part.1, whole.0, whole.1),
            })
    }

    /// Checks a reported total against the sum of the parts it covers.
    fn check_total(&self, name: &str, parts: &[u64]) -> Result<(), UsageFormatError> {
        if !self.object.contains_key(name) {
            return Ok(());
        }
        let total = self.count(name)?;
        let sum = parts
            .iter()
            .try_fold(0u64, |sum, part| sum.checked_add(*part));
        if sum != Some(total) {
            return Err(UsageFormatError::Inconsistent {
                format: self.format,
                message: format!("{name} is {total}, the counts add up to {sum:?}"),
            });
        }
        Ok(())
    }
}
