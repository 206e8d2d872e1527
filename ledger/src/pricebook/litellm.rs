//! LiteLLM's community price catalog (`model_prices_and_context_window.json`)
//! converted into a tokenledger price file, so new models can be priced
//! without a release. The catalog gives USD per token as JSON numbers; each
//! is read through its shortest decimal text (so `2.5e-06` is exactly
//! 0.0000025, never a binary fraction) and scaled to per million.
//!
//! Keys understood, for a model entry:
//! - `input_cost_per_token`, `output_cost_per_token`,
//!   `cache_read_input_token_cost`, `cache_creation_input_token_cost`
//!   (a 5-minute write), `cache_creation_input_token_cost_above_1hr`,
//!   `output_cost_per_reasoning_token`;
//! - any of those with `_above_<N>k_tokens`: a long-context tier above
//!   N×1,000 prompt tokens;
//! - any of those with `_batches`, `_flex` or `_priority`: a service tier.
//!   A tier whose input and output are the same multiple of the standard
//!   rates becomes that multiplier (so cache rates scale with it); other
//!   tiers keep their own rates;
//! - `litellm_provider` (mapped to tokenledger's provider names) and
//!   `source`. Everything else is ignored, and entries that cannot be priced
//!   per token are reported as skipped.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::file::{ContextTierLine, PriceFile, PriceLine, ServiceTierLine};

/// Copies a cell's rates onto a line with the same rate fields.
macro_rules! set_rates {
    ($line:expr, $cell:expr) => {{
        $line.input = $cell.input;
        $line.output = $cell.output;
        $line.cache_read = $cell.cache_read;
        $line.cache_write_5m = $cell.cache_write_5m;
        $line.cache_write_1h = $cell.cache_write_1h;
        $line.reasoning = $cell.reasoning;
    }};
}

const PER_MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Modes whose prices are per token of text.
const PRICED_MODES: &[&str] = &["chat", "completion", "responses", "embedding"];

/// LiteLLM provider names → tokenledger's.
const PROVIDERS: &[(&str, &str)] = &[
    ("text-completion-openai", "openai"),
    ("gemini", "google"),
    ("vertex_ai-language-models", "vertex_ai"),
    ("vertex_ai-anthropic_models", "vertex_ai"),
    ("bedrock_converse", "bedrock"),
    ("codestral", "mistral"),
    ("text-completion-codestral", "mistral"),
    ("cohere_chat", "cohere"),
];

/// Route prefixes LiteLLM puts before model names (`gemini/gemini-2.5-pro`).
const ROUTE_PREFIXES: &[&str] = &[
    "openai",
    "azure",
    "azure_ai",
    "anthropic",
    "gemini",
    "vertex_ai",
    "bedrock",
    "bedrock_converse",
    "mistral",
    "codestral",
    "deepseek",
    "xai",
    "cohere",
    "cohere_chat",
];

/// What the import writes on every entry.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The catalog carries no dates: its prices are taken as in force from
    /// here (usually the day of the import).
    pub effective_from: DateTime<Utc>,
    /// Where the prices come from, for entries without their own `source`.
    pub source: String,
}

/// A catalog entry left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Converted {
    pub file: PriceFile,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum LitellmError {
    #[error("the catalog is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the catalog must be a JSON object of model entries")]
    NotAnObject,
}

/// Converts a catalog's JSON text into a price file.
pub fn convert(catalog: &str, options: &ImportOptions) -> Result<Converted, LitellmError> {
    let value: Value = serde_json::from_str(catalog)?;
    let entries = value.as_object().ok_or(LitellmError::NotAnObject)?;
    let mut lines: BTreeMap<(String, String), PriceLine> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, entry) in entries {
        if key == "sample_spec" {
            continue;
        }
        let result = entry
            .as_object()
            .ok_or_else(|| "not an object".to_owned())
            .and_then(|fields| line(key, fields, options, &mut skipped));
        match result {
            Ok(line) => match lines.entry((line.provider.clone(), line.model.clone())) {
                std::collections::btree_map::Entry::Occupied(first) => skipped.push(Skipped {
                    key: key.clone(),
                    reason: format!("duplicate of {}/{}", first.key().0, first.key().1),
                }),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(line);
                }
            },
            Err(reason) => skipped.push(Skipped {
                key: key.clone(),
                reason,
            }),
        }
    }
    Ok(Converted {
        file: PriceFile {
            price: lines.into_values().collect(),
            ..PriceFile::default()
        },
        skipped,
    })
}

