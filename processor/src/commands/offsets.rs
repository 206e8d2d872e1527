//! `processor offsets show|reset`: the operator's view of the stored
//! offsets (where each partition resumes) against the log, and the one
//! explicit way to move them. A reset writes `ingest_offsets` directly, in
//! one transaction that locks the rows it changes, and prints every
//! partition before and after; it refuses to skip records unless told to.
//!
//! A running processor rechecks the partitions it holds every few seconds
//! and picks a reset of those up by itself. A partition it is consuming
//! keeps its in-memory position, and its next batch moves the stored offset
//! forward again: stop the processors before resetting such a partition
//! (docs/runbooks.md).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::str::FromStr;

use clap::{Args, Subcommand};
use tokio_postgres::Client;

use crate::config::Config;
use crate::log_check::{LogCheckError, LogChecker, Verdict, Watermarks};
use crate::offsets::{self, StoredOffset};

#[derive(Debug, thiserror::Error)]
pub enum OffsetsAdminError {
    #[error(transparent)]
    LogCheck(#[from] LogCheckError),
    #[error(transparent)]
    Offsets(#[from] store::DbError),
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("the broker does not know topic {topic} and no offsets are stored for it")]
    UnknownTopic { topic: String },
    #[error("the broker did not report the watermarks of partition {partition}: {reason}")]
    Watermarks { partition: i32, reason: String },
    #[error(
        "refusing to skip records: {0}; pass --skip-records if those records are to be \
         given up"
    )]
    WouldSkip(String),
    #[error("the log check failed to run: {0}")]
    Join(String),
}

/// `processor offsets …`
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Print each partition's stored next offset, the log's watermarks and
    /// whether the log still reaches the stored offset.
    Show(Scope),
    /// Set stored next offsets, per partition, in one transaction; prints
    /// before and after.
    Reset(ResetArgs),
}

/// Which group and topic (defaults: the configured ones).
#[derive(Debug, Args)]
pub struct Scope {
    /// Consumer group (default: kafka.group_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Topic (default: kafka.topic).
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// `earliest` (the log's start), `latest` (the broker's high watermark)
    /// or an offset.
    #[arg(long, value_name = "earliest|latest|OFFSET")]
    pub to: Target,
    /// Only these partitions (repeatable; default: every partition).
    #[arg(long = "partition", value_name = "N")]
    pub partitions: Vec<i32>,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow moving a partition forward past records that were never
    /// stored (they are given up).
    #[arg(long)]
    pub skip_records: bool,
}

/// Where a reset moves a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Earliest,
    Latest,
    Offset(i64),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => Ok(Target::Earliest),
            "latest" => Ok(Target::Latest),
            other => match other.parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(Target::Offset(offset)),
                _ => Err(format!(
                    "expected earliest, latest or an offset ≥ 0, got {other:?}"
                )),
            },
        }
    }
}

/// One partition as `show` and `reset` see it.
#[derive(Debug, Clone)]
pub struct PartitionView {
    pub partition: i32,
    pub stored: Option<StoredOffset>,
    pub watermarks: Result<Watermarks, String>,
    /// None when nothing is stored (the partition starts at the beginning).
    pub verdict: Option<Verdict>,
}

/// The offset a reset gives `partition`, or why it must not.
pub fn reset_target(
    target: Target,
    stored: Option<i64>,
    watermarks: Watermarks,
    skip_records: bool,
) -> Result<i64, String> {
    let next = match target {
        Target::Earliest => watermarks.low,
        Target::Latest => watermarks.high,
        Target::Offset(offset) => offset,
    };
    // Records from here on exist and are not stored yet (below the log's
    // start nothing exists any more).
    let first_unstored = stored.unwrap_or(watermarks.low).max(watermarks.low);
    if next > first_unstored && first_unstored < watermarks.high && !skip_records {
        return Err(format!(
            "moving to {next} would never store offsets {first_unstored}..{}",
            next.min(watermarks.high) - 1
        ));
    }
    Ok(next)
}

