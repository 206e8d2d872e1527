//! The `gateway` binary: parse arguments, load configuration, set up
//! logging, build the producer and serve until told to stop.

// Both binaries allocate and free several small strings per event; glibc's
// malloc spent a sixth of the processor's time consolidating and unlinking
// chunks under load, mimalloc's thread-local free lists avoid that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gateway::admin::AdminDatabase;
use gateway::app::{AppState, Settings};
use gateway::auth::{hash_key, KeyRing};
use gateway::budgets::{self, BudgetStore};
use gateway::config::Config;
use gateway::kafka::KafkaAppender;
use gateway::server::{serve_with, Drained};
use infra::cli::CommonArgs;
use infra::signals::{self, Graceful};
use tokio::net::TcpListener;

/// tokenledger's HTTP gateway: authenticates usage events, validates them
/// and appends them to Kafka, answering 202 only once Kafka acknowledged.
///
/// Configuration is layered: built-in defaults, then the TOML file given
/// with --config (or TOKENLEDGER_CONFIG), then environment variables such
/// as TOKENLEDGER_KAFKA__BROKERS=host:9092 (prefix TOKENLEDGER_, `__`
/// between section and key). Logs go to stderr, filtered by TOKENLEDGER_LOG
/// (default "info,tokio_postgres=warn").
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read an API key from stdin and print its SHA-256 hex, the value to
    /// put in `auth.keys[].sha256`.
    HashKey,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::HashKey) = cli.command {
        return print_key_hash();
    }
    let config = Config::load(cli.common.config.as_deref()).context("loading configuration")?;
    if cli.common.print_config {
        print!("{}", config.to_redacted_toml()?);
        return Ok(());
    }
    infra::logging::init(cli.common.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let drained = runtime.block_on(run(config))?;
    // Blocking tasks (a metadata fetch, a flush) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match drained {
        Drained::Completely => Ok(()),
        Drained::TimedOut => {
            bail!("shutdown timed out before every request was answered and every record flushed")
        }
    }
}

fn print_key_hash() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the key from stdin")?;
    // `echo KEY | gateway hash-key` adds a newline that is not part of the key.
    let key = input.strip_suffix('\n').unwrap_or(&input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        bail!("no key on stdin");
    }
    if key.chars().count() < 16 {
        eprintln!("warning: keys shorter than 16 characters are easy to guess");
    }
    println!("{}", hash_key(key));
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<Drained> {
    let keys = KeyRing::from_config(&config.auth).context("loading API keys")?;
    if keys.is_enabled() {
        tracing::info!(keys = keys.len(), "authentication enabled");
    } else {
        tracing::warn!("AUTHENTICATION IS DISABLED (auth.enabled = false): anyone who can reach the API can write any tenant's usage events, read every tenant's budget status, create, change and delete budgets, and download every tenant's exports");
    }
    reload_keys_on_hangup(&keys, &config.auth)?;
    let appender =
        Arc::new(KafkaAppender::new(&config.kafka).context("creating the Kafka producer")?);
    let budget_book = Arc::new(
        config
            .exports
            .price_book()
            .map_err(anyhow::Error::msg)
            .context("loading the price book")?,
    );
    let admin_database = AdminDatabase::connect_lazily(&config.database)
        .map_err(anyhow::Error::msg)
        .context("configuring the database of the admin APIs")?;
    if admin_database.is_none() {
        tracing::info!("database.url is not set: the budget, reservation, export, report and reconciliation endpoints answer 503");
    }
    let budget_store = admin_database
        .clone()
        .map(BudgetStore::new)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("loading the price book")?
        .map(|store| {
            store
                .with_price_book(budget_book)
                .with_forecast_window(chrono::Duration::seconds(i64::from(
                    config.forecasts.window_s,
                )))
        });
    let reservation_routes = gateway::reservations::routes(
        Arc::new(keys.clone()),
        budget_store.clone(),
        config.reservations.clone(),
    );
    let budget_routes = budgets::routes(Arc::new(keys.clone()), budget_store)
        .merge(reservation_routes)
        .merge(gateway::exports::routes(
            gateway::exports::ExportApi::new(
                Arc::new(keys.clone()),
                admin_database.clone(),
                &config.exports,
            )
            .map_err(anyhow::Error::msg)
            .context("configuring the exports")?,
        ))
        .merge(gateway::reports::routes(
            gateway::reports::ReportApi::new(
                Arc::new(keys.clone()),
                admin_database.clone(),
                &config.exports,
            )
            .map_err(anyhow::Error::msg)
            .context("configuring the reports")?,
        ));
    let budget_routes = budget_routes.merge(gateway::reconciliation::routes(
        gateway::reconciliation::ReconciliationApi::new(
            Arc::new(keys.clone()),
            admin_database,
            &config.reconciliation,
        )
        .map_err(anyhow::Error::msg)
        .context("configuring the reconciliation")?,
    ));
    let state = AppState::new(appender.clone(), keys, Settings::from_config(&config))?;

    signals::spawn_handler(
        state.shutdown.clone(),
        Graceful {
            doing: "no new connections, draining in-flight requests",
            // serve_with bounds the drain by http.shutdown_timeout_ms.
            deadline: None,
        },
    )?;
    let fatal_watch_token = state.shutdown.clone();
    let fatal_watch_appender = appender.clone();
    tokio::spawn(async move {
        // librdkafka reports a fatal idempotence error once; the process
        // cannot recover from it, so stop and let the supervisor restart us.
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = fatal_watch_token.cancelled() => return,
                _ = interval.tick() => {}
            }
            if fatal_watch_appender.has_fatal_error() {
                tracing::error!("kafka producer is unusable after a fatal error; shutting down");
                fatal_watch_token.cancel();
                return;
            }
        }
    });

    let api_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let admin_listener = TcpListener::bind(config.http.admin_listen)
        .await
        .with_context(|| format!("binding http.admin_listen {}", config.http.admin_listen))?;
    tracing::info!(
        listen = %api_listener.local_addr()?,
        admin_listen = %admin_listener.local_addr()?,
        brokers = %config.kafka.brokers,
        topic = %config.kafka.topic,
        "gateway listening"
    );
    let drained = serve_with(
        api_listener,
        admin_listener,
        state,
        budget_routes,
        config.http.shutdown_timeout(),
    )
    .await?;
    if appender.has_fatal_error() {
        bail!("stopped after a fatal Kafka producer error");
    }
    tracing::info!(?drained, "gateway stopped");
    Ok(drained)
}

/// On SIGHUP, reads the keys again (`auth.keys_file` from disk): a revoked
/// key stops working without a restart. Keys that do not load leave the
/// ring as it was, and say why.
fn reload_keys_on_hangup(keys: &KeyRing, auth: &gateway::config::AuthConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let keys = keys.clone();
    let auth = auth.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match keys.reload(&auth) {
                Ok(count) => tracing::info!(keys = count, "SIGHUP: API keys reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the API keys do not load; keeping the previous keys")
                }
            }
        }
    });
    Ok(())
}
