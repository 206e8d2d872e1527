//! The driven scenarios: HTTP traffic through the gateway (the load
//! generator's driver) while a sampler follows CPU, memory, what the
//! gateway accepted and what the processor committed, every two seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::drive::{drive, DriveConfig, DriveSummary};
use loadgen::traffic::TrafficConfig;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::procstat;
use crate::stack::Stack;

/// How a scenario drives the gateway.
#[derive(Debug, Clone)]
pub struct Load {
    pub batch_size: usize,
    pub concurrency: usize,
    /// Events per second; 0 = as fast as the gateway answers.
    pub rate: u64,
    pub duration: Duration,
    pub duplicate_share: f64,
    pub tenants: usize,
    pub seed: u64,
}

/// One reading of the whole stack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    pub gateway_cpu_s: f64,
    pub processor_cpu_s: f64,
    pub broker_cpu_s: f64,
    pub database_cpu_s: f64,
    /// This process: the HTTP load generator (and the sampler).
    pub load_generator_cpu_s: f64,
    pub gateway_rss_mib: f64,
    pub processor_rss_mib: f64,
    /// Events the gateway answered 202 (retries and resends included).
    pub gateway_accepted: f64,
    /// Records the processor committed (new rows and duplicates).
    pub processor_consumed: f64,
    pub processor_inserted: f64,
    pub gateway_503: f64,
}

impl Sample {
    pub fn backlog(&self) -> f64 {
        (self.gateway_accepted - self.processor_consumed).max(0.0)
    }
}

/// The pids, URLs and log the sampler reads.
///
/// What the processor committed is read from its log ("batch committed"
/// lines, `records=` and `inserted=`), not from its `/metrics`: rendering
/// the guide's per-tenant counters (thousands of series after a few minutes
/// of 200 tenants) costs the processor real CPU, and a benchmark must not
/// load what it measures. The gateway's metrics are a few dozen series.
#[derive(Debug, Clone)]
pub struct Probe {
    gateway_pid: u32,
    processor_pid: u32,
    broker_pid: u32,
    database_pid: u32,
    gateway_metrics: String,
    processor_log: std::path::PathBuf,
    committed: Arc<std::sync::Mutex<CommitTally>>,
    client: reqwest::Client,
    started: Instant,
}

/// Running totals of the processor's "batch committed" lines, and how far
/// into its log they were read.
#[derive(Debug, Default)]
struct CommitTally {
    read_up_to: u64,
    consumed: f64,
    inserted: f64,
}

impl CommitTally {
    /// Reads the complete lines added since the last call.
    fn update(&mut self, log: &std::path::Path) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read_up_to)).is_err() {
            return;
        }
        let mut text = Vec::new();
        if file.read_to_end(&mut text).is_err() {
            return;
        }
        let Some(last_newline) = text.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete = String::from_utf8_lossy(&text[..=last_newline]);
        for line in complete.lines().filter(|l| l.contains("batch committed")) {
            self.consumed += number_after(line, "records=");
            self.inserted += number_after(line, "inserted=");
        }
        self.read_up_to += last_newline as u64 + 1;
    }
}