/// Runs one `offsets` command, writing its report to `out`.
pub async fn run(
    config: &Config,
    client: &mut Client,
    command: OffsetsCommand,
    out: &mut impl Write,
) -> Result<(), OffsetsAdminError> {
    match command {
        OffsetsCommand::Show(scope) => {
            let (group, topic) = resolve(config, &scope);
            let views = views(config, client, &group, &topic, &[]).await?;
            writeln!(out, "consumer group {group}, topic {topic}")?;
            write!(out, "{}", render(&topic, &views))?;
        }
        OffsetsCommand::Reset(args) => reset(config, client, args, out).await?,
    }
    Ok(())
}

fn resolve(config: &Config, scope: &Scope) -> (String, String) {
    (
        scope
            .group
            .clone()
            .unwrap_or_else(|| config.kafka.group_id.clone()),
        scope
            .topic
            .clone()
            .unwrap_or_else(|| config.kafka.topic.clone()),
    )
}

/// The partitions of `topic` (those named, or every one the broker or the
/// database knows) with their stored offsets, watermarks and verdicts.
async fn views(
    config: &Config,
    client: &Client,
    group: &str,
    topic: &str,
    only: &[i32],
) -> Result<Vec<PartitionView>, OffsetsAdminError> {
    let stored: BTreeMap<i32, StoredOffset> = offsets::list(client, group, topic, false)
        .await?
        .into_iter()
        .map(|row| (row.partition, row))
        .collect();
    let base = crate::stream::consumer::client_config(&config.kafka);
    let group_owned = group.to_owned();
    let topic_owned = topic.to_owned();
    let only = only.to_vec();
    let stored_offsets: BTreeMap<i32, i64> = stored
        .iter()
        .map(|(p, row)| (*p, row.next_offset))
        .collect();
    let partitions_stored: Vec<i32> = stored.keys().copied().collect();
    let marks = offsets::load_marks(client, group, topic, &partitions_stored).await?;
    // rdkafka's calls block: keep them off the async workers
    let (partitions, watermarks, verdicts) = tokio::task::spawn_blocking(move || {
        let checker = LogChecker::new(&base, &group_owned)?;
        let count = checker.partition_count(&topic_owned).unwrap_or(0);
        let mut partitions: BTreeSet<i32> = (0..count as i32).collect();
        partitions.extend(stored_offsets.keys().copied());
        if !only.is_empty() {
            partitions = only.into_iter().collect();
        }
        let watermarks: BTreeMap<i32, Result<Watermarks, String>> = partitions
            .iter()
            .map(|p| {
                let marks = checker
                    .watermarks(&topic_owned, *p)
                    .map_err(|e| e.to_string());
                (*p, marks)
            })
            .collect();
        let to_check: BTreeMap<i32, i64> = stored_offsets
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect();
        let verdicts = checker.check(&topic_owned, &to_check, &marks);
        Ok::<_, OffsetsAdminError>((partitions, watermarks, verdicts))
    })
    .await
    .map_err(|e| OffsetsAdminError::Join(e.to_string()))??;
    if partitions.is_empty() {
        return Err(OffsetsAdminError::UnknownTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions
        .into_iter()
        .map(|partition| PartitionView {
            partition,
            stored: stored.get(&partition).cloned(),
            watermarks: watermarks
                .get(&partition)
                .cloned()
                .unwrap_or_else(|| Err("not asked".to_owned())),
            verdict: verdicts.get(&partition).cloned(),
        })
        .collect())
}

/// The `show` table: one line per partition.
pub fn render(topic: &str, views: &[PartitionView]) -> String {
    let mut text = format!(
        "{:<24} {:>9} {:>12} {:>12} {:>12}  {:<25} state\n",
        "topic", "partition", "stored", "low", "high", "stored at"
    );
    for view in views {
        let (low, high) = match &view.watermarks {
            Ok(marks) => (marks.low.to_string(), marks.high.to_string()),
            Err(_) => ("?".to_owned(), "?".to_owned()),
        };
        let (stored, at) = match &view.stored {
            Some(row) => (
                row.next_offset.to_string(),
                row.updated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let state = match (&view.verdict, &view.watermarks) {
            (Some(verdict), _) => verdict.describe(),
            (None, Ok(_)) => "nothing stored: starts at the beginning".to_owned(),
            (None, Err(error)) => format!("unknown: {error}"),
        };
        text.push_str(&format!(
            "{topic:<24} {:>9} {stored:>12} {low:>12} {high:>12}  {at:<25} {state}\n",
            view.partition
        ));
    }
    text
}

async fn reset(
    config: &Config,
    client: &mut Client,
    args: ResetArgs,
    out: &mut impl Write,
) -> Result<(), OffsetsAdminError> {
    let (group, topic) = resolve(config, &args.scope);
    let views = views(config, client, &group, &topic, &args.partitions).await?;
    let transaction = client.transaction().await?;
    // Locked: a batch committing meanwhile waits, and then its GREATEST
    // sees the reset (the runbook says to stop processors that consume the
    // partition).
    let before: BTreeMap<i32, i64> = offsets::list(&transaction, &group, &topic, true)
        .await?
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect();
    let mut targets = BTreeMap::new();
    let mut refusals = Vec::new();
    for view in &views {
        let watermarks =
            view.watermarks
                .clone()
                .map_err(|reason| OffsetsAdminError::Watermarks {
                    partition: view.partition,
                    reason,
                })?;
        let stored = before.get(&view.partition).copied();
        match reset_target(args.to, stored, watermarks, args.skip_records) {
            Ok(next) => {
                targets.insert(view.partition, next);
            }
            Err(why) => refusals.push(format!("partition {}: {why}", view.partition)),
        }
    }
    if !refusals.is_empty() {
        return Err(OffsetsAdminError::WouldSkip(refusals.join("; ")));
    }
    writeln!(
        out,
        "consumer group {group}, topic {topic}: {} partition(s){}",
        targets.len(),
        if args.dry_run {
            " (dry run: nothing is changed)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "{:>9} {:>12} {:>12} {:>12} {:>12}",
        "partition", "before", "after", "low", "high"
    )?;
    for view in &views {
        let Some(after) = targets.get(&view.partition) else {
            continue;
        };
        let shown_before = before
            .get(&view.partition)
            .map_or_else(|| "-".to_owned(), i64::to_string);
        let (low, high) = view
            .watermarks
            .as_ref()
            .map_or((0, 0), |marks| (marks.low, marks.high));
        writeln!(
            out,
            "{:>9} {shown_before:>12} {after:>12} {low:>12} {high:>12}",
            view.partition
        )?;
    }
    if args.dry_run {
        transaction.rollback().await?;
        return Ok(());
    }
    offsets::overwrite(&transaction, &group, &topic, &targets).await?;
    transaction.commit().await?;
    writeln!(
        out,
        "reset {} partition(s). A running processor resumes the partitions it holds within \
         seconds; a partition it is consuming keeps its own position, so stop the processors \
         before resetting those.",
        targets.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Watermarks = Watermarks { low: 0, high: 40 };

    #[test]
    fn targets_parse() {
        assert_eq!("earliest".parse::<Target>(), Ok(Target::Earliest));
        assert_eq!("latest".parse::<Target>(), Ok(Target::Latest));
        assert_eq!("17".parse::<Target>(), Ok(Target::Offset(17)));
        assert!("-1".parse::<Target>().is_err());
        assert!("first".parse::<Target>().is_err());
    }

    #[test]
    fn moving_back_is_always_allowed() {
        // a recreated topic: stored 120, the new log holds 0..40
        assert_eq!(reset_target(Target::Earliest, Some(120), LOG, false), Ok(0));
        assert_eq!(reset_target(Target::Latest, Some(120), LOG, false), Ok(40));
        assert_eq!(
            reset_target(Target::Offset(5), Some(120), LOG, false),
            Ok(5)
        );
    }

    #[test]
    fn skipping_unstored_records_needs_the_flag() {
        let refused = reset_target(Target::Latest, Some(10), LOG, false);
        assert_eq!(
            refused,
            Err("moving to 40 would never store offsets 10..39".to_owned())
        );
        assert_eq!(reset_target(Target::Latest, Some(10), LOG, true), Ok(40));
        assert!(
            reset_target(Target::Latest, None, LOG, false).is_err(),
            "nothing stored yet: every record would be skipped"
        );
        assert_eq!(
            reset_target(Target::Latest, Some(40), LOG, false),
            Ok(40),
            "already at the end"
        );
    }

    #[test]
    fn behind_the_log_moves_to_its_start_without_the_flag() {
        // retention deleted 0..25 before they were stored: nothing to skip
        let trimmed = Watermarks { low: 25, high: 40 };
        assert_eq!(
            reset_target(Target::Earliest, Some(10), trimmed, false),
            Ok(25)
        );
    }
}
