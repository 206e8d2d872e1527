//! `tokenledger-loadgen`: send realistic usage traffic to a gateway.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadgen::drive::{drive, DriveConfig, DriveSummary};
use loadgen::traffic::TrafficConfig;

/// Send realistic multi-tenant LLM usage events to a tokenledger gateway and
/// report how many were accepted and how fast.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Gateway base URL.
    #[arg(
        long,
        env = "TOKENLEDGER_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key sent as `Authorization: Bearer`; an admin key may write any tenant.
    #[arg(long, env = "TOKENLEDGER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How many events to send.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Stop after this many seconds even if not all events were sent.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Events per request (1 = one bare event object per request).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Offered load in events per second (0 = as fast as the gateway accepts).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of tenants (Zipf-distributed popularity).
    #[arg(long, default_value_t = 50)]
    tenants: usize,
    /// Spread events' created_at over this many past days.
    #[arg(long, default_value_t = 0)]
    spread_days: u32,
    /// Share of accepted requests resent unchanged, as a retrying client would.
    #[arg(long, default_value_t = 0.01)]
    duplicate_share: f64,
    /// Retries of a request answered 503 or not answered.
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// Random seed: the same seed sends the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.duplicate_share),
        "--duplicate-share must be between 0 and 1"
    );
    let config = DriveConfig {
        url: args.url.clone(),
        api_key: args.api_key,
        events: args.events,
        max_duration: args.duration_secs.map(Duration::from_secs),
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        rate: args.rate,
        duplicate_share: args.duplicate_share,
        max_retries: args.max_retries,
        progress: !args.quiet,
        traffic: TrafficConfig {
            seed: args.seed,
            tenants: args.tenants,
            spread_days: args.spread_days,
            ..TrafficConfig::default()
        },
    };
    let summary = drive(config)
        .await
        .with_context(|| format!("driving {}", args.url))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    anyhow::ensure!(
        summary.events_accepted > 0 || args.events == 0,
        "the gateway accepted no events{}",
        summary
            .first_rejection
            .as_deref()
            .map(|r| format!(" (first rejection: {r})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn print_summary(summary: &DriveSummary) {
    println!("requests sent            {:>12}", summary.requests);
    println!("events accepted (202)    {:>12}", summary.events_accepted);
    println!("events rejected (4xx)    {:>12}", summary.events_rejected);
    println!("events failed            {:>12}", summary.events_failed);
    println!(
        "events resent (dupes)    {:>12}",
        summary.events_resent_as_duplicates
    );
    println!(
        "503 responses (retried)  {:>12}",
        summary.unavailable_responses
    );
    println!(
        "elapsed                  {:>11.2}s",
        summary.elapsed_seconds
    );
    println!(
        "accepted events/s        {:>12.0}",
        summary.accepted_events_per_second
    );
    let l = &summary.latency_ms;
    println!(
        "request latency ms       p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    if let Some(rejection) = &summary.first_rejection {
        println!("first rejection          {rejection}");
    }
}
