//! `tokenledger-bench`: starts the whole stack on loopback, measures the
//! broker's and the database's own ceilings, drives the gateway over HTTP
//! with realistic multi-tenant traffic, and reports throughput, latency, CPU
//! and memory as a table and as JSON. `scripts/bench.sh` builds and runs it.
//!
//! Layout: [`stack`] starts and stops the services and binaries,
//! [`ceilings`] measures raw produce and raw COPY, [`scenarios`] drives and
//! samples, [`latency`] computes exact accept → commit latencies,
//! [`procstat`] reads CPU and memory from /proc, [`reservations`] drives
//! budget reservations, [`report`] renders.

mod ceilings;
mod latency;
mod pglite;
mod procstat;
mod report;
mod reservations;
mod scenarios;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::report::{CatchUpScenario, LatencyScenario, Report, StallScenario};
use crate::scenarios::{Action, Load, Probe};
use crate::stack::{DatabaseKind, Overrides, Stack};

/// Benchmark tokenledger end to end on this machine.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Short smoke run (a few seconds per scenario, no stall scenario).
    #[arg(long)]
    quick: bool,
    /// Run against a native PostgreSQL 17 + TimescaleDB (Apache edition)
    /// installed in this root by scripts/native-timescaledb.sh, instead of
    /// PostgreSQL 15 + TimescaleDB Community.
    #[arg(long, value_name = "DIR", conflicts_with = "pglite")]
    native_root: Option<PathBuf>,
    /// Run against PGlite + TimescaleDB (the demo's database) instead of
    /// PostgreSQL 15 + TimescaleDB Community.
    #[arg(long)]
    pglite: bool,
    /// Where the gateway and processor binaries are (default: next to this one).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The JSON report.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Seconds of the sustained end-to-end scenario.
    #[arg(long)]
    sustain_secs: Option<u64>,
    /// Seconds of each maximum-throughput gateway scenario.
    #[arg(long)]
    burst_secs: Option<u64>,
    /// Seconds of the fixed-rate latency scenario.
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Offered rate of the latency scenario, events/s.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Connections of the single-event scenario. Each single-event request
    /// waits for the broker's acknowledgement (a few ms), so a client's
    /// rate is its connections divided by that wait, whatever the
    /// gateway's capacity; many concurrent callers are what a gateway in
    /// front of LLM traffic sees.
    #[arg(long, default_value_t = 256)]
    single_connections: usize,
    /// Events per request in the latency scenario.
    #[arg(long, default_value_t = 10)]
    latency_batch_size: usize,
    /// Events for each ceiling measurement.
    #[arg(long)]
    ceiling_events: Option<usize>,
    /// Extra processor setting, e.g. TOKENLEDGER_BATCH__MAX_LATENCY_MS=50 (repeatable).
    #[arg(long = "processor-env", value_name = "KEY=VALUE")]
    processor_env: Vec<String>,
    /// A processor TOML configuration file (for settings the environment
    /// cannot express, such as librdkafka properties with dots).
    #[arg(long, value_name = "PATH")]
    processor_config: Option<PathBuf>,
    /// Extra gateway setting, e.g. TOKENLEDGER_KAFKA__LINGER_MS=5 (repeatable).
    #[arg(long = "gateway-env", value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// Only these scenarios (comma separated: ceilings,single,batch,sustained,latency,catchup,stall,reservations).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{pair:?} is not KEY=VALUE"))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kind = match &args.native_root {
        Some(root) => DatabaseKind::Native { root: root.clone() },
        None if args.pglite => DatabaseKind::Pglite,
        None => DatabaseKind::Timescale,
    };
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => stack::default_bin_dir()?,
    };
    let mut processor_env = parse_env(&args.processor_env)?;
    if let Some(path) = &args.processor_config {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("processor configuration {}", path.display()))?;
        processor_env.push((
            "TOKENLEDGER_CONFIG".to_owned(),
            path.to_string_lossy().into_owned(),
        ));
    }
    let overrides = Overrides {
        processor: processor_env,
        gateway: parse_env(&args.gateway_env)?,
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let quick = args.quick;
    let burst = Duration::from_secs(args.burst_secs.unwrap_or(if quick { 5 } else { 20 }));
    let sustain = Duration::from_secs(args.sustain_secs.unwrap_or(if quick { 10 } else { 60 }));
    let latency_for = Duration::from_secs(args.latency_secs.unwrap_or(if quick { 8 } else { 30 }));
    let ceiling_events = args
        .ceiling_events
        .unwrap_or(if quick { 50_000 } else { 300_000 });
    let drain_limit = Duration::from_secs(300);

    let mut report = Report::new(&kind, quick, &overrides);
    let mut stack = Stack::start(&kind, &bin_dir, &overrides).await?;
    report.migrate_output = stack.migrate_output.clone();
    let probe = Probe::new(&mut stack);

    if wanted("ceilings") {
        eprintln!("bench: ceilings with {ceiling_events} events");
        let events = ceilings::gateway_events(ceiling_events, 7)?;
        let produce =
            ceilings::raw_produce(&stack.broker.bootstrap(), "bench-raw-produce", &events).await?;
        eprintln!(
            "bench: raw produce {:.0} events/s",
            produce.events_per_second
        );
        let consume =
            ceilings::raw_consume(&stack.broker.bootstrap(), "bench-raw-produce", events.len())
                .await?;
        eprintln!(
            "bench: raw consume {:.0} events/s, {:.3} CPU-s per 100k",
            consume.events_per_second,
            consume.cpu_s_per_100k.unwrap_or(f64::NAN)
        );
        let rows = ceilings::priced_rows(&events);
        drop(events);
        let copy = ceilings::raw_copy(&stack.db_url(), &rows, 5_000).await?;
        eprintln!(
            "bench: raw binary COPY {:.0} rows/s",
            copy.events_per_second
        );
        report.raw_produce = Some(produce);
        report.raw_consume = Some(consume);
        report.raw_copy = Some(copy);
        ceilings::settle(Duration::from_secs(2)).await;
    }

    let base = Load {
        batch_size: 100,
        concurrency: 8,
        rate: 0,
        duration: burst,
        duplicate_share: 0.02,
        tenants: 200,
        seed: 42,
    };
    // Latency first, on a fresh topic: the test broker's (tansu's) cost per
    // fetch grows with the topic (Kafka's does not: it seeks by index), and
    // after the floods below it delivered records in bursts hundreds of ms
    // apart while the processor sat idle between them.
    if wanted("latency") {
        let load = Load {
            batch_size: args.latency_batch_size,
            concurrency: 32,
            rate: args.latency_rate,
            duration: latency_for,
            seed: 5,
            ..base.clone()
        };
        let outcome = scenarios::run(
            "fixed rate latency",
            &stack,
            &probe,
            &load,
            drain_limit,
            vec![],
        )
        .await?;
        // Skip the first seconds: connection set-up and the first batches.
        let warmup = chrono::Duration::seconds(if quick { 1 } else { 3 });
        let rows = rows_received_between(
            &stack.db_url(),
            outcome.window_start + warmup,
            outcome.window_end,
        )
        .await?;
        let commits = latency::CommitLog::parse(&stack.processor.log_contents(), stack::TOPIC);
        let keys: Vec<_> = rows
            .iter()
            .map(|(received, p, o, _)| (*received, *p, *o))
            .collect();
        let (histogram, unmatched) = latency::accept_to_commit(&commits, &keys);
        let to_transaction = latency::accept_to_transaction(&rows);
        report.latency = Some(LatencyScenario {
            accept_to_commit_ms: latency::LatencyMs::from_micros(&histogram),
            accept_to_transaction_start_ms: latency::LatencyMs::from_micros(&to_transaction),
            rows_without_logged_commit: unmatched,
            partition_commits_logged: commits.batches(),
            outcome,
        });
    }
    if wanted("single") {
        let load = Load {
            batch_size: 1,
            concurrency: args.single_connections,
            seed: 1,
            ..base.clone()
        };
        report.single_event = Some(
            scenarios::run(
                "single-event requests",
                &stack,
                &probe,
                &load,
                drain_limit,
                vec![],
            )
            .await?,
        );
        // The same traffic with the processor stopped (it catches up after):
        // what the gateway accepts when it shares the cores only with its
        // broker and the client, not with the processor and the database.
        let processor = probe.processor_pid();
        let load = Load { seed: 8, ..load };
        report.single_event_gateway_only = Some(
            scenarios::run(
                "single-event requests, processor paused",
                &stack,
                &probe,
                &load,
                drain_limit,
                paused(move || vec![processor], Duration::ZERO, load.duration),
            )
            .await?,
        );
    }
    if wanted("batch") {
        let load = Load {
            seed: 2,
            ..base.clone()
        };
        report.batch_100 = Some(
            scenarios::run("batches of 100", &stack, &probe, &load, drain_limit, vec![]).await?,
        );
    }
    if wanted("sustained") {
        // Offer what the processor committed while the gateway was flooded
        // with batches (or as fast as accepted when that was not measured);
        // when the backlog still grows, offer 90% of what landed.
        let first_rate = report
            .batch_100
            .as_ref()
            .map_or(0, |o| o.landed_per_second as u64);
        let load = Load {
            duration: sustain,
            rate: first_rate,
            seed: 3,
            ..base.clone()
        };
        let first = scenarios::run(
            "sustained end to end",
            &stack,
            &probe,
            &load,
            drain_limit,
            vec![],
        )
        .await?;
        let grew = first.backlog_growth_per_second > 0.05 * first.landed_per_second;
        if grew {
            let rate = (first.landed_per_second * 0.9).max(1_000.0) as u64;
            let load = Load {
                rate,
                seed: 4,
                ..load.clone()
            };
            let second = scenarios::run(
                "sustained end to end, at 90% of what landed",
                &stack,
                &probe,
                &load,
                drain_limit,
                vec![],
            )
            .await?;
            report.sustained_max = Some(first);
            report.sustained = Some(second);
        } else {
            report.sustained = Some(first);
        }
    }
    if wanted("catchup") {
        report.catch_up = Some(catch_up(&probe, &stack, &base, burst, drain_limit).await?);
    }
    if wanted("stall") && !quick {
        report.stall = Some(stall(&mut stack, &probe, &base, drain_limit).await?);
    }

    if wanted("reservations") {
        reservations::create_budgets(&stack).await?;
        let for_each = if quick { burst } else { burst / 2 };
        for (name, tenants) in [("one tenant", 1), ("200 tenants", 200)] {
            eprintln!("bench: reservations, {name}");
            report
                .reservations
                .push(reservations::run(&stack, name, tenants, 16, for_each).await?);
        }
    }

    report.peak_rss = probe.peak_rss();
    report.processor_metrics_scrape = time_scrape(&stack.processor_metrics_url).await;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/report.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // The processor's log (one line per committed batch) beside the report,
    // for looking at batch sizes and commit times afterwards.
    let processor_log = out.with_extension("processor.log");
    std::fs::write(&processor_log, stack.processor.log_contents())
        .with_context(|| format!("writing {}", processor_log.display()))?;
    stack.stop().await;
    report.finish();

    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", report.to_table());
    println!("{}", reservations::table(&report.reservations));
    eprintln!("bench: JSON report written to {}", out.display());
    Ok(())
}

