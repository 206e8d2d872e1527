//! Which listed model a usage's model name is: the name itself, an alias
//! the book lists, or a dated snapshot / Bedrock inference-profile form of
//! one. Nothing else: `o1-pro` is not `o1`, and a name the book does not
//! know is unpriced rather than priced as a look-alike.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Providers that bill at other providers' list prices, tried in order.
/// Names include the OpenTelemetry GenAI `gen_ai.provider.name` values.
const PROVIDER_ALIASES: &[(&str, &[&str])] = &[
    ("azure", &["openai"]),
    ("azure-openai", &["openai"]),
    ("azure_openai", &["openai"]),
    ("azure.ai.openai", &["openai"]),
    ("gemini", &["google"]),
    ("google-ai", &["google"]),
    ("gcp.gemini", &["google"]),
    // Vertex AI sells Google's models at Google's list price and Claude at
    // Anthropic's (global endpoint; regional endpoints cost more, which a
    // model name cannot tell, so an operator lists those).
    ("vertex", &["google", "anthropic"]),
    ("vertex_ai", &["google", "anthropic"]),
    ("vertex-ai", &["google", "anthropic"]),
    ("vertexai", &["google", "anthropic"]),
    ("gcp.vertex_ai", &["google", "anthropic"]),
    ("aws.bedrock", &["bedrock"]),
    ("aws-bedrock", &["bedrock"]),
    ("aws_bedrock", &["bedrock"]),
    ("amazon-bedrock", &["bedrock"]),
    ("amazon_bedrock", &["bedrock"]),
    ("mistralai", &["mistral"]),
    ("mistral_ai", &["mistral"]),
    ("x-ai", &["xai"]),
    ("x_ai", &["xai"]),
];

/// Bedrock's cross-region inference profiles prefix the model id with a
/// geography. The book may list a prefixed id where its price differs
/// (global profiles of newer Claude models cost less than regional ones).
const BEDROCK_PROFILE_PREFIXES: &[&str] = &[
    "global.", "us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.",
];

/// How a model name found its listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The name is listed as is.
    Exact,
    /// The name is an alias the book lists for the model.
    Alias,
    /// A dated snapshot or inference-profile form of a listed name.
    Snapshot,
    /// The provider's `*` entry (self-hosted providers at zero).
    Wildcard,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Alias => "alias",
            Self::Snapshot => "snapshot",
            Self::Wildcard => "wildcard",
        }
    }
}

/// The providers whose prices apply to `provider` (lower-cased), in the
/// order they are tried: the provider itself, so a book can price Azure or
/// Vertex explicitly, then the providers whose list prices it bills at.
pub fn list_providers(provider: &str) -> Vec<String> {
    let provider = provider.to_ascii_lowercase();
    let mut providers = vec![provider.clone()];
    if let Some((_, canonical)) = PROVIDER_ALIASES
        .iter()
        .find(|(alias, _)| *alias == provider)
    {
        providers.extend(canonical.iter().map(|p| (*p).to_owned()));
    }
    providers
}

/// The names `model` may be listed under at `provider` (already canonical),
/// most specific first: the name as sent, then its forms without a Bedrock
/// version suffix (`-v1:0`, `-v1`), without a date (`-2024-08-06`,
/// `-20250929`, `@20250929`), and for Bedrock without the profile prefix.
pub fn name_forms(provider: &str, model: &str) -> Vec<String> {
    let bedrock = provider == "bedrock";
    let mut bases = vec![model.to_owned()];
    if bedrock {
        if let Some(stripped) = BEDROCK_PROFILE_PREFIXES
            .iter()
            .find_map(|prefix| model.strip_prefix(prefix))
        {
            bases.push(stripped.to_owned());
        }
    }
    let mut forms: Vec<String> = Vec::new();
    for base in bases {
        let mut current = base;
        push_unique(&mut forms, &current);
        if bedrock {
            if let Some(without_minor) = strip_bedrock_minor(&current) {
                current = without_minor.to_owned();
                push_unique(&mut forms, &current);
            }
            if let Some(without_version) = strip_bedrock_version(&current) {
                current = without_version.to_owned();
                push_unique(&mut forms, &current);
            }
        }
        if let Some(undated) = strip_date(&current) {
            push_unique(&mut forms, undated);
        }
    }
    forms
}

