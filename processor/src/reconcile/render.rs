//! A reconciliation as the operator reads it: the table, the JSON (the
//! same structure), the fetch summary, and the coverage and variance
//! gauges for Prometheus' textfile collector.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use chrono::NaiveDate;
use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::compare::{summarize, Causes, GroupComparison, Summary};
use super::{FetchOutcome, Provider, ReconcileConfig};

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
    pub provider: Provider,
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        provider: Provider,
        from: NaiveDate,
        to: NaiveDate,
        config: &ReconcileConfig,
        groups: Vec<GroupComparison>,
        uncompared_days: Vec<NaiveDate>,
        unmapped_scopes: BTreeMap<String, i64>,
        revised_days: Vec<Revised>,
    ) -> Self {
        let (tenants, total) = summarize(&groups);
        let judge = |tenant_id: String, summary: Summary| {
            let coverage_ratio = summary.coverage();
            let cost_variance_ratio = summary.variance_ratio();
            let within_bounds = coverage_ratio.is_none_or(|c| c >= config.coverage_floor)
                && cost_variance_ratio.is_none_or(|v| v <= config.variance_ceiling)
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
            provider,
            from,
            to,
            coverage_floor: config.coverage_floor,
            variance_ceiling: config.variance_ceiling,
            within_bounds,
            total,
            tenants,
            groups,
            uncompared_days,
            unmapped_scopes,
            revised_days,
        }
    }

    pub fn write_table(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{} reconciliation, [{}, {}): ledger vs provider bill (variance = ledger - provider)",
            self.provider.as_str(),
            self.from,
            self.to
        )?;
        writeln!(
            out,
            "{:<20} {:>14} {:>14} {:>9} {:>13} {:>13} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "tenant",
            "provider_tok",
            "ledger_tok",
            "coverage",
            "provider_usd",
            "ledger_usd",
            "variance",
            "unseen_ldgr",
            "unseen_prov",
            "price_diff",
            "kind_mismtch"
        )?;
        for tenant in self.tenants.iter().chain(std::iter::once(&self.total)) {
            let s = &tenant.summary;
            writeln!(
                out,
                "{:<20} {:>14} {:>14} {:>9} {:>13} {:>13} {:>12} {:>12} {:>12} {:>12} {:>12}{}",
                tenant.tenant_id,
                s.provider_tokens,
                s.ledger_tokens,
                tenant
                    .coverage_ratio
                    .map_or("-".into(), |c| format!("{:.2}%", c * 100.0)),
                cents(s.provider_cost_usd),
                cents(s.ledger_cost_usd),
                cents(s.variance_usd),
                cents(s.causes.unseen_by_ledger),
                cents(s.causes.unseen_by_provider),
                cents(s.causes.price_difference),
                cents(s.causes.token_kind_mismatch),
                if tenant.within_bounds {
                    ""
                } else {
                    "  OUT OF BOUNDS"
                }
            )?;
        }
        writeln!(out)?;
        writeln!(out, "differences by day, tenant and model:")?;
        for group in self
            .groups
            .iter()
            .filter(|g| !g.variance_usd.is_zero() || !g.kind_deltas.is_empty())
        {
            writeln!(
                out,
                "  {} {} {}: provider {} / ledger {} USD",
                group.day,
                group.tenant_id,
                if group.model.is_empty() {
                    "(no model)"
                } else {
                    &group.model
                },
                cents(group.provider_cost_usd),
                cents(group.ledger_cost_usd)
            )?;
            for cause in Causes::NAMES {
                let amount = group.causes.get(cause);
                if !amount.is_zero() {
                    writeln!(out, "    {cause:<20} {:>12}", cents(amount))?;
                }
            }
            for delta in &group.kind_deltas {
                writeln!(
                    out,
                    "    tokens {:<14} provider {} ledger {}",
                    delta.kind, delta.provider, delta.ledger
                )?;
            }
            // A kind the book prices as the provider bills it is not the
            // difference; only the others are shown.
            for rate in group
                .rates
                .iter()
                .filter(|rate| rate.book_usd_per_million != Some(rate.provider_usd_per_million))
            {
                writeln!(
                    out,
                    "    rate {:<16} provider implies {}/M, book {} ({})",
                    rate.kind,
                    per_million(rate.provider_usd_per_million),
                    rate.book_usd_per_million
                        .map_or("-".into(), |r| format!("{}/M", per_million(r))),
                    if group.price_entries.is_empty() {
                        "unpriced in the ledger".to_owned()
                    } else {
                        group.price_entries.join(", ")
                    }
                )?;
            }
        }
        if !self.uncompared_days.is_empty() {
            let days: Vec<String> = self.uncompared_days.iter().map(|d| d.to_string()).collect();
            writeln!(
                out,
                "not compared (no stored provider report): {}",
                days.join(", ")
            )?;
        }
        for (scope, tokens) in &self.unmapped_scopes {
            let scope = if scope.is_empty() { "(default)" } else { scope };
            writeln!(out, "unmapped: {scope} ({tokens} tokens)")?;
        }
        for revised in &self.revised_days {
            writeln!(
                out,
                "revised by the provider: {} {} report, {} revisions",
                revised.day, revised.report, revised.revisions
            )?;
        }
        writeln!(
            out,
            "{} (coverage floor {:.2}%, variance ceiling {:.2}%)",
            if self.within_bounds {
                "within bounds"
            } else {
                "OUT OF BOUNDS"
            },
            self.coverage_floor * 100.0,
            self.variance_ceiling * 100.0
        )
    }
}

