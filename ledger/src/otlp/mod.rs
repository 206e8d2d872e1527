//! OpenTelemetry GenAI spans read as usage events: which spans report an
//! LLM call's usage, what the call's identity is, and how the attribute
//! names of the current and the older GenAI semantic conventions map onto
//! a [`UsageEvent`].
//!
//! One call is one event however many spans report it. A span carrying
//! `gen_ai.response.id` is identified by (tenant, provider, response id):
//! its event id is a hash of those and the event is marked
//! [`UsageEvent::call_identity`], so two spans of the same call (two
//! instrumentations, two traces, start times microseconds or an hour
//! boundary apart) are stored once: the processor keys such an event by
//! tenant and id alone. Its `created_at` is the span's own start time, to
//! the microsecond. A span without a response id is identified by its trace
//! and span ids, and keyed by those and its start time like any event. An
//! exporter's retry of a batch carries the same spans and so the same keys.
//!
//! Layout:
//! - this file: settings, the mapping of a request, refusals.
//! - `attributes`: attribute look-up, token counts and provider names.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{UsageEvent, ValidationLimits};

mod attributes;
#[cfg(test)]
mod tests;

use attributes::{find, service_tier, text};
pub use attributes::{provider_name, Tokens};

/// The attribute carrying the tenant when the API key is not bound to one.
pub const DEFAULT_TENANT_ATTRIBUTE: &str = "tenant.id";

/// How spans are attributed; from the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Span attribute, then resource attribute, naming the tenant for an
    /// admin key.
    pub tenant_attribute: String,
    /// Span or resource attributes copied into labels (span first), under
    /// the attribute's own name.
    pub label_attributes: Vec<String>,
    /// Span or resource attributes naming the end user (first found wins).
    pub user_attributes: Vec<String>,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            tenant_attribute: DEFAULT_TENANT_ATTRIBUTE.into(),
            label_attributes: Vec::new(),
            user_attributes: vec!["user.id".into(), "enduser.id".into()],
        }
    }
}

/// The wire encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why a request body is not an `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request body is not an OTLP ExportTraceServiceRequest: {0}")]
pub struct DecodeError(pub String);

/// Decodes an OTLP/HTTP trace export body (already decompressed).
pub fn decode_request(
    body: &[u8],
    encoding: Encoding,
) -> Result<ExportTraceServiceRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => {
            ExportTraceServiceRequest::decode(body).map_err(|error| DecodeError(error.to_string()))
        }
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|error| DecodeError(error.to_string()))
        }
    }
}

/// Number of spans in a request, counted before mapping so a request over
/// the limit is refused whole.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .map(|scope| scope.spans.len())
        .sum()
}

/// Why one span with usage was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRefusal {
    /// The span's name and ids, for the client's log.
    pub span: String,
    pub reason: String,
}

/// The events a request's spans report, and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    /// One per LLM call, in request order, without duplicates.
    pub events: Vec<UsageEvent>,
    /// Spans that carry no GenAI usage (not an error: most spans don't).
    pub without_usage: usize,
    /// Spans reporting a call another span of the same request reported.
    pub duplicates: usize,
    /// Spans with usage that could not be turned into an event.
    pub refused: Vec<SpanRefusal>,
}

/// Who is sending: the tenant a key is bound to, or none for an admin key.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub tenant: Option<&'a str>,
}

/// Maps every span of `request` with GenAI usage to an event.
pub fn map_request(
    request: &ExportTraceServiceRequest,
    caller: Caller<'_>,
    settings: &OtlpSettings,
    limits: &ValidationLimits,
    received_at: DateTime<Utc>,
) -> Mapped {
    let mut mapped = Mapped::default();
    // A call-identity event is the same call whatever its time.
    let mut seen: HashSet<(Uuid, Option<DateTime<Utc>>)> = HashSet::new();
    for resource_spans in &request.resource_spans {
        let resource: &[KeyValue] = resource_spans
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .iter()
            .flat_map(|scope| &scope.spans)
        {
            let context = SpanContext {
                span,
                resource,
                caller,
                settings,
                limits,
                received_at,
            };
            match context.to_event() {
                Ok(None) => mapped.without_usage += 1,
                Ok(Some(event)) => {
                    let time = (!event.call_identity).then_some(event.created_at);
                    if seen.insert((event.id, time)) {
                        mapped.events.push(event);
                    } else {
                        mapped.duplicates += 1;
                    }
                }
                Err(reason) => mapped.refused.push(SpanRefusal {
                    span: describe(span),
                    reason,
                }),
            }
        }
    }
    mapped
}

/// The partial-success message: how many spans were refused and why,
/// with the first few reasons spelled out.
pub fn refusal_message(refused: &[SpanRefusal]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = refused
        .iter()
        .take(SHOWN)
        .map(|refusal| format!("{}: {}", refusal.span, refusal.reason))
        .collect();
    if refused.len() > SHOWN {
        parts.push(format!("and {} more", refused.len() - SHOWN));
    }
    format!(
        "{} span(s) with GenAI usage refused: {}",
        refused.len(),
        parts.join("; ")
    )
}

