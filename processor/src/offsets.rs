//! Kafka offsets stored in the database (`store::offsets`, the processor's
//! only source of truth for where to resume): the mark of a batch's last
//! record per partition, and the in-memory floor below which a fetched
//! record is already stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounterVec, Opts, Registry};
use tokio_postgres::GenericClient;

use crate::record::Record;

pub use store::offsets::{list, load, load_marks, overwrite, LogMark, StoredOffset};

/// Next offset to read, per (topic, partition).
pub type NextOffsets = BTreeMap<(String, i32), i64>;

/// The mark of the last record of each partition among `records`: where it
/// was and [`crate::log_check::record_digest`] of it.
pub fn log_marks(records: &[Record]) -> BTreeMap<(String, i32), LogMark> {
    let mut last: BTreeMap<(&str, i32), &Record> = BTreeMap::new();
    for record in records {
        let entry = last
            .entry((&record.topic, record.partition))
            .or_insert(record);
        if record.offset > entry.offset {
            *entry = record;
        }
    }
    last.into_iter()
        .map(|((topic, partition), record)| {
            (
                (topic.to_owned(), partition),
                LogMark {
                    offset: record.offset,
                    sha256: crate::log_check::record_digest(
                        record.key.as_deref(),
                        record.value.as_deref(),
                    )
                    .to_vec(),
                },
            )
        })
        .collect()
}

/// Records `next_offsets` for `group_id`, each with the mark of the last
/// record of `records` on its partition; meant to run inside the batch
/// transaction so rows and offsets commit together.
pub async fn store(
    client: &impl GenericClient,
    group_id: &str,
    next_offsets: &NextOffsets,
    records: &[Record],
) -> Result<(), store::DbError> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    store::offsets::advance(client, group_id, next_offsets, &log_marks(records)).await
}

/// The lowest offset per partition that is not yet stored, as far as this
/// process knows: set when a partition is assigned (from the database) and
/// raised after each committed batch. A record below its floor was fetched
/// before an assignment took effect, or sat in a queue across a rebalance;
/// it is already in the database and is dropped, counted and logged.
///
/// Assignment *sets* the floor, it does not only raise it: the database is
/// the source of truth, and after an operator reset or a database restore
/// its offset can be lower than what this process last committed. A floor
/// that only rose would silently drop every record below the old position.
#[derive(Debug, Clone, Default)]
pub struct OffsetFloors {
    inner: Arc<Mutex<FloorState>>,
}

#[derive(Debug, Default)]
struct FloorState {
    floors: HashMap<(String, i32), Floor>,
    dropped: Option<IntCounterVec>,
}

#[derive(Debug, Clone, Copy)]
struct Floor {
    next_offset: i64,
    /// Records dropped since the floor was last set from the database.
    dropped: u64,
}

/// Name of the counter of records dropped below their partition's floor.
pub const BELOW_FLOOR_METRIC: &str = "tokenledger_records_below_stored_offset_total";

impl OffsetFloors {
    /// Counts drops in `registry` from now on.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        let counter = IntCounterVec::new(
            Opts::new(
                BELOW_FLOOR_METRIC,
                "Fetched records dropped because their offset is below the partition's stored \
                 next offset (already stored: a redelivery across a rebalance or assignment).",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        self.lock().dropped = Some(counter);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FloorState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn admits(&self, record: &Record) -> bool {
        let mut state = self.lock();
        let FloorState { floors, dropped } = &mut *state;
        // A handful of partitions: a scan by reference beats building a
        // key (and copying the topic) for every record.
        let Some((_, floor)) = floors.iter_mut().find(|((topic, partition), _)| {
            *partition == record.partition && **topic == *record.topic
        }) else {
            return true;
        };
        if record.offset >= floor.next_offset {
            return true;
        }
        floor.dropped += 1;
        if let Some(counter) = dropped {
            counter
                .with_label_values(&[&record.partition.to_string()])
                .inc();
        }
        // The first drop after each assignment, then every thousandth: enough
        // to see it happen without a line per record.
        if floor.dropped == 1 || floor.dropped % 1000 == 0 {
            tracing::info!(
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                stored_next_offset = floor.next_offset,
                dropped_since_assignment = floor.dropped,
                "dropped a record below the stored offset (already stored)"
            );
        }
        false
    }

    /// Sets the floor of one partition to the offset the database holds for
    /// it (0 when it holds none), up or down.
    pub fn set(&self, topic: &str, partition: i32, next_offset: i64) {
        self.lock().floors.insert(
            (topic.to_owned(), partition),
            Floor {
                next_offset,
                dropped: 0,
            },
        );
    }

    /// Raises the floor of one partition after a commit; never lowers it.
    pub fn raise(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut state = self.lock();
        let floor = state
            .floors
            .entry((topic.to_owned(), partition))
            .or_insert(Floor {
                next_offset,
                dropped: 0,
            });
        floor.next_offset = floor.next_offset.max(next_offset);
    }

    pub fn raise_all(&self, next_offsets: &NextOffsets) {
        for ((topic, partition), next_offset) in next_offsets {
            self.raise(topic, *partition, *next_offset);
        }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lock()
            .floors
            .get(&(topic.to_owned(), partition))
            .map(|floor| floor.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: None,
            schema: None,
            timestamp_ms: None,
        }
    }

    #[test]
    fn floors_only_rise_and_only_filter_their_partition() {
        let floors = OffsetFloors::default();
        assert!(floors.admits(&record(0, 0)), "no floor: everything passes");
        floors.raise("t", 0, 10);
        floors.raise("t", 0, 4);
        assert_eq!(floors.get("t", 0), Some(10));
        assert!(!floors.admits(&record(0, 9)));
        assert!(floors.admits(&record(0, 10)));
        assert!(floors.admits(&record(1, 0)));
    }

    #[test]
    fn assignment_sets_the_floor_down_as_well_as_up_and_drops_are_counted() {
        let floors = OffsetFloors::default();
        let registry = Registry::new();
        floors.register_metrics(&registry).expect("registered");
        floors.raise("t", 0, 500);
        assert!(!floors.admits(&record(0, 20)));
        // the database was reset (or restored) to 0: the floor follows it
        floors.set("t", 0, 0);
        assert_eq!(floors.get("t", 0), Some(0));
        assert!(floors.admits(&record(0, 20)), "nothing below 0 is dropped");
        floors.set("t", 0, 30);
        assert!(!floors.admits(&record(0, 29)));
        assert!(!floors.admits(&record(0, 3)));
        let dropped = registry
            .gather()
            .into_iter()
            .find(|family| family.name() == BELOW_FLOOR_METRIC)
            .expect("the counter is exported");
        let total: f64 = dropped
            .get_metric()
            .iter()
            .map(|m| m.get_counter().value())
            .sum();
        assert_eq!(total, 3.0, "every drop is counted");
    }
}
