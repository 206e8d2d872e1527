//! The `processor` binary: command line, logging, signals.

// Both binaries allocate and free several small strings per event; glibc's
// malloc spent a sixth of the processor's time consolidating and unlinking
// chunks under load, mimalloc's thread-local free lists avoid that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use infra::logging::LogFormat;
use infra::signals::{self, Graceful};
use processor::config::Config;
use processor::{budgets, database, migrate, pipeline, report};
use tokio_util::sync::CancellationToken;

/// tokenledger's processor: consumes usage events from Kafka and writes
/// each exactly once into TimescaleDB, with Prometheus metrics.
///
/// Configuration is layered: built-in defaults, then the TOML file from
/// --config or TOKENLEDGER_CONFIG, then environment variables such as
/// TOKENLEDGER_KAFKA__BROKERS or TOKENLEDGER_DATABASE__URL ("__" separates
/// sections). Logs go to stderr, filtered by TOKENLEDGER_LOG (default
/// "info,tokio_postgres=warn").
#[derive(Debug, Parser)]
#[command(name = "processor", version, about, long_about)]
struct Cli {
    /// TOML configuration file (default: $TOKENLEDGER_CONFIG).
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume usage events and write them to the database (the pipeline).
    Run,
    /// Apply the SQL migrations that the database does not have yet.
    Migrate {
        /// Read V<N>__name.sql files from this directory instead of the
        /// ones built into the binary.
        #[arg(long, value_name = "DIR")]
        sql_dir: Option<PathBuf>,
    },
    /// Print what landed: totals and the daily rollups per tenant and model.
    Report {
        /// Materialize the continuous aggregates first.
        #[arg(long)]
        refresh: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How many days of rollups to show.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(subcommand)]
        kind: Option<ReportKind>,
    },
    /// What the usage of a range would have cost at another model's current
    /// list price, per model replaced.
    WhatIf(processor::optimize::WhatIfArgs),
    /// Manage budgets (also possible through the gateway's admin API).
    Budgets {
        #[command(subcommand)]
        command: BudgetsCommand,
    },
    /// Show or reset the stored offsets, where each partition resumes
    /// (docs/runbooks.md, TokenledgerStoredOffsetOutsideLog).
    Offsets {
        #[command(subcommand)]
        command: processor::offsets_admin::OffsetsCommand,
    },
    /// Re-materialize the rollups over a range of UTC days (rows older than
    /// the refresh policies' window), or set that window's outage margin.
    Refresh(processor::refresh::RefreshArgs),
    /// Recompute the use-case rollup of the configured attribution labels
    /// from the raw table over a range of UTC days (for a key named after
    /// its usage arrived).
    RebuildAttribution {
        /// First UTC day (YYYY-MM-DD), inclusive.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last UTC day (YYYY-MM-DD), exclusive.
        #[arg(long)]
        to: chrono::NaiveDate,
    },
    /// Recompute the optimization rollup from the raw table over a range of
    /// UTC days, per day and tenant (for usage stored before it existed).
    RebuildOptimize(processor::optimize::rebuild::RebuildArgs),
    /// Exports for finance teams: a FOCUS dataset, a monthly statement.
    Export {
        #[command(subcommand)]
        command: processor::export::ExportCommand,
    },
    /// Re-price stored rows under the current price book (see docs/design.md).
    Reprice(processor::reprice::RepriceArgs),
    /// The ledger against the providers' own usage and cost reports
    /// (docs/reconciliation.md): `reconcile openai|anthropic --from --to`
    /// (fetch, store, compare; for cron), `reconcile fetch`, `reconcile report`.
    Reconcile {
        #[command(subcommand)]
        command: processor::reconcile::ReconcileCommand,
    },
    /// Price files: `prices import-litellm --input FILE --output FILE`.
    Prices {
        #[command(subcommand)]
        command: processor::prices::PricesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReportKind {
    /// Prompt length, cost per request and caching savings per model, use
    /// case and tenant over a range of days.
    Optimize(processor::optimize::OptimizeArgs),
}

#[derive(Debug, Subcommand)]
enum BudgetsCommand {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = infra::logging::init(cli.log_format) {
        eprintln!("processor: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("processor: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("processor: {error:#}");
            if error.is::<processor::reconcile::OutOfBounds>() {
                // Told apart from a failure to run, for cron and alerting.
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("loading the configuration")?;
    if cli.print_config {
        print!("{}", config.to_redacted_toml()?);
        return Ok(());
    }
    match cli.command {
        None => anyhow::bail!(
            "no command given: use `processor run`, `migrate`, `report`, `report optimize`, `what-if`, `export`, `budgets apply`, `offsets`, `refresh`, `reprice`, `rebuild-optimize`, `reconcile` or `prices` (see --help)"
        ),
        Some(Command::Run) => run(config).await,
        Some(Command::Migrate { sql_dir }) => run_migrations(&config, sql_dir).await,
        Some(Command::Report {
            kind: Some(ReportKind::Optimize(args)),
            ..
        }) => {
            let client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::optimize::run_report(&client, &args, &mut out).await
        }
        Some(Command::Report {
            refresh,
            format,
            days,
            kind: None,
        }) => print_report(&config, refresh, format, days).await,
        Some(Command::RebuildOptimize(args)) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::optimize::rebuild::run(&mut client, &book, &args, &mut out).await?;
            Ok(())
        }
        Some(Command::WhatIf(args)) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::optimize::run_what_if(&client, &book, &args, &mut out).await
        }
        Some(Command::Budgets {
            command:
                BudgetsCommand::Apply {
                    file,
                    prune,
                    dry_run,
                },
        }) => apply_budgets(&config, &file, prune, dry_run).await,
        Some(Command::Offsets { command }) => {
            let mut client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::offsets_admin::run(&config, &mut client, command, &mut out).await?;
            Ok(())
        }
        Some(Command::RebuildAttribution { from, to }) => {
            anyhow::ensure!(to > from, "--to must be after --from (it is exclusive)");
            let mut client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let transaction = client.transaction().await?;
            let rows = store::attribution::rebuild(
                &transaction,
                &config.attribution.labels,
                store::exports::midnight(from),
                store::exports::midnight(to),
                config.attribution.max_values_per_day,
            )
            .await?;
            transaction.commit().await?;
            println!(
                "usage_attribution_daily: {rows} row(s) rebuilt for {:?} over [{from}, {to})",
                config.attribution.labels
            );
            Ok(())
        }
        Some(Command::Export { command }) => {
            let client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            processor::export::run(&config, &client, &command).await?;
            Ok(())
        }
        Some(Command::Prices { command }) => {
            let mut out = std::io::stdout().lock();
            processor::prices::run(&command, &mut out)?;
            Ok(())
        }
        Some(Command::Reprice(args)) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::reprice::run(&mut client, &book, &args, &mut out).await?;
            Ok(())
        }
        Some(Command::Reconcile { command }) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            let within_bounds =
                processor::reconcile::run(&mut client, &config.reconcile, &book, &command, &mut out)
                    .await?;
            anyhow::ensure!(within_bounds, processor::reconcile::OutOfBounds);
            Ok(())
        }
        Some(Command::Refresh(args)) => {
            let client = database::connect(&config.database).await?;
            migrate::verify(&client, &migrate::embedded()?).await?;
            let mut out = std::io::stdout().lock();
            processor::refresh::run(&client, &args, &mut out).await?;
            Ok(())
        }
    }
}

