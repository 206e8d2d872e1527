//! The FOCUS export: a cost and usage dataset in the FinOps Foundation's
//! FOCUS 1.0 format, which a FinOps tool loads without cleaning.
//!
//! One row per charge period (a UTC day) × tenant (`SubAccountId`) ×
//! provider × model × token type (`SkuMeter`: input, cache read, cache
//! write, output, and reasoning where the price book prices it apart), in
//! tokens (`ConsumedUnit = Tokens`), priced per million tokens
//! (`PricingUnit = 1M Tokens`). A group's stored cost is divided over its
//! token types by [`super::split`], so the rows' costs add up to the raw
//! table's `estimated_cost` exactly. Unpriced usage is kept with its tokens
//! at zero cost and `x_PricingStatus = unpriced`.
//!
//! Rows are grouped by the attribution labels too (`Tags`, and one
//! `x_Label_<key>` column per key), and by pricing status. Columns from
//! later FOCUS versions that are written too: `SkuMeter`,
//! `ServiceSubcategory` (1.1), `BillingAccountType`, `SubAccountType`,
//! `PricingCurrency` (1.2).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use futures::{pin_mut, TryStreamExt};
use ledger::PriceBook;
use rust_decimal::Decimal;
use tokio::io::AsyncWrite;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::split::{split, Tokens};
use super::{csv_line, midnight, next_month, ExportError, Output, LIST_COST_COLUMN};
use crate::db;

/// The FOCUS columns, in the order written; `x_` columns follow, then one
/// `x_Label_<key>` per attribution key.
pub const COLUMNS: [&str; 52] = [
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
    "x_TokenType",
    "x_PricingStatus",
    "x_Provider",
    "x_Model",
];

/// The `x_` column that carries the number of requests of the row's group
/// on its first token-type row only, so summing the column counts each
/// request once.
pub const REQUESTS_COLUMN: &str = "x_Requests";

/// Who the dataset's billing account is: the deployment of tokenledger
/// that attributes the usage.
pub const BILLING_ACCOUNT: &str = "tokenledger";

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FocusRequest {
    /// First UTC day, inclusive.
    pub from: NaiveDate,
    /// Last UTC day, exclusive (FOCUS periods are half-open too).
    pub to: NaiveDate,
    pub tenant: Option<String>,
    /// The attribution label keys (`Tags` and `x_Label_<key>`).
    pub label_keys: Vec<String>,
}

impl FocusRequest {
    pub fn validate(&self) -> Result<(), ExportError> {
        if self.to <= self.from {
            return Err(ExportError::Invalid(format!(
                "to ({}) must be after from ({}); to is exclusive",
                self.to, self.from
            )));
        }
        if (self.to - self.from).num_days() > 366 {
            return Err(ExportError::Invalid(
                "a FOCUS export covers at most 366 days; export longer ranges in parts".into(),
            ));
        }
        Ok(())
    }
}

/// What an export wrote, for the caller's log and for reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows: u64,
    pub billed_cost: Decimal,
    pub list_cost: Decimal,
    pub tokens: i64,
}

fn grouped_sql() -> String {
    format!(
        "SELECT time_bucket(INTERVAL '1 day', created_at) AS day, tenant_id::text AS tenant,
                provider::text AS provider, model::text AS model, pricing_status AS status,
                attribution, count(*)::BIGINT AS requests,
                sum(GREATEST(prompt_tokens - cached_prompt_tokens - cache_write_tokens, 0))::BIGINT
                    AS input_tokens,
                sum(cached_prompt_tokens)::BIGINT AS cache_read_tokens,
                sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
                sum(GREATEST(completion_tokens - reasoning_tokens, 0))::BIGINT AS output_tokens,
                sum(reasoning_tokens)::BIGINT AS reasoning_tokens, sum(estimated_cost) AS cost,
                sum({LIST_COST_COLUMN}) AS list_cost
         FROM (
             SELECT audit.*,
                    COALESCE((SELECT jsonb_object_agg(key, audit.labels ->> key)
                              FROM unnest($4::text[]) AS key
                              WHERE audit.labels ? key), '{{}}'::jsonb)::text AS attribution
             FROM gateway_mode_audit AS audit
             WHERE created_at >= $1 AND created_at < $2
               AND ($3::text IS NULL OR tenant_id = $3)
         ) AS usage
         GROUP BY 1, 2, 3, 4, 5, 6
         ORDER BY 1, 2, 3, 4, 5, 6"
    )
}

/// How a provider id is shown in `ProviderName`, `PublisherName` and
/// `ServiceName`.
pub fn provider_display(provider: &str) -> String {
    match provider.to_ascii_lowercase().as_str() {
        "openai" => "OpenAI".into(),
        "anthropic" => "Anthropic".into(),
        "google" | "gemini" | "vertex" | "vertex_ai" => "Google".into(),
        "bedrock" | "aws" => "AWS".into(),
        "azure" | "azure_openai" => "Microsoft".into(),
        "mistral" => "Mistral AI".into(),
        "cohere" => "Cohere".into(),
        _ => provider.to_owned(),
    }
}