/// Rates of one (service tier, long-context threshold) cell, per million.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Cell {
    input: Option<Decimal>,
    output: Option<Decimal>,
    cache_read: Option<Decimal>,
    cache_write_5m: Option<Decimal>,
    cache_write_1h: Option<Decimal>,
    reasoning: Option<Decimal>,
}

fn line(
    key: &str,
    fields: &Map<String, Value>,
    options: &ImportOptions,
    notes: &mut Vec<Skipped>,
) -> Result<PriceLine, String> {
    let mode = fields.get("mode").and_then(Value::as_str).unwrap_or("chat");
    if !PRICED_MODES.contains(&mode) {
        return Err(format!("mode {mode} is not priced per token"));
    }
    let litellm_provider = fields
        .get("litellm_provider")
        .and_then(Value::as_str)
        .ok_or("no litellm_provider")?;
    let provider = PROVIDERS
        .iter()
        .find(|(from, _)| *from == litellm_provider)
        .map_or(litellm_provider, |(_, to)| to)
        .to_ascii_lowercase();
    let model = match key.split_once('/') {
        Some((route, rest)) if route == litellm_provider || ROUTE_PREFIXES.contains(&route) => rest,
        _ => key,
    };
    if model.contains('/') {
        return Err("a region- or route-specific name".into());
    }

    // (tier name, threshold) → cell; "" is the standard tier, 0 no threshold.
    let mut cells: BTreeMap<(&str, u64), Cell> = BTreeMap::new();
    for (name, value) in fields {
        let Some((tier, threshold, dimension)) = parse_key(name) else {
            continue;
        };
        let rate = per_million(value).ok_or_else(|| format!("{name} is not a price"))?;
        let cell = cells.entry((tier, threshold)).or_default();
        let slot = match dimension {
            Dimension::Input => &mut cell.input,
            Dimension::Output => &mut cell.output,
            Dimension::CacheRead => &mut cell.cache_read,
            Dimension::CacheWrite5m => &mut cell.cache_write_5m,
            Dimension::CacheWrite1h => &mut cell.cache_write_1h,
            Dimension::Reasoning => &mut cell.reasoning,
        };
        *slot = Some(rate);
    }
    let mut base = cells.get(&("", 0)).copied().unwrap_or_default();
    if base.input.is_none() {
        return Err("no input_cost_per_token".into());
    }
    if base.output.is_none() {
        if mode != "embedding" {
            return Err("no output_cost_per_token".into());
        }
        base.output = Some(Decimal::ZERO);
    }
    let mut line = PriceLine {
        provider,
        model: model.to_owned(),
        effective_from: options.effective_from,
        source: Some(
            fields
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or(&options.source)
                .to_owned(),
        ),
        long_context: tiers_of(&cells, ""),
        ..PriceLine::default()
    };
    set_rates!(line, base);
    let tier_names: BTreeSet<&str> = cells
        .keys()
        .map(|(tier, _)| *tier)
        .filter(|t| !t.is_empty())
        .collect();
    for tier in tier_names {
        let cell = cells.get(&(tier, 0)).copied().unwrap_or_default();
        match service_tier(&base, &cell, tiers_of(&cells, tier)) {
            Some(pricing) => {
                line.service_tier.insert(tier.to_owned(), pricing);
            }
            None => notes.push(Skipped {
                key: format!("{key} ({tier} tier)"),
                reason: "neither a multiple of the standard rates nor input and output rates"
                    .into(),
            }),
        }
    }
    Ok(line)
}