async fn apply_budgets(
    config: &Config,
    file: &std::path::Path,
    prune: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let parsed = budgets::read_file(file)?;
    if dry_run {
        println!("{}: {} valid budget(s)", file.display(), parsed.len());
        return Ok(());
    }
    let mut client = database::connect(&config.database).await?;
    migrate::verify(&client, &migrate::embedded()?).await?;
    let report = budgets::apply(&mut client, &parsed, prune).await?;
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

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    signals::spawn_handler(
        shutdown.clone(),
        Graceful {
            doing: "committing the in-flight batch",
            deadline: Some(Duration::from_millis(config.shutdown_timeout_ms)),
        },
    )?;
    pipeline::run(&config, shutdown).await?;
    Ok(())
}

async fn run_migrations(config: &Config, sql_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let migrations = match &sql_dir {
        Some(dir) => migrate::from_dir(dir)?,
        None => migrate::embedded()?,
    };
    let mut client = database::connect(&config.database).await?;
    let outcomes = migrate::apply(&mut client, &migrations).await?;
    let mut applied = 0;
    let mut skipped = 0;
    for outcome in &outcomes {
        match &outcome.status {
            migrate::MigrationStatus::Applied => {
                applied += 1;
                println!("applied          {}", outcome.name);
            }
            migrate::MigrationStatus::AlreadyApplied => {
                println!("already applied  {}", outcome.name);
            }
            migrate::MigrationStatus::Skipped { left_out } => {
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

async fn print_report(
    config: &Config,
    refresh: bool,
    format: Format,
    days: u32,
) -> anyhow::Result<()> {
    let client = database::connect(&config.database).await?;
    migrate::verify(&client, &migrate::embedded()?).await?;
    if refresh {
        report::refresh(&client).await?;
    }
    let gathered = report::gather(&client, days).await?;
    match format {
        Format::Table => print!("{}", gathered.to_table()),
        Format::Json => println!("{}", gathered.to_json()?),
    }
    Ok(())
}
