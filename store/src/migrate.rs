//! Schema migrations: the `sql/V<N>__name.sql` files, embedded in the
//! binary or read from a directory, applied in version order and recorded
//! with their checksum in `tokenledger_schema_migrations`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// First line that makes a file run outside a transaction, statement by
/// statement (see sql/README.md).
pub const NO_TRANSACTION_MARKER: &str = "-- tokenledger:no-transaction";

/// The migrations compiled into the binary. A unit test compares this list
/// with the files in sql/, so adding a file without listing it here fails.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("V1__audit.sql", include_str!("../../sql/V1__audit.sql")),
    ("V2__rollups.sql", include_str!("../../sql/V2__rollups.sql")),
    ("V3__budgets.sql", include_str!("../../sql/V3__budgets.sql")),
    (
        "V4__alert_delivery.sql",
        include_str!("../../sql/V4__alert_delivery.sql"),
    ),
    (
        "V5__refresh_windows.sql",
        include_str!("../../sql/V5__refresh_windows.sql"),
    ),
    (
        "V6__unbounded_amounts.sql",
        include_str!("../../sql/V6__unbounded_amounts.sql"),
    ),
    (
        "V7__tenant_idempotency.sql",
        include_str!("../../sql/V7__tenant_idempotency.sql"),
    ),
    (
        "V8__cost_provenance.sql",
        include_str!("../../sql/V8__cost_provenance.sql"),
    ),
    (
        "V9__use_case_rollup.sql",
        include_str!("../../sql/V9__use_case_rollup.sql"),
    ),
    (
        "V10__unpriced_tokens.sql",
        include_str!("../../sql/V10__unpriced_tokens.sql"),
    ),
    (
        "V11__call_identity_and_log_marks.sql",
        include_str!("../../sql/V11__call_identity_and_log_marks.sql"),
    ),
    (
        "V12__model_budget_names.sql",
        include_str!("../../sql/V12__model_budget_names.sql"),
    ),
    (
        "V13__reprice_runs.sql",
        include_str!("../../sql/V13__reprice_runs.sql"),
    ),
    (
        "V14__optimization_rollup.sql",
        include_str!("../../sql/V14__optimization_rollup.sql"),
    ),
    (
        "V15__budget_reservations.sql",
        include_str!("../../sql/V15__budget_reservations.sql"),
    ),
    (
        "V16__provider_reports.sql",
        include_str!("../../sql/V16__provider_reports.sql"),
    ),
    (
        "V18__budget_scopes_and_rolling_periods.sql",
        include_str!("../../sql/V18__budget_scopes_and_rolling_periods.sql"),
    ),
    (
        "V19__budget_scopes_per_user_and_key.sql",
        include_str!("../../sql/V19__budget_scopes_per_user_and_key.sql"),
    ),
    (
        "V20__optimization_rollup_fillfactor.sql",
        include_str!("../../sql/V20__optimization_rollup_fillfactor.sql"),
    ),
    (
        "V21__optimization_rollup_pending.sql",
        include_str!("../../sql/V21__optimization_rollup_pending.sql"),
    ),
    (
        "V22__attribution_rollup_fillfactor.sql",
        include_str!("../../sql/V22__attribution_rollup_fillfactor.sql"),
    ),
];

/// The advisory lock `apply` holds for the whole run ("tokenled" in ASCII):
/// two `processor migrate` runs, say from two deployments starting at once,
/// apply one after the other instead of racing the same DDL.
pub const MIGRATE_LOCK_KEY: i64 = 0x746f_6b65_6e6c_6564;

const CREATE_HISTORY_TABLE: &str = "
CREATE TABLE IF NOT EXISTS tokenledger_schema_migrations (
    version    INTEGER     PRIMARY KEY,
    name       TEXT        NOT NULL,
    checksum   TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file name {name:?} does not follow V<N>__name.sql")]
    BadFileName { name: String },
    #[error("migrations {first} and {second} share version {version}")]
    DuplicateVersion {
        version: i32,
        first: String,
        second: String,
    },
    #[error("cannot read migrations from {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "migration V{version} ({name}) was applied with checksum {applied} but the file now has \
         {current}: released migrations must not be edited; put the change into a new version"
    )]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        current: String,
    },
    #[error(
        "the database does not offer TimescaleDB continuous aggregates (timescaledb.license = \
         {license:?}), which migration {name} needs: use a TimescaleDB with the Community \
         (TSL) license, e.g. the timescale/timescaledb image"
    )]
    ContinuousAggregatesUnavailable { name: String, license: String },
    #[error("migration {name} failed: {source}")]
    Apply {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error(
        "the database schema is behind this processor: {missing} not applied; run `processor migrate`"
    )]
    NotMigrated { missing: String },
}

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub sql: String,
    pub checksum: String,
    pub no_transaction: bool,
}