/// A decimal as the validator reads decimals: always with a point.
fn decimal_text(value: Decimal) -> String {
    let text = value.normalize().to_string();
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The header line for `label_keys`.
pub fn header(label_keys: &[String]) -> String {
    let mut columns: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    columns.push(REQUESTS_COLUMN.to_owned());
    columns.extend(label_keys.iter().map(|key| format!("x_Label_{key}")));
    csv_line(&columns)
}

/// A group's attribution labels as the query aggregates them. Unreadable
/// labels fail the export: an empty map would move the group's cost to the
/// unlabelled value without a word.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ExportError> {
    serde_json::from_str(text).map_err(|error| ExportError::Labels(error.to_string()))
}

/// A grouped row as read, its labels still JSON text.
struct Read {
    group: Group,
    labels_text: String,
}

fn group_of(row: &tokio_postgres::Row) -> Result<Read, tokio_postgres::Error> {
    Ok(Read {
        group: Group {
            day: row.try_get("day")?,
            tenant: row.try_get("tenant")?,
            provider: row.try_get("provider")?,
            model: row.try_get("model")?,
            status: row.try_get("status")?,
            labels: Default::default(),
            requests: row.try_get("requests")?,
            tokens: Tokens {
                input: row.try_get("input_tokens")?,
                cache_read: row.try_get("cache_read_tokens")?,
                cache_write: row.try_get("cache_write_tokens")?,
                output: row.try_get("output_tokens")?,
                reasoning: row.try_get("reasoning_tokens")?,
            },
            cost: row
                .try_get::<_, Option<Decimal>>("cost")?
                .unwrap_or_default(),
            list_cost: row
                .try_get::<_, Option<Decimal>>("list_cost")?
                .unwrap_or_default(),
        },
        labels_text: row.try_get("attribution")?,
    })
}

/// Writes the dataset for `request` to `out`, streaming.
pub async fn write_focus<W: AsyncWrite + Unpin>(
    client: &impl GenericClient,
    book: &PriceBook,
    request: &FocusRequest,
    out: &mut W,
) -> Result<ExportSummary, ExportError> {
    request.validate()?;
    let from = midnight(request.from);
    let to = midnight(request.to);
    let tenant = request.tenant.as_deref();
    let params: [&(dyn ToSql + Sync); 4] = [&from, &to, &tenant, &request.label_keys];
    let rows = client
        .query_raw(&grouped_sql(), params)
        .await
        .map_err(db("reading usage for the FOCUS export"))?;
    pin_mut!(rows);
    let mut output = Output::new(out);
    output.push(&header(&request.label_keys)).await?;
    let mut summary = ExportSummary::default();
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(db("reading usage for the FOCUS export"))?
    {
        let group = group_of(&row).map_err(db("reading usage for the FOCUS export"))?;
        let group = Group {
            labels: parse_labels(&group.labels_text)?,
            ..group.group
        };
        for line in group.lines(book, &request.label_keys, &mut summary) {
            output.push(&line).await?;
        }
    }
    output.finish().await?;
    Ok(summary)
}

/// One day's usage of a tenant, provider, model, pricing status and label
/// set.
struct Group {
    day: DateTime<Utc>,
    tenant: String,
    provider: String,
    model: String,
    status: String,
    labels: BTreeMap<String, String>,
    requests: i64,
    tokens: Tokens,
    cost: Decimal,
    list_cost: Decimal,
}

