//! The Kafka side: the consumer-group member on its own thread, partition
//! assignment at the offsets stored in the database, the hand-over of
//! records through a bounded channel, topic creation, and lag reporting.
//!
//! Why a `BaseConsumer` polled on a dedicated thread rather than a
//! `StreamConsumer`: librdkafka runs rebalance callbacks inside `poll`, on
//! the polling thread. On that plain thread the assignment callback can
//! block on a database query (via the runtime handle) and hand librdkafka
//! the assignment *with the stored offsets already in it*, so fetching
//! starts at the right place instead of being corrected by a later seek.
//! Inside an async task the same callback could not block without stalling
//! a runtime worker. The thread also gives natural backpressure: when the
//! writer is slow or retrying, the bounded channel is full and the thread
//! stops polling, so no more records are fetched into memory; with several
//! writers only the full writer's partitions are paused ([`crate::stream::handoff`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use deadpool_postgres::Pool;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::log_check::{LogCheckError, LogChecker};
use crate::offsets::{NextOffsets, OffsetFloors};
use crate::record::Record;
use crate::stream::assignment::PartitionGuard;
use crate::stream::handoff::{Closed, Handoff, Partition};
use crate::stream::metrics::Metrics;
pub use crate::stream::topics::ensure_topics;

mod context;
pub use context::ProcessorContext;

/// How often the polling thread wakes up to notice shutdown when idle or
/// blocked on a full channel.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How soon records held back from a full writer channel are offered again.
const HELD_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Longest pause between attempts to read stored offsets on assignment.
const MAX_ASSIGN_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(KafkaError),
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("fatal Kafka error {code:?}: {reason}")]
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
    #[error("cannot create topics: {0}")]
    CreateTopics(KafkaError),
    #[error("cannot create topic {topic}: {code:?}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("creating topics did not finish within {0:?}")]
    CreateTopicsTimeout(Duration),
    #[error("cannot spawn the consumer thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot register the consumer's metrics: {0}")]
    Metrics(prometheus::Error),
    #[error(transparent)]
    LogCheck(#[from] LogCheckError),
}

/// The librdkafka settings shared by every client: brokers, then the
/// operator's extra properties (which may override anything set here).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Settings every processor consumer needs for the exactly-once design.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // A broker answers a fetch when data arrives or when this wait ends;
        // one that waits it out (tansu does) would otherwise add up to
        // librdkafka's default 500 ms to every event's latency. When idle it
        // costs 20 empty fetches a second. 10 ms cut ~25 ms off the median
        // accept → commit latency in short runs, but tansu's cost per fetch
        // grows with the topic and 100 fetches a second saturated it in the
        // full benchmark (scripts/bench.sh), so 50 ms stays.
        .set("fetch.wait.max.ms", "50");
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    // Correctness settings come last so that properties cannot undo them:
    // offsets live in the database, Kafka commits are explicit and only for
    // monitoring. A fetch position outside the log is reported, never
    // silently moved (see `assignment`): partitions without a stored offset
    // start explicitly at the beginning.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    config
}

/// The group member: its consumer (shared for monitoring commits) and its
/// polling thread.
pub struct GroupMember {
    consumer: Option<Arc<BaseConsumer<ProcessorContext>>>,
    thread: Option<JoinHandle<Result<(), ConsumerError>>>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember").finish_non_exhaustive()
    }
}

/// Everything the consumer needs besides its Kafka settings.
#[derive(Debug, Clone)]
pub struct ConsumerDeps {
    pub pool: Pool,
    pub floors: OffsetFloors,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub db_timeout: Duration,
    /// Capacity of each writer's channel, in records.
    pub channel_capacity: usize,
    /// Writers, each fed the records of its own partitions
    /// ([`writer_of`]).
    pub writers: usize,
}

/// The writer that owns `partition`: a partition always goes to the same
/// writer, so its records are committed in order and its offsets by one
/// transaction at a time.
pub fn writer_of(partition: i32, writers: usize) -> usize {
    usize::try_from(partition).unwrap_or(0) % writers.max(1)
}