impl Migration {
    pub fn parse(file_name: &str, sql: &str) -> Result<Self, MigrateError> {
        let bad = || MigrateError::BadFileName {
            name: file_name.to_owned(),
        };
        let stem = file_name.strip_suffix(".sql").ok_or_else(bad)?;
        let rest = stem.strip_prefix('V').ok_or_else(bad)?;
        let (digits, label) = rest.split_once("__").ok_or_else(bad)?;
        let leading_zero = digits.starts_with('0');
        let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        if label.is_empty() || leading_zero || !all_digits {
            return Err(bad());
        }
        let version: i32 = digits.parse().map_err(|_| bad())?;
        Ok(Self {
            version,
            name: file_name.to_owned(),
            sql: sql.to_owned(),
            checksum: hex::encode(Sha256::digest(sql.as_bytes())),
            no_transaction: sql.lines().next().map(str::trim_end) == Some(NO_TRANSACTION_MARKER),
        })
    }

    /// The statements of a no-transaction file: split at `;` ending a line,
    /// the convention sql/README.md sets for such files.
    pub fn statements(&self) -> Vec<String> {
        let mut statements = Vec::new();
        let mut current = String::new();
        for line in self.sql.lines() {
            current.push_str(line);
            current.push('\n');
            if line.trim_end().ends_with(';') {
                statements.push(std::mem::take(&mut current));
            }
        }
        statements.push(current);
        statements
            .into_iter()
            .filter(|statement| !is_only_comments(statement))
            .collect()
    }

    fn needs_continuous_aggregates(&self) -> bool {
        self.sql.contains("timescaledb.continuous")
            || self.sql.contains("continuous_aggregate_policy(")
    }

    /// What this migration creates that only TimescaleDB's Community (TSL)
    /// part offers, in words: what an Apache-edition database goes without.
    pub fn community_features(&self) -> Vec<String> {
        let mut features = Vec::new();
        for line in self.sql.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
                let view = rest.split_whitespace().next().unwrap_or(rest);
                features.push(format!("continuous aggregate {view}"));
            }
        }
        let policies = self.sql.matches("add_continuous_aggregate_policy(").count();
        if self
            .sql
            .contains("FUNCTION tokenledger_set_refresh_windows(")
        {
            features.push("refresh windows over the lateness plus an outage margin".to_owned());
        } else if policies > 0 {
            features.push(format!("{policies} refresh policies"));
        }
        if self.sql.contains("timescaledb.compress") || self.sql.contains("add_compression_policy(")
        {
            features.push("compression of raw audit chunks and its policy".to_owned());
        }
        features
    }
}

/// Which TimescaleDB the database runs, from `timescaledb.license`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edition {
    /// `timescale`: the Community edition, with continuous aggregates,
    /// compression and job policies.
    Community,
    /// `apache`: hypertables only, as in some managed PostgreSQL services.
    Apache,
    /// Anything else, including no TimescaleDB at all.
    Other(String),
}

impl Edition {
    pub fn from_license(license: Option<&str>) -> Edition {
        match license.unwrap_or_default() {
            "timescale" => Edition::Community,
            "apache" => Edition::Apache,
            other => Edition::Other(other.to_owned()),
        }
    }

    /// Whether `migration` is left out on this edition rather than applied.
    pub fn skips(&self, migration: &Migration) -> bool {
        *self == Edition::Apache && migration.needs_continuous_aggregates()
    }
}

/// The edition of the connected database.
pub async fn edition(client: &Client) -> Result<Edition, MigrateError> {
    let license: Option<String> = client
        .query_one(
            "SELECT current_setting('timescaledb.license', true) AS license",
            &[],
        )
        .await?
        .try_get("license")?;
    Ok(Edition::from_license(license.as_deref()))
}

fn is_only_comments(statement: &str) -> bool {
    statement
        .lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with("--") || line == ";")
}

/// The embedded migrations, sorted by version.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    sorted(
        EMBEDDED
            .iter()
            .map(|(name, sql)| Migration::parse(name, sql))
            .collect::<Result<_, _>>()?,
    )
}

/// The `V*.sql` files of `dir`, sorted by version. Other files are ignored.
pub fn from_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let read_err = |source| MigrateError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('V') && name.ends_with(".sql")) {
            continue;
        }
        let sql = std::fs::read_to_string(entry.path()).map_err(read_err)?;
        migrations.push(Migration::parse(&name, &sql)?);
    }
    sorted(migrations)
}

