//! One writer's batches: its partitions' records are prepared as they
//! arrive ([`Preparer`]), so decoding overlaps the previous batch's
//! transaction, and the batch is handed to the commit when it is full, when
//! `max_latency` has passed since its first record, or at once when its
//! records waited through the previous commit (group commit: under load a
//! batch is what arrived during one commit, not `max_latency` more).

use std::future::Future;
use std::time::Duration;

use futures::future::FutureExt;
use ledger::PriceBook;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::Record;
use crate::stream::prepare::{PreparedBatch, Preparer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_latency: Duration,
}

/// Why a batch was handed to the commit; logged and useful in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Full,
    Latency,
    /// Its records arrived while the previous batch was being committed.
    Drained,
    Shutdown,
    SourceClosed,
}

/// Records a batch has room for from the start: growing its vectors by
/// doubling copied every prepared event several times per batch.
const PREALLOCATED: usize = 8192;

/// Records decoded between two polls of the transaction in flight: about
/// half a millisecond of work.
const CHUNK: usize = 64;

/// How a writer's loop ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Shutdown: the batch in flight and the one being prepared committed.
    Shutdown,
    /// The consumer dropped its side: nothing more will arrive.
    SourceClosed,
}

/// Runs one writer until shutdown or until its source closes, committing
/// one batch at a time with `commit`, which retries until the batch is
/// committed and fails only when the writer must stop. Records `admit`
/// refuses (offsets already stored) are dropped; they are checked again
/// when a batch is handed over, since the commit before may have raised the
/// floor. While a batch is being committed, the next one is prepared, up to
/// `max_events`; past that the channel fills and the consumer waits.
pub async fn run_writer<F, Fut, E>(
    records: &mut mpsc::Receiver<Record>,
    limits: BatchLimits,
    price_book: &PriceBook,
    shutdown: &CancellationToken,
    admit: impl Fn(&Record) -> bool,
    mut commit: F,
) -> Result<End, E>
where
    F: FnMut(PreparedBatch, CloseReason) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    debug_assert!(limits.max_events > 0);
    let mut open = Preparer::with_capacity(price_book, limits.max_events.min(PREALLOCATED));
    // When the open batch closes for latency; set by its first record.
    let mut deadline: Option<Instant> = None;
    // The open batch's records waited through a commit: hand it over now.
    let mut drained = false;
    let mut stopping = false;
    let mut closed = false;
    let in_flight = futures::future::Fuse::terminated();
    tokio::pin!(in_flight);
    let mut writing = false;
    let mut arrived = Vec::new();
    loop {
        if !writing && !open.is_empty() {
            let reason = if open.len() >= limits.max_events {
                Some(CloseReason::Full)
            } else if stopping {
                Some(CloseReason::Shutdown)
            } else if closed {
                Some(CloseReason::SourceClosed)
            } else if drained {
                Some(CloseReason::Drained)
            } else if deadline.is_some_and(|at| Instant::now() >= at) {
                Some(CloseReason::Latency)
            } else {
                None
            };
            if let Some(reason) = reason {
                let batch = take_admitted(&mut open, &admit);
                deadline = None;
                drained = false;
                if !batch.records.is_empty() {
                    in_flight.set(commit(batch, reason).fuse());
                    writing = true;
                }
            }
        }
        if !writing && open.is_empty() {
            if stopping {
                return Ok(End::Shutdown);
            }
            if closed {
                return Ok(End::SourceClosed);
            }
        }
        let wake_at = deadline.filter(|_| !writing);
        tokio::select! {
            biased;
            committed = &mut in_flight, if writing => {
                writing = false;
                committed?;
                drained = !open.is_empty();
            }
            _ = shutdown.cancelled(), if !stopping => stopping = true,
            _ = sleep_until_some(wake_at), if wake_at.is_some() => {}
            // Records in chunks: one per pass would poll the transaction in
            // flight for every record, and all that waits at once would
            // leave the transaction's next statement waiting for the whole
            // chunk to be decoded (this task drives both).
            received = records.recv_many(&mut arrived, (limits.max_events - open.len()).min(CHUNK)),
                if !stopping && !closed && open.len() < limits.max_events =>
            {
                if received == 0 {
                    closed = true;
                }
                for record in arrived.drain(..) {
                    if admit(&record) {
                        if open.is_empty() {
                            deadline = Some(Instant::now() + limits.max_latency);
                        }
                        open.push(record);
                    }
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The open batch, without the records a commit since they were admitted
/// has made stale (a partition re-fetched after a rebalance); rare, so they
/// are prepared again rather than tracked.
fn take_admitted(open: &mut Preparer<'_>, admit: &impl Fn(&Record) -> bool) -> PreparedBatch {
    if open.records().iter().all(admit) {
        return open.take();
    }
    for record in open.take().records.into_iter().filter(admit) {
        open.push(record);
    }
    open.take()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

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

    /// What the fake commit saw: each batch's offsets, why it closed and
    /// when (since the test started).
    type Seen = Rc<RefCell<Vec<(Vec<i64>, CloseReason, Duration)>>>;

    /// Runs a writer whose commit takes `commit_time` and notes each batch.
    async fn writer(
        receiver: &mut mpsc::Receiver<Record>,
        limits: BatchLimits,
        shutdown: &CancellationToken,
        commit_time: Duration,
        admit: impl Fn(&Record) -> bool,
    ) -> (Result<End, &'static str>, Seen) {
        let book = PriceBook::builtin().expect("the built-in book parses");
        let seen: Seen = Rc::default();
        let started = Instant::now();
        let noted = seen.clone();
        let end = run_writer(receiver, limits, &book, shutdown, admit, |batch, reason| {
            let noted = noted.clone();
            async move {
                let offsets = batch.records.iter().map(|r| r.offset).collect();
                noted
                    .borrow_mut()
                    .push((offsets, reason, started.elapsed()));
                tokio::time::sleep(commit_time).await;
                Ok::<_, &'static str>(())
            }
        })
        .await;
        (end, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_what_waited_through_its_commit_follows() {
        let (sender, mut receiver) = mpsc::channel(16);
        for offset in 0..5 {
            sender.send(record(0, offset)).await.expect("open");
        }
        drop(sender);
        let (end, seen) = writer(
            &mut receiver,
            LIMITS,
            &CancellationToken::new(),
            Duration::from_millis(40),
            |_| true,
        )
        .await;
        assert_eq!(end, Ok(End::SourceClosed));
        assert_eq!(
            *seen.borrow(),
            [
                (vec![0, 1, 2], CloseReason::Full, Duration::ZERO),
                // prepared during the first commit, handed over when it ended
                (
                    vec![3, 4],
                    CloseReason::SourceClosed,
                    Duration::from_millis(40)
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_that_arrive_during_a_commit_form_the_next_batch_when_it_ends() {
        let (sender, mut receiver) = mpsc::channel(16);
        let limits = BatchLimits {
            max_events: 100,
            max_latency: Duration::from_millis(20),
        };
        let producer = tokio::spawn(async move {
            sender.send(record(0, 0)).await.expect("open");
            // the first batch closes at 20 ms and commits until 120 ms
            for offset in 1..4 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                sender.send(record(0, offset)).await.expect("open");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (end, seen) = writer(
            &mut receiver,
            limits,
            &CancellationToken::new(),
            Duration::from_millis(100),
            |_| true,
        )
        .await;
        producer.await.expect("producer");
        assert_eq!(end, Ok(End::SourceClosed));
        assert_eq!(
            *seen.borrow(),
            [
                (vec![0], CloseReason::Latency, Duration::from_millis(20)),
                (
                    vec![1, 2, 3],
                    CloseReason::Drained,
                    Duration::from_millis(120)
                ),
            ],
            "no max_latency added to records that already waited a commit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_clock_starts_at_the_first_record() {
        let (sender, mut receiver) = mpsc::channel(16);
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            sender.send(record(0, 0)).await.expect("open");
            tokio::time::sleep(Duration::from_millis(200)).await;
            sender.send(record(0, 1)).await.expect("open");
            // after the first record's deadline: the next batch
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(record(0, 2)).await.expect("open");
        });
        let (end, seen) = writer(
            &mut receiver,
            LIMITS,
            &CancellationToken::new(),
            Duration::ZERO,
            |_| true,
        )
        .await;
        producer.await.expect("producer");
        assert_eq!(end, Ok(End::SourceClosed));
        let seen = seen.borrow();
        assert_eq!(seen[0].0, [0, 1]);
        assert_eq!(seen[0].1, CloseReason::Latency);
        assert_eq!(seen[0].2, Duration::from_secs(5) + LIMITS.max_latency);
        assert_eq!(seen[1].0, [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_commits_the_batch_in_flight_and_the_open_one_then_takes_no_more() {
        let (sender, mut receiver) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        let limits = BatchLimits {
            max_events: 10,
            max_latency: Duration::from_millis(10),
        };
        let producer = tokio::spawn(async move {
            sender.send(record(1, 7)).await.expect("open");
            // during the first batch's commit (10..110 ms)
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.send(record(1, 8)).await.expect("open");
            tokio::time::sleep(Duration::from_millis(20)).await;
            trigger.cancel();
            // after shutdown: never taken
            let _ = sender.send(record(1, 9)).await;
            sender
        });
        let (end, seen) = writer(
            &mut receiver,
            limits,
            &shutdown,
            Duration::from_millis(100),
            |_| true,
        )
        .await;
        let _sender = producer.await.expect("producer");
        assert_eq!(end, Ok(End::Shutdown));
        assert_eq!(
            *seen.borrow(),
            [
                (vec![7], CloseReason::Latency, Duration::from_millis(10)),
                (vec![8], CloseReason::Shutdown, Duration::from_millis(110)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_records_are_dropped_and_do_not_start_the_clock() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(record(0, 1)).await.expect("open");
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sender.send(record(0, 5)).await.expect("open");
            // open until the batch has closed on its own
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (end, seen) = writer(
            &mut receiver,
            LIMITS,
            &CancellationToken::new(),
            Duration::ZERO,
            |r| r.offset >= 5,
        )
        .await;
        producer.await.expect("producer");
        assert_eq!(end, Ok(End::SourceClosed));
        assert_eq!(
            *seen.borrow(),
            [(
                vec![5],
                CloseReason::Latency,
                Duration::from_secs(1) + LIMITS.max_latency
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_a_commit_made_stale_while_they_waited_are_dropped_at_hand_over() {
        // A partition re-fetched after a rebalance: offsets 0..3 arrive again
        // while the batch holding them is being committed.
        let floor = Rc::new(std::cell::Cell::new(0_i64));
        let (sender, mut receiver) = mpsc::channel(16);
        for offset in [0, 1, 2, 0, 1, 2, 3] {
            sender.send(record(0, offset)).await.expect("open");
        }
        drop(sender);
        let book = PriceBook::builtin().expect("the built-in book parses");
        let seen: Seen = Rc::default();
        let noted = seen.clone();
        let raised = floor.clone();
        let end = run_writer(
            &mut receiver,
            LIMITS,
            &book,
            &CancellationToken::new(),
            |r| r.offset >= floor.get(),
            |batch, reason| {
                let noted = noted.clone();
                let raised = raised.clone();
                async move {
                    let offsets: Vec<i64> = batch.records.iter().map(|r| r.offset).collect();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    raised.set(offsets.iter().max().copied().unwrap_or(0) + 1);
                    noted.borrow_mut().push((offsets, reason, Duration::ZERO));
                    Ok::<_, ()>(())
                }
            },
        )
        .await;
        assert_eq!(end, Ok(End::SourceClosed));
        let batches: Vec<Vec<i64>> = seen.borrow().iter().map(|s| s.0.clone()).collect();
        assert_eq!(batches, [vec![0, 1, 2], vec![3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_ends_the_writer_with_its_error() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.send(record(0, 0)).await.expect("open");
        let book = PriceBook::builtin().expect("the built-in book parses");
        let end = run_writer(
            &mut receiver,
            LIMITS,
            &book,
            &CancellationToken::new(),
            |_| true,
            |_, _| async { Err::<(), _>("schema error") },
        )
        .await;
        assert_eq!(end, Err("schema error"));
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_batch_commits_the_next_one_is_prepared() {
        let (sender, mut receiver) = mpsc::channel(16);
        for offset in 0..4 {
            let event = crate::stream::prepare::tests::event(offset as u128, "acme", 100);
            let r = crate::stream::prepare::tests::event_record(0, offset, &event);
            sender.send(r).await.expect("open");
        }
        drop(sender);
        let book = PriceBook::builtin().expect("the built-in book parses");
        let sizes = Rc::new(RefCell::new(Vec::new()));
        let noted = sizes.clone();
        let end = run_writer(
            &mut receiver,
            BatchLimits {
                max_events: 2,
                max_latency: Duration::from_millis(1),
            },
            &book,
            &CancellationToken::new(),
            |_| true,
            |batch, _| {
                let noted = noted.clone();
                async move {
                    noted
                        .borrow_mut()
                        .push((batch.unique.len(), batch.poison.len()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, ()>(())
                }
            },
        )
        .await;
        assert_eq!(end, Ok(End::SourceClosed));
        assert_eq!(*sizes.borrow(), [(2, 0), (2, 0)], "decoded and priced");
    }
}