impl GroupMember {
    /// Joins the group and starts polling on a new thread. Records arrive on
    /// the returned receivers, one per writer, each partition's on
    /// [`writer_of`] its number.
    pub fn start(
        kafka: &KafkaConfig,
        deps: ConsumerDeps,
    ) -> Result<(Self, Vec<mpsc::Receiver<Record>>), ConsumerError> {
        deps.floors
            .register_metrics(deps.metrics.registry())
            .map_err(ConsumerError::Metrics)?;
        let checker = LogChecker::new(&client_config(kafka), &kafka.group_id)
            .map_err(ConsumerError::LogCheck)?;
        let guard = PartitionGuard::new(
            &kafka.topic,
            checker,
            deps.floors.clone(),
            deps.metrics.registry(),
        )
        .map_err(ConsumerError::Metrics)?;
        let context = ProcessorContext {
            guard,
            pool: deps.pool.clone(),
            group_id: kafka.group_id.clone(),
            topic: kafka.topic.clone(),
            runtime: tokio::runtime::Handle::current(),
            shutdown: deps.shutdown.clone(),
            metrics: deps.metrics.clone(),
            db_timeout: deps.db_timeout,
        };
        let consumer: BaseConsumer<ProcessorContext> = consumer_config(kafka)
            .create_with_context(context)
            .map_err(ConsumerError::Create)?;
        match &kafka.manual_assignment {
            None => {
                consumer
                    .subscribe(&[&kafka.topic])
                    .map_err(|source| ConsumerError::Subscribe {
                        topic: kafka.topic.clone(),
                        source,
                    })?
            }
            // Outside the group: no rebalance callback runs, so the stored
            // offsets are read here, the same way the callback would.
            Some(partitions) => {
                let mut requested = TopicPartitionList::new();
                for partition in partitions {
                    requested.add_partition(&kafka.topic, *partition);
                }
                tracing::warn!(
                    partitions = ?partitions,
                    "kafka.manual_assignment is set: consuming outside the consumer group"
                );
                let context = consumer.context();
                let taken = tokio::task::block_in_place(|| context.take_assignment(&requested))
                    .unwrap_or_default();
                consumer
                    .assign(&taken)
                    .map_err(|source| ConsumerError::Subscribe {
                        topic: kafka.topic.clone(),
                        source,
                    })?;
            }
        }
        let consumer = Arc::new(consumer);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..deps.writers.max(1))
            .map(|_| mpsc::channel(deps.channel_capacity.max(1)))
            .unzip();
        let thread_consumer = consumer.clone();
        let runtime = tokio::runtime::Handle::current();
        let shutdown = deps.shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll_loop(thread_consumer, senders, runtime, shutdown))
            .map_err(ConsumerError::Spawn)?;
        Ok((
            Self {
                consumer: Some(consumer),
                thread: Some(thread),
            },
            receivers,
        ))
    }

    /// Commits `next_offsets` to Kafka without waiting. Only lag monitoring
    /// reads them; correctness never depends on this succeeding.
    pub fn commit_for_monitoring(&self, next_offsets: &NextOffsets) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next_offset) in next_offsets {
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*next_offset))
            {
                tracing::debug!(%error, "cannot build the monitoring commit");
                return;
            }
        }
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "monitoring commit not sent");
        }
    }

    /// Whether the polling thread has stopped (after shutdown or an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Leaves the group: the polling thread, which holds the last reference
    /// to the consumer, closes it. Waits at most `timeout`.
    pub async fn stop(mut self, timeout: Duration) -> Result<(), ConsumerError> {
        self.consumer.take();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(timeout, joined).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(_))) | Ok(Err(_)) => {
                tracing::error!("the consumer thread panicked");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(?timeout, "the consumer did not leave the group in time");
                Ok(())
            }
        }
    }
}

fn poll_loop(
    consumer: Arc<BaseConsumer<ProcessorContext>>,
    senders: Vec<mpsc::Sender<Record>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let result = poll_until_shutdown(&consumer, &senders, &runtime, &shutdown);
    // Close the group membership here, on this thread, where the revoke
    // callback may run. The run loop has dropped its reference by now or
    // drops it shortly; wait for that so this drop is the closing one.
    drop(senders);
    let mut consumer = consumer;
    for _ in 0..50 {
        match Arc::try_unwrap(consumer) {
            Ok(owned) => {
                drop(owned);
                return result;
            }
            Err(shared) => {
                consumer = shared;
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
    result
}

fn poll_until_shutdown(
    consumer: &BaseConsumer<ProcessorContext>,
    senders: &[mpsc::Sender<Record>],
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> Result<(), ConsumerError> {
    // Every record of a topic shares one copy of its name.
    let mut topic: Arc<str> = Arc::from("");
    let mut handoff = Handoff::new(senders.to_vec());
    while !shutdown.is_cancelled() {
        consumer.context().between_polls(consumer);
        match handoff.retry() {
            Ok(resume) => pause_or_resume(consumer, &resume, false),
            Err(Closed) => return Ok(()),
        }
        // While records are held, come back soon to hand them over.
        let wait = if handoff.is_holding() {
            HELD_POLL_INTERVAL
        } else {
            POLL_INTERVAL
        };
        let message = match consumer.poll(wait) {
            None => continue,
            Some(Err(error)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    return Err(ConsumerError::Fatal { code, reason });
                }
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
                    consumer.context().guard.on_offset_out_of_range(consumer);
                    continue;
                }
                // Transient (broker down, partition leader moving): librdkafka
                // retries by itself; keep polling.
                tracing::warn!(%error, "kafka consumer error");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let record = Record::from_message(&message, &mut topic);
        drop(message);
        if handoff.writers() > 1 {
            // A full channel pauses its writer's partitions, not the others.
            match handoff.offer(record) {
                Ok(Some(partition)) => pause_or_resume(consumer, &[partition], true),
                Ok(None) => {}
                Err(Closed) => return Ok(()),
            }
            continue;
        }
        // One writer: nobody else to hold back, and pausing would only make
        // librdkafka fetch the same records again. Usually the channel has
        // room: hand the record over without entering the runtime.
        let sender = &senders[0];
        let mut record = match sender.try_send(record) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Full(pending)) => Some(pending),
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
        };
        // Backpressure: while the batcher is behind, stop polling. Each wait
        // is bounded so shutdown is noticed.
        while let Some(pending) = record.take() {
            match runtime.block_on(async { sender.send_timeout(pending, POLL_INTERVAL).await }) {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(pending)) => {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    record = Some(pending);
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return Ok(()),
            }
        }
    }
    Ok(())
}

/// Pauses (or resumes) fetching `partitions`. A failure is logged: a pause
/// that did not take only lets more records be held; a resume that did not
/// take is retried by nothing, so it is an error.
fn pause_or_resume(
    consumer: &BaseConsumer<ProcessorContext>,
    partitions: &[Partition],
    pause: bool,
) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    match result {
        Ok(()) if pause => {
            tracing::debug!(partitions = ?numbers, "writer channel full: partitions paused")
        }
        Ok(()) => tracing::debug!(partitions = ?numbers, "writer caught up: partitions resumed"),
        Err(error) if pause => {
            tracing::warn!(%error, partitions = ?numbers, "cannot pause partitions of a full writer")
        }
        Err(error) => tracing::error!(%error, partitions = ?numbers, "cannot resume partitions"),
    }
}