/// A rate with at least cents shown, and no trailing zeros beyond.
fn per_million(rate: Decimal) -> String {
    let mut shown = rate.normalize();
    if shown.scale() < 2 {
        shown.rescale(2);
    }
    shown.to_string()
}

/// Half-even to the cent, as money is shown.
pub fn cents(amount: Decimal) -> String {
    amount
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
        .to_string()
}

pub(super) fn write_fetch(
    out: &mut impl Write,
    provider: Provider,
    outcomes: &[FetchOutcome],
) -> io::Result<()> {
    for outcome in outcomes {
        let new = outcome.days.iter().filter(|d| d.new_revision).count();
        writeln!(
            out,
            "fetched {} {} report: run {}, {} page(s), {} day(s), {} new revision(s)",
            provider.as_str(),
            outcome.report.as_str(),
            outcome.run_id,
            outcome.pages,
            outcome.days.len(),
            new
        )?;
    }
    Ok(())
}

/// The gauges of `reconciliation`, in the Prometheus text format.
pub fn metrics_text(reconciliation: &Reconciliation) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let coverage = GaugeVec::new(
        Opts::new(
            "tokenledger_reconciliation_coverage_ratio",
            "Ledger tokens over the provider's billed tokens in the last reconciled range.",
        ),
        &["provider", "tenant_id"],
    )?;
    let variance = GaugeVec::new(
        Opts::new(
            "tokenledger_reconciliation_cost_variance_usd",
            "Ledger cost minus the provider's billed cost in the last reconciled range, by cause.",
        ),
        &["provider", "tenant_id", "cause"],
    )?;
    let billed = GaugeVec::new(
        Opts::new(
            "tokenledger_reconciliation_provider_cost_usd",
            "The provider's billed cost in the last reconciled range.",
        ),
        &["provider", "tenant_id"],
    )?;
    let last = GaugeVec::new(
        Opts::new(
            "tokenledger_reconciliation_last_run_timestamp_seconds",
            "When the last reconciliation was computed.",
        ),
        &["provider"],
    )?;
    for collector in [&coverage, &variance, &billed, &last] {
        registry.register(Box::new(collector.clone()))?;
    }
    let provider = reconciliation.provider.as_str();
    for tenant in &reconciliation.tenants {
        let labels = [provider, tenant.tenant_id.as_str()];
        if let Some(ratio) = tenant.coverage_ratio {
            coverage.with_label_values(&labels).set(ratio);
        }
        billed.with_label_values(&labels).set(
            tenant
                .summary
                .provider_cost_usd
                .to_f64()
                .unwrap_or(f64::NAN),
        );
        for cause in Causes::NAMES {
            variance
                .with_label_values(&[provider, tenant.tenant_id.as_str(), cause])
                .set(
                    tenant
                        .summary
                        .causes
                        .get(cause)
                        .to_f64()
                        .unwrap_or(f64::NAN),
                );
        }
    }
    last.with_label_values(&[provider])
        .set(chrono::Utc::now().timestamp() as f64);
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

/// Written beside `path` and renamed over it, so the collector never reads
/// half a file.
pub(super) fn write_metrics_file(path: &Path, reconciliation: &Reconciliation) -> io::Result<()> {
    let text = metrics_text(reconciliation).map_err(io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}
