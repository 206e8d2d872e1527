//! `processor report`: what has landed in the database (raw totals and the
//! daily rollups per tenant, per model and per tenant and model), as a
//! readable table or as JSON.

use chrono::Utc;
use clap::{Args, ValueEnum};
use rust_decimal::Decimal;
use serde::Serialize;
use store::rollups::Daily;
use tokio_postgres::Client;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Materialize the continuous aggregates first.
    #[arg(long)]
    refresh: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// How many days of rollups to show.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Prints the report (after a refresh, when asked).
pub async fn run(client: &Client, args: &ReportArgs) -> Result<(), ReportError> {
    if args.refresh {
        refresh(client).await?;
    }
    let gathered = gather(client, args.days).await?;
    match args.format {
        Format::Table => print!("{}", gathered.to_table()),
        Format::Json => println!("{}", gathered.to_json()?),
    }
    Ok(())
}

/// The rollups in dependency order (the daily ones read `usage_hourly`),
/// with their bucket width.
pub use store::rollups::CONTINUOUS_AGGREGATES;
pub use store::rollups::{DailyRow, Totals};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot refresh {aggregate}: {source}")]
    Refresh {
        aggregate: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub days: u32,
    pub totals: Totals,
    pub tenant_daily: Vec<DailyRow>,
    pub model_daily: Vec<DailyRow>,
    pub usage_daily: Vec<DailyRow>,
    /// Cost per value of each attribution label key over the window.
    pub cost_by_use_case: Vec<store::attribution::LabelCost>,
}

/// Materializes every rollup up to the start of its current bucket. Each
/// call is its own statement outside any transaction: TimescaleDB refuses
/// to refresh inside one.
///
/// The open bucket is left to real-time aggregation, as the refresh
/// policies do: materializing it would move the watermark past it, and
/// rows arriving later in that bucket would stay invisible until the next
/// refresh.
pub async fn refresh(client: &Client) -> Result<(), ReportError> {
    for (aggregate, width) in CONTINUOUS_AGGREGATES {
        store::rollups::refresh_to_open_bucket(client, aggregate, width)
            .await
            .map_err(|error| ReportError::Refresh {
                aggregate,
                source: error.source,
            })?;
    }
    Ok(())
}

/// Reads the report covering the last `days` days of rollups; the totals
/// cover the whole raw table.
pub async fn gather(client: &Client, days: u32) -> Result<Report, ReportError> {
    let totals = store::rollups::totals(client).await.map_err(database)?;
    let window = i32::try_from(days).unwrap_or(i32::MAX);
    let daily = |rollup| store::rollups::daily(client, rollup, window);
    let tenant_daily = daily(Daily::Tenant).await.map_err(database)?;
    let model_daily = daily(Daily::Model).await.map_err(database)?;
    let usage_daily = daily(Daily::Usage).await.map_err(database)?;
    let to = Utc::now();
    let from = crate::attribution::utc_day(to - chrono::Duration::days(i64::from(days)));
    let cost_by_use_case = store::attribution::cost_by_label(client, from, to, None)
        .await
        .map_err(database)?;
    Ok(Report {
        days,
        totals,
        tenant_daily,
        model_daily,
        usage_daily,
        cost_by_use_case,
    })
}

/// The driver's error, as this command has always reported it.
fn database(error: store::DbError) -> ReportError {
    ReportError::Database(error.source)
}

