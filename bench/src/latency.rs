//! Accept → commit latency of every event, exactly.
//!
//! The gateway stamps `received_at` when the request arrives; the processor
//! logs, for each committed batch, the time its transaction committed and
//! the next offset of every partition in it ("batch committed",
//! `committed_at`, `next_offsets`). A row of `gateway_mode_audit` carries
//! its `source_partition` and `source_offset`, so its commit is the first
//! logged batch whose next offset for that partition lies beyond the row's
//! offset. That gives every event's latency from HTTP accept to the commit
//! that made it visible, recorded in an hdrhistogram; no sampling and no
//! histogram buckets of the processor's metrics are involved.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Commits seen in the processor's log: per partition, (next offset,
/// commit time) in commit order.
#[derive(Debug, Default)]
pub struct CommitLog {
    by_partition: HashMap<i32, Vec<(i64, DateTime<Utc>)>>,
}

impl CommitLog {
    pub fn parse(log: &str, topic: &str) -> CommitLog {
        let mut commits = CommitLog::default();
        for line in log.lines().filter(|l| l.contains("batch committed")) {
            let Some(committed_at) = field(line, "committed_at=")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
            else {
                continue;
            };
            let Some(offsets) = line
                .find("next_offsets={")
                .map(|at| &line[at + "next_offsets={".len()..])
                .and_then(|rest| rest.split('}').next())
            else {
                continue;
            };
            // {("usage-events", 0): 123, ("usage-events", 3): 7}
            for entry in offsets.split(", (").map(|e| e.trim_start_matches('(')) {
                let Some((key, next)) = entry.rsplit_once(": ") else {
                    continue;
                };
                let Some((entry_topic, partition)) = key.trim_end_matches(')').split_once(", ")
                else {
                    continue;
                };
                if entry_topic.trim_matches('"') != topic {
                    continue;
                }
                let (Ok(partition), Ok(next)) =
                    (partition.trim().parse::<i32>(), next.trim().parse::<i64>())
                else {
                    continue;
                };
                commits
                    .by_partition
                    .entry(partition)
                    .or_default()
                    .push((next, committed_at));
            }
        }
        commits
    }

    pub fn batches(&self) -> usize {
        self.by_partition.values().map(Vec::len).sum()
    }

    /// When the record at `offset` of `partition` was committed.
    pub fn commit_time(&self, partition: i32, offset: i64) -> Option<DateTime<Utc>> {
        let commits = self.by_partition.get(&partition)?;
        let index = commits.partition_point(|(next, _)| *next <= offset);
        commits.get(index).map(|(_, at)| *at)
    }
}

/// The value after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyMs {
    pub events: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            events: histogram.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

/// A stored row: received_at, source_partition, source_offset, ingested_at.
pub type StoredRow = (DateTime<Utc>, i32, i64, DateTime<Utc>);

/// Accept → start of the inserting transaction (`ingested_at` is the
/// transaction's `now()`), µs: the part of the latency spent before the
/// processor's write began (gateway, broker, fetch, batching), which
/// separates it from the transaction itself.
pub fn accept_to_transaction(rows: &[StoredRow]) -> Histogram<u64> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds");
    for (received_at, _, _, ingested_at) in rows {
        let micros = (*ingested_at - *received_at)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .max(1);
        let _ = histogram.record(u64::try_from(micros).unwrap_or(u64::MAX));
    }
    histogram
}

/// The accept → commit histogram (µs) of `rows` = (received_at,
/// partition, offset). Rows whose commit is not in the log are counted and
/// returned separately.
pub fn accept_to_commit(
    commits: &CommitLog,
    rows: &[(DateTime<Utc>, i32, i64)],
) -> (Histogram<u64>, u64) {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds");
    let mut unmatched = 0;
    for (received_at, partition, offset) in rows {
        match commits.commit_time(*partition, *offset) {
            Some(committed_at) => {
                let micros = (committed_at - *received_at)
                    .num_microseconds()
                    .unwrap_or(i64::MAX)
                    .max(1);
                let _ = histogram.record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            None => unmatched += 1,
        }
    }
    (histogram, unmatched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_come_from_the_first_batch_past_the_offset() {
        let log = "\
2026-01-01T00:00:00.1Z DEBUG processor::stream::pipeline: batch committed records=3 inserted=3 duplicates=0 duration_ms=4 committed_at=2026-01-01T00:00:00.100000+00:00 next_offsets={(\"usage-events\", 0): 10, (\"usage-events\", 2): 4}
2026-01-01T00:00:00.2Z INFO processor: unrelated line
2026-01-01T00:00:00.3Z DEBUG processor::stream::pipeline: batch committed records=1 inserted=1 duplicates=0 duration_ms=2 committed_at=2026-01-01T00:00:00.300000+00:00 next_offsets={(\"usage-events\", 0): 12}
";
        let commits = CommitLog::parse(log, "usage-events");
        assert_eq!(commits.batches(), 3);
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("valid")
                .with_timezone(&Utc)
        };
        assert_eq!(
            commits.commit_time(0, 9),
            Some(at("2026-01-01T00:00:00.1Z"))
        );
        assert_eq!(
            commits.commit_time(0, 10),
            Some(at("2026-01-01T00:00:00.3Z"))
        );
        assert_eq!(
            commits.commit_time(2, 3),
            Some(at("2026-01-01T00:00:00.1Z"))
        );
        assert_eq!(commits.commit_time(0, 12), None);
        assert_eq!(commits.commit_time(1, 0), None);

        let rows = [
            (at("2026-01-01T00:00:00.090Z"), 0, 5),
            (at("2026-01-01T00:00:00.250Z"), 0, 11),
            (at("2026-01-01T00:00:00.250Z"), 5, 0),
        ];
        let (histogram, unmatched) = accept_to_commit(&commits, &rows);
        assert_eq!(unmatched, 1);
        assert_eq!(histogram.len(), 2);
        assert!(histogram.max() >= 49_900 && histogram.max() <= 50_100);
    }
}