fn number_after(line: &str, key: &str) -> f64 {
    line.find(key)
        .map(|at| &line[at + key.len()..])
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

impl Probe {
    pub fn new(stack: &mut Stack) -> Probe {
        Probe {
            gateway_pid: stack.gateway.pid(),
            processor_pid: stack.processor.pid(),
            broker_pid: stack.broker.process().map(|p| p.pid()).unwrap_or(0),
            database_pid: stack.database.pid().unwrap_or(0),
            gateway_metrics: format!("{}/metrics", stack.gateway_admin_url),
            processor_log: stack.processor.log_path().to_path_buf(),
            committed: Arc::new(std::sync::Mutex::new(CommitTally::default())),
            client: reqwest::Client::new(),
            started: Instant::now(),
        }
    }

    pub fn processor_pid(&self) -> u32 {
        self.processor_pid
    }

    pub fn database_pid(&self) -> u32 {
        self.database_pid
    }

    pub async fn sample(&self) -> Sample {
        let gateway_text = self.text(&self.gateway_metrics).await;
        let (processor_consumed, processor_inserted) = {
            let mut tally = self
                .committed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tally.update(&self.processor_log);
            (tally.consumed, tally.inserted)
        };
        let value = |text: &str, name: &str| crate::stack::metric_value(text, name).unwrap_or(0.0);
        let rejected_503 = gateway_text
            .lines()
            .filter(|l| {
                l.starts_with("tokenledger_gateway_requests_total{") && l.contains("status=\"503\"")
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        Sample {
            t: self.started.elapsed().as_secs_f64(),
            gateway_cpu_s: procstat::cpu_seconds(self.gateway_pid),
            processor_cpu_s: procstat::cpu_seconds(self.processor_pid),
            broker_cpu_s: procstat::cpu_seconds(self.broker_pid),
            database_cpu_s: procstat::cpu_seconds(self.database_pid),
            // This process alone: the services are its children.
            load_generator_cpu_s: procstat::own_cpu_seconds(std::process::id()),
            gateway_rss_mib: procstat::rss_mib(self.gateway_pid),
            processor_rss_mib: procstat::rss_mib(self.processor_pid),
            gateway_accepted: value(&gateway_text, "tokenledger_gateway_events_accepted_total"),
            processor_consumed,
            processor_inserted,
            gateway_503: rejected_503,
        }
    }

    async fn text(&self, url: &str) -> String {
        match self.client.get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub fn peak_rss(&self) -> PeakRss {
        PeakRss {
            gateway_mib: procstat::peak_rss_mib(self.gateway_pid),
            processor_mib: procstat::peak_rss_mib(self.processor_pid),
            broker_mib: procstat::peak_rss_mib(self.broker_pid),
            database_mib: procstat::peak_rss_mib(self.database_pid),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeakRss {
    pub gateway_mib: f64,
    pub processor_mib: f64,
    pub broker_mib: f64,
    /// Summed over the server's processes (an upper bound for PostgreSQL).
    pub database_mib: f64,
}

/// What one driven scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub batch_size: usize,
    pub concurrency: usize,
    pub offered_rate: u64,
    pub drive: DriveSummary,
    /// Events the gateway answered 202 per second of driving.
    pub gateway_accepted_per_second: f64,
    /// Records committed by the processor per second of driving.
    pub landed_per_second: f64,
    /// Slope of the backlog (accepted − committed) over the steady part of
    /// the run, events per second; ≤ 0 means the processor kept up.
    pub backlog_growth_per_second: f64,
    pub backlog_at_end: f64,
    /// Seconds the processor needed after the drive to commit the rest.
    pub drain_seconds: f64,
    /// The last reading, when the drain ended.
    pub drain_end: Sample,
    pub cpu_s: CpuSeconds,
    pub samples: Vec<Sample>,
    pub window_start: chrono::DateTime<chrono::Utc>,
    pub window_end: chrono::DateTime<chrono::Utc>,
}

/// CPU seconds used during the drive and the drain that followed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSeconds {
    pub gateway: f64,
    pub processor: f64,
    pub broker: f64,
    pub database: f64,
    pub load_generator: f64,
    /// Events the gateway accepted / the processor committed over the same span.
    pub gateway_events: f64,
    pub processor_events: f64,
}

impl CpuSeconds {
    pub fn gateway_per_100k(&self) -> f64 {
        per_100k(self.gateway, self.gateway_events)
    }
    pub fn processor_per_100k(&self) -> f64 {
        per_100k(self.processor, self.processor_events)
    }
}

fn per_100k(seconds: f64, events: f64) -> f64 {
    if events <= 0.0 {
        return f64::NAN;
    }
    seconds / events * 100_000.0
}

/// Something to do at a moment of the drive (the stall scenario).
pub type Action = Box<dyn FnOnce() + Send>;

/// Drives `load`, samples every second, then waits (at most `drain_limit`)
/// for the processor to commit everything accepted.
pub async fn run(
    name: &str,
    stack: &Stack,
    probe: &Probe,
    load: &Load,
    drain_limit: Duration,
    actions: Vec<(Duration, Action)>,
) -> anyhow::Result<Outcome> {
    eprintln!(
        "bench: {name}: {} event(s)/request, {} connection(s), {} for {:?}",
        load.batch_size,
        load.concurrency,
        if load.rate == 0 {
            "as fast as accepted".to_owned()
        } else {
            format!("{} events/s", load.rate)
        },
        load.duration
    );
    let config = DriveConfig {
        url: stack.gateway_url.clone(),
        api_key: Some(stack.api_key.clone()),
        events: u64::MAX / 2,
        max_duration: Some(load.duration),
        batch_size: load.batch_size,
        concurrency: load.concurrency,
        rate: load.rate,
        duplicate_share: load.duplicate_share,
        max_retries: 8,
        progress: false,
        traffic: TrafficConfig {
            seed: load.seed,
            tenants: load.tenants,
            ..TrafficConfig::default()
        },
    };
    let before = probe.sample().await;
    let window_start = chrono::Utc::now();
    let samples = Arc::new(Mutex::new(vec![before.clone()]));
    let sampler = {
        let samples = samples.clone();
        let probe = probe.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(2));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let sample = probe.sample().await;
                samples.lock().await.push(sample);
            }
        })
    };
    let mut timers = Vec::new();
    for (at, action) in actions {
        timers.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            action();
        }));
    }
    let driven = drive(config).await;
    let window_end = chrono::Utc::now();
    let after_drive = probe.sample().await;
    sampler.abort();
    for timer in timers {
        let _ = timer.await;
    }
    let drive_summary = driven?;
    let drain_started = Instant::now();
    let mut last = after_drive.clone();
    while last.backlog() > 0.0 && drain_started.elapsed() < drain_limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = probe.sample().await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    if last.backlog() > 0.0 {
        eprintln!(
            "bench: {name}: {} event(s) still not committed after {drain_limit:?}",
            last.backlog()
        );
    }
    let mut samples = std::mem::take(&mut *samples.lock().await);
    samples.push(after_drive.clone());
    let seconds = (after_drive.t - before.t).max(1e-9);
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t - before.t >= seconds * 0.2)
        .collect();
    let outcome = Outcome {
        name: name.to_owned(),
        batch_size: load.batch_size,
        concurrency: load.concurrency,
        offered_rate: load.rate,
        gateway_accepted_per_second: (after_drive.gateway_accepted - before.gateway_accepted)
            / seconds,
        landed_per_second: (after_drive.processor_consumed - before.processor_consumed) / seconds,
        backlog_growth_per_second: slope(&steady),
        backlog_at_end: after_drive.backlog(),
        drain_seconds,
        drain_end: last.clone(),
        cpu_s: CpuSeconds {
            gateway: last.gateway_cpu_s - before.gateway_cpu_s,
            processor: last.processor_cpu_s - before.processor_cpu_s,
            broker: last.broker_cpu_s - before.broker_cpu_s,
            database: last.database_cpu_s - before.database_cpu_s,
            load_generator: last.load_generator_cpu_s - before.load_generator_cpu_s,
            gateway_events: last.gateway_accepted - before.gateway_accepted,
            processor_events: last.processor_consumed - before.processor_consumed,
        },
        drive: drive_summary,
        samples,
        window_start,
        window_end,
    };
    eprintln!(
        "bench: {name}: gateway accepted {:.0} events/s, processor committed {:.0} events/s, \
         backlog growth {:.0}/s, drained in {:.1} s",
        outcome.gateway_accepted_per_second,
        outcome.landed_per_second,
        outcome.backlog_growth_per_second,
        outcome.drain_seconds
    );
    Ok(outcome)
}

