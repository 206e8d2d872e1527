//! Kafka offsets stored in the database (`ingest_offsets`), which are the
//! processor's only source of truth for where to resume, and the in-memory
//! floor below which a fetched record is already stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

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
// rebalance must never move the stored position backwards.
const UPSERT: &str = "
INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
SELECT $1, stored.topic, stored.partition, stored.next_offset, now()
FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS stored(topic, partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
SET next_offset = GREATEST(ingest_offsets.next_offset, EXCLUDED.next_offset),
    updated_at = now()";

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

/// Records `next_offsets` for `group_id`; meant to run inside the batch
/// transaction so rows and offsets commit together.
pub async fn store(
    client: &impl GenericClient,
    group_id: &str,
    next_offsets: &NextOffsets,
) -> Result<(), OffsetsError> {
    if next_offsets.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = next_offsets.keys().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = next_offsets.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    let statement = client.prepare(UPSERT).await?;
    client
        .execute(&statement, &[&group_id, &topics, &partitions, &offsets])
        .await?;
    Ok(())
}

/// The lowest offset per partition that is not yet stored, as far as this
/// process knows: raised when partitions are assigned (from the database)
/// and after each committed batch. A record below its floor was fetched
/// before a seek took effect, or sat in a queue across a rebalance; it is
/// already in the database and is dropped.
#[derive(Debug, Clone, Default)]
pub struct OffsetFloors {
    floors: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl OffsetFloors {
    pub fn admits(&self, record: &Record) -> bool {
        let floors = self.floors.lock().unwrap_or_else(PoisonError::into_inner);
        // A handful of partitions: a scan by reference beats building a
        // key (and copying the topic) for every record.
        floors
            .iter()
            .find(|((topic, partition), _)| {
                *partition == record.partition && **topic == *record.topic
            })
            .is_none_or(|(_, floor)| record.offset >= *floor)
    }

    /// Raises the floor of one partition; never lowers it.
    pub fn raise(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut floors = self.floors.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = floors
            .entry((topic.to_owned(), partition))
            .or_insert(next_offset);
        *floor = (*floor).max(next_offset);
    }

    pub fn raise_all(&self, next_offsets: &NextOffsets) {
        for ((topic, partition), next_offset) in next_offsets {
            self.raise(topic, *partition, *next_offset);
        }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        let floors = self.floors.lock().unwrap_or_else(PoisonError::into_inner);
        floors.get(&(topic.to_owned(), partition)).copied()
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
}