fn describe(span: &Span) -> String {
    format!(
        "span {:?} (trace {}, span {})",
        span.name.chars().take(64).collect::<String>(),
        hex(&span.trace_id),
        hex(&span.span_id)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct SpanContext<'a> {
    span: &'a Span,
    resource: &'a [KeyValue],
    caller: Caller<'a>,
    settings: &'a OtlpSettings,
    limits: &'a ValidationLimits,
    received_at: DateTime<Utc>,
}

impl SpanContext<'_> {
    /// The span's attribute, else its resource's.
    fn attribute(&self, key: &str) -> Option<String> {
        find(&self.span.attributes, key)
            .or_else(|| find(self.resource, key))
            .and_then(text)
    }

    /// `Ok(None)` for a span that reports no usage.
    fn to_event(&self) -> Result<Option<UsageEvent>, String> {
        let attributes = &self.span.attributes;
        let Some(tokens) = Tokens::read(attributes)? else {
            return Ok(None);
        };
        let tenant_id = match self.caller.tenant {
            Some(tenant) => tenant.to_owned(),
            None => self.attribute(&self.settings.tenant_attribute).ok_or_else(|| {
                format!(
                    "no tenant: the API key is not bound to a tenant and neither the span nor its resource has a {:?} attribute",
                    self.settings.tenant_attribute
                )
            })?,
        };
        let model = ["gen_ai.response.model", "gen_ai.request.model"]
            .iter()
            .find_map(|key| find(attributes, key).and_then(text))
            .filter(|model| !model.is_empty())
            .ok_or("no model: neither gen_ai.response.model nor gen_ai.request.model is set")?;
        let system = ["gen_ai.provider.name", "gen_ai.system"]
            .iter()
            .find_map(|key| find(attributes, key).and_then(text))
            .filter(|provider| !provider.is_empty())
            .ok_or("no provider: neither gen_ai.provider.name nor gen_ai.system is set")?;
        let provider = provider_name(&system, &model);
        let start = nanos_to_time(self.span.start_time_unix_nano)
            .ok_or("the span's start time is not a valid timestamp")?;
        let response_id = find(attributes, "gen_ai.response.id")
            .and_then(text)
            .filter(|id| !id.is_empty());
        let created_at = start
            .duration_trunc(TimeDelta::microseconds(1))
            .map_err(|error| format!("the span's start time: {error}"))?;
        let id = match &response_id {
            Some(response_id) => derive_id(&["response", &tenant_id, &provider, response_id]),
            None => {
                if self.span.trace_id.is_empty() || self.span.span_id.is_empty() {
                    return Err("no identity: the span has neither gen_ai.response.id nor a trace and span id".into());
                }
                derive_id(&[
                    "span",
                    &tenant_id,
                    &hex(&self.span.trace_id),
                    &hex(&self.span.span_id),
                ])
            }
        };
        if created_at > self.received_at + self.limits.max_future_skew {
            return Err(format!(
                "the span starts more than {} minutes in the future",
                self.limits.max_future_skew.num_minutes()
            ));
        }
        if created_at < self.received_at - self.limits.backfill_window {
            return Err(format!(
                "the span is older than the {}-day backfill window",
                self.limits.backfill_window.num_days()
            ));
        }
        let labels: BTreeMap<String, String> = self
            .settings
            .label_attributes
            .iter()
            .filter_map(|key| Some((key.clone(), self.attribute(key)?)))
            .collect();
        let user_id = self
            .settings
            .user_attributes
            .iter()
            .find_map(|key| self.attribute(key));
        let event = UsageEvent {
            id,
            created_at,
            tenant_id,
            user_id,
            provider,
            model,
            prompt_tokens: tokens.input,
            completion_tokens: tokens.output,
            total_tokens: tokens
                .input
                .checked_add(tokens.output)
                .ok_or("input + output tokens overflow a 32-bit count")?,
            cached_prompt_tokens: tokens.cache_read,
            cache_write_tokens: tokens.cache_write - tokens.cache_write_1h,
            reasoning_tokens: tokens.reasoning,
            cache_write_1h_tokens: tokens.cache_write_1h,
            service_tier: service_tier(attributes)?,
            // GenAI spans carry no per-call counts.
            calls: Default::default(),
            unpriced_tokens: Default::default(),
            estimated_cost: None,
            labels,
            received_at: self.received_at,
            request_id: None,
            call_identity: response_id.is_some(),
            reservation_id: None,
            api_key: None,
        };
        event
            .check_invariants()
            .map_err(|error| error.to_string())?;
        Ok(Some(event))
    }
}

fn nanos_to_time(nanos: u64) -> Option<DateTime<Utc>> {
    if nanos == 0 {
        return None;
    }
    let nanos = i64::try_from(nanos).ok()?;
    Some(DateTime::from_timestamp_nanos(nanos))
}

/// A UUIDv8 from the SHA-256 of the parts: the same call always gets the
/// same id, and ids of different calls collide no more than random ones.
fn derive_id(parts: &[&str]) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"tokenledger.otlp.v1");
    for part in parts {
        // Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}
