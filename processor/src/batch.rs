//! Accumulating Kafka records into batches that close at `max_events`, at
//! `max_latency` after their first record, or at once with whatever waited
//! through the previous commit.

use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_latency: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The consumer thread is gone: nothing more will arrive.
    #[error("the consumer stopped delivering records")]
    SourceClosed,
}

/// Why a batch was closed; logged and useful in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Full,
    Latency,
    /// Every record that was waiting was taken.
    Drained,
    Shutdown,
    SourceClosed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
    pub closed_by: CloseReason,
}

/// Takes the next batch from `records`.
///
/// When records are already waiting (they arrived while the previous batch
/// was being committed), the batch is what is waiting, up to `max_events`,
/// and closes at once: those records have waited a whole commit already,
/// and under load this sizes batches by how long a commit takes (group
/// commit) instead of adding `max_latency` to every event. Otherwise it
/// waits for a first record (or shutdown), then keeps adding until the
/// batch is full or `max_latency` has passed since that first record: the
/// latency bound is on the oldest record's wait, not the newest's. Records
/// that `admit` refuses (offsets already stored) are dropped without
/// starting the clock.
///
/// Returns `Ok(None)` when shutdown came before any record, and an error
/// when the source closed with nothing collected.
pub async fn next_batch(
    records: &mut mpsc::Receiver<Record>,
    limits: BatchLimits,
    shutdown: &CancellationToken,
    mut admit: impl FnMut(&Record) -> bool,
) -> Result<Option<Batch>, BatchError> {
    debug_assert!(limits.max_events > 0);
    if shutdown.is_cancelled() {
        return Ok(None);
    }
    let mut batch = Vec::new();
    loop {
        match records.try_recv() {
            Ok(record) if admit(&record) => {
                batch.push(record);
                if batch.len() >= limits.max_events {
                    return Ok(Some(Batch {
                        records: batch,
                        closed_by: CloseReason::Full,
                    }));
                }
            }
            Ok(_) => {}
            Err(TryRecvError::Empty) if batch.is_empty() => break,
            Err(TryRecvError::Empty) => {
                return Ok(Some(Batch {
                    records: batch,
                    closed_by: CloseReason::Drained,
                }))
            }
            Err(TryRecvError::Disconnected) if batch.is_empty() => {
                return Err(BatchError::SourceClosed)
            }
            Err(TryRecvError::Disconnected) => {
                return Ok(Some(Batch {
                    records: batch,
                    closed_by: CloseReason::SourceClosed,
                }))
            }
        }
    }

    let first = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            received = records.recv() => match received {
                Some(record) if admit(&record) => break record,
                Some(_) => continue,
                None => return Err(BatchError::SourceClosed),
            },
        }
    };
    let deadline = Instant::now() + limits.max_latency;
    batch.reserve(limits.max_events.min(1024));
    batch.push(first);
    let closed_by = loop {
        if batch.len() >= limits.max_events {
            break CloseReason::Full;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break CloseReason::Shutdown,
            _ = tokio::time::sleep_until(deadline) => break CloseReason::Latency,
            received = records.recv() => match received {
                Some(record) if admit(&record) => batch.push(record),
                Some(_) => {}
                None => break CloseReason::SourceClosed,
            },
        }
    };
    Ok(Some(Batch {
        records: batch,
        closed_by,
    }))
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
            value: Some(b"{}".to_vec()),
            schema: None,
            timestamp_ms: None,
        }
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_events: 3,
        max_latency: Duration::from_millis(250),
    };

    #[tokio::test(start_paused = true)]
    async fn closes_when_full_without_waiting_for_the_latency() {
        let (sender, mut receiver) = mpsc::channel(16);
        for offset in 0..5 {
            sender.send(record(0, offset)).await.expect("open");
        }
        let started = Instant::now();
        let batch = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true)
            .await
            .expect("ok")
            .expect("a batch");
        assert_eq!(batch.closed_by, CloseReason::Full);
        assert_eq!(batch.records.len(), 3);
        assert_eq!(started.elapsed(), Duration::ZERO);
        let next = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true)
            .await
            .expect("ok")
            .expect("a batch");
        let offsets: Vec<i64> = next.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 4], "the rest waits for the next batch");
        assert_eq!(
            next.closed_by,
            CloseReason::Drained,
            "records that were waiting are taken without waiting longer"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn closes_at_max_latency_after_the_first_record() {
        let (sender, mut receiver) = mpsc::channel(16);
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            sender.send(record(0, 0)).await.expect("open");
            tokio::time::sleep(Duration::from_millis(200)).await;
            sender.send(record(0, 1)).await.expect("open");
            // arrives after the deadline of the first record: next batch
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(record(0, 2)).await.expect("open");
            sender
        });
        let started = Instant::now();
        let batch = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true)
            .await
            .expect("ok")
            .expect("a batch");
        assert_eq!(batch.closed_by, CloseReason::Latency);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5) + LIMITS.max_latency,
            "the clock starts at the first record, not at the call"
        );
        drop(producer.await.expect("producer"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_returns_the_partial_batch() {
        let (sender, mut receiver) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        let first = sender.clone();
        tokio::spawn(async move {
            // arrives while the batcher waits, so the batch is open
            tokio::time::sleep(Duration::from_millis(1)).await;
            first.send(record(1, 7)).await.expect("open");
            tokio::time::sleep(Duration::from_millis(10)).await;
            trigger.cancel();
        });
        let batch = next_batch(
            &mut receiver,
            BatchLimits {
                max_events: 10,
                max_latency: Duration::from_secs(60),
            },
            &shutdown,
            |_| true,
        )
        .await
        .expect("ok")
        .expect("a batch");
        assert_eq!(batch.closed_by, CloseReason::Shutdown);
        assert_eq!(batch.records, vec![record(1, 7)]);
        let nothing = next_batch(&mut receiver, LIMITS, &shutdown, |_| true)
            .await
            .expect("ok");
        assert!(nothing.is_none());
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_records_close_at_once_and_shutdown_takes_no_more() {
        let (sender, mut receiver) = mpsc::channel(16);
        for offset in 0..2 {
            sender.send(record(0, offset)).await.expect("open");
        }
        let batch = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true)
            .await
            .expect("ok")
            .expect("a batch");
        assert_eq!(batch.closed_by, CloseReason::Drained);
        assert_eq!(batch.records.len(), 2);

        sender.send(record(0, 2)).await.expect("open");
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let nothing = next_batch(&mut receiver, LIMITS, &shutdown, |_| true)
            .await
            .expect("ok");
        assert!(nothing.is_none(), "after shutdown no new batch starts");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_records_are_dropped_and_do_not_start_the_clock() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(record(0, 1)).await.expect("open");
        let late = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            late.send(record(0, 5)).await.expect("open");
        });
        let started = Instant::now();
        let batch = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |r| {
            r.offset >= 5
        })
        .await
        .expect("ok")
        .expect("a batch");
        assert_eq!(batch.records, vec![record(0, 5)]);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1) + LIMITS.max_latency
        );
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_source_ends_the_batch_or_reports_it() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(record(0, 0)).await.expect("open");
        drop(sender);
        let batch = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true)
            .await
            .expect("ok")
            .expect("a batch");
        assert_eq!(batch.closed_by, CloseReason::SourceClosed);
        let closed = next_batch(&mut receiver, LIMITS, &CancellationToken::new(), |_| true).await;
        assert!(matches!(closed, Err(BatchError::SourceClosed)));
    }
}
