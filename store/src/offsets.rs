//! `ingest_offsets`: where each consumer group resumes on each partition,
//! and the mark of the last record a stored position passed. The
//! processor's only source of truth for where to resume; it writes a
//! batch's positions in the batch's own transaction.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use crate::{db, DbError};

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

const OVERWRITE: &str = "
INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
SELECT $1, $2, target.partition, target.next_offset, now()
FROM UNNEST($3::int4[], $4::int8[]) AS target(partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
SET next_offset = EXCLUDED.next_offset, updated_at = now(),
    last_offset = NULL, last_record_sha256 = NULL";

/// The last record a stored offset passed: where it was and a digest of
/// its key and value. A log that holds another record there is not the
/// log the offset was stored for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMark {
    pub offset: i64,
    pub sha256: Vec<u8>,
}

/// One stored position, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    pub partition: i32,
    pub next_offset: i64,
    pub updated_at: DateTime<Utc>,
}

impl StoredOffset {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            partition: row.try_get("partition")?,
            next_offset: row.try_get("next_offset")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// The stored marks of `partitions` (those stored with one).
pub async fn load_marks(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, LogMark>, DbError> {
    const STEP: &str = "reading ingest_offsets";
    let rows = client
        .query(LOAD_MARKS, &[&group_id, &topic, &partitions])
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| {
            let mark = LogMark {
                offset: row.try_get("last_offset")?,
                sha256: row.try_get("last_record_sha256")?,
            };
            Ok((row.try_get("partition")?, mark))
        })
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// The stored next offsets of `partitions`; partitions without a row are
/// absent from the map (nothing stored yet: start from the earliest).
pub async fn load(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, DbError> {
    const STEP: &str = "reading ingest_offsets";
    let statement = client.prepare(LOAD).await.map_err(db(STEP))?;
    let rows = client
        .query(&statement, &[&group_id, &topic, &partitions])
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(|row| Ok((row.try_get("partition")?, row.try_get("next_offset")?)))
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// Records the next offset of each (topic, partition) for `group_id`, each
/// with the mark of the last record stored on it when there is one; meant
/// to run inside the batch transaction so rows and offsets commit together.
/// A position never moves backwards.
pub async fn advance(
    client: &impl GenericClient,
    group_id: &str,
    next_offsets: &BTreeMap<(String, i32), i64>,
    marks: &BTreeMap<(String, i32), LogMark>,
) -> Result<(), DbError> {
    const STEP: &str = "writing ingest_offsets";
    if next_offsets.is_empty() {
        return Ok(());
    }
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
    let statement = client.prepare(UPSERT).await.map_err(db(STEP))?;
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
        .await
        .map_err(db(STEP))?;
    Ok(())
}

/// Every stored position of `group_id` on `topic`, by partition; with
/// `lock`, the rows are locked until the transaction ends.
pub async fn list(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    lock: bool,
) -> Result<Vec<StoredOffset>, DbError> {
    const STEP: &str = "reading ingest_offsets";
    let query = format!(
        "SELECT partition, next_offset, updated_at FROM ingest_offsets \
         WHERE consumer_group = $1 AND topic = $2 ORDER BY partition{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let rows = client
        .query(&query, &[&group_id, &topic])
        .await
        .map_err(db(STEP))?;
    rows.iter()
        .map(StoredOffset::from_row)
        .collect::<Result<_, _>>()
        .map_err(db(STEP))
}

/// Sets stored positions to exactly `next_offsets` (partition → offset),
/// lower or higher, and forgets their marks: the operator's reset. Unlike
/// [`advance`] there is no `GREATEST`, which is the point.
pub async fn overwrite(
    client: &impl GenericClient,
    group_id: &str,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<(), DbError> {
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    client
        .execute(OVERWRITE, &[&group_id, &topic, &partitions, &offsets])
        .await
        .map_err(db("writing ingest_offsets"))?;
    Ok(())
}
