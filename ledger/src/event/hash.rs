//! The content hash of a usage event, which tells a client's retry (same
//! key, same hash) from a conflicting reuse of its id (same key, other hash).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::UsageEvent;
use crate::pricebook::ServiceTier;

impl UsageEvent {
    /// SHA-256 of what the client asserted about the call, excluding what
    /// the gateway added (`received_at`, `request_id`). Two deliveries with
    /// the same `(id, created_at)` and the same hash are one event retried;
    /// a different hash is a conflicting reuse of the id.
    ///
    /// For an event with [`UsageEvent::call_identity`] the time is left out
    /// too (hashed as the epoch): two reports of one call start microseconds
    /// apart and are still the same content.
    ///
    /// The hashed bytes are the Kafka form of the event with `received_at`
    /// at the epoch and no `request_id`. They are serialised from a
    /// borrowed view into a per-thread buffer and hashed in one call: this
    /// runs once per record in the processor's hot path, and streaming
    /// serde's many small writes into the hash cost twice as much.
    pub fn content_sha256(&self) -> [u8; 32] {
        let content = Content {
            id: &self.id,
            created_at: if self.call_identity {
                &DateTime::<Utc>::UNIX_EPOCH
            } else {
                &self.created_at
            },
            tenant_id: &self.tenant_id,
            user_id: self.user_id.as_deref(),
            provider: &self.provider,
            model: &self.model,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_prompt_tokens: self.cached_prompt_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cache_write_1h_tokens: self.cache_write_1h_tokens,
            service_tier: self.service_tier,
            calls: &self.calls,
            unpriced_tokens: &self.unpriced_tokens,
            estimated_cost: self.estimated_cost,
            labels: &self.labels,
            received_at: DateTime::<Utc>::UNIX_EPOCH,
            call_identity: self.call_identity,
            reservation_id: self.reservation_id.as_ref(),
        };
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            // Serialising strings, integers and maps of strings into a
            // Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buffer, &content);
            Sha256::digest(buffer.as_slice()).into()
        })
    }
}

/// What [`UsageEvent::content_sha256`] hashes: serialises exactly like a
/// `UsageEvent` (same fields, order and attributes) without `request_id`.
#[derive(Serialize)]
struct Content<'a> {
    id: &'a Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    created_at: &'a DateTime<Utc>,
    tenant_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    provider: &'a str,
    model: &'a str,
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    cached_prompt_tokens: u32,
    cache_write_tokens: u32,
    reasoning_tokens: u32,
    #[serde(skip_serializing_if = "is_zero")]
    cache_write_1h_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<ServiceTier>,
    #[serde(skip_serializing_if = "no_calls")]
    calls: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unpriced_tokens: &'a BTreeMap<String, u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rust_decimal::serde::str_option::serialize"
    )]
    estimated_cost: Option<Decimal>,
    #[serde(skip_serializing_if = "no_labels")]
    labels: &'a BTreeMap<String, String>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "is_false")]
    call_identity: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<&'a Uuid>,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

fn no_calls(calls: &&BTreeMap<String, u32>) -> bool {
    calls.is_empty()
}

fn no_labels(labels: &&BTreeMap<String, String>) -> bool {
    labels.is_empty()
}
