//! Kafka offsets stored in the database (`ingest_offsets`), which are the
//! processor's only source of truth for where to resume, and the in-memory
//! floor below which a fetched record is already stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounterVec, Opts, Registry};
use tokio_postgres::GenericClient;

use crate::record::Record;

/// Next offset to read, per (topic, partition).
pub type NextOffsets = BTreeMap<(String, i32), i64>;

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("database error reading or writing ingest_offsets: {0}")]
    Database(#[from] tokio_postgres::Error),
}

const LOAD: &str = "SELECT partition, next_offset FROM ingest_offsets \
                    WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)";

// GREATEST: two processors briefly owning the same partition during a
// rebalance must never move the stored position backwards; the last
// record's mark moves with the position it belongs to.
const UPSERT: &str = "
INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at,
                            last_offset, last_record_sha256)
SELECT $1, stored.topic, stored.partition, stored.next_offset, now(),
       stored.last_offset, stored.last_record_sha256
FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[], $6::bytea[])
     AS stored(topic, partition, next_offset, last_offset, last_record_sha256)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
SET next_offset = GREATEST(ingest_offsets.next_offset, EXCLUDED.next_offset),
    last_offset = CASE WHEN EXCLUDED.next_offset >= ingest_offsets.next_offset
                       THEN EXCLUDED.last_offset ELSE ingest_offsets.last_offset END,
    last_record_sha256 = CASE WHEN EXCLUDED.next_offset >= ingest_offsets.next_offset
                              THEN EXCLUDED.last_record_sha256
                              ELSE ingest_offsets.last_record_sha256 END,
    updated_at = now()";

const LOAD_MARKS: &str = "SELECT partition, last_offset, last_record_sha256 FROM ingest_offsets \
                          WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3) \
                          AND last_offset IS NOT NULL AND last_record_sha256 IS NOT NULL";

/// The last record a stored offset passed: where it was and a digest of
/// its key and value ([`crate::log_check::record_digest`]). A log that
/// holds another record there is not the log the offset was stored for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMark {
    pub offset: i64,
    pub sha256: Vec<u8>,
}

/// The mark of the last record of each partition among `records`.
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

/// The stored marks of `partitions` (those stored with one).
pub async fn load_marks(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, LogMark>, OffsetsError> {
    let rows = client
        .query(LOAD_MARKS, &[&group_id, &topic, &partitions])
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                LogMark {
                    offset: row.get(1),
                    sha256: row.get(2),
                },
            )
        })
        .collect())
}

/// The stored next offsets of `partitions`; partitions without a row are
/// absent from the map (nothing stored yet: start from the earliest).
pub async fn load(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, OffsetsError> {
    let statement = client.prepare(LOAD).await?;
    let rows = client
        .query(&statement, &[&group_id, &topic, &partitions])
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Records `next_offsets` for `group_id`, each with the mark of the last
/// record of `records` on its partition; meant to run inside the batch
/// transaction so rows and offsets commit together.
pub async fn store(
    client: &impl GenericClient,
    group_id: &str,
    next_offsets: &NextOffsets,
    records: &[Record],
) -> Result<(), OffsetsError> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    let marks = log_marks(records);
    let topics: Vec<&str> = next_offsets.keys().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = next_offsets.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    let last_offsets: Vec<Option<i64>> = next_offsets
        .keys()
        .map(|key| marks.get(key).map(|mark| mark.offset))
        .collect();
    let digests: Vec<Option<&[u8]>> = next_offsets
        .keys()
        .map(|key| marks.get(key).map(|mark| mark.sha256.as_slice()))
        .collect();
    let statement = client.prepare(UPSERT).await?;
    client
        .execute(
            &statement,
            &[
                &group_id,
                &topics,
                &partitions,
                &offsets,
                &last_offsets,
                &digests,
            ],
        )
        .await?;
    Ok(())
}

/// One stored position, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    pub partition: i32,
    pub next_offset: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Every stored position of `group_id` on `topic`, by partition; with
/// `lock`, the rows are locked until the transaction ends.
pub async fn list(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    lock: bool,
) -> Result<Vec<StoredOffset>, OffsetsError> {
    let query = format!(
        "SELECT partition, next_offset, updated_at FROM ingest_offsets \
         WHERE consumer_group = $1 AND topic = $2 ORDER BY partition{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let rows = client.query(&query, &[&group_id, &topic]).await?;
    Ok(rows
        .iter()
        .map(|row| StoredOffset {
            partition: row.get(0),
            next_offset: row.get(1),
            updated_at: row.get(2),
        })
        .collect())
}

/// Sets stored positions to exactly `next_offsets` (partition → offset),
/// lower or higher: the operator's reset. Unlike [`store`] there is no
/// `GREATEST`, which is the point.
pub async fn overwrite(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<(), OffsetsError> {
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    client
        .execute(
            "INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
             SELECT $1, $2, target.partition, target.next_offset, now()
             FROM UNNEST($3::int4[], $4::int8[]) AS target(partition, next_offset)
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE
             SET next_offset = EXCLUDED.next_offset, updated_at = now(),
                 last_offset = NULL, last_record_sha256 = NULL",
            &[&group_id, &topic, &partitions, &offsets],
        )
        .await?;
    Ok(())
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