/// The long-context tiers of a service tier. A tier that leaves out a cache
/// or reasoning rate gets the standard one scaled by the tier's input ratio,
/// the providers' rule (cache prices are fixed fractions of input).
fn tiers_of(cells: &BTreeMap<(&str, u64), Cell>, tier: &str) -> Vec<ContextTierLine> {
    let base = cells.get(&(tier, 0)).copied().unwrap_or_default();
    cells
        .iter()
        .filter(|((t, threshold), cell)| {
            *t == tier && *threshold > 0 && cell.input.is_some() && cell.output.is_some()
        })
        .map(|((_, threshold), cell)| {
            let scale = match (cell.input, base.input) {
                (Some(long), Some(short)) if !short.is_zero() => Some(long / short),
                _ => None,
            };
            let scaled = |own: Option<Decimal>, standard: Option<Decimal>| {
                own.or_else(|| Some((standard? * scale?).normalize()))
            };
            let filled = Cell {
                cache_read: scaled(cell.cache_read, base.cache_read),
                cache_write_5m: scaled(cell.cache_write_5m, base.cache_write_5m),
                cache_write_1h: scaled(cell.cache_write_1h, base.cache_write_1h),
                reasoning: cell.reasoning.or_else(|| {
                    let ratio = cell.output? / base.output.filter(|o| !o.is_zero())?;
                    Some((base.reasoning? * ratio).normalize())
                }),
                ..*cell
            };
            let mut line = ContextTierLine {
                above_input_tokens: *threshold,
                ..ContextTierLine::default()
            };
            set_rates!(line, filled);
            line
        })
        .collect()
}

/// A multiplier when every rate the tier lists is the same multiple of the
/// standard rate (a rate it leaves out is taken to scale alike); else the
/// tier's own rates, which need input and output (None without them).
fn service_tier(
    base: &Cell,
    cell: &Cell,
    long_context: Vec<ContextTierLine>,
) -> Option<ServiceTierLine> {
    let ratio = |tier: Option<Decimal>, standard: Option<Decimal>| match (tier, standard) {
        (Some(t), Some(s)) if !s.is_zero() => Some(t / s),
        _ => None,
    };
    let multiplier = ratio(cell.input, base.input);
    let pairs = [
        (cell.output, base.output),
        (cell.cache_read, base.cache_read),
        (cell.cache_write_5m, base.cache_write_5m),
        (cell.cache_write_1h, base.cache_write_1h),
        (cell.reasoning, base.reasoning),
    ];
    let uniform = multiplier.is_some()
        && long_context.is_empty()
        && pairs.into_iter().all(|(tier, standard)| {
            tier.is_none() || ratio(tier, standard) == multiplier || tier == standard
        });
    if uniform {
        return Some(ServiceTierLine {
            multiplier: multiplier.map(|m| m.normalize()),
            ..ServiceTierLine::default()
        });
    }
    if cell.input.is_none() || cell.output.is_none() {
        return None;
    }
    let mut line = ServiceTierLine {
        long_context,
        ..ServiceTierLine::default()
    };
    set_rates!(line, cell);
    Some(line)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    Input,
    Output,
    CacheRead,
    CacheWrite5m,
    CacheWrite1h,
    Reasoning,
}

/// `input_cost_per_token_above_200k_tokens_priority` →
/// (`priority`, 200,000, Input). Unknown keys → None.
fn parse_key(name: &str) -> Option<(&'static str, u64, Dimension)> {
    let (rest, tier) = [
        ("_batches", "batch"),
        ("_flex", "flex"),
        ("_priority", "priority"),
    ]
    .into_iter()
    .find_map(|(suffix, tier)| name.strip_suffix(suffix).map(|rest| (rest, tier)))
    .unwrap_or((name, ""));
    let (rest, threshold) = match rest
        .strip_suffix("k_tokens")
        .and_then(|r| r.rsplit_once("_above_"))
    {
        Some((head, thousands)) => (head, thousands.parse::<u64>().ok()?.checked_mul(1_000)?),
        None => (rest, 0),
    };
    let dimension = match rest {
        "input_cost_per_token" => Dimension::Input,
        "output_cost_per_token" => Dimension::Output,
        "cache_read_input_token_cost" => Dimension::CacheRead,
        "cache_creation_input_token_cost" => Dimension::CacheWrite5m,
        "cache_creation_input_token_cost_above_1hr" => Dimension::CacheWrite1h,
        "output_cost_per_reasoning_token" => Dimension::Reasoning,
        _ => return None,
    };
    Some((tier, threshold, dimension))
}

/// A per-token JSON number as an exact decimal per million tokens.
fn per_million(value: &Value) -> Option<Decimal> {
    let text = match value {
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        _ => return None,
    };
    let per_token = text
        .parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(&text).ok())?;
    if per_token.is_sign_negative() {
        return None;
    }
    per_token.checked_mul(PER_MILLION).map(|d| d.normalize())
}
