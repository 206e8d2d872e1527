//! Which assigned partitions this member consumes, and from where. A
//! partition is consumed from its stored next offset only when the log
//! still reaches that offset ([`crate::log_check`]); otherwise it is held:
//! left out of the fetch assignment, reported by an error line and the
//! `tokenledger_partition_blocked` gauge, and rechecked every few seconds.
//!
//! A partition held because its stored offset is beyond the log's end is
//! released only when the stored offset is moved *back* (by `processor
//! offsets reset`) to a position the log holds. The log growing past the
//! stored offset does not release it: those would be new records at old
//! offsets, and consuming from the stored offset would skip the ones below
//! it. In-flight batches of an earlier assignment can only move the stored
//! offset forward (`GREATEST`), so they never look like a reset. A
//! partition held because its offset is behind the log's start, or because
//! the broker did not answer, is released as soon as a check passes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::log_check::{LogChecker, Verdict, REASONS};
use crate::offsets::LogMark;
use crate::offsets::OffsetFloors;

/// How often held partitions are checked again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

pub const BLOCKED_METRIC: &str = "tokenledger_partition_blocked";

/// Where a consumed partition started: its stored offset, or the beginning
/// when nothing was stored.
type Start = Option<i64>;

#[derive(Debug)]
struct Held {
    /// The stored next offset the verdict was reached for.
    stored: i64,
    verdict: Verdict,
}

#[derive(Debug, Default)]
struct State {
    consuming: BTreeMap<i32, Start>,
    held: BTreeMap<i32, Held>,
    next_check: Option<Instant>,
}

/// The member's view of its partitions; used from the polling thread only
/// (rebalance callbacks run there too), the lock is for `&self` access.
pub struct PartitionGuard {
    topic: String,
    checker: LogChecker,
    floors: OffsetFloors,
    blocked: IntGaugeVec,
    state: Mutex<State>,
}

