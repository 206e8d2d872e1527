//! The report: every measurement, the ceilings, the ratios and the targets,
//! as JSON and as a Markdown table.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::ceilings::Ceiling;
use crate::latency::LatencyMs;
use crate::scenarios::{Outcome, PeakRss};
use crate::stack::{DatabaseKind, Overrides};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyScenario {
    pub accept_to_commit_ms: LatencyMs,
    /// The part before the inserting transaction started.
    pub accept_to_transaction_start_ms: LatencyMs,
    /// Rows whose commit the processor's log does not show (should be 0).
    pub rows_without_logged_commit: u64,
    /// Partition commits read from the processor's log.
    pub partition_commits_logged: usize,
    pub outcome: Outcome,
}

#[derive(Debug, Serialize)]
pub struct StallScenario {
    pub stall_started_s: f64,
    pub stall_seconds: f64,
    pub gateway_rss_before_mib: f64,
    pub gateway_rss_max_during_mib: f64,
    pub processor_rss_before_mib: f64,
    pub processor_rss_max_during_mib: f64,
    pub max_backlog: f64,
    pub gateway_503_responses: f64,
    pub outcome: Outcome,
}

impl StallScenario {
    pub fn new(outcome: Outcome, stall_at: Duration, stall_for: Duration) -> StallScenario {
        let t0 = outcome.samples.first().map_or(0.0, |s| s.t);
        let start = stall_at.as_secs_f64();
        let end = start + stall_for.as_secs_f64();
        let before = outcome
            .samples
            .iter()
            .rfind(|s| s.t - t0 < start)
            .cloned()
            .unwrap_or_default();
        let during: Vec<_> = outcome
            .samples
            .iter()
            .filter(|s| s.t - t0 >= start && s.t - t0 <= end + 1.0)
            .collect();
        let max = |f: fn(&crate::scenarios::Sample) -> f64| {
            during.iter().map(|s| f(s)).fold(0.0_f64, f64::max)
        };
        let last_503 = outcome.samples.last().map_or(0.0, |s| s.gateway_503);
        let first_503 = outcome.samples.first().map_or(0.0, |s| s.gateway_503);
        StallScenario {
            stall_started_s: start,
            stall_seconds: stall_for.as_secs_f64(),
            gateway_rss_before_mib: before.gateway_rss_mib,
            gateway_rss_max_during_mib: max(|s| s.gateway_rss_mib),
            processor_rss_before_mib: before.processor_rss_mib,
            processor_rss_max_during_mib: max(|s| s.processor_rss_mib),
            max_backlog: max(|s| s.backlog()),
            gateway_503_responses: last_503 - first_503,
            outcome,
        }
    }
}

/// The processor catching up on a backlog alone: stopped (SIGSTOP) while
/// the gateway filled the topic, then resumed. Nothing else runs during the
/// drain, so its CPU per event is the processor's own cost, not inflated by
/// sharing two cores with the gateway and the load generator.
#[derive(Debug, Serialize)]
pub struct CatchUpScenario {
    pub backlog: f64,
    pub drain_seconds: f64,
    pub events_per_second: f64,
    pub processor_cpu_s: f64,
    pub broker_cpu_s: f64,
    pub database_cpu_s: f64,
    pub outcome: Outcome,
}

impl CatchUpScenario {
    pub fn new(outcome: Outcome) -> CatchUpScenario {
        let after_drive = outcome.samples.last().cloned().unwrap_or_default();
        let end = &outcome.drain_end;
        let events = end.processor_consumed - after_drive.processor_consumed;
        CatchUpScenario {
            backlog: after_drive.backlog(),
            drain_seconds: outcome.drain_seconds,
            events_per_second: events / outcome.drain_seconds.max(1e-9),
            processor_cpu_s: end.processor_cpu_s - after_drive.processor_cpu_s,
            broker_cpu_s: end.broker_cpu_s - after_drive.broker_cpu_s,
            database_cpu_s: end.database_cpu_s - after_drive.database_cpu_s,
            outcome,
        }
    }

    pub fn processor_per_100k(&self) -> f64 {
        self.processor_cpu_s / self.backlog.max(1.0) * 100_000.0
    }
}

