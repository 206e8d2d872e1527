//! The `processor` command line: its flags and subcommands, and the dispatch of each subcommand
//! to the stream (`run`) or to its operator command in [`crate::commands`].

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use infra::cli::CommonArgs;
use infra::signals::{self, Graceful};
use tokio_util::sync::CancellationToken;

use crate::commands::{
    self, budgets, export, migrate, offsets, optimize, prices, rebuild_attribution, reconcile,
    refresh, report, reprice,
};
use crate::config::Config;
use crate::stream::pipeline;

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
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume usage events and write them to the database (the pipeline).
    Run,
    /// Apply the SQL migrations that the database does not have yet.
    Migrate(migrate::MigrateArgs),
    /// Print what landed: totals and the daily rollups per tenant and model.
    Report {
        #[command(flatten)]
        args: report::ReportArgs,
        #[command(subcommand)]
        kind: Option<ReportKind>,
    },
    /// What the usage of a range would have cost at another model's current
    /// list price, per model replaced.
    WhatIf(optimize::WhatIfArgs),
    /// Recompute the optimization rollup from the raw table over a range of
    /// UTC days, per day and tenant (for usage stored before it existed).
    RebuildOptimize(optimize::rebuild::RebuildArgs),
    /// Manage budgets (also possible through the gateway's admin API).
    Budgets {
        #[command(subcommand)]
        command: budgets::BudgetsCommand,
    },
    /// Show or reset the stored offsets, where each partition resumes
    /// (docs/runbooks.md, TokenledgerStoredOffsetOutsideLog).
    Offsets {
        #[command(subcommand)]
        command: offsets::OffsetsCommand,
    },
    /// Re-materialize the rollups over a range of UTC days (rows older than
    /// the refresh policies' window), or set that window's outage margin.
    Refresh(refresh::RefreshArgs),
    /// Recompute the use-case rollup of the configured attribution labels
    /// from the raw table over a range of UTC days (for a key named after
    /// its usage arrived).
    RebuildAttribution(rebuild_attribution::RebuildArgs),
    /// Exports for finance teams: a FOCUS dataset, a monthly statement.
    Export {
        #[command(subcommand)]
        command: export::ExportCommand,
    },
    /// Re-price stored rows under the current price book (see docs/design.md).
    Reprice(reprice::RepriceArgs),
    /// The ledger against the providers' own usage and cost reports
    /// (docs/reconciliation.md): `reconcile openai|anthropic --from --to`
    /// (fetch, store, compare; for cron), `reconcile fetch`, `reconcile report`.
    Reconcile {
        #[command(subcommand)]
        command: reconcile::ReconcileCommand,
    },
    /// Price files: `prices import-litellm --input FILE --output FILE`.
    Prices {
        #[command(subcommand)]
        command: prices::PricesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReportKind {
    /// Prompt length, cost per request and caching savings per model, use
    /// case and tenant over a range of days.
    Optimize(optimize::OptimizeArgs),
}

/// Loads the configuration and runs the subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.common.config.as_deref()).context("loading the configuration")?;
    if cli.common.print_config {
        print!("{}", config.to_redacted_toml()?);
        return Ok(());
    }
    let Some(command) = cli.command else {
        anyhow::bail!(
            "no command given: use `processor run`, `migrate`, `report`, `report optimize`, `what-if`, `export`, `budgets apply`, `offsets`, `refresh`, `reprice`, `rebuild-optimize`, `reconcile` or `prices` (see --help)"
        );
    };
    match command {
        Command::Run => run(config).await,
        Command::Migrate(args) => Ok(migrate::run(&config, &args).await?),
        Command::Report {
            kind: Some(ReportKind::Optimize(args)),
            ..
        } => {
            let client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            optimize::run_report(&client, &args, &mut out).await
        }
        Command::Report { args, kind: None } => {
            let client = commands::connect_verified(&config.database).await?;
            Ok(report::run(&client, &args).await?)
        }
        Command::WhatIf(args) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            optimize::run_what_if(&client, &book, &args, &mut out).await
        }
        Command::RebuildOptimize(args) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            optimize::rebuild::run(&mut client, &book, &args, &mut out).await?;
            Ok(())
        }
        Command::Reconcile { command } => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            let within_bounds =
                reconcile::run(&mut client, &config.reconcile, &book, &command, &mut out).await?;
            anyhow::ensure!(within_bounds, reconcile::OutOfBounds);
            Ok(())
        }
        Command::Budgets { command } => Ok(budgets::run(&config, &command).await?),
        Command::Offsets { command } => {
            let mut client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            Ok(offsets::run(&config, &mut client, command, &mut out).await?)
        }
        Command::RebuildAttribution(args) => {
            args.check()?;
            let mut client = commands::connect_verified(&config.database).await?;
            Ok(rebuild_attribution::run(&config, &mut client, &args).await?)
        }
        Command::Export { command } => {
            let client = commands::connect_verified(&config.database).await?;
            Ok(export::run(&config, &client, &command).await?)
        }
        Command::Prices { command } => {
            let mut out = std::io::stdout().lock();
            Ok(prices::run(&command, &mut out)?)
        }
        Command::Reprice(args) => {
            let book = pipeline::load_price_book(&config.pricing)?;
            let mut client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            reprice::run(&mut client, &book, &args, &mut out).await?;
            Ok(())
        }
        Command::Refresh(args) => {
            let client = commands::connect_verified(&config.database).await?;
            let mut out = std::io::stdout().lock();
            Ok(refresh::run(&client, &args, &mut out).await?)
        }
    }
}

/// The stream, until a signal asks it to stop; a second signal, or the
/// shutdown deadline, exits at once.
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
