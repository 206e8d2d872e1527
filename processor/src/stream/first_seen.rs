//! The in-batch index of event keys: which `(tenant_id, id, created_at)`
//! the batch being prepared already holds. It stores positions in the
//! batch's `unique` events and compares keys in place, so a lookup copies
//! no tenant id (an owned key per event was one allocation and one free per
//! record on the hot path), and its table is kept from batch to batch.

use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use uuid::Uuid;

use crate::stream::prepare::{KeyHasher, PricedEvent};

/// A key borrowed from its event.
type KeyRef<'a> = (&'a str, Uuid, DateTime<Utc>);

fn key_of(priced: &PricedEvent) -> KeyRef<'_> {
    (
        priced.event.tenant_id.as_str(),
        priced.event.id,
        priced.event.created_at,
    )
}

#[derive(Debug)]
pub struct FirstSeen {
    table: HashTable<usize>,
    hasher: KeyHasher,
}

impl FirstSeen {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            table: HashTable::with_capacity(capacity),
            hasher: KeyHasher::default(),
        }
    }

    /// Notes `priced` as the next of `unique` (it is pushed there next)
    /// unless its key is in `unique` already; whether it was new.
    pub fn insert(&mut self, unique: &[PricedEvent], priced: &PricedEvent) -> bool {
        let key = key_of(priced);
        let hash = self.hasher.hash_one(key);
        if self
            .table
            .find(hash, |&index| key_of(&unique[index]) == key)
            .is_some()
        {
            return false;
        }
        let hasher = &self.hasher;
        self.table.insert_unique(hash, unique.len(), |&index| {
            hasher.hash_one(key_of(&unique[index]))
        });
        true
    }

    /// Forgets every key, keeping the table's room.
    pub fn clear(&mut self) {
        self.table.clear();
    }
}
