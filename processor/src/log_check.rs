//! Whether a partition's log still reaches a stored position. A stored next
//! offset beyond the log's end (the topic was deleted and recreated, the
//! cluster replaced, an unclean leader election, a database restored from a
//! newer backup than the log) or below its start (records deleted by
//! retention before they were stored) must never be consumed from: a
//! consumer would either wait for offsets that belong to other records or
//! be reset by the client to another position, and the records in between
//! would be skipped without a trace.
//!
//! The check reads the partition's watermarks first. Some brokers report a
//! high watermark below the real end of the log (one test broker reports
//! the base offset of the last batch plus one), so a watermark that
//! contradicts the stored offset is not trusted alone: the log is probed for
//! the record just below the stored offset (or at it, below the start). Only
//! a record actually read clears the partition; a probe that reads nothing
//! keeps it held, so every doubt ends in "do not consume, alert".
//!
//! Offsets alone cannot tell a recreated log that has already grown past
//! the stored offset from the old one. So each stored offset keeps a mark
//! of the last record it passed (its offset and a digest of its key and
//! value, [`crate::offsets::LogMark`]), and a log whose watermarks agree is
//! read back at that offset: another record there, or none, means the log
//! was replaced, and the partition is held like the others.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sha2::{Digest, Sha256};

use crate::offsets::LogMark;

/// How long one watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe waits for the records it looks for. A broker answers a
/// fetch of an existing record at once; only a missing record waits it out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LogCheckError {
    #[error("cannot create the Kafka client that checks the log: {0}")]
    Create(KafkaError),
}

/// The partition's log bounds as the broker reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// What the log says about a stored next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The log holds the position: consuming from it skips nothing.
    InLog,
    /// The stored offset is beyond the log's end: the log the offsets were
    /// stored for is not this one.
    AheadOfLog(Watermarks),
    /// The stored offset is below the log's start: records were deleted
    /// before they were stored.
    BehindLog(Watermarks),
    /// The log reaches the stored offset, but the record the offset was
    /// stored after is not where it was: the topic was deleted and
    /// recreated (or the cluster replaced) and the new log grew past it.
    Replaced { last_offset: i64 },
    /// The broker did not say; retried later.
    Unknown(String),
}

impl Verdict {
    /// The `reason` label of `tokenledger_partition_blocked`; None when the
    /// partition may be consumed.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Verdict::InLog => None,
            Verdict::AheadOfLog(_) => Some(REASON_AHEAD),
            Verdict::BehindLog(_) => Some(REASON_BEHIND),
            Verdict::Replaced { .. } => Some(REASON_REPLACED),
            Verdict::Unknown(_) => Some(REASON_UNKNOWN),
        }
    }

    /// Words for operators (`processor offsets show`, log lines).
    pub fn describe(&self) -> String {
        match self {
            Verdict::InLog => "ok".to_owned(),
            Verdict::AheadOfLog(_) => {
                "ahead of the log: the log ends before the stored offset (topic recreated, \
                 new cluster, unclean leader election or restored database)"
                    .to_owned()
            }
            Verdict::BehindLog(_) => {
                "behind the log: records between the stored offset and the log start were \
                 deleted before they were stored"
                    .to_owned()
            }
            Verdict::Replaced { last_offset } => format!(
                "log replaced: the record at offset {last_offset}, the last one stored, is not \
                 the one stored (topic deleted and recreated, or a new cluster)"
            ),
            Verdict::Unknown(why) => format!("unknown: {why}"),
        }
    }
}

pub const REASON_AHEAD: &str = "offset_ahead_of_log";
pub const REASON_BEHIND: &str = "offset_behind_log";
pub const REASON_UNKNOWN: &str = "log_unknown";
pub const REASON_REPLACED: &str = "log_replaced";
/// Every reason, so each partition's series exist from its assignment on.
pub const REASONS: [&str; 4] = [REASON_AHEAD, REASON_BEHIND, REASON_REPLACED, REASON_UNKNOWN];

