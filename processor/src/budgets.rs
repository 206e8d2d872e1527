//! The `budgets` table as the processor sees it: loading the definitions
//! (every batch transaction does, so an edit applies to the next batch
//! without a restart), and `processor budgets apply`, which seeds or
//! syncs budgets from a TOML file, upserting by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ledger::budget_row::{BudgetColumns, RESET_SPEND_IF_SCOPE_CHANGED};
use ledger::Budget;
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

const SELECT_BUDGETS: &str = "
SELECT id, name, tenant_id, provider, model, label_key, label_value, period, timezone,
       amount_usd, thresholds, hard_limit
FROM budgets";

const UPSERT_BY_NAME: &str = "
INSERT INTO budgets (id, name, tenant_id, provider, model, label_key, label_value, period,
                     timezone, amount_usd, thresholds, hard_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (name) DO UPDATE SET
    tenant_id = EXCLUDED.tenant_id, provider = EXCLUDED.provider, model = EXCLUDED.model,
    label_key = EXCLUDED.label_key, label_value = EXCLUDED.label_value,
    period = EXCLUDED.period, timezone = EXCLUDED.timezone, amount_usd = EXCLUDED.amount_usd,
    thresholds = EXCLUDED.thresholds, hard_limit = EXCLUDED.hard_limit, updated_at = now()
WHERE (budgets.tenant_id, budgets.provider, budgets.model, budgets.label_key,
       budgets.label_value, budgets.period, budgets.timezone, budgets.amount_usd,
       budgets.thresholds, budgets.hard_limit)
      IS DISTINCT FROM
      (EXCLUDED.tenant_id, EXCLUDED.provider, EXCLUDED.model, EXCLUDED.label_key,
       EXCLUDED.label_value, EXCLUDED.period, EXCLUDED.timezone, EXCLUDED.amount_usd,
       EXCLUDED.thresholds, EXCLUDED.hard_limit)
RETURNING id, (xmax = 0) AS inserted";

#[derive(Debug, thiserror::Error)]
pub enum BudgetsError {
    #[error("database error while {step}: {source}")]
    Database {
        step: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("cannot read the budgets file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the budgets file {path} is not valid TOML: {source}")]
    Toml {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("the budgets file {path} has problems:\n{}", .problems.join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> BudgetsError {
    move |source| BudgetsError::Database { step, source }
}

/// Every budget whose row describes a valid budget. A row the API would
/// not have written (say, an unknown time zone typed in by hand) is
/// skipped with a warning instead of stopping ingestion.
pub async fn load(client: &impl GenericClient) -> Result<Vec<Budget>, tokio_postgres::Error> {
    let rows = client.query(SELECT_BUDGETS, &[]).await?;
    Ok(rows.iter().filter_map(budget_from_row).collect())
}

/// The budget a `budgets` row describes (columns as in `SELECT_BUDGETS`).
pub fn budget_from_row(row: &Row) -> Option<Budget> {
    ledger::budget_row::budget_from_row(row)
        .map_err(|problem| tracing::warn!(problem, "skipping a budgets row"))
        .ok()
}

/// The shape of a budgets file: `[[budgets]]` tables in the API's JSON
/// shape (see docs/design.md, "Budgets and alerts").
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Budget>, BudgetsError> {
    let shown = path.display().to_string();
    let document: toml::Table = toml::from_str(text).map_err(|source| BudgetsError::Toml {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let mut problems = Vec::new();
    for key in document.keys().filter(|key| *key != "budgets") {
        problems.push(format!(
            "unknown top-level key {key:?}; the file holds [[budgets]] tables"
        ));
    }
    let entries: Vec<Value> = match document.get("budgets") {
        None => Vec::new(),
        Some(value) => match serde_json::to_value(value) {
            Ok(Value::Array(entries)) => entries,
            _ => {
                problems.push("budgets must be an array of tables ([[budgets]])".into());
                Vec::new()
            }
        },
    };
    let mut budgets = Vec::with_capacity(entries.len());
    let mut names = BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        match Budget::from_json(Uuid::now_v7(), entry) {
            Ok(budget) => {
                if !names.insert(budget.name.clone()) {
                    problems.push(format!(
                        "budgets[{index}]: name {:?} is used twice",
                        budget.name
                    ));
                }
                budgets.push(budget);
            }
            Err(errors) => problems.extend(
                errors
                    .into_iter()
                    .map(|error| format!("budgets[{index}].{error}")),
            ),
        }
    }
    if problems.is_empty() {
        Ok(budgets)
    } else {
        Err(BudgetsError::Invalid {
            path: shown,
            problems,
        })
    }
}

/// What `apply` did, by budget name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
}

/// Upserts `budgets` by name in one transaction; with `prune`, deletes the
/// budgets the file does not name. A changed scope, period or time zone
/// resets the budget's stored spend, which the next batch rebuilds from the
/// audit table.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    budgets: &[Budget],
    prune: bool,
) -> Result<ApplyReport, BudgetsError> {
    let transaction = client.transaction().await.map_err(db("beginning"))?;
    let existing: BTreeMap<String, Uuid> = transaction
        .query("SELECT name, id FROM budgets FOR UPDATE", &[])
        .await
        .map_err(db("reading budgets"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut report = ApplyReport::default();
    for budget in budgets {
        let id = existing.get(&budget.name).copied().unwrap_or(budget.id);
        let columns = BudgetColumns::of(budget);
        transaction
            .execute(RESET_SPEND_IF_SCOPE_CHANGED, &columns.scope_params(&id))
            .await
            .map_err(db("resetting spend"))?;
        let returned = transaction
            .query_opt(UPSERT_BY_NAME, &columns.params(&id, budget))
            .await
            .map_err(db("upserting a budget"))?;
        let list = match returned {
            None => &mut report.unchanged,
            Some(row) if row.get::<_, bool>("inserted") => &mut report.created,
            Some(_) => &mut report.updated,
        };
        list.push(budget.name.clone());
    }
    if prune {
        let keep: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
        let rows = transaction
            .query(
                "DELETE FROM budgets WHERE NOT (name = ANY($1)) RETURNING name",
                &[&keep],
            )
            .await
            .map_err(db("pruning budgets"))?;
        report.deleted = rows.iter().map(|row| row.get(0)).collect();
    }
    transaction.commit().await.map_err(db("committing"))?;
    Ok(report)
}

/// Reads and validates a budgets file.
pub fn read_file(path: &Path) -> Result<Vec<Budget>, BudgetsError> {
    let text = std::fs::read_to_string(path).map_err(|source| BudgetsError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    parse_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::budget::TenantScope;

    #[test]
    fn parses_a_budgets_file_and_reports_every_problem_with_its_place() {
        let path = Path::new("budgets.toml");
        let budgets = parse_file(
            path,
            r#"
            [[budgets]]
            name = "acme-monthly"
            tenant_id = "acme"
            period = "monthly"
            amount_usd = "1000.00"

            [[budgets]]
            name = "support-bot-daily"
            tenant_id = "*"
            period = "daily"
            timezone = "Europe/Berlin"
            amount_usd = 50
            thresholds = [80, 100, 150]
            hard_limit = true
            label = { key = "use_case", value = "support-bot" }
            "#,
        )
        .expect("valid file");
        assert_eq!(budgets.len(), 2);
        assert_eq!(budgets[1].scope.tenant, TenantScope::Every);
        assert_eq!(budgets[1].thresholds, vec![80, 100, 150]);
        assert_eq!(
            budgets[1].scope.label.as_ref().map(|l| l.value.as_str()),
            Some("support-bot")
        );

        let error = parse_file(
            path,
            r#"
            owner = "finops"
            [[budgets]]
            name = "a"
            tenant_id = "acme"
            period = "weekly"
            amount_usd = "10"
            [[budgets]]
            name = "a"
            tenant_id = "acme"
            period = "daily"
            "#,
        )
        .expect_err("invalid file")
        .to_string();
        for fragment in [
            "unknown top-level key \"owner\"",
            "budgets[0].period",
            "budgets[1].amount_usd: is required",
        ] {
            assert!(error.contains(fragment), "{fragment} missing from {error}");
        }
    }

    #[test]
    fn columns_store_every_tenant_as_a_star() {
        let budget = Budget::from_json(
            Uuid::nil(),
            &serde_json::json!({"name": "x", "tenant_id": "*", "period": "daily", "amount_usd": "1"}),
        )
        .expect("valid");
        let columns = BudgetColumns::of(&budget);
        assert_eq!(columns.tenant_id, "*");
        assert_eq!(columns.thresholds, vec![50, 75, 90, 100]);
        assert_eq!(columns.timezone, "UTC");
    }
}
