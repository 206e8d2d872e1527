//! The stored rows a re-pricing reads and changes: one page of
//! `gateway_mode_audit` in key order, the update of the rows whose pricing
//! changed, and their `cost_corrections` rows. Every statement carries the
//! tenant: event ids are unique per tenant only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger::pricebook::ServiceTier;
use ledger::{PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use tokio_postgres::types::Json;
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use super::{db, RepriceArgs, RepriceError};
use crate::stream::prepare::Pricing;

// Keyset paging over the unique key `(created_at, tenant_id, id)`: a cursor
// on `(created_at, id)` alone would skip a second tenant's row with the
// same id and time at a page boundary.
const PAGE: &str = "
SELECT id, created_at, tenant_id, user_id, provider, model,
       prompt_tokens, completion_tokens, total_tokens, cached_prompt_tokens, cache_write_tokens,
       reasoning_tokens, COALESCE(cache_write_1h_tokens, 0), service_tier, calls,
       estimated_cost, pricing_status, list_cost, price_entry, price_book_version, pricing_rule,
       cost_source, labels, received_at, unpriced_tokens
FROM gateway_mode_audit
WHERE created_at >= $1 AND created_at < $2
  AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::text IS NULL OR provider = $4)
  AND ($5::text IS NULL OR model = $5)
  AND (created_at, tenant_id, id) > ($6, $7, $8)
ORDER BY created_at, tenant_id, id
LIMIT $9";

const UPDATE_ROWS: &str = "
UPDATE gateway_mode_audit AS a
SET estimated_cost = u.cost, pricing_status = u.status, list_cost = u.list_cost,
    price_entry = u.entry, price_book_version = u.version, pricing_rule = u.rule,
    cost_source = u.source,
    repriced_at = CASE WHEN a.estimated_cost <> u.cost OR a.pricing_status <> u.status
                       THEN now() ELSE a.repriced_at END
FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::numeric[], $5::text[],
            $6::numeric[], $7::text[], $8::text[], $9::text[], $10::text[])
     AS u(id, created_at, tenant_id, cost, status, list_cost, entry, version, rule, source)
WHERE a.id = u.id AND a.created_at = u.created_at AND a.tenant_id = u.tenant_id";

const INSERT_CORRECTIONS: &str = "
INSERT INTO cost_corrections (run_id, id, created_at, tenant_id, provider, model, old_cost,
                              new_cost, old_status, new_status, old_price_book_version,
                              new_price_book_version, new_pricing_rule)
SELECT $1, * FROM UNNEST($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::numeric[], $8::numeric[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::text[])
ON CONFLICT DO NOTHING";

/// Where the next page starts: the key of the last row read.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    pub id: Uuid,
}

impl Cursor {
    /// Before every row at or after `from`.
    pub fn before(from: DateTime<Utc>) -> Self {
        Self {
            created_at: from - chrono::Duration::microseconds(1),
            tenant_id: String::new(),
            id: Uuid::nil(),
        }
    }
}

/// One stored row as read back: the event it was, and its pricing.
pub struct Stored {
    pub event: UsageEvent,
    pub cost: Decimal,
    pub status: String,
    pub pricing: Pricing,
}

/// The next page of the range after `cursor` (runs take turns on
/// [`super::REPRICE_LOCK_KEY`], so the page stays as read until its update).
pub async fn page(
    transaction: &Transaction<'_>,
    args: &RepriceArgs,
    range: (DateTime<Utc>, DateTime<Utc>),
    cursor: &Cursor,
) -> Result<Vec<Stored>, RepriceError> {
    let rows = transaction
        .query(
            PAGE,
            &[
                &range.0,
                &range.1,
                &args.tenant,
                &args.provider,
                &args.model,
                &cursor.created_at,
                &cursor.tenant_id,
                &cursor.id,
                &i64::from(args.batch_rows),
            ],
        )
        .await
        .map_err(db("reading stored rows"))?;
    rows.iter().map(read_row).collect()
}