fn push_unique(forms: &mut Vec<String>, form: &str) {
    if !forms.iter().any(|f| f == form) {
        forms.push(form.to_owned());
    }
}

/// `…-v2:0` → `…-v2`.
fn strip_bedrock_minor(model: &str) -> Option<&str> {
    let (head, minor) = model.rsplit_once(':')?;
    let digits = !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit());
    (digits && strip_bedrock_version(head).is_some()).then_some(head)
}

/// `…-v2` → `…`.
fn strip_bedrock_version(model: &str) -> Option<&str> {
    let (head, version) = model.rsplit_once("-v")?;
    let digits = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    (digits && !head.is_empty()).then_some(head)
}

/// `…-2024-08-06`, `…-20250929` or `…@20250929` → `…`, when the digits are
/// a real calendar date (so `-20000000` or a build number is not a date).
fn strip_date(model: &str) -> Option<&str> {
    let dashed = model.len().checked_sub(11).and_then(|cut| {
        let (head, tail) = (model.get(..cut)?, model.get(cut..)?);
        let date = tail.strip_prefix('-')?;
        NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        Some(head)
    });
    let compact = || {
        let cut = model.len().checked_sub(9)?;
        let (head, tail) = (model.get(..cut)?, model.get(cut..)?);
        let date = tail.strip_prefix('-').or_else(|| tail.strip_prefix('@'))?;
        if !date.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
        Some(head)
    };
    dashed.or_else(compact).filter(|head| !head.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_snapshots_and_profiles_reduce_to_listed_names() {
        assert_eq!(
            name_forms("openai", "gpt-4o-2024-08-06"),
            ["gpt-4o-2024-08-06", "gpt-4o"]
        );
        assert_eq!(
            name_forms("anthropic", "claude-sonnet-4-5-20250929"),
            ["claude-sonnet-4-5-20250929", "claude-sonnet-4-5"]
        );
        assert_eq!(
            name_forms("anthropic", "claude-3-5-sonnet-v2@20241022"),
            ["claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-v2"]
        );
        assert_eq!(
            name_forms("bedrock", "us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
            [
                "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
                "us.anthropic.claude-3-7-sonnet-20250219-v1",
                "us.anthropic.claude-3-7-sonnet-20250219",
                "us.anthropic.claude-3-7-sonnet",
                "anthropic.claude-3-7-sonnet-20250219-v1:0",
                "anthropic.claude-3-7-sonnet-20250219-v1",
                "anthropic.claude-3-7-sonnet-20250219",
                "anthropic.claude-3-7-sonnet",
            ]
        );
    }

    #[test]
    fn other_suffixes_are_not_snapshots() {
        for (provider, model) in [
            ("openai", "o1-pro"),
            ("openai", "gpt-4.5-preview"),
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-4-0613"),
            ("openai", "gpt-4o-20241399"),
            ("openai", "gpt-4o-2024-13-01"),
            ("google", "gemini-1.5-pro-002"),
            ("mistral", "mistral-large-2411"),
            ("openai", "-20250101"),
            // Bedrock suffixes mean nothing at other providers.
            ("openai", "gpt-4o-v1:0"),
        ] {
            assert_eq!(name_forms(provider, model), [model], "{model}");
        }
        assert_eq!(
            name_forms("bedrock", "amazon.titan-embed-text-v2:0"),
            [
                "amazon.titan-embed-text-v2:0",
                "amazon.titan-embed-text-v2",
                "amazon.titan-embed-text",
            ]
        );
    }

    #[test]
    fn provider_aliases_bill_at_list_providers() {
        assert_eq!(list_providers("Azure"), ["azure", "openai"]);
        assert_eq!(list_providers("aws.bedrock"), ["aws.bedrock", "bedrock"]);
        assert_eq!(
            list_providers("vertex_ai"),
            ["vertex_ai", "google", "anthropic"]
        );
        assert_eq!(list_providers("openai"), ["openai"]);
    }
}
