//! What another model would have cost: the usage recorded over a range
//! re-priced at another model's current list price. Each stored row is
//! re-rated by the ledger's own [`PriceBook::rate`] with the row's token
//! counts per kind and service tier, so long-context and service tiers
//! apply per request exactly as they do to real usage. That needs every
//! row's counts, so this reads the raw table (streamed, never held), not
//! a rollup.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::{pin_mut, TryStreamExt};
use ledger::pricebook::event_usage::quantities;
use ledger::pricebook::{RatingRequest, ServiceTier};
use ledger::{PriceBook, PricingStatus, UsageEvent};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::GenericClient;

use super::{OptimizeError, Range, USE_CASE_LABEL};
use crate::attribution::UNLABELLED;
use crate::db;

/// The question: which usage, re-priced at which model.
#[derive(Debug, Clone)]
pub struct WhatIfRequest {
    pub range: Range,
    /// `None`: all usage.
    pub use_case: Option<String>,
    pub provider: String,
    pub model: String,
}

impl WhatIfRequest {
    /// `provider/model`, as the command line and the HTTP query take it.
    pub fn parse_target(text: &str) -> Result<(String, String), OptimizeError> {
        match text.split_once('/') {
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                Ok((provider.to_owned(), model.to_owned()))
            }
            _ => Err(OptimizeError::Invalid(format!(
                "model must be PROVIDER/MODEL, e.g. openai/gpt-4o-mini, got {:?}",
                text.chars().take(80).collect::<String>()
            ))),
        }
    }
}

/// The usage of one model, now and at the other model's price.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WhatIfRow {
    pub provider: String,
    pub model: String,
    pub requests: i64,
    /// The requests priced both now and at the other model: the ones the
    /// costs below compare.
    pub compared_requests: i64,
    /// Their stored cost (estimated_cost).
    pub current_cost: Decimal,
    /// Their cost at the other model's current list price.
    pub what_if_cost: Decimal,
    /// what_if_cost − current_cost.
    pub difference: Decimal,
    /// Requests stored unpriced: not compared, not guessed.
    pub unpriced_now: i64,
    /// Requests the other model's price cannot price (e.g. a service tier
    /// it has no price for): not compared, not guessed.
    pub unpriced_at_target: i64,
}

impl WhatIfRow {
    fn add(&mut self, o: &WhatIfRow) {
        self.requests += o.requests;
        self.compared_requests += o.compared_requests;
        self.current_cost += o.current_cost;
        self.what_if_cost += o.what_if_cost;
        self.difference += o.difference;
        self.unpriced_now += o.unpriced_now;
        self.unpriced_at_target += o.unpriced_at_target;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhatIfReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tenant: Option<String>,
    pub use_case: Option<String>,
    /// `provider/model` the usage is re-priced at.
    pub target: String,
    /// The price book entry that priced it, and the instant whose price
    /// in force was used.
    pub target_price_entry: String,
    pub priced_at: DateTime<Utc>,
    pub notes: Vec<String>,
    /// Per model replaced, by the saving (most negative difference) first.
    pub models: Vec<WhatIfRow>,
    pub total: WhatIfRow,
}

pub const WHAT_IF_NOTES: [&str; 3] = [
    "token counts differ between tokenizers: the same prompt is a different number of tokens \
     on another model; this re-prices the counts recorded",
    "quality is not measured: a cheaper model may not do the job",
    "unpriced requests (now or at the other model) are counted, not compared",
];

const ROWS: &str = "
SELECT created_at, tenant_id::text AS tenant_id, provider::text AS provider,
       model::text AS model, prompt_tokens, completion_tokens, total_tokens,
       cached_prompt_tokens, cache_write_tokens, reasoning_tokens,
       COALESCE(cache_write_1h_tokens, 0) AS cache_write_1h_tokens, service_tier, calls,
       unpriced_tokens, estimated_cost, pricing_status
FROM gateway_mode_audit
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant_id = $3)
  AND ($4::text IS NULL OR COALESCE(labels ->> $5, $6) = $4)";