fn read_row(row: &Row) -> Result<Stored, RepriceError> {
    let count = |index: usize| u32::try_from(row.get::<_, i32>(index)).unwrap_or(0);
    let status: String = row.get(16);
    let cost: Decimal = row.get(15);
    let calls: Option<Json<BTreeMap<String, u32>>> = row.get(14);
    // Re-pricing must leave out what ingestion left out, or audio tokens
    // would turn into text input on the next run.
    let unpriced: Option<Json<BTreeMap<String, u32>>> = row.get(24);
    let labels: Option<Json<BTreeMap<String, String>>> = row
        .try_get(22)
        .map_err(db("reading a stored row's labels"))?;
    let tier: Option<String> = row.get(13);
    let event = UsageEvent {
        id: row.get(0),
        created_at: row.get(1),
        tenant_id: row.get(2),
        user_id: row.get(3),
        provider: row.get(4),
        model: row.get(5),
        prompt_tokens: count(6),
        completion_tokens: count(7),
        total_tokens: count(8),
        cached_prompt_tokens: count(9),
        cache_write_tokens: count(10),
        reasoning_tokens: count(11),
        cache_write_1h_tokens: count(12),
        service_tier: tier.and_then(|t| t.parse::<ServiceTier>().ok()),
        calls: calls.map(|Json(calls)| calls).unwrap_or_default(),
        unpriced_tokens: unpriced.map(|Json(u)| u).unwrap_or_default(),
        // The caller's own cost stays the cost; the book restates only the
        // list cost beside it.
        estimated_cost: (status == PricingStatus::Provided.as_str()).then_some(cost),
        labels: labels.map(|Json(labels)| labels).unwrap_or_default(),
        received_at: row.get(23),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    };
    let source: Option<String> = row.get(21);
    Ok(Stored {
        event,
        cost,
        pricing: Pricing {
            list_cost: row.get(17),
            price_entry: row.get(18),
            price_book_version: row.get::<_, Option<String>>(19).unwrap_or_default(),
            pricing_rule: row.get::<_, Option<String>>(20).unwrap_or_default(),
            cost_source: match source.as_deref() {
                Some("book") => Some("book"),
                Some("tenant_contract") => Some("tenant_contract"),
                Some("caller") => Some("caller"),
                _ => None,
            },
        },
        status,
    })
}

/// A row to restate: the event, its new cost and status, its new pricing.
pub type Update = (UsageEvent, Decimal, PricingStatus, Pricing);

pub async fn update(transaction: &Transaction<'_>, updates: &[Update]) -> Result<(), RepriceError> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.0.id).collect();
    let created: Vec<DateTime<Utc>> = updates.iter().map(|u| u.0.created_at).collect();
    let tenants: Vec<&str> = updates.iter().map(|u| u.0.tenant_id.as_str()).collect();
    let costs: Vec<Decimal> = updates.iter().map(|u| u.1).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.2.as_str()).collect();
    let list: Vec<Option<Decimal>> = updates.iter().map(|u| u.3.list_cost).collect();
    let entries: Vec<Option<&str>> = updates.iter().map(|u| u.3.price_entry.as_deref()).collect();
    let versions: Vec<&str> = updates
        .iter()
        .map(|u| u.3.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = updates.iter().map(|u| u.3.pricing_rule.as_str()).collect();
    let sources: Vec<Option<&str>> = updates.iter().map(|u| u.3.cost_source).collect();
    transaction
        .execute(
            UPDATE_ROWS,
            &[
                &ids, &created, &tenants, &costs, &statuses, &list, &entries, &versions, &rules,
                &sources,
            ],
        )
        .await
        .map_err(db("updating rows"))?;
    Ok(())
}

/// A changed cost: the event, its old cost, status and book version, its
/// new cost and status, its new pricing.
pub type Correction = (
    UsageEvent,
    Decimal,
    String,
    String,
    Decimal,
    PricingStatus,
    Pricing,
);

pub async fn insert_corrections(
    transaction: &Transaction<'_>,
    run_id: Uuid,
    corrections: &[Correction],
) -> Result<(), RepriceError> {
    if corrections.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = corrections.iter().map(|c| c.0.id).collect();
    let created: Vec<DateTime<Utc>> = corrections.iter().map(|c| c.0.created_at).collect();
    let tenants: Vec<&str> = corrections.iter().map(|c| c.0.tenant_id.as_str()).collect();
    let providers: Vec<&str> = corrections.iter().map(|c| c.0.provider.as_str()).collect();
    let models: Vec<&str> = corrections.iter().map(|c| c.0.model.as_str()).collect();
    let old_costs: Vec<Decimal> = corrections.iter().map(|c| c.1).collect();
    let new_costs: Vec<Decimal> = corrections.iter().map(|c| c.4).collect();
    let old_statuses: Vec<&str> = corrections.iter().map(|c| c.2.as_str()).collect();
    let new_statuses: Vec<&str> = corrections.iter().map(|c| c.5.as_str()).collect();
    let old_versions: Vec<Option<&str>> = corrections
        .iter()
        .map(|c| (!c.3.is_empty()).then_some(c.3.as_str()))
        .collect();
    let new_versions: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.price_book_version.as_str())
        .collect();
    let rules: Vec<&str> = corrections
        .iter()
        .map(|c| c.6.pricing_rule.as_str())
        .collect();
    transaction
        .execute(
            INSERT_CORRECTIONS,
            &[
                &run_id,
                &ids,
                &created,
                &tenants,
                &providers,
                &models,
                &old_costs,
                &new_costs,
                &old_statuses,
                &new_statuses,
                &old_versions,
                &new_versions,
                &rules,
            ],
        )
        .await
        .map_err(db("recording corrections"))?;
    Ok(())
}
