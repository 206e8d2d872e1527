//! Budget definitions as the processor takes them: `processor budgets
//! apply`, which seeds or syncs budgets from a TOML file, upserting by name
//! (the SQL is the `store` crate's). The batch transaction reads the
//! definitions through the store too (see [`crate::budget_spend`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use ledger::Budget;
use serde_json::Value;
use uuid::Uuid;

pub use store::ApplyReport;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Create or update the budgets of a TOML file ([[budgets]] tables),
    /// matched by name, in one transaction.
    Apply {
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Also delete the budgets the file does not name.
        #[arg(long)]
        prune: bool,
        /// Only validate the file.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetsError {
    #[error(transparent)]
    Database(#[from] store::DbError),
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
    #[error(transparent)]
    Connect(#[from] super::ConnectError),
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

/// Upserts `budgets` by name in one transaction; with `prune`, deletes the
/// budgets the file does not name. A changed scope, period or time zone
/// resets the budget's stored spend, which the next batch rebuilds from the
/// audit table.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    budgets: &[Budget],
    prune: bool,
) -> Result<ApplyReport, BudgetsError> {
    Ok(store::budgets::apply(client, budgets, prune).await?)
}

/// `budgets apply`: validates the file, then (unless a dry run) applies it and prints what
/// became of each budget.
pub async fn run(config: &Config, command: &BudgetsCommand) -> Result<(), BudgetsError> {
    let BudgetsCommand::Apply {
        file,
        prune,
        dry_run,
    } = command;
    let parsed = read_file(file)?;
    if *dry_run {
        println!("{}: {} valid budget(s)", file.display(), parsed.len());
        return Ok(());
    }
    let mut client = super::connect_verified(&config.database).await?;
    let report = apply(&mut client, &parsed, *prune).await?;
    for (what, names) in [
        ("created", &report.created),
        ("updated", &report.updated),
        ("unchanged", &report.unchanged),
        ("deleted", &report.deleted),
    ] {
        for name in names {
            println!("{what:<10} {name}");
        }
    }
    Ok(())
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
            period = "hourly"
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
}
