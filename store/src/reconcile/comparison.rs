//! A reconciliation as stored data makes it: the latest revision of each
//! day's provider reports against the ledger, compared by [`super::compare`]
//! and judged against a coverage floor and a variance ceiling. The one
//! computation behind `processor reconcile` and the gateway's
//! `GET /v1/reconciliation`, so both give the same JSON for the same rows
//! and terms.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};
use ledger::PriceBook;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::compare::{self, summarize, GroupComparison, Lookup, Summary};
use super::ReportKind;
use crate::DbError;

/// The providers whose reports are understood.
pub const PROVIDERS: [&str; 2] = ["openai", "anthropic"];

/// What a comparison takes from configuration: who a provider's projects
/// or workspaces are, and the bounds a tenant must stay within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    /// Lowest coverage (ledger tokens / provider tokens) a tenant may have.
    pub coverage_floor: f64,
    /// Highest |ledger − provider| / provider cost a tenant may have.
    pub variance_ceiling: f64,
    /// Provider project (OpenAI) or workspace (Anthropic; `"default"` is
    /// the default workspace) → tenant.
    pub tenants: BTreeMap<String, String>,
}

/// A day whose report the provider has revised since the first fetch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revised {
    pub day: NaiveDate,
    pub report: String,
    pub revisions: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSummary {
    pub tenant_id: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub coverage_ratio: Option<f64>,
    pub cost_variance_ratio: Option<f64>,
    pub within_bounds: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciliation {
    pub provider: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub coverage_floor: f64,
    pub variance_ceiling: f64,
    /// Every tenant within the floor and the ceiling.
    pub within_bounds: bool,
    pub total: TenantSummary,
    pub tenants: Vec<TenantSummary>,
    pub groups: Vec<GroupComparison>,
    /// Days in the range without both reports stored: not compared (the
    /// provider's reports lag; fetch again later).
    pub uncompared_days: Vec<NaiveDate>,
    /// Provider projects / workspaces no tenant is mapped to, with their
    /// tokens: reported under the tenant `(unmapped)`.
    pub unmapped_scopes: BTreeMap<String, i64>,
    pub revised_days: Vec<Revised>,
}

impl Reconciliation {
    fn new(
        provider: &str,
        (from, to): (NaiveDate, NaiveDate),
        terms: &Terms,
        groups: Vec<GroupComparison>,
        uncompared_days: Vec<NaiveDate>,
        unmapped_scopes: BTreeMap<String, i64>,
        revised_days: Vec<Revised>,
    ) -> Self {
        let (tenants, total) = summarize(&groups);
        let judge = |tenant_id: String, summary: Summary| {
            let coverage_ratio = summary.coverage();
            let cost_variance_ratio = summary.variance_ratio();
            let within_bounds = coverage_ratio.is_none_or(|c| c >= terms.coverage_floor)
                && cost_variance_ratio.is_none_or(|v| v <= terms.variance_ceiling)
                // Cost the provider never billed is a variance too.
                && (!summary.provider_cost_usd.is_zero() || summary.ledger_cost_usd.is_zero());
            TenantSummary {
                tenant_id,
                summary,
                coverage_ratio,
                cost_variance_ratio,
                within_bounds,
            }
        };
        let tenants: Vec<TenantSummary> = tenants
            .into_iter()
            .map(|(tenant, summary)| judge(tenant, summary))
            .collect();
        let total = judge("(all)".into(), total);
        let within_bounds = total.within_bounds && tenants.iter().all(|t| t.within_bounds);
        Self {
            provider: provider.to_owned(),
            from,
            to,
            coverage_floor: terms.coverage_floor,
            variance_ceiling: terms.variance_ceiling,
            within_bounds,
            total,
            tenants,
            groups,
            uncompared_days,
            unmapped_scopes,
            revised_days,
        }
    }
}

/// The comparison's questions answered from the terms and the price book.
struct BookLookup<'a> {
    provider: &'a str,
    book: &'a PriceBook,
    tenants: &'a BTreeMap<String, String>,
}

