//! A reconciliation (`store::reconcile`) as the operator reads it: the
//! table, the fetch summary, and the coverage and variance
//! gauges for Prometheus' textfile collector.

use std::io::{self, Write};
use std::path::Path;

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use store::reconcile::compare::Causes;
use store::reconcile::Reconciliation;

use super::{FetchOutcome, Provider};

/// The comparison as a table: per tenant and overall, then every group
/// that differs, with its causes, token kinds and implied rates.
pub fn write_table(reconciliation: &Reconciliation, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} reconciliation, [{}, {}): ledger vs provider bill (variance = ledger - provider)",
        reconciliation.provider, reconciliation.from, reconciliation.to
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
    for tenant in reconciliation
        .tenants
        .iter()
        .chain(std::iter::once(&reconciliation.total))
    {
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
    for group in reconciliation
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
    if !reconciliation.uncompared_days.is_empty() {
        let days: Vec<String> = reconciliation
            .uncompared_days
            .iter()
            .map(|d| d.to_string())
            .collect();
        writeln!(
            out,
            "not compared (no stored provider report): {}",
            days.join(", ")
        )?;
    }
    for (scope, tokens) in &reconciliation.unmapped_scopes {
        let scope = if scope.is_empty() { "(default)" } else { scope };
        writeln!(out, "unmapped: {scope} ({tokens} tokens)")?;
    }
    for revised in &reconciliation.revised_days {
        writeln!(
            out,
            "revised by the provider: {} {} report, {} revisions",
            revised.day, revised.report, revised.revisions
        )?;
    }
    writeln!(
        out,
        "{} (coverage floor {:.2}%, variance ceiling {:.2}%)",
        if reconciliation.within_bounds {
            "within bounds"
        } else {
            "OUT OF BOUNDS"
        },
        reconciliation.coverage_floor * 100.0,
        reconciliation.variance_ceiling * 100.0
    )
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