/// The digest a [`crate::offsets::LogMark`] keeps of a record: SHA-256 of
/// its key and value, each length-prefixed (absent and empty differ).
pub fn record_digest(key: Option<&[u8]>, value: Option<&[u8]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [key, value] {
        match part {
            None => hasher.update(u64::MAX.to_be_bytes()),
            Some(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
        }
    }
    hasher.finalize().into()
}

/// The verdict on a mark given the first record read at or after its
/// offset (offset and digest), or None when nothing could be read.
pub fn judge_mark(mark: &LogMark, read: Option<(i64, [u8; 32])>) -> Verdict {
    match read {
        Some((offset, digest)) if offset == mark.offset && digest[..] == mark.sha256[..] => {
            Verdict::InLog
        }
        Some(_) => Verdict::Replaced {
            last_offset: mark.offset,
        },
        None => Verdict::Unknown(format!(
            "the record at offset {}, the last one stored, could not be read back",
            mark.offset
        )),
    }
}

/// Which probe answers a verdict needs: the offset whose record must exist.
/// None: the watermarks decide alone.
pub fn probe_needed(next_offset: i64, watermarks: Watermarks) -> Option<i64> {
    if next_offset > watermarks.high {
        Some(next_offset - 1)
    } else if next_offset < watermarks.low {
        Some(next_offset)
    } else {
        None
    }
}

/// The verdict for `next_offset` given the watermarks and, when
/// [`probe_needed`] asked for one, whether a record at or beyond the probed
/// offset was read.
pub fn judge(next_offset: i64, watermarks: Watermarks, probe_found: Option<bool>) -> Verdict {
    match (probe_needed(next_offset, watermarks), probe_found) {
        (None, _) | (Some(_), Some(true)) => Verdict::InLog,
        (Some(_), _) if next_offset > watermarks.high => Verdict::AheadOfLog(watermarks),
        (Some(_), _) => Verdict::BehindLog(watermarks),
    }
}

/// A client of its own (never in the consumer group) for watermark queries
/// and probes, so a check never disturbs the group member's fetch positions.
pub struct LogChecker {
    consumer: BaseConsumer,
}

impl std::fmt::Debug for LogChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogChecker").finish_non_exhaustive()
    }
}

impl LogChecker {
    /// `base` carries the brokers and the operator's properties; `group_id`
    /// is only a name for this client (it never joins or commits).
    pub fn new(base: &ClientConfig, group_id: &str) -> Result<Self, LogCheckError> {
        let mut config = base.clone();
        config
            .set("group.id", format!("{group_id}.log-check"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Never jump elsewhere: a probe either reads what it asked for or
            // reads nothing.
            .set("auto.offset.reset", "error");
        let consumer = config.create().map_err(LogCheckError::Create)?;
        Ok(Self { consumer })
    }

    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<Watermarks, KafkaError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
        Ok(Watermarks { low, high })
    }

    /// The partition count the broker reports for `topic` (0: unknown topic).
    pub fn partition_count(&self, topic: &str) -> Result<usize, KafkaError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), WATERMARK_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// For each `(partition, offset)`: whether a record at or beyond the
    /// offset could be read within the probe timeout.
    pub fn probe(&self, topic: &str, wanted: &BTreeMap<i32, i64>) -> BTreeMap<i32, bool> {
        let read = self.read_first(topic, wanted);
        wanted
            .keys()
            .map(|partition| (*partition, read.contains_key(partition)))
            .collect()
    }

