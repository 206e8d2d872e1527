//! The optimization report and the what-if as plain-text tables.

use std::fmt::Write as _;

use rust_decimal::Decimal;
use store::optimize::report::{Dims, OptimizeReport, PromptLength};
use store::optimize::whatif::WhatIfReport;

/// Columns padded to their widest cell: the first left-aligned, the rest
/// right-aligned.
fn grid(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("(no rows)\n");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index == 0 {
                let _ = write!(text, "{cell:<width$}");
            } else {
                let _ = write!(text, "  {cell:>width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

fn name(d: &Dims) -> String {
    let mut parts = Vec::new();
    if let Some(day) = d.day {
        parts.push(day.to_string());
    }
    if let Some(tenant) = &d.tenant_id {
        parts.push(tenant.clone());
    }
    if let (Some(provider), Some(model)) = (&d.provider, &d.model) {
        parts.push(format!("{provider}/{model}"));
    }
    if let Some(use_case) = &d.use_case {
        parts.push(use_case.clone());
    }
    parts.join(" ")
}

fn opt(value: Option<f64>, places: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
}

fn money(value: Decimal) -> String {
    value.round_dp(6).to_string()
}

fn share(value: Option<Decimal>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |v| format!("{}%", (v * Decimal::ONE_HUNDRED).round_dp(1)),
    )
}

fn prompt_section(out: &mut String, title: &str, rows: &[PromptLength]) {
    let _ = writeln!(out, "\n{title}");
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                name(&r.dims),
                r.requests.to_string(),
                r.prompt_tokens_mean.round_dp(1).to_string(),
                opt(r.prompt_tokens_p50, 0),
                opt(r.prompt_tokens_p95, 0),
                r.prompt_tokens_max.to_string(),
                share(r.input_share),
                share(r.output_share),
            ]
        })
        .collect();
    grid(
        out,
        &[
            "", "requests", "mean", "p50", "p95", "max", "input", "output",
        ],
        &cells,
    );
}

/// `processor report optimize`'s table.
pub fn optimize(report: &OptimizeReport) -> String {
    let mut out = format!(
        "optimization report [{}, {}){}\n",
        report.from,
        report.to,
        report
            .tenant
            .as_ref()
            .map(|t| format!(" tenant {t}"))
            .unwrap_or_default()
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push_str("\nprompt tokens per request (input/output: share of list cost)");
    prompt_section(&mut out, "by model", &report.prompt_length_by_model);
    prompt_section(&mut out, "by use case", &report.prompt_length_by_use_case);
    prompt_section(&mut out, "by tenant", &report.prompt_length_by_tenant);
    prompt_section(&mut out, "by day", &report.prompt_length_by_day);

    out.push_str("\ncost per request by model and use case (USD)\n");
    let cells: Vec<Vec<String>> = report
        .cost_per_request
        .iter()
        .map(|r| {
            vec![
                name(&r.dims),
                r.priced_requests.to_string(),
                r.unpriced_requests.to_string(),
                r.cost_per_request_mean
                    .map_or_else(|| "-".to_owned(), |v| v.round_dp(8).to_string()),
                opt(r.cost_per_request_p50, 8),
                opt(r.cost_per_request_p95, 8),
                r.cost_per_1k_tokens_mean
                    .map_or_else(|| "-".to_owned(), |v| v.round_dp(8).to_string()),
                opt(r.cost_per_1k_tokens_p95, 8),
            ]
        })
        .collect();
    grid(
        &mut out,
        &[
            "",
            "priced",
            "unpriced",
            "mean",
            "p50",
            "p95",
            "per_1k_mean",
            "per_1k_p95",
        ],
        &cells,
    );

    out.push_str("\nwhat caching saved, at list prices (USD)\n");
    let cells: Vec<Vec<String>> = report
        .caching
        .iter()
        .map(|r| {
            vec![
                name(&r.dims),
                share(r.cache_hit_ratio),
                money(r.cached_at_input_cost),
                money(r.cached_cost),
                money(r.cache_write_overhead),
                money(r.net_saving),
            ]
        })
        .collect();
    grid(
        &mut out,
        &[
            "",
            "hit_ratio",
            "cached_at_input",
            "cached_cost",
            "write_overhead",
            "net_saving",
        ],
        &cells,
    );

    out.push_str("\nno cached tokens on a model that supports caching (look here first)\n");
    let cells: Vec<Vec<String>> = report
        .no_cache
        .iter()
        .map(|r| {
            vec![
                name(&r.dims),
                r.requests.to_string(),
                share(Some(r.share_of_requests)),
                r.prompt_tokens.to_string(),
                money(r.input_list_cost),
            ]
        })
        .collect();
    grid(
        &mut out,
        &["", "requests", "of_model", "prompt_tokens", "input_cost"],
        &cells,
    );
    out
}

/// `processor what-if`'s table.
pub fn what_if(report: &WhatIfReport) -> String {
    let mut out = format!(
        "what-if at {} (price {}, in force {}) [{}, {}){}{}\n",
        report.target,
        report.target_price_entry,
        report.priced_at.format("%Y-%m-%dT%H:%M:%SZ"),
        report.from,
        report.to,
        report
            .tenant
            .as_ref()
            .map(|t| format!(" tenant {t}"))
            .unwrap_or_default(),
        report
            .use_case
            .as_ref()
            .map(|u| format!(" use case {u}"))
            .unwrap_or_default(),
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let row = |r: &store::optimize::whatif::WhatIfRow, label: String| {
        vec![
            label,
            r.requests.to_string(),
            r.compared_requests.to_string(),
            money(r.current_cost),
            money(r.what_if_cost),
            money(r.difference),
            r.unpriced_now.to_string(),
            r.unpriced_at_target.to_string(),
        ]
    };
    let mut cells: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|r| row(r, format!("{}/{}", r.provider, r.model)))
        .collect();
    cells.push(row(&report.total, "total".to_owned()));
    out.push('\n');
    grid(
        &mut out,
        &[
            "replaced",
            "requests",
            "compared",
            "current_usd",
            "what_if_usd",
            "difference",
            "unpriced_now",
            "unpriced_there",
        ],
        &cells,
    );
    out
}