fn noon(day: NaiveDate) -> chrono::DateTime<chrono::Utc> {
    ledger::day::midnight(day) + Duration::hours(12)
}

impl Lookup for BookLookup<'_> {
    fn tenant(&self, scope_id: &str) -> Option<String> {
        // Anthropic's reports give the default workspace no id.
        let key = if scope_id.is_empty() && self.provider == "anthropic" {
            "default"
        } else {
            scope_id
        };
        self.tenants.get(key).cloned()
    }

    /// The book entry's model name when the book knows the model (so
    /// `gpt-4o` sent by a caller and `gpt-4o-2024-08-06` in the report
    /// compare as one), else the name as given.
    fn model_key(&self, model: &str, day: NaiveDate) -> String {
        match self.book.resolve(self.provider, model, noon(day)) {
            Ok(resolution) if resolution.entry.model != "*" => resolution.entry.model.clone(),
            _ => model.to_owned(),
        }
    }

    fn book_rate(&self, model: &str, kind: &str, day: NaiveDate) -> Option<Decimal> {
        let price = self.book.lookup(self.provider, model, noon(day))?;
        Some(match kind {
            "input_uncached" => price.input,
            "cache_read" => price.cache_read_rate(),
            "cache_write_5m" => price.cache_write_5m_rate(),
            "cache_write_1h" => price.cache_write_1h_rate(),
            "output" => price.output,
            _ => return None,
        })
    }

    fn reports_cache_writes(&self) -> bool {
        self.provider == "anthropic"
    }
}

/// The comparison of `provider` over `[from, to)` from what is stored;
/// with `tenant`, only that tenant's groups and summary. The caller checks
/// that `provider` is one of [`PROVIDERS`] and that `from < to`.
pub async fn reconciliation(
    client: &impl GenericClient,
    book: &PriceBook,
    terms: &Terms,
    provider: &str,
    (from, to): (NaiveDate, NaiveDate),
    tenant: Option<&str>,
) -> Result<Reconciliation, DbError> {
    let usage_days = super::covered_days(client, provider, ReportKind::Usage, from, to).await?;
    let cost_days = super::covered_days(client, provider, ReportKind::Cost, from, to).await?;
    let days: Vec<NaiveDate> = usage_days
        .iter()
        .filter(|day| cost_days.contains(day))
        .copied()
        .collect();
    let usage = super::latest_usage(client, provider, from, to).await?;
    let cost = super::latest_cost(client, provider, from, to).await?;
    let ledger = super::ledger_groups(client, provider, from, to).await?;
    let revisions = super::revision_counts(client, provider, from, to).await?;
    let lookup = BookLookup {
        provider,
        book,
        tenants: &terms.tenants,
    };
    let mut groups = compare::compare(&lookup, &days, &usage, &cost, &ledger);
    let mut unmapped_scopes: BTreeMap<String, i64> = BTreeMap::new();
    for (_, line) in usage.iter().filter(|(day, _)| days.contains(day)) {
        if lookup.tenant(&line.scope_id).is_none() {
            *unmapped_scopes.entry(line.scope_id.clone()).or_default() += line.tokens.total();
        }
    }
    if let Some(tenant) = tenant {
        groups.retain(|group| group.tenant_id == tenant);
    }
    let uncompared_days: Vec<NaiveDate> = from
        .iter_days()
        .take_while(|day| *day < to)
        .filter(|day| !days.contains(day))
        .collect();
    let revised_days = revisions
        .into_iter()
        .filter(|(_, _, count)| *count > 1)
        .map(|(day, report, count)| Revised {
            day,
            report,
            revisions: count,
        })
        .collect();
    Ok(Reconciliation::new(
        provider,
        (from, to),
        terms,
        groups,
        uncompared_days,
        unmapped_scopes,
        revised_days,
    ))
}