impl Group {
    fn lines(
        &self,
        book: &PriceBook,
        label_keys: &[String],
        summary: &mut ExportSummary,
    ) -> Vec<String> {
        let parts = split(
            book,
            &self.provider,
            &self.model,
            self.day,
            &self.tokens,
            self.cost,
            self.list_cost,
        );
        let day = self.day.date_naive();
        let billing_start = midnight(day.with_day0(0).unwrap_or(day));
        let billing_end = midnight(next_month(day));
        let charge_end = self.day + Duration::days(1);
        let shown = provider_display(&self.provider);
        let tags = serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into());
        let resource = format!("{}/{}", self.provider, self.model);
        let entry = book
            .resolve(&self.provider, &self.model, self.day)
            .ok()
            .map(|resolution| resolution.entry.id());
        let pricing_category = match self.status.as_str() {
            "priced" => "Standard",
            _ => "Other",
        };
        let mut lines = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let sku = format!("{resource}/{}", part.token_type.as_str());
            let sku_price = entry.as_ref().map_or_else(
                || sku.clone(),
                |id| format!("{id}/{}", part.token_type.as_str()),
            );
            let cost = decimal_text(part.cost);
            let quantity = Decimal::from(part.quantity);
            let pricing_quantity = quantity / Decimal::from(1_000_000);
            let mut fields: Vec<String> = vec![
                String::new(),            // AvailabilityZone
                cost.clone(),             // BilledCost
                BILLING_ACCOUNT.into(),   // BillingAccountId
                BILLING_ACCOUNT.into(),   // BillingAccountName
                "Organization".into(),    // BillingAccountType
                "USD".into(),             // BillingCurrency
                timestamp(billing_end),   // BillingPeriodEnd
                timestamp(billing_start), // BillingPeriodStart
                "Usage".into(),           // ChargeCategory
                String::new(),            // ChargeClass
                format!(
                    "{shown} {} {}",
                    self.model,
                    part.token_type.meter().to_lowercase()
                ),
                "Usage-Based".into(),             // ChargeFrequency
                timestamp(charge_end),            // ChargePeriodEnd
                timestamp(self.day),              // ChargePeriodStart
                String::new(),                    // CommitmentDiscountCategory
                String::new(),                    // CommitmentDiscountId
                String::new(),                    // CommitmentDiscountName
                String::new(),                    // CommitmentDiscountStatus
                String::new(),                    // CommitmentDiscountType
                decimal_text(quantity),           // ConsumedQuantity
                "Tokens".into(),                  // ConsumedUnit
                cost.clone(),                     // ContractedCost
                String::new(),                    // ContractedUnitPrice
                cost.clone(),                     // EffectiveCost
                shown.clone(),                    // InvoiceIssuerName
                decimal_text(part.list_cost),     // ListCost
                String::new(),                    // ListUnitPrice
                pricing_category.into(),          // PricingCategory
                "USD".into(),                     // PricingCurrency
                decimal_text(pricing_quantity),   // PricingQuantity
                "1M Tokens".into(),               // PricingUnit
                shown.clone(),                    // ProviderName
                shown.clone(),                    // PublisherName
                String::new(),                    // RegionId
                String::new(),                    // RegionName
                resource.clone(),                 // ResourceId
                self.model.clone(),               // ResourceName
                "Model".into(),                   // ResourceType
                "AI and Machine Learning".into(), // ServiceCategory
                format!("{shown} API"),           // ServiceName
                "Generative AI".into(),           // ServiceSubcategory
                sku,                              // SkuId
                part.token_type.meter().into(),   // SkuMeter
                sku_price,                        // SkuPriceId
                self.tenant.clone(),              // SubAccountId
                self.tenant.clone(),              // SubAccountName
                "Tenant".into(),                  // SubAccountType
                tags.clone(),                     // Tags
                part.token_type.as_str().into(),  // x_TokenType
                self.status.clone(),              // x_PricingStatus
                self.provider.clone(),            // x_Provider
                self.model.clone(),               // x_Model
            ];
            fields.push(if index == 0 {
                self.requests.to_string()
            } else {
                "0".into()
            });
            fields.extend(
                label_keys
                    .iter()
                    .map(|key| self.labels.get(key).cloned().unwrap_or_default()),
            );
            summary.rows += 1;
            summary.billed_cost += part.cost;
            summary.list_cost += part.list_cost;
            summary.tokens += part.quantity;
            lines.push(csv_line(&fields));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_labels_fail_the_export() {
        assert!(matches!(
            parse_labels("{\"use_case\": 1}"),
            Err(ExportError::Labels(_))
        ));
        assert!(matches!(
            parse_labels("not json"),
            Err(ExportError::Labels(_))
        ));
        assert_eq!(
            parse_labels("{\"use_case\": \"chat\"}").expect("labels"),
            [("use_case".to_owned(), "chat".to_owned())].into()
        );
    }

    #[test]
    fn every_row_has_a_field_per_header_column() {
        let keys = vec!["use_case".to_owned(), "team".to_owned()];
        let group = Group {
            day: midnight(NaiveDate::from_ymd_opt(2026, 1, 31).expect("day")),
            tenant: "acme, inc".into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            status: "priced".into(),
            labels: [("use_case".to_owned(), "chat".to_owned())].into(),
            requests: 3,
            tokens: Tokens {
                input: 10,
                output: 5,
                ..Tokens::default()
            },
            cost: Decimal::new(3, 10),
            list_cost: Decimal::new(3, 10),
        };
        let mut summary = ExportSummary::default();
        let lines = group.lines(
            &PriceBook::builtin().expect("the built-in book parses"),
            &keys,
            &mut summary,
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(summary.billed_cost, Decimal::new(3, 10));
        let header_fields = header(&keys).split(',').count();
        for line in &lines {
            // the tenant and the tags are quoted: they hold commas or quotes
            assert!(line.contains("\"acme, inc\""), "{line}");
            assert!(
                line.contains("2026-02-01T00:00:00Z,2026-01-01T00:00:00Z"),
                "{line}"
            );
            let unquoted = line
                .replace("\"acme, inc\"", "x")
                .replace("\"{\"\"use_case\"\":\"\"chat\"\"}\"", "x");
            assert_eq!(unquoted.split(',').count(), header_fields, "{line}");
        }
        assert_eq!(decimal_text(Decimal::new(1200, 2)), "12.0");
        assert_eq!(decimal_text(Decimal::ZERO), "0.0");
    }
}