#[derive(Debug, Serialize)]
pub struct MetricsScrape {
    pub seconds: f64,
    pub bytes: usize,
    pub series: usize,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: Option<f64>,
    pub unit: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub database: String,
    pub database_kind: String,
    pub quick: bool,
    pub processor_overrides: Vec<(String, String)>,
    pub gateway_overrides: Vec<(String, String)>,
    pub migrate_output: String,
    pub raw_produce: Option<Ceiling>,
    pub raw_consume: Option<Ceiling>,
    pub raw_copy: Option<Ceiling>,
    pub single_event: Option<Outcome>,
    /// Single-event requests with the processor stopped (SIGSTOP).
    pub single_event_gateway_only: Option<Outcome>,
    pub batch_100: Option<Outcome>,
    /// The first sustained run, kept when its backlog grew.
    pub sustained_max: Option<Outcome>,
    pub sustained: Option<Outcome>,
    pub latency: Option<LatencyScenario>,
    pub stall: Option<StallScenario>,
    pub catch_up: Option<CatchUpScenario>,
    pub peak_rss: PeakRss,
    pub processor_metrics_scrape: Option<MetricsScrape>,
    /// Budget reservations over HTTP.
    pub reservations: Vec<crate::reservations::ReservationRun>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn new(kind: &DatabaseKind, quick: bool, overrides: &Overrides) -> Report {
        Report {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: Machine::read(),
            database: kind.label().to_owned(),
            database_kind: kind.short().to_owned(),
            quick,
            processor_overrides: overrides.processor.clone(),
            gateway_overrides: overrides.gateway.clone(),
            migrate_output: String::new(),
            raw_produce: None,
            raw_consume: None,
            raw_copy: None,
            single_event: None,
            single_event_gateway_only: None,
            batch_100: None,
            sustained_max: None,
            sustained: None,
            latency: None,
            stall: None,
            catch_up: None,
            peak_rss: PeakRss::default(),
            processor_metrics_scrape: None,
            reservations: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// The end-to-end rate: the sustained run whose backlog did not grow.
    fn end_to_end(&self) -> Option<f64> {
        self.sustained.as_ref().map(|o| o.landed_per_second)
    }

    fn processor_cpu_per_100k(&self) -> Option<f64> {
        self.sustained
            .as_ref()
            .map(|o| o.cpu_s.processor_per_100k())
    }

    pub fn finish(&mut self) {
        let target =
            |name: &str, goal: &str, measured: Option<f64>, unit: &str, ok: fn(f64) -> bool| {
                Target {
                    name: name.to_owned(),
                    target: goal.to_owned(),
                    measured,
                    unit: unit.to_owned(),
                    met: measured.map(ok),
                }
            };
        self.targets = vec![
            target(
                "end-to-end batched ingest, sustained",
                ">= 40000",
                self.end_to_end(),
                "events/s",
                |v| v >= 40_000.0,
            ),
            target(
                "gateway, single-event requests (processor paused)",
                ">= 15000",
                self.single_event_gateway_only
                    .as_ref()
                    .map(|o| o.gateway_accepted_per_second),
                "events/s",
                |v| v >= 15_000.0,
            ),
            target(
                "accept -> commit p99 at fixed rate",
                "<= 100",
                self.latency.as_ref().map(|l| l.accept_to_commit_ms.p99),
                "ms",
                |v| v <= 100.0,
            ),
            target(
                "gateway added latency p99",
                "<= 3",
                self.latency.as_ref().and_then(|l| {
                    l.outcome
                        .drive
                        .server_timing_ms
                        .as_ref()
                        .map(|t| t.gateway.p99)
                }),
                "ms",
                |v| v <= 3.0,
            ),
            target(
                "processor CPU per 100k events",
                "<= 0.25",
                self.processor_cpu_per_100k(),
                "CPU-s",
                |v| v <= 0.25,
            ),
        ];
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let produce = self.raw_produce.as_ref().map(|c| c.events_per_second);
        let copy = self.raw_copy.as_ref().map(|c| c.events_per_second);
        let ceiling_e2e = match (produce, copy) {
            (Some(p), Some(c)) => Some(p.min(c)),
            (p, c) => p.or(c),
        };
        let _ = writeln!(
            out,
            "tokenledger benchmark, {} — {} × {} ({:.0} GiB), database: {}{}\n",
            self.date,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.memory_gib,
            self.database,
            if self.quick { " (quick run)" } else { "" }
        );
        let _ = writeln!(out, "| measurement | result | ceiling | ratio | target |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|");
        let rate = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.0}/s"));
        let ratio = |v: Option<f64>, c: Option<f64>| match (v, c) {
            (Some(v), Some(c)) if c > 0.0 => format!("{:.0}%", v / c * 100.0),
            _ => "—".to_owned(),
        };
        let mut row = |name: &str, value: String, ceiling: String, r: String, target: String| {
            let _ = writeln!(out, "| {name} | {value} | {ceiling} | {r} | {target} |");
        };
        row(
            "raw produce, rdkafka → broker (ceiling)",
            rate(produce),
            String::new(),
            String::new(),
            String::new(),
        );
        if let Some(consume) = &self.raw_consume {
            row(
                "raw consume, broker → rdkafka with the processor's settings (floor)",
                format!(
                    "{:.0}/s, {:.3} CPU-s per 100k",
                    consume.events_per_second,
                    consume.cpu_s_per_100k.unwrap_or(f64::NAN)
                ),
                String::new(),
                String::new(),
                String::new(),
            );
        }
        row(
            "raw binary COPY → gateway_mode_audit copy (ceiling)",
            rate(copy),
            String::new(),
            String::new(),
            String::new(),
        );
        let single = self
            .single_event
            .as_ref()
            .map(|o| o.gateway_accepted_per_second);
        row(
            "gateway accepted, single-event requests, whole pipeline running",
            rate(single),
            rate(produce),
            ratio(single, produce),
            String::new(),
        );
        let alone = self
            .single_event_gateway_only
            .as_ref()
            .map(|o| o.gateway_accepted_per_second);
        row(
            "gateway accepted, single-event requests, processor paused",
            rate(alone),
            rate(produce),
            ratio(alone, produce),
            self.target_text(1),
        );
        let batch = self
            .batch_100
            .as_ref()
            .map(|o| o.gateway_accepted_per_second);
        row(
            "gateway accepted, batches of 100",
            rate(batch),
            rate(produce),
            ratio(batch, produce),
            String::new(),
        );
        if let Some(max) = &self.sustained_max {
            row(
                &format!(
                    "end to end offered {}/s ({:.0} s; backlog grew {:.0}/s: not sustained)",
                    max.offered_rate, max.drive.elapsed_seconds, max.backlog_growth_per_second
                ),
                rate(Some(max.landed_per_second)),
                rate(ceiling_e2e),
                ratio(Some(max.landed_per_second), ceiling_e2e),
                String::new(),
            );
        }
        if let Some(sustained) = &self.sustained {
            row(
                &format!(
                    "end to end, sustained {:.0} s (backlog growth {:.0}/s)",
                    sustained.drive.elapsed_seconds, sustained.backlog_growth_per_second
                ),
                rate(Some(sustained.landed_per_second)),
                rate(ceiling_e2e),
                ratio(Some(sustained.landed_per_second), ceiling_e2e),
                self.target_text(0),
            );
        }
        if let Some(latency) = &self.latency {
            let l = &latency.accept_to_commit_ms;
            row(
                &format!(
                    "accept → commit at {} events/s ({} events)",
                    latency.outcome.offered_rate, l.events
                ),
                format!(
                    "p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms",
                    l.p50, l.p99, l.p999
                ),
                String::new(),
                String::new(),
                self.target_text(2),
            );
            let t = &latency.accept_to_transaction_start_ms;
            row(
                "  of which accept → start of the inserting transaction",
                format!("p50 {:.1} / p99 {:.1} ms", t.p50, t.p99),
                String::new(),
                String::new(),
                String::new(),
            );
            if let Some(timing) = &latency.outcome.drive.server_timing_ms {
                row(
                    "gateway added latency per request",
                    format!(
                        "p50 {:.2} / p99 {:.2} ms",
                        timing.gateway.p50, timing.gateway.p99
                    ),
                    format!(
                        "Kafka ack p50 {:.2} / p99 {:.2} ms",
                        timing.kafka.p50, timing.kafka.p99
                    ),
                    String::new(),
                    self.target_text(3),
                );
            }
        }
        let cpu = |o: &Option<Outcome>, gateway: bool| {
            o.as_ref().map(|o| {
                if gateway {
                    o.cpu_s.gateway_per_100k()
                } else {
                    o.cpu_s.processor_per_100k()
                }
            })
        };
        let seconds = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.3} s"));
        row(
            "gateway CPU per 100k events (single / batches of 100)",
            format!(
                "{} / {}",
                seconds(cpu(&self.single_event, true)),
                seconds(cpu(&self.batch_100, true))
            ),
            String::new(),
            String::new(),
            String::new(),
        );
        let consume_cpu = self.raw_consume.as_ref().and_then(|c| c.cpu_s_per_100k);
        let times = |v: Option<f64>| match (v, consume_cpu) {
            (Some(v), Some(floor)) if floor > 0.0 => format!("{:.1}× the floor", v / floor),
            _ => String::new(),
        };
        row(
            "processor CPU per 100k events (sustained)",
            seconds(self.processor_cpu_per_100k()),
            consume_cpu.map_or(String::new(), |c| format!("{c:.3} s raw consume")),
            times(self.processor_cpu_per_100k()),
            self.target_text(4),
        );
        if let Some(catch_up) = &self.catch_up {
            row(
                "processor catching up alone: rate, CPU per 100k events",
                format!(
                    "{:.0}/s, {} ({:.0} events)",
                    catch_up.events_per_second,
                    seconds(Some(catch_up.processor_per_100k())),
                    catch_up.backlog
                ),
                copy.map_or(String::new(), |c| format!("{c:.0}/s")),
                format!(
                    "{} of COPY; CPU {}",
                    ratio(Some(catch_up.events_per_second), copy),
                    times(Some(catch_up.processor_per_100k()))
                ),
                String::new(),
            );
        }
        if let Some(sustained) = &self.sustained {
            let c = &sustained.cpu_s;
            let per = |s: f64| seconds(Some(s / c.processor_events.max(1.0) * 100_000.0));
            row(
                "broker / database / load generator CPU per 100k events (sustained)",
                format!(
                    "{} / {} / {}",
                    per(c.broker),
                    per(c.database),
                    per(c.load_generator)
                ),
                String::new(),
                String::new(),
                String::new(),
            );
        }
        row(
            "peak RSS gateway / processor / broker / database",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} MiB",
                self.peak_rss.gateway_mib,
                self.peak_rss.processor_mib,
                self.peak_rss.broker_mib,
                self.peak_rss.database_mib
            ),
            String::new(),
            String::new(),
            String::new(),
        );
        if let Some(scrape) = &self.processor_metrics_scrape {
            row(
                "one scrape of the processor's /metrics at the end",
                format!(
                    "{:.0} ms, {} series, {:.1} MB",
                    scrape.seconds * 1e3,
                    scrape.series,
                    scrape.bytes as f64 / 1e6
                ),
                String::new(),
                String::new(),
                String::new(),
            );
        }
        if let Some(stall) = &self.stall {
            row(
                &format!(
                    "database stalled {:.0} s at 5000 events/s: RSS gateway / processor",
                    stall.stall_seconds
                ),
                format!(
                    "{:.0}→{:.0} / {:.0}→{:.0} MiB",
                    stall.gateway_rss_before_mib,
                    stall.gateway_rss_max_during_mib,
                    stall.processor_rss_before_mib,
                    stall.processor_rss_max_during_mib
                ),
                format!("backlog max {:.0}", stall.max_backlog),
                String::new(),
                format!("drained in {:.1} s", stall.outcome.drain_seconds),
            );
        }
        out
    }

    fn target_text(&self, index: usize) -> String {
        let Some(target) = self.targets.get(index) else {
            return String::new();
        };
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        format!("{} {}: {verdict}", target.target, target.unit)
    }
}