/// One scrape of the processor's `/metrics` at the end of the run: how many
/// series the guide's per-tenant counters have grown to and what a scrape
/// costs.
async fn time_scrape(url: &str) -> Option<report::MetricsScrape> {
    let started = std::time::Instant::now();
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    Some(report::MetricsScrape {
        seconds: started.elapsed().as_secs_f64(),
        bytes: text.len(),
        series: text.lines().filter(|l| !l.starts_with('#')).count(),
    })
}

/// One database connection with the TLS the connection string asks for
/// (`sslmode`, `sslrootcert`, …), made where the processor makes its own.
async fn connect_db(db_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let url = infra::Secret::from(db_url);
    Ok(
        infra::database::connect(&infra::database::DatabaseSettings {
            url: &url,
            pool_size: 1,
            timeout: std::time::Duration::from_secs(30),
            application_name: "tokenledger-bench",
            session_setup: None,
            statement_timeout: None,
        })
        .await?,
    )
}

/// `(received_at, source_partition, source_offset, ingested_at)` of the rows
/// the gateway received in `[from, to)`; `ingested_at` is the start of the
/// transaction that inserted the row.
async fn rows_received_between(
    db_url: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<latency::StoredRow>> {
    let client = connect_db(db_url).await?;
    store::audit::received_between(&client, from, to)
        .await
        .context("reading the latency window's rows")
}

/// The processor alone catching up: stopped while the gateway fills the
/// topic with batches, then resumed with nothing else running.
async fn catch_up(
    probe: &Probe,
    stack: &Stack,
    base: &Load,
    fill_for: Duration,
    drain_limit: Duration,
) -> anyhow::Result<CatchUpScenario> {
    let processor = probe.processor_pid();
    let load = Load {
        duration: fill_for,
        seed: 7,
        ..base.clone()
    };
    let outcome = scenarios::run(
        "processor catching up alone",
        stack,
        probe,
        &load,
        drain_limit,
        paused(move || vec![processor], Duration::ZERO, fill_for),
    )
    .await?;
    let scenario = CatchUpScenario::new(outcome);
    eprintln!(
        "bench: catch-up: {:.0} events in {:.1} s ({:.0}/s), processor {:.3} CPU-s per 100k",
        scenario.backlog,
        scenario.drain_seconds,
        scenario.events_per_second,
        scenario.processor_per_100k()
    );
    Ok(scenario)
}

/// Actions that stop the processes `pids` names (SIGSTOP) at `from` and
/// resume them (SIGCONT) at `until`: a process taken away for a while.
fn paused(
    pids: impl Fn() -> Vec<u32> + Clone + Send + 'static,
    from: Duration,
    until: Duration,
) -> Vec<(Duration, Action)> {
    let send = |pids: Box<dyn Fn() -> Vec<u32> + Send>, signal: Signal| -> Action {
        Box::new(move || {
            for pid in pids() {
                let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(0)), signal);
            }
        })
    };
    vec![
        (from, send(Box::new(pids.clone()), Signal::SIGSTOP)),
        (until, send(Box::new(pids), Signal::SIGCONT)),
    ]
}

/// A stalled database under load: the database's processes are stopped
/// (SIGSTOP) for a while, then resumed; memory is sampled throughout.
async fn stall(
    stack: &mut Stack,
    probe: &Probe,
    base: &Load,
    drain_limit: Duration,
) -> anyhow::Result<StallScenario> {
    let database_pid = probe.database_pid();
    let stall_at = Duration::from_secs(5);
    let stall_for = Duration::from_secs(20);
    let load = Load {
        rate: 5_000,
        duration: stall_at + stall_for + Duration::from_secs(5),
        seed: 6,
        ..base.clone()
    };
    let outcome = scenarios::run(
        "stalled database",
        stack,
        probe,
        &load,
        drain_limit,
        // the tree is read at each signal: PostgreSQL's backends included
        paused(
            move || procstat::process_tree(database_pid),
            stall_at,
            stall_at + stall_for,
        ),
    )
    .await?;
    Ok(StallScenario::new(outcome, stall_at, stall_for))
}
