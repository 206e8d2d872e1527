//! `processor migrate`: applies the SQL migrations the database does not have yet and says what
//! each one did (the migrations themselves, and the check every other command makes, are
//! [`crate::migrate`]'s).

use std::path::PathBuf;

use clap::Args;

use crate::config::Config;
use crate::database::{self, DatabaseError};
use crate::migrate::{self, MigrateError, MigrationStatus};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Read V<N>__name.sql files from this directory instead of the
    /// ones built into the binary.
    #[arg(long, value_name = "DIR")]
    sql_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateCommandError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Applies what is missing, one line per migration, then a summary.
pub async fn run(config: &Config, args: &MigrateArgs) -> Result<(), MigrateCommandError> {
    let migrations = match &args.sql_dir {
        Some(dir) => migrate::from_dir(dir)?,
        None => migrate::embedded()?,
    };
    let mut client = database::connect(&config.database).await?;
    let outcomes = migrate::apply(&mut client, &migrations).await?;
    let mut applied = 0;
    let mut skipped = 0;
    for outcome in &outcomes {
        match &outcome.status {
            MigrationStatus::Applied => {
                applied += 1;
                println!("applied          {}", outcome.name);
            }
            MigrationStatus::AlreadyApplied => {
                println!("already applied  {}", outcome.name);
            }
            MigrationStatus::Skipped { left_out } => {
                skipped += 1;
                println!("skipped          {}", outcome.name);
                println!(
                    "  this database runs the Apache-licensed edition of TimescaleDB \
                     (timescaledb.license = apache), which has no continuous aggregates, \
                     compression or job policies; left out:"
                );
                for feature in left_out {
                    println!("    - {feature}");
                }
                println!(
                    "  the audit table, offsets and budgets work as usual; reports must read \
                     gateway_mode_audit directly (the guide's queries do; sql/reports/ and \
                     `processor report` need the rollups). Run `processor migrate` again on a \
                     Community-edition TimescaleDB to add them."
                );
            }
        }
    }
    println!(
        "{applied} migration(s) applied, {skipped} skipped, {} already up to date",
        outcomes.len() - applied - skipped
    );
    Ok(())
}
