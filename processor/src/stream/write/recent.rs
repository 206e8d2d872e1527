//! The keys this processor committed recently, as a hint for the insert: a
//! batch's row whose key is among them is probably a client's retry of a
//! row already stored, and goes through the staging insert (which skips
//! stored keys) instead of making the batch's direct COPY fail part-way
//! and send the whole batch there ([`store::audit::copy::insert_hinted`]).
//! A hint is never trusted for correctness: a hinted row that is not stored
//! is inserted by the staging insert all the same.
//!
//! A key is remembered as the first 8 bytes of the row's content SHA-256,
//! computed for every event anyway: no hashing per event, and equal
//! content means an equal key (the content holds the key). A retry
//! with other content (a conflict) is not hinted, and costs what it costs
//! without the hint. The set is bounded: two generations of at most
//! [`GENERATION`] keys; when the newer fills up, the older is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hashbrown::HashTable;

use crate::stream::prepare::PricedEvent;
use store::audit::copy::Path;

/// Keys per generation: between one and two generations of keys are kept,
/// 100–200 s of traffic at 10,000 events/s. A full generation's table has
/// 2^21 buckets of 9 bytes (the key and hashbrown's control byte), so the
/// two cost about 38 MB once that much traffic went by.
pub const GENERATION: usize = 1 << 20;

/// The recently committed keys and how batches were inserted.
#[derive(Debug)]
pub struct RecentKeys {
    generations: Mutex<Generations>,
    capacity: usize,
    direct: AtomicU64,
    hinted: AtomicU64,
    staged: AtomicU64,
}

/// How many batches took each insert path since the writer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertPaths {
    /// One COPY straight into the audit table.
    pub direct: u64,
    /// The rows not hinted straight in, the hinted ones through staging.
    pub hinted: u64,
    /// Every row through staging: the direct COPY met a stored key.
    pub staged: u64,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashTable<u64>,
    older: HashTable<u64>,
}

impl Default for RecentKeys {
    fn default() -> Self {
        Self::with_generation(GENERATION)
    }
}

/// The key's fingerprint; the content hash is uniform already, so it is
/// its own hash in the tables.
fn fingerprint(content_sha256: &[u8; 32]) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&content_sha256[..8]);
    u64::from_le_bytes(first)
}

impl RecentKeys {
    /// Remembers at most two generations of `capacity` keys.
    pub fn with_generation(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            capacity: capacity.max(1),
            direct: AtomicU64::new(0),
            hinted: AtomicU64::new(0),
            staged: AtomicU64::new(0),
        }
    }

    /// Remembers the keys of rows whose transaction committed (never of a
    /// rolled-back one: a hint would then be wrong more often).
    pub fn remember<'a>(&self, content_hashes: impl IntoIterator<Item = &'a [u8; 32]>) {
        let mut generations = self.lock();
        for hash in content_hashes {
            let key = fingerprint(hash);
            if generations.contains(key) {
                continue;
            }
            generations.newer.insert_unique(key, key, |&stored| stored);
            if generations.newer.len() >= self.capacity {
                let generations = &mut *generations;
                std::mem::swap(&mut generations.newer, &mut generations.older);
                // Keeps the table's room for the next generation.
                generations.newer.clear();
            }
        }
    }

    /// `rows` split into those whose key is not remembered and those whose
    /// key is (the hinted ones).
    pub fn split<'a>(
        &self,
        rows: &[&'a PricedEvent],
    ) -> (Vec<&'a PricedEvent>, Vec<&'a PricedEvent>) {
        let generations = self.lock();
        if generations.newer.is_empty() && generations.older.is_empty() {
            return (rows.to_vec(), Vec::new());
        }
        let mut direct = Vec::with_capacity(rows.len());
        let mut hinted = Vec::new();
        for row in rows {
            if generations.contains(fingerprint(&row.content_sha256)) {
                hinted.push(*row);
            } else {
                direct.push(*row);
            }
        }
        (direct, hinted)
    }

    /// Counts a batch's insert path.
    pub fn count(&self, path: Path) {
        let counter = match path {
            Path::Direct => &self.direct,
            Path::Hinted => &self.hinted,
            Path::Staged => &self.staged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn paths(&self) -> InsertPaths {
        InsertPaths {
            direct: self.direct.load(Ordering::Relaxed),
            hinted: self.hinted.load(Ordering::Relaxed),
            staged: self.staged.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The tables are consistent after every statement that changes
        // them, so a panic elsewhere while holding the lock left them usable.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Generations {
    fn contains(&self, key: u64) -> bool {
        self.newer.find(key, |&stored| stored == key).is_some()
            || self.older.find(key, |&stored| stored == key).is_some()
    }
}

#[cfg(test)]
mod tests;
