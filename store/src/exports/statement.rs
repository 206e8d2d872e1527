//! The monthly statement: what a finance team sends a tenant as a
//! chargeback. Per tenant, one line per provider, model and use case (the
//! value of one attribution label key, `(unlabelled)` without it) with the
//! requests, the tokens of each kind, the list and the billed cost; then the
//! tenant's total, and at the end the total of every tenant in the file.
//! CSV (a `line` column says `item`, `tenant_total` or `total`) or JSON.
//! Costs are the raw table's sums, unrounded, so the totals reconcile with
//! the ledger to the last decimal.

use chrono::{Datelike, NaiveDate};
use futures::{pin_mut, TryStreamExt};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWrite;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::{csv_line, midnight, next_month, ExportError, Output, LIST_COST_COLUMN};
use crate::attribution::UNLABELLED;
use crate::db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRequest {
    /// Any day of the month; the statement covers the whole UTC month.
    pub month: NaiveDate,
    pub tenant: Option<String>,
    /// The label key whose values are the use cases.
    pub use_case_key: String,
    pub format: StatementFormat,
}

impl StatementRequest {
    /// Parses `YYYY-MM`.
    pub fn parse_month(text: &str) -> Result<NaiveDate, ExportError> {
        NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
            .ok()
            .filter(|_| text.len() == 7)
            .ok_or_else(|| ExportError::Invalid(format!("month {text:?} is not YYYY-MM")))
    }
}

/// Sums of one statement line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    pub requests: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub unpriced_requests: i64,
    pub list_cost: Decimal,
    pub billed_cost: Decimal,
}

impl Amounts {
    fn add(&mut self, other: &Amounts) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.total_tokens += other.total_tokens;
        self.unpriced_requests += other.unpriced_requests;
        self.list_cost += other.list_cost;
        self.billed_cost += other.billed_cost;
    }

    fn fields(&self) -> [String; 10] {
        [
            self.requests.to_string(),
            self.input_tokens.to_string(),
            self.cache_read_tokens.to_string(),
            self.cache_write_tokens.to_string(),
            self.output_tokens.to_string(),
            self.reasoning_tokens.to_string(),
            self.total_tokens.to_string(),
            self.unpriced_requests.to_string(),
            self.list_cost.to_string(),
            self.billed_cost.to_string(),
        ]
    }
}

pub const CSV_COLUMNS: [&str; 18] = [
    "month",
    "currency",
    "line",
    "tenant_id",
    "provider",
    "model",
    "use_case",
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "unpriced_requests",
    "list_cost",
    "billed_cost",
    "use_case_label",
];

fn statement_sql() -> String {
    format!(
        "SELECT tenant_id::text AS tenant_id, provider::text AS provider, model::text AS model,
                COALESCE(labels ->> $4, $5) AS use_case, count(*)::BIGINT AS requests,
                sum(GREATEST(prompt_tokens - cached_prompt_tokens - cache_write_tokens, 0))::BIGINT
                    AS input_tokens,
                sum(cached_prompt_tokens)::BIGINT AS cache_read_tokens,
                sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
                sum(GREATEST(completion_tokens - reasoning_tokens, 0))::BIGINT AS output_tokens,
                sum(reasoning_tokens)::BIGINT AS reasoning_tokens,
                sum(total_tokens)::BIGINT AS total_tokens,
                count(*) FILTER (WHERE pricing_status = 'unpriced')::BIGINT AS unpriced_requests,
                sum({LIST_COST_COLUMN}) AS list_cost, sum(estimated_cost) AS billed_cost
         FROM gateway_mode_audit
         WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant_id = $3)
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2, 3, 4"
    )
}

/// One grouped row: its tenant, its line item (provider, model, use case)
/// and its amounts.
fn statement_row(
    row: &tokio_postgres::Row,
) -> Result<(String, [String; 3], Amounts), tokio_postgres::Error> {
    let amounts = Amounts {
        requests: row.try_get("requests")?,
        input_tokens: row.try_get("input_tokens")?,
        cache_read_tokens: row.try_get("cache_read_tokens")?,
        cache_write_tokens: row.try_get("cache_write_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        reasoning_tokens: row.try_get("reasoning_tokens")?,
        total_tokens: row.try_get("total_tokens")?,
        unpriced_requests: row.try_get("unpriced_requests")?,
        list_cost: row
            .try_get::<_, Option<Decimal>>("list_cost")?
            .unwrap_or_default(),
        billed_cost: row
            .try_get::<_, Option<Decimal>>("billed_cost")?
            .unwrap_or_default(),
    };
    let item = [
        row.try_get("provider")?,
        row.try_get("model")?,
        row.try_get("use_case")?,
    ];
    Ok((row.try_get("tenant_id")?, item, amounts))
}

/// Writes the statement, streaming; returns the total of every tenant.
pub async fn write_statement<W: AsyncWrite + Unpin>(
    client: &impl GenericClient,
    request: &StatementRequest,
    out: &mut W,
) -> Result<Amounts, ExportError> {
    let start = request.month.with_day0(0).unwrap_or(request.month);
    let month = start.format("%Y-%m").to_string();
    let from = midnight(start);
    let to = midnight(next_month(start));
    let tenant = request.tenant.as_deref();
    let params: [&(dyn ToSql + Sync); 5] =
        [&from, &to, &tenant, &request.use_case_key, &UNLABELLED];
    let rows = client
        .query_raw(&statement_sql(), params)
        .await
        .map_err(db("reading usage for the statement"))?;
    pin_mut!(rows);
    let mut writer = Writer {
        output: Output::new(out),
        format: request.format,
        month,
        key: request.use_case_key.clone(),
        current: None,
        total: Amounts::default(),
    };
    writer.start().await?;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db("reading usage for the statement"))?
    {
        let (tenant, item, amounts) =
            statement_row(&row).map_err(db("reading usage for the statement"))?;
        writer.item(tenant, &item, &amounts).await?;
    }
    writer.finish().await
}