    /// For each `(partition, offset)`: the offset and digest of the first
    /// record read at or beyond the offset within the probe timeout; absent
    /// when none was read.
    pub fn read_first(
        &self,
        topic: &str,
        wanted: &BTreeMap<i32, i64>,
    ) -> BTreeMap<i32, (i64, [u8; 32])> {
        let mut found = BTreeMap::new();
        if wanted.is_empty() {
            return found;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in wanted {
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(%error, partition, "cannot build a probe of the log");
                return found;
            }
        }
        if let Err(error) = self.consumer.assign(&list) {
            tracing::warn!(%error, "cannot start a probe of the log");
            return found;
        }
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while found.len() < wanted.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    if wanted
                        .get(&partition)
                        .is_some_and(|offset| message.offset() >= *offset)
                    {
                        found.entry(partition).or_insert_with(|| {
                            (
                                message.offset(),
                                record_digest(message.key(), message.payload()),
                            )
                        });
                    }
                }
                // Out of range or not yet there: the answer stays "not found".
                Some(Err(error)) => tracing::debug!(%error, "probe of the log"),
                None => {}
            }
        }
        if let Err(error) = self.consumer.unassign() {
            tracing::debug!(%error, "ending a probe of the log");
        }
        found
    }

    /// Verdicts for the stored next offsets of `stored` (partition → next
    /// offset). Watermarks first; a probe for those they contradict; then
    /// the record each of `marks` names, read back where the log reaches it.
    pub fn check(
        &self,
        topic: &str,
        stored: &BTreeMap<i32, i64>,
        marks: &HashMap<i32, LogMark>,
    ) -> BTreeMap<i32, Verdict> {
        let mut verdicts = BTreeMap::new();
        let mut known: HashMap<i32, Watermarks> = HashMap::new();
        let mut to_probe = BTreeMap::new();
        for (partition, next_offset) in stored {
            match self.watermarks(topic, *partition) {
                Ok(watermarks) => {
                    known.insert(*partition, watermarks);
                    if let Some(offset) = probe_needed(*next_offset, watermarks) {
                        to_probe.insert(*partition, offset);
                    }
                }
                Err(error) => {
                    verdicts.insert(
                        *partition,
                        Verdict::Unknown(format!("the broker did not report watermarks: {error}")),
                    );
                }
            }
        }
        let probed = self.probe(topic, &to_probe);
        for (&partition, &watermarks) in &known {
            let next_offset = stored[&partition];
            let verdict = judge(next_offset, watermarks, probed.get(&partition).copied());
            if verdict == Verdict::InLog && to_probe.contains_key(&partition) {
                tracing::debug!(
                    topic,
                    partition,
                    stored_offset = next_offset,
                    low_watermark = watermarks.low,
                    high_watermark = watermarks.high,
                    "the broker's watermarks disagree with the stored offset, but the log holds it"
                );
            }
            verdicts.insert(partition, verdict);
        }
        // A mark below the log's start was removed by retention: nothing
        // left to compare, and the watermarks have judged the rest.
        let to_read: BTreeMap<i32, i64> = marks
            .iter()
            .filter(|(partition, mark)| {
                verdicts.get(*partition) == Some(&Verdict::InLog)
                    && stored
                        .get(*partition)
                        .is_some_and(|next| mark.offset < *next)
                    && known
                        .get(*partition)
                        .is_some_and(|watermarks| mark.offset >= watermarks.low)
            })
            .map(|(partition, mark)| (*partition, mark.offset))
            .collect();
        let read = self.read_first(topic, &to_read);
        for partition in to_read.keys() {
            let verdict = judge_mark(&marks[partition], read.get(partition).copied());
            verdicts.insert(*partition, verdict);
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Watermarks = Watermarks { low: 10, high: 50 };

    #[test]
    fn offsets_within_the_watermarks_need_no_probe() {
        for next in [10, 30, 50] {
            assert_eq!(probe_needed(next, LOG), None, "{next}");
            assert_eq!(judge(next, LOG, None), Verdict::InLog);
        }
    }

    #[test]
    fn beyond_the_end_is_ahead_unless_the_record_below_is_read() {
        assert_eq!(probe_needed(51, LOG), Some(50));
        assert_eq!(
            judge(51, LOG, Some(true)),
            Verdict::InLog,
            "a stale high watermark"
        );
        assert_eq!(judge(51, LOG, Some(false)), Verdict::AheadOfLog(LOG));
        assert_eq!(
            judge(51, LOG, None),
            Verdict::AheadOfLog(LOG),
            "no probe answer is no evidence"
        );
    }

    #[test]
    fn below_the_start_is_behind_unless_the_record_is_read() {
        assert_eq!(probe_needed(3, LOG), Some(3));
        assert_eq!(judge(3, LOG, Some(false)), Verdict::BehindLog(LOG));
        assert_eq!(judge(3, LOG, Some(true)), Verdict::InLog);
    }

    #[test]
    fn an_empty_recreated_log_holds_nothing_stored() {
        let empty = Watermarks { low: 0, high: 0 };
        assert_eq!(judge(0, empty, None), Verdict::InLog);
        assert_eq!(judge(21, empty, Some(false)), Verdict::AheadOfLog(empty));
    }

    #[test]
    fn a_mark_holds_only_where_its_own_record_is_read_back() {
        let digest = record_digest(Some(b"acme"), Some(b"{}"));
        let mark = LogMark {
            offset: 1,
            sha256: digest.to_vec(),
        };
        assert_eq!(judge_mark(&mark, Some((1, digest))), Verdict::InLog);
        let other = record_digest(Some(b"acme"), Some(b"{\"id\":1}"));
        assert_eq!(
            judge_mark(&mark, Some((1, other))),
            Verdict::Replaced { last_offset: 1 }
        );
        assert_eq!(
            judge_mark(&mark, Some((2, digest))),
            Verdict::Replaced { last_offset: 1 },
            "the record is not where it was"
        );
        assert!(matches!(judge_mark(&mark, None), Verdict::Unknown(_)));
        assert_ne!(
            record_digest(None, Some(b"x")),
            record_digest(Some(b""), Some(b"x"))
        );
    }

    #[test]
    fn reasons_name_the_blocked_series() {
        assert_eq!(Verdict::InLog.reason(), None);
        assert_eq!(Verdict::AheadOfLog(LOG).reason(), Some(REASON_AHEAD));
        assert_eq!(Verdict::BehindLog(LOG).reason(), Some(REASON_BEHIND));
        assert_eq!(Verdict::Unknown("x".into()).reason(), Some(REASON_UNKNOWN));
        assert!(REASONS.contains(&REASON_UNKNOWN));
    }
}