impl Report {
    pub fn to_json(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// What a person wants to see first: the totals, cost per day, and the
    /// top tenants and models of the window, from the daily rollups.
    pub fn to_table(&self) -> String {
        const TOP: usize = 10;
        let mut out = self.totals_table();
        out.push_str(&format!(
            "\nper day (tenant_daily, last {} days)\n",
            self.days
        ));
        let per_day = sum_by(&self.tenant_daily, |row| vec![row.day.clone()]);
        out.push_str(&summary_table(&["day"], &per_day, usize::MAX));
        out.push_str(&format!(
            "\ntop tenants by cost (tenant_daily, last {} days)\n",
            self.days
        ));
        let per_tenant = sum_by(&self.tenant_daily, |row| {
            vec![row.tenant_id.clone().unwrap_or_default()]
        });
        out.push_str(&summary_table(&["tenant_id"], &by_cost(per_tenant), TOP));
        out.push_str(&format!(
            "\ntop models by cost (model_daily, last {} days)\n",
            self.days
        ));
        let per_model = sum_by(&self.model_daily, |row| {
            vec![
                row.provider.clone().unwrap_or_default(),
                row.model.clone().unwrap_or_default(),
            ]
        });
        out.push_str(&summary_table(
            &["provider", "model"],
            &by_cost(per_model),
            TOP,
        ));
        out.push_str(&crate::attribution::table(
            &self.cost_by_use_case,
            self.days,
        ));
        out
    }

    /// Every rollup row of the window: per tenant, per model, and per
    /// tenant and model, each per day.
    pub fn to_detail_table(&self) -> String {
        let mut out = self.totals_table();
        let sections: [(&str, &[DailyRow], &[&str]); 3] = [
            ("tenant_daily", &self.tenant_daily, &["day", "tenant_id"]),
            (
                "model_daily",
                &self.model_daily,
                &["day", "provider", "model"],
            ),
            (
                "usage_daily",
                &self.usage_daily,
                &["day", "tenant_id", "provider", "model"],
            ),
        ];
        for (name, rows, keys) in sections {
            out.push_str(&format!("\n{name} (last {} days)\n", self.days));
            let mut header: Vec<&str> = keys.to_vec();
            header.extend([
                "requests",
                "prompt",
                "completion",
                "total_tokens",
                "cost_usd",
                "unpriced",
            ]);
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    let mut cells = vec![row.day.clone()];
                    for value in [&row.tenant_id, &row.provider, &row.model]
                        .into_iter()
                        .flatten()
                    {
                        cells.push(value.clone());
                    }
                    cells.extend([
                        row.requests.to_string(),
                        row.prompt_tokens.to_string(),
                        row.completion_tokens.to_string(),
                        row.total_tokens.to_string(),
                        row.cost_usd.round_dp(6).to_string(),
                        row.unpriced_requests.to_string(),
                    ]);
                    cells
                })
                .collect();
            if body.is_empty() {
                out.push_str("(no rows)\n");
            } else {
                out.push_str(&render_table(&header, &body));
            }
        }
        out
    }

    fn totals_table(&self) -> String {
        let totals = &self.totals;
        let mut out = String::new();
        out.push_str("gateway_mode_audit\n");
        out.push_str(&render_table(
            &[
                "rows",
                "tenants",
                "models",
                "total_tokens",
                "cost_usd",
                "unpriced",
                "partly_priced",
                "first",
                "last",
            ],
            &[vec![
                totals.rows.to_string(),
                totals.tenants.to_string(),
                totals.models.to_string(),
                totals.total_tokens.to_string(),
                totals.cost_usd.round_dp(6).to_string(),
                totals.unpriced_rows.to_string(),
                totals.partly_priced_rows.to_string(),
                totals
                    .first_created_at
                    .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                totals
                    .last_created_at
                    .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
            ]],
        ));
        if !totals.unpriced_tokens.is_empty() {
            // Counted but left out of cost_usd: the book has no rate for them.
            out.push_str("\ntokens not priced (gateway_mode_audit.unpriced_tokens)\n");
            let rows: Vec<Vec<String>> = totals
                .unpriced_tokens
                .iter()
                .map(|(component, tokens)| vec![component.clone(), tokens.to_string()])
                .collect();
            out.push_str(&render_table(&["component", "tokens"], &rows));
        }
        out
    }
}

/// Sums daily rows into one row per key, keeping first-seen key order.
fn sum_by(
    rows: &[DailyRow],
    key: impl Fn(&DailyRow) -> Vec<String>,
) -> Vec<(Vec<String>, DailyRow)> {
    // A report spans thousands of tenant-days: find each key's sum through
    // an index rather than a scan, keeping first-seen order in `sums`.
    let mut position: std::collections::HashMap<Vec<String>, usize> =
        std::collections::HashMap::new();
    let mut sums: Vec<(Vec<String>, DailyRow)> = Vec::new();
    for row in rows {
        let k = key(row);
        match position.get(&k).and_then(|&i| sums.get_mut(i)) {
            Some((_, sum)) => {
                sum.requests += row.requests;
                sum.prompt_tokens += row.prompt_tokens;
                sum.completion_tokens += row.completion_tokens;
                sum.total_tokens += row.total_tokens;
                sum.cost_usd += row.cost_usd;
                sum.unpriced_requests += row.unpriced_requests;
            }
            None => {
                position.insert(k.clone(), sums.len());
                sums.push((k, row.clone()));
            }
        }
    }
    sums
}

fn by_cost(mut sums: Vec<(Vec<String>, DailyRow)>) -> Vec<(Vec<String>, DailyRow)> {
    sums.sort_by(|a, b| b.1.cost_usd.cmp(&a.1.cost_usd).then_with(|| a.0.cmp(&b.0)));
    sums
}

/// Keys, then the sums; rows past `limit` are folded into one "(N more)" row
/// so the total still adds up.
fn summary_table(keys: &[&str], sums: &[(Vec<String>, DailyRow)], limit: usize) -> String {
    if sums.is_empty() {
        return "(no rows)\n".into();
    }
    let mut header = keys.to_vec();
    header.extend([
        "requests",
        "total_tokens",
        "cost_usd",
        "cost_per_1k_tokens",
        "unpriced",
    ]);
    let cells = |key: Vec<String>, row: &DailyRow| {
        let per_1k = if row.total_tokens > 0 {
            (row.cost_usd * Decimal::from(1000) / Decimal::from(row.total_tokens)).round_dp(6)
        } else {
            Decimal::ZERO
        };
        let mut cells = key;
        cells.extend([
            row.requests.to_string(),
            row.total_tokens.to_string(),
            row.cost_usd.round_dp(6).to_string(),
            per_1k.to_string(),
            row.unpriced_requests.to_string(),
        ]);
        cells
    };
    let mut body: Vec<Vec<String>> = sums
        .iter()
        .take(limit)
        .map(|(key, row)| cells(key.clone(), row))
        .collect();
    if sums.len() > limit {
        let rest = &sums[limit..];
        let folded = sum_by(
            &rest.iter().map(|(_, row)| row.clone()).collect::<Vec<_>>(),
            |_| Vec::new(),
        );
        if let Some((_, row)) = folded.first() {
            let mut key = vec![format!("({} more)", rest.len())];
            key.resize(keys.len(), String::new());
            body.push(cells(key, row));
        }
    }
    render_table(&header, &body)
}

/// Left-aligned text columns, right-aligned numbers, padded to the widest cell.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let is_number = |cell: &str| !cell.is_empty() && cell.parse::<f64>().is_ok();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| {
                if is_number(cell) {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests;
