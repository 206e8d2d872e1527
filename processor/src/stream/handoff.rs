//! The consumer thread's hand-over of records to the writers: one bounded
//! channel per writer, and what happens when one of them is full.
//!
//! Blocking on a full channel (what a single writer does) would hold back
//! every other writer's partitions behind the slowest one: the thread that
//! polls for all of them would stop. With several writers a record that
//! finds its writer's channel full is held here instead, the partition it
//! came from is paused (librdkafka drops what it prefetched of it and later
//! fetches again from just after the last record it returned, so nothing is
//! skipped or repeated), and the other writers' partitions keep flowing.
//! When the held records have gone in and the channel is down to half full,
//! the paused partitions are resumed; the hysteresis keeps pause/resume (and
//! the refetch each costs) to once per half a channel of records.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::record::Record;

/// Every writer's channel is closed: the pipeline is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A partition of a topic, as librdkafka's pause and resume name it.
pub type Partition = (Arc<str>, i32);

/// The writers' channels and the records held back from full ones.
#[derive(Debug)]
pub struct Handoff {
    senders: Vec<mpsc::Sender<Record>>,
    /// Per writer, records that found its channel full, in arrival order.
    held: Vec<VecDeque<Record>>,
    /// Per writer, the partitions paused because its channel was full.
    paused: Vec<Vec<Partition>>,
}

impl Handoff {
    pub fn new(senders: Vec<mpsc::Sender<Record>>) -> Self {
        let writers = senders.len();
        Self {
            senders,
            held: vec![VecDeque::new(); writers],
            paused: vec![Vec::new(); writers],
        }
    }

    pub fn writers(&self) -> usize {
        self.senders.len()
    }

    /// Whether any record is held back from a full channel.
    pub fn is_holding(&self) -> bool {
        self.held.iter().any(|held| !held.is_empty())
    }

    /// Hands `record` to its writer ([`crate::stream::consumer::writer_of`]), or
    /// holds it when the writer's channel is full or already has records
    /// held (order within a partition is kept). Returns the record's
    /// partition when it must be paused now.
    pub fn offer(&mut self, record: Record) -> Result<Option<Partition>, Closed> {
        let writer = crate::stream::consumer::writer_of(record.partition, self.senders.len());
        if self.held[writer].is_empty() {
            match self.senders[writer].try_send(record) {
                Ok(()) => return Ok(None),
                Err(TrySendError::Closed(_)) => return Err(Closed),
                Err(TrySendError::Full(record)) => self.held[writer].push_back(record),
            }
        } else {
            self.held[writer].push_back(record);
        }
        let Some(held) = self.held[writer].back() else {
            return Ok(None);
        };
        let paused = &mut self.paused[writer];
        if paused
            .iter()
            .any(|(topic, partition)| *partition == held.partition && **topic == *held.topic)
        {
            return Ok(None);
        }
        let partition = (held.topic.clone(), held.partition);
        paused.push(partition.clone());
        Ok(Some(partition))
    }

    /// Moves held records into channels that have room again. Returns the
    /// partitions to resume: those of writers with nothing held left and a
    /// channel at most half full.
    pub fn retry(&mut self) -> Result<Vec<Partition>, Closed> {
        let mut resume = Vec::new();
        for ((sender, held), paused) in self
            .senders
            .iter()
            .zip(&mut self.held)
            .zip(&mut self.paused)
        {
            while let Some(record) = held.pop_front() {
                match sender.try_send(record) {
                    Ok(()) => {}
                    Err(TrySendError::Full(record)) => {
                        held.push_front(record);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => return Err(Closed),
                }
            }
            if held.is_empty()
                && !paused.is_empty()
                && sender.capacity() * 2 >= sender.max_capacity()
            {
                resume.append(paused);
            }
        }
        Ok(resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "usage-events".into(),
            partition,
            offset,
            key: None,
            value: None,
            schema: None,
            timestamp_ms: None,
        }
    }

    fn offsets(receiver: &mut mpsc::Receiver<Record>) -> Vec<(i32, i64)> {
        let mut seen = Vec::new();
        while let Ok(record) = receiver.try_recv() {
            seen.push((record.partition, record.offset));
        }
        seen
    }

    #[test]
    fn a_full_writer_pauses_its_own_partitions_only_and_resumes_once_half_drained() {
        let (zero, mut zero_rx) = mpsc::channel(2);
        let (one, mut one_rx) = mpsc::channel(2);
        let mut handoff = Handoff::new(vec![zero, one]);
        // partitions 0 and 2 belong to writer 0, 1 to writer 1
        assert_eq!(handoff.offer(record(0, 0)), Ok(None));
        assert_eq!(handoff.offer(record(2, 0)), Ok(None));
        let paused = handoff.offer(record(0, 1)).expect("open");
        assert_eq!(paused.map(|(_, p)| p), Some(0));
        // already paused: held without pausing again
        assert_eq!(handoff.offer(record(0, 2)), Ok(None));
        // held records of writer 0 go first: partition 2 waits too
        assert_eq!(
            handoff.offer(record(2, 1)).map(|p| p.map(|(_, p)| p)),
            Ok(Some(2))
        );
        // the other writer is not held back
        assert_eq!(handoff.offer(record(1, 0)), Ok(None));
        assert_eq!(handoff.offer(record(1, 1)), Ok(None));
        assert_eq!(offsets(&mut one_rx), [(1, 0), (1, 1)]);
        assert!(handoff.is_holding());

        assert_eq!(handoff.retry(), Ok(vec![]), "still full");
        assert_eq!(offsets(&mut zero_rx), [(0, 0), (2, 0)]);
        // two held records fill the emptied channel; one is still held
        assert_eq!(handoff.retry(), Ok(vec![]));
        assert_eq!(offsets(&mut zero_rx), [(0, 1), (0, 2)]);
        // the last held record goes in and leaves the channel half full
        let resumed: Vec<i32> = handoff
            .retry()
            .expect("open")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(resumed, [0, 2]);
        assert!(!handoff.is_holding());
        assert_eq!(offsets(&mut zero_rx), [(2, 1)]);
        assert_eq!(handoff.retry(), Ok(vec![]), "resumed once");
    }

    #[test]
    fn closed_channels_say_so() {
        let (sender, receiver) = mpsc::channel(1);
        drop(receiver);
        let mut handoff = Handoff::new(vec![sender]);
        assert_eq!(handoff.offer(record(0, 0)), Err(Closed));
    }
}