impl std::fmt::Debug for PartitionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionGuard")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PartitionGuard {
    pub fn new(
        topic: &str,
        checker: LogChecker,
        floors: OffsetFloors,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let blocked = IntGaugeVec::new(
            Opts::new(
                BLOCKED_METRIC,
                "1 while an assigned partition is not consumed because its stored next offset \
                 is beyond the log's end (offset_ahead_of_log) or below its start \
                 (offset_behind_log), or the log could not be checked (log_unknown).",
            ),
            &["partition", "reason"],
        )?;
        registry.register(Box::new(blocked.clone()))?;
        Ok(Self {
            topic: topic.to_owned(),
            checker,
            floors,
            blocked,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides, for newly assigned partitions and their stored offsets,
    /// which to consume and from where; the rest are held. Floors are set
    /// from the database's offsets.
    pub fn admit(
        &self,
        assigned: &[i32],
        stored: &HashMap<i32, i64>,
        marks: &HashMap<i32, LogMark>,
    ) -> Vec<(i32, Offset)> {
        let to_check: BTreeMap<i32, i64> = assigned
            .iter()
            .filter_map(|p| stored.get(p).map(|offset| (*p, *offset)))
            .collect();
        let verdicts = self.checker.check(&self.topic, &to_check, marks);
        let mut state = self.lock();
        let mut consume = Vec::new();
        for partition in assigned {
            let start = stored.get(partition).copied();
            self.floors
                .set(&self.topic, *partition, start.unwrap_or_default());
            let verdict = verdicts.get(partition).cloned().unwrap_or(Verdict::InLog);
            self.show(*partition, verdict.reason());
            state.held.remove(partition);
            state.consuming.remove(partition);
            match (start, verdict) {
                (start, Verdict::InLog) => {
                    state.consuming.insert(*partition, start);
                    consume.push((*partition, start.map_or(Offset::Beginning, Offset::Offset)));
                }
                (Some(stored), verdict) => {
                    self.report_held(*partition, stored, &verdict);
                    state.held.insert(*partition, Held { stored, verdict });
                }
                (None, verdict) => {
                    // unreachable: only stored offsets are checked
                    tracing::error!(partition, ?verdict, "a verdict without a stored offset");
                }
            }
        }
        if !state.held.is_empty() && state.next_check.is_none() {
            state.next_check = Some(Instant::now() + RECHECK_INTERVAL);
        }
        consume
    }

    /// Forgets revoked partitions; returns those that were being fetched
    /// (the ones to take out of an incremental assignment).
    pub fn revoke(&self, revoked: &[i32]) -> Vec<i32> {
        let mut state = self.lock();
        let mut fetched = Vec::new();
        for partition in revoked {
            if state.consuming.remove(partition).is_some() {
                fetched.push(*partition);
            }
            if state.held.remove(partition).is_some() {
                // another member owns it now and reports it
                self.show(*partition, None);
            }
        }
        if state.held.is_empty() {
            state.next_check = None;
        }
        fetched
    }

    /// Every [`RECHECK_INTERVAL`] while partitions are held: reads their
    /// stored offsets with `load` and releases those the rules allow.
    pub fn recheck<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        load: impl FnOnce(&[i32]) -> Result<(HashMap<i32, i64>, HashMap<i32, LogMark>), String>,
    ) {
        let held: Vec<(i32, i64)> = {
            let mut state = self.lock();
            match state.next_check {
                Some(at) if Instant::now() >= at => {}
                _ => return,
            }
            state.next_check = Some(Instant::now() + RECHECK_INTERVAL);
            state.held.iter().map(|(p, h)| (*p, h.stored)).collect()
        };
        let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
        let (stored, marks) = match load(&partitions) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot read stored offsets to recheck held partitions");
                return;
            }
        };
        let mut candidates = BTreeMap::new();
        for (partition, held_at) in &held {
            let Some(now) = stored.get(partition).copied() else {
                continue;
            };
            let was_ahead = matches!(
                self.lock().held.get(partition).map(|h| &h.verdict),
                Some(Verdict::AheadOfLog(_) | Verdict::Replaced { .. })
            );
            if was_ahead && now >= *held_at {
                // A batch of an earlier assignment committed meanwhile:
                // still the old log's position.
                if now > *held_at {
                    if let Some(entry) = self.lock().held.get_mut(partition) {
                        entry.stored = now;
                    }
                }
                continue;
            }
            candidates.insert(*partition, now);
        }
        if candidates.is_empty() {
            return;
        }
        let verdicts = self.checker.check(&self.topic, &candidates, &marks);
        let mut released = Vec::new();
        for (partition, verdict) in verdicts {
            let next_offset = candidates[&partition];
            if verdict == Verdict::InLog {
                released.push((partition, next_offset));
                continue;
            }
            let mut state = self.lock();
            let Some(entry) = state.held.get_mut(&partition) else {
                continue;
            };
            if entry.stored != next_offset || entry.verdict != verdict {
                self.show(partition, verdict.reason());
                self.report_held(partition, next_offset, &verdict);
                *entry = Held {
                    stored: next_offset,
                    verdict,
                };
            }
        }
        if !released.is_empty() {
            self.release(consumer, &released);
        }
    }

    fn release<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, released: &[(i32, i64)]) {
        let mut state = self.lock();
        for (partition, next_offset) in released {
            if state.held.remove(partition).is_none() {
                continue;
            }
            state.consuming.insert(*partition, Some(*next_offset));
            self.floors.set(&self.topic, *partition, *next_offset);
            self.show(*partition, None);
            tracing::info!(
                topic = %self.topic,
                partition,
                stored_offset = next_offset,
                "the log holds the stored offset again; consuming the partition"
            );
        }
        if state.held.is_empty() {
            state.next_check = None;
        }
        let added: Vec<(i32, Offset)> = released
            .iter()
            .map(|(p, offset)| (*p, Offset::Offset(*offset)))
            .collect();
        self.apply(consumer, &state, &added, &[]);
    }

    /// The consumer reported that a fetch position left the log (the
    /// client's `auto.offset.reset=error`), without saying which partition:
    /// checks every consumed partition at its position and holds those the
    /// log no longer reaches.
    pub fn on_offset_out_of_range<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let positions = self.positions(consumer, &self.lock());
        let to_check: BTreeMap<i32, i64> = positions
            .iter()
            .filter_map(|(p, offset)| match offset {
                Offset::Offset(o) => Some((*p, *o)),
                _ => None,
            })
            .collect();
        // Positions of partitions being consumed: their records were read
        // from this log, so there is no older mark to compare.
        let verdicts = self.checker.check(&self.topic, &to_check, &HashMap::new());
        let mut state = self.lock();
        let mut removed = Vec::new();
        for (partition, verdict) in verdicts {
            if verdict == Verdict::InLog {
                continue;
            }
            let position = to_check[&partition];
            state.consuming.remove(&partition);
            self.show(partition, verdict.reason());
            self.report_held(partition, position, &verdict);
            state.held.insert(
                partition,
                Held {
                    stored: position,
                    verdict,
                },
            );
            removed.push(partition);
        }
        if state.next_check.is_none() && !state.held.is_empty() {
            state.next_check = Some(Instant::now() + RECHECK_INTERVAL);
        }
        if removed.is_empty() {
            tracing::warn!(
                topic = %self.topic,
                "a fetch position left the log, but every consumed partition's position is in \
                 the log now; restarting the fetches at those positions"
            );
        }
        // Both cases re-assign: the client stopped fetching the partition
        // whose position failed, and only a new assignment restarts it.
        self.apply(consumer, &state, &[], &removed);
    }

    /// Fetch positions of the consumed partitions: where the application
    /// stands, or where the partition started when nothing was read yet.
    fn positions<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        state: &State,
    ) -> BTreeMap<i32, Offset> {
        let current = consumer.position().ok();
        state
            .consuming
            .iter()
            .map(|(partition, start)| {
                let read = current
                    .as_ref()
                    .and_then(|list| list.find_partition(&self.topic, *partition))
                    .map(|element| element.offset());
                let offset = match read {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ => start.map_or(Offset::Beginning, Offset::Offset),
                };
                (*partition, offset)
            })
            .collect()
    }

    /// Changes the fetch assignment outside a rebalance: incrementally for
    /// the cooperative protocol; for the eager one (which only takes whole
    /// assignments) every consumed partition at its current position.
    fn apply<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        state: &State,
        added: &[(i32, Offset)],
        removed: &[i32],
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = if cooperative {
            let gone = self.list(removed.iter().map(|p| (*p, Offset::Invalid)));
            let new = self.list(added.iter().copied());
            let mut result = Ok(());
            if gone.count() > 0 {
                result = consumer.incremental_unassign(&gone);
            }
            if result.is_ok() && new.count() > 0 {
                result = consumer.incremental_assign(&new);
            }
            result
        } else {
            let all = self.list(self.positions(consumer, state));
            consumer.assign(&all)
        };
        if let Err(error) = result {
            tracing::error!(%error, topic = %self.topic, "changing the fetch assignment failed");
        }
    }

    fn list(&self, partitions: impl IntoIterator<Item = (i32, Offset)>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in partitions {
            if let Err(error) = list.add_partition_offset(&self.topic, partition, offset) {
                tracing::error!(%error, partition, "cannot set a start offset");
            }
        }
        list
    }

    /// Sets the partition's gauge: 1 for `reason`, 0 for the others.
    fn show(&self, partition: i32, reason: Option<&str>) {
        let label = partition.to_string();
        for each in REASONS {
            self.blocked
                .with_label_values(&[&label, each])
                .set(i64::from(Some(each) == reason));
        }
    }

    fn report_held(&self, partition: i32, stored: i64, verdict: &Verdict) {
        let topic = &self.topic;
        match verdict {
            Verdict::InLog => {}
            Verdict::AheadOfLog(marks) => tracing::error!(
                %topic,
                partition,
                stored_offset = stored,
                low_watermark = marks.low,
                high_watermark = marks.high,
                "stored offset is ahead of the log (the topic was recreated, the cluster \
                 replaced, or an unclean leader election lost records): not consuming the \
                 partition; see `processor offsets show` and the runbook"
            ),
            Verdict::BehindLog(marks) => tracing::error!(
                %topic,
                partition,
                stored_offset = stored,
                low_watermark = marks.low,
                high_watermark = marks.high,
                "stored offset is behind the log (records were deleted before they were \
                 stored): not consuming the partition; see `processor offsets show` and the \
                 runbook"
            ),
            Verdict::Replaced { last_offset } => tracing::error!(
                %topic,
                partition,
                stored_offset = stored,
                last_stored_record = last_offset,
                "the log holds another record where the last stored one was (the topic was \
                 deleted and recreated, or the cluster replaced, and the new log grew past the \
                 stored offset): not consuming the partition, nothing below the stored offset \
                 is counted as processed; see `processor offsets show` and the runbook"
            ),
            Verdict::Unknown(why) => tracing::warn!(
                %topic,
                partition,
                stored_offset = stored,
                why = why.as_str(),
                "cannot check the log for the stored offset: not consuming the partition \
                 until a check succeeds"
            ),
        }
    }
}