struct Writer<'a, W> {
    output: Output<'a, W>,
    format: StatementFormat,
    month: String,
    key: String,
    /// The tenant being written and its running total.
    current: Option<(String, Amounts)>,
    total: Amounts,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    fn csv(&self, line: &str, tenant: &str, item: &[String; 3], amounts: &Amounts) -> String {
        let mut fields: Vec<String> =
            vec![self.month.clone(), "USD".into(), line.into(), tenant.into()];
        fields.extend(item.iter().cloned());
        fields.extend(amounts.fields());
        fields.push(self.key.clone());
        csv_line(&fields)
    }

    async fn start(&mut self) -> Result<(), ExportError> {
        let opening = match self.format {
            StatementFormat::Csv => csv_line(&CSV_COLUMNS),
            StatementFormat::Json => format!(
                "{{\"month\":{},\"currency\":\"USD\",\"use_case_label\":{},\"tenants\":[",
                serde_json::to_string(&self.month)?,
                serde_json::to_string(&self.key)?
            ),
        };
        self.output.push(&opening).await
    }

    async fn item(
        &mut self,
        tenant: String,
        item: &[String; 3],
        amounts: &Amounts,
    ) -> Result<(), ExportError> {
        let first_of_tenant = self.current.as_ref().map(|(t, _)| t) != Some(&tenant);
        if first_of_tenant {
            let had_tenant = self.current.is_some();
            self.close_tenant().await?;
            if self.format == StatementFormat::Json {
                let opening = format!(
                    "{}{{\"tenant_id\":{},\"lines\":[",
                    if had_tenant { "," } else { "" },
                    serde_json::to_string(&tenant)?
                );
                self.output.push(&opening).await?;
            }
            self.current = Some((tenant.clone(), Amounts::default()));
        }
        if let Some((_, sum)) = self.current.as_mut() {
            sum.add(amounts);
        }
        self.total.add(amounts);
        let text = match self.format {
            StatementFormat::Csv => self.csv("item", &tenant, item, amounts),
            StatementFormat::Json => {
                let mut line = serde_json::to_value(amounts)?;
                if let Some(object) = line.as_object_mut() {
                    object.insert("provider".into(), json!(item[0]));
                    object.insert("model".into(), json!(item[1]));
                    object.insert("use_case".into(), json!(item[2]));
                }
                format!(
                    "{}{}",
                    if first_of_tenant { "" } else { "," },
                    serde_json::to_string(&line)?
                )
            }
        };
        self.output.push(&text).await
    }

    async fn close_tenant(&mut self) -> Result<(), ExportError> {
        let Some((tenant, sum)) = self.current.take() else {
            return Ok(());
        };
        let text = match self.format {
            StatementFormat::Csv => self.csv("tenant_total", &tenant, &Default::default(), &sum),
            StatementFormat::Json => format!("],\"total\":{}}}", serde_json::to_string(&sum)?),
        };
        self.output.push(&text).await
    }

    async fn finish(mut self) -> Result<Amounts, ExportError> {
        self.close_tenant().await?;
        let text = match self.format {
            StatementFormat::Csv => self.csv("total", "", &Default::default(), &self.total),
            StatementFormat::Json => {
                format!("],\"total\":{}}}\n", serde_json::to_string(&self.total)?)
            }
        };
        self.output.push(&text).await?;
        self.output.finish().await?;
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly() {
        let month = StatementRequest::parse_month("2026-02").expect("month");
        assert_eq!(month, NaiveDate::from_ymd_opt(2026, 2, 1).expect("day"));
        for bad in ["2026-2", "2026-13", "2026-02-01", "", "abcd-ef"] {
            assert!(StatementRequest::parse_month(bad).is_err(), "{bad}");
        }
    }
}
