//! The consumer's librdkafka context: the rebalance callbacks that hand
//! librdkafka each assignment with the offsets stored in the database
//! already in it, librdkafka's logs and statistics, and the lag it reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use super::MAX_ASSIGN_BACKOFF;
use crate::offsets;
use crate::stream::assignment::PartitionGuard;
use crate::stream::metrics::Metrics;

/// What the assignment callback needs to look up stored offsets.
pub struct ProcessorContext {
    pub(super) pool: Pool,
    pub(super) group_id: String,
    pub(super) topic: String,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) shutdown: CancellationToken,
    pub(super) metrics: Arc<Metrics>,
    pub(super) db_timeout: Duration,
    pub(super) guard: PartitionGuard,
}

impl std::fmt::Debug for ProcessorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorContext")
            .field("group_id", &self.group_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ClientContext for ProcessorContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        infra::kafka::forward_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A fatal consumer error also surfaces from poll, where the polling
        // thread stops on it.
        infra::kafka::report_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition; a negative
            // lag means unknown.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                self.metrics
                    .set_consumer_lag(*partition, stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // shutting down: take nothing, so nothing is fetched
                let taken = self.take_assignment(partitions).unwrap_or_default();
                if cooperative {
                    consumer.incremental_assign(&taken).map(|_| ())
                } else {
                    consumer.assign(&taken)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Nothing to flush: a batch holding records of a revoked
                // partition may still commit, because inserts are idempotent
                // and stored offsets only move forward (see lib.rs).
                tracing::info!(partitions = ?partition_numbers(partitions), "partitions revoked");
                let revoked: Vec<i32> = partitions
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|element| element.partition())
                    .collect();
                let fetched = self.guard.revoke(&revoked);
                if cooperative {
                    // held partitions were never handed to the client
                    let mut list = TopicPartitionList::new();
                    for partition in fetched {
                        list.add_partition(&self.topic, partition);
                    }
                    consumer.incremental_unassign(&list).map(|_| ())
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "applying the assignment failed");
        }
    }
}

impl ProcessorContext {
    /// The part of a new assignment to fetch, each partition at the offset
    /// stored in the database (or the beginning when none is stored),
    /// retrying until the database answers; partitions whose stored offset
    /// the log no longer reaches are held back (see [`PartitionGuard`]).
    /// None when shutdown interrupted it.
    ///
    /// Starting anywhere else is never allowed: Kafka's committed offsets
    /// are for monitoring only and may be behind or (after a database
    /// restore) ahead of what is stored.
    pub(super) fn take_assignment(
        &self,
        partitions: &TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        let assigned: Vec<i32> = partitions
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        let mut backoff = Duration::from_millis(100);
        let stored = loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            match self.load_stored(&assigned) {
                Ok(stored) => break stored,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        backoff_ms = backoff.as_millis() as u64,
                        "cannot read stored offsets for the assignment; retrying"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_ASSIGN_BACKOFF);
                }
            }
        };
        let consume = self.guard.admit(&assigned, &stored.0, &stored.1);
        let mut taken = TopicPartitionList::new();
        for (partition, offset) in &consume {
            if let Err(error) = taken.add_partition_offset(&self.topic, *partition, *offset) {
                tracing::error!(%error, partition, "cannot set the start offset");
            }
        }
        let consumed: Vec<i32> = consume.iter().map(|(p, _)| *p).collect();
        tracing::info!(
            partitions = ?assigned,
            consumed = ?consumed,
            stored = ?stored.0,
            "partitions assigned at stored offsets"
        );
        Some(taken)
    }

    /// One attempt at reading the stored offsets of `partitions`.
    fn load_stored(&self, partitions: &[i32]) -> Result<StoredPositions, String> {
        let lookup = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let stored = offsets::load(&**client, &self.group_id, &self.topic, partitions)
                .await
                .map_err(|e| e.to_string())?;
            let marks = offsets::load_marks(&**client, &self.group_id, &self.topic, partitions)
                .await
                .map_err(|e| e.to_string())?;
            Ok((stored, marks))
        };
        self.runtime
            // the timer must be created inside the runtime, hence the block
            .block_on(async { tokio::time::timeout(self.db_timeout, lookup).await })
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.db_timeout)))
    }

    /// Called between polls: rechecks held partitions when one is due.
    pub(super) fn between_polls(&self, consumer: &BaseConsumer<Self>) {
        self.guard
            .recheck(consumer, |partitions| self.load_stored(partitions));
    }
}

/// Stored next offsets and the marks of the records they passed.
type StoredPositions = (HashMap<i32, i64>, HashMap<i32, offsets::LogMark>);

fn partition_numbers(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions
        .elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}