fn sorted(mut migrations: Vec<Migration>) -> Result<Vec<Migration>, MigrateError> {
    migrations.sort_by_key(|migration| migration.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion {
                version: pair[0].version,
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(migrations)
}

/// What happened to one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    Applied,
    AlreadyApplied,
    /// Not applied because the database is the Apache edition of
    /// TimescaleDB; lists what is left out. Applied by a later `migrate`
    /// once the database offers it.
    Skipped {
        left_out: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    pub name: String,
    pub status: MigrationStatus,
}

/// Applies every migration not yet recorded, in version order. A recorded
/// migration whose file changed is an error rather than silently skipped.
///
/// Runs under the session advisory lock [`MIGRATE_LOCK_KEY`]; a second run
/// waits for the first and then finds everything applied. Each transactional
/// migration also checks, inside its own transaction, that no one recorded
/// it meanwhile, so it is applied once even where advisory locks do not
/// separate connections (a database that serves every connection from one
/// session).
pub async fn apply(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<MigrationOutcome>, MigrateError> {
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1) AS locked",
            &[&MIGRATE_LOCK_KEY],
        )
        .await?
        .try_get("locked")?;
    if !locked {
        tracing::info!("another `processor migrate` holds the migration lock; waiting for it");
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await?;
    }
    let result = apply_locked(client, migrations).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await;
    let outcomes = result?;
    unlocked?;
    Ok(outcomes)
}

async fn apply_locked(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<MigrationOutcome>, MigrateError> {
    client.batch_execute(CREATE_HISTORY_TABLE).await?;
    let applied = applied_checksums(client).await?;
    let mut outcomes = Vec::with_capacity(migrations.len());
    for migration in migrations {
        if let Some((_, checksum)) = applied.iter().find(|(v, _)| *v == migration.version) {
            if *checksum != migration.checksum {
                return Err(MigrateError::ChecksumMismatch {
                    version: migration.version,
                    name: migration.name.clone(),
                    applied: checksum.clone(),
                    current: migration.checksum.clone(),
                });
            }
            outcomes.push(MigrationOutcome {
                name: migration.name.clone(),
                status: MigrationStatus::AlreadyApplied,
            });
            continue;
        }
        if migration.needs_continuous_aggregates() {
            // Read here, not up front: the license setting exists only once
            // an earlier migration has created the extension.
            match edition(client).await? {
                Edition::Community => {}
                Edition::Apache => {
                    outcomes.push(MigrationOutcome {
                        name: migration.name.clone(),
                        status: MigrationStatus::Skipped {
                            left_out: migration.community_features(),
                        },
                    });
                    continue;
                }
                Edition::Other(license) => {
                    return Err(MigrateError::ContinuousAggregatesUnavailable {
                        name: migration.name.clone(),
                        license,
                    });
                }
            }
        }
        let status = if apply_one(client, migration).await? {
            MigrationStatus::Applied
        } else {
            MigrationStatus::AlreadyApplied
        };
        outcomes.push(MigrationOutcome {
            name: migration.name.clone(),
            status,
        });
    }
    Ok(outcomes)
}

/// Fails unless every migration in `expected` is recorded as applied with
/// the same checksum: `run` and `report` refuse an unmigrated database with
/// a message instead of retrying "relation does not exist" forever. On the
/// Apache edition the migrations `apply` skips are not expected.
pub async fn verify(client: &Client, expected: &[Migration]) -> Result<(), MigrateError> {
    let table_exists: bool = client
        .query_one(
            "SELECT to_regclass('tokenledger_schema_migrations') IS NOT NULL AS present",
            &[],
        )
        .await?
        .try_get("present")?;
    let applied = if table_exists {
        applied_checksums(client).await?
    } else {
        Vec::new()
    };
    let mut missing: Vec<&Migration> = expected
        .iter()
        .filter(|migration| !applied.iter().any(|(v, _)| *v == migration.version))
        .collect();
    if missing.iter().any(|m| m.needs_continuous_aggregates()) {
        let edition = edition(client).await?;
        missing.retain(|migration| !edition.skips(migration));
    }
    let missing: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(MigrateError::NotMigrated {
            missing: missing.join(", "),
        });
    }
    Ok(())
}

async fn applied_checksums(client: &Client) -> Result<Vec<(i32, String)>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, checksum FROM tokenledger_schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("version")?, row.try_get("checksum")?)))
        .collect::<Result<_, tokio_postgres::Error>>()?)
}

/// Applies one migration; false when a concurrent run recorded it first
/// (checked inside the migration's transaction, see [`apply`]).
async fn apply_one(client: &mut Client, migration: &Migration) -> Result<bool, MigrateError> {
    let failed = |source| MigrateError::Apply {
        name: migration.name.clone(),
        source,
    };
    if migration.no_transaction {
        for statement in migration.statements() {
            client.batch_execute(&statement).await.map_err(failed)?;
        }
        record(client, migration).await.map_err(failed)?;
        return Ok(true);
    }
    let transaction = client.transaction().await.map_err(failed)?;
    let recorded: Option<String> = transaction
        .query_opt(
            "SELECT checksum FROM tokenledger_schema_migrations WHERE version = $1",
            &[&migration.version],
        )
        .await
        .map_err(failed)?
        .map(|row| row.try_get("checksum"))
        .transpose()
        .map_err(failed)?;
    if let Some(checksum) = recorded {
        transaction.rollback().await.map_err(failed)?;
        if checksum != migration.checksum {
            return Err(MigrateError::ChecksumMismatch {
                version: migration.version,
                name: migration.name.clone(),
                applied: checksum,
                current: migration.checksum.clone(),
            });
        }
        return Ok(false);
    }
    transaction
        .batch_execute(&migration.sql)
        .await
        .map_err(failed)?;
    record(&transaction, migration).await.map_err(failed)?;
    transaction.commit().await.map_err(failed)?;
    Ok(true)
}

async fn record(
    client: &impl tokio_postgres::GenericClient,
    migration: &Migration,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO tokenledger_schema_migrations (version, name, checksum) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO NOTHING",
            &[&migration.version, &migration.name, &migration.checksum],
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests;