/// Least-squares slope of the backlog over time.
fn slope(samples: &[&Sample]) -> f64 {
    if samples.len() < 3 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.t).sum::<f64>() / n;
    let mean_b = samples.iter().map(|s| s.backlog()).sum::<f64>() / n;
    let covariance: f64 = samples
        .iter()
        .map(|s| (s.t - mean_t) * (s.backlog() - mean_b))
        .sum();
    let variance: f64 = samples.iter().map(|s| (s.t - mean_t).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_tallied_from_complete_log_lines_once() {
        let dir = std::env::temp_dir().join(format!("bench-tally-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("processor.log");
        let line =
            "DEBUG processor::stream::pipeline: batch committed records=30 inserted=28 duplicates=2\n";
        std::fs::write(
            &log,
            format!("{line}INFO other\n{line}DEBUG processor::stream::pipeline: batch com"),
        )
        .expect("write");
        let mut tally = CommitTally::default();
        tally.update(&log);
        assert_eq!((tally.consumed, tally.inserted), (60.0, 56.0));
        tally.update(&log);
        assert_eq!(tally.consumed, 60.0, "lines are counted once");
        let mut more = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        std::io::Write::write_all(&mut more, b"mitted records=5 inserted=5\n").expect("append");
        tally.update(&log);
        assert_eq!((tally.consumed, tally.inserted), (65.0, 61.0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backlog_slope_is_events_per_second() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i as f64,
                gateway_accepted: 1000.0 * i as f64,
                processor_consumed: 900.0 * i as f64,
                ..Sample::default()
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        assert!((slope(&refs) - 100.0).abs() < 1e-6);
        assert_eq!(per_100k(2.0, 200_000.0), 1.0);
    }
}