/// Re-prices the usage of `request` at its model, now.
pub async fn what_if(
    client: &impl GenericClient,
    book: &PriceBook,
    request: &WhatIfRequest,
    now: DateTime<Utc>,
) -> Result<WhatIfReport, OptimizeError> {
    let (from, to) = request.range.bounds()?;
    let entry = book
        .resolve(&request.provider, &request.model, now)
        .map_err(|reason| {
            OptimizeError::Invalid(format!(
                "{}/{} has no list price in force in the price book ({reason:?})",
                request.provider, request.model
            ))
        })?
        .entry
        .id();
    let tenant = request.range.tenant.as_deref();
    let use_case = request.use_case.as_deref();
    let params: [&(dyn ToSql + Sync); 6] =
        [&from, &to, &tenant, &use_case, &USE_CASE_LABEL, &UNLABELLED];
    let rows = client
        .query_raw(ROWS, params)
        .await
        .map_err(db("reading the usage to re-price"))?;
    pin_mut!(rows);
    let mut models: BTreeMap<(String, String), WhatIfRow> = BTreeMap::new();
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db("reading the usage to re-price"))?
    {
        let event = event_of(&row)?;
        let status: String = row
            .try_get("pricing_status")
            .map_err(db("pricing_status"))?;
        let cost: Decimal = row
            .try_get("estimated_cost")
            .map_err(db("estimated_cost"))?;
        let q = quantities(&event);
        let at_target = book
            .rate(&RatingRequest {
                tenant: &event.tenant_id,
                provider: &request.provider,
                model: &request.model,
                at: now,
                service_tier: event.service_tier.unwrap_or_default(),
                quantities: &q,
                supplied_cost: None,
            })
            .list_cost;
        let mut one = WhatIfRow {
            requests: 1,
            ..WhatIfRow::default()
        };
        match (status == PricingStatus::Unpriced.as_str(), at_target) {
            (true, _) => one.unpriced_now = 1,
            (false, None) => one.unpriced_at_target = 1,
            (false, Some(target)) => {
                one.compared_requests = 1;
                one.current_cost = cost;
                one.what_if_cost = target;
                one.difference = target - cost;
            }
        }
        models
            .entry((event.provider, event.model))
            .or_default()
            .add(&one);
    }
    let mut total = WhatIfRow::default();
    let mut rows: Vec<WhatIfRow> = models
        .into_iter()
        .map(|((provider, model), mut row)| {
            total.add(&row);
            (row.provider, row.model) = (provider, model);
            row
        })
        .collect();
    rows.sort_by(|a, b| {
        a.difference
            .cmp(&b.difference)
            .then_with(|| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)))
    });
    Ok(WhatIfReport {
        from: request.range.from,
        to: request.range.to,
        tenant: request.range.tenant.clone(),
        use_case: request.use_case.clone(),
        target: format!("{}/{}", request.provider, request.model),
        target_price_entry: entry,
        priced_at: now,
        notes: WHAT_IF_NOTES.iter().map(|n| (*n).to_owned()).collect(),
        models: rows,
        total,
    })
}

/// A stored row's usage, as the event it was stored from.
pub(super) fn event_of(row: &tokio_postgres::Row) -> Result<UsageEvent, OptimizeError> {
    let tokens = |name: &'static str| -> Result<u32, OptimizeError> {
        let n: i32 = row.try_get(name).map_err(db(name))?;
        u32::try_from(n).map_err(|_| OptimizeError::Stored(format!("{name} is negative ({n})")))
    };
    let tier: Option<String> = row.try_get("service_tier").map_err(db("service_tier"))?;
    let service_tier = tier
        .map(|t| t.parse::<ServiceTier>())
        .transpose()
        .map_err(|e| OptimizeError::Stored(e.to_string()))?;
    let calls: Option<Json<BTreeMap<String, u32>>> = row.try_get("calls").map_err(db("calls"))?;
    let unpriced: Option<Json<BTreeMap<String, u32>>> = row
        .try_get("unpriced_tokens")
        .map_err(db("unpriced_tokens"))?;
    let at: DateTime<Utc> = row.try_get("created_at").map_err(db("created_at"))?;
    Ok(UsageEvent {
        id: uuid::Uuid::nil(),
        created_at: at,
        tenant_id: row.try_get("tenant_id").map_err(db("tenant_id"))?,
        user_id: None,
        provider: row.try_get("provider").map_err(db("provider"))?,
        model: row.try_get("model").map_err(db("model"))?,
        prompt_tokens: tokens("prompt_tokens")?,
        completion_tokens: tokens("completion_tokens")?,
        total_tokens: tokens("total_tokens")?,
        cached_prompt_tokens: tokens("cached_prompt_tokens")?,
        cache_write_tokens: tokens("cache_write_tokens")?,
        reasoning_tokens: tokens("reasoning_tokens")?,
        cache_write_1h_tokens: tokens("cache_write_1h_tokens")?,
        service_tier,
        calls: calls.map(|j| j.0).unwrap_or_default(),
        unpriced_tokens: unpriced.map(|j| j.0).unwrap_or_default(),
        estimated_cost: None,
        labels: BTreeMap::new(),
        received_at: at,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    })
}
