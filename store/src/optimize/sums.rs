//! The rollup's rows summed in memory: [`Summed`] gathers sums and
//! histogram counts under small key ids, in no order, and [`Summed::finish`]
//! sorts once into [`Folded`], the rows in the tables' key order that the
//! upserts and the pending row bind.
//!
//! A batch of 5,000 events has ~1,400 keys and ~13,000 histogram entries:
//! hashing and sorting `(key id, metric, bucket)` rather than the full
//! five-field key per entry is what keeps the rollup cheap.

use super::rollup::{OptimizeKey, OptimizeSums};

/// An index of [`super::rollup::METRICS`].
pub type Metric = u8;

/// A histogram entry: (key id or position, metric, bucket).
pub type Entry = (u32, Metric, i32);

/// Sums and counts under key ids (the order keys were first seen).
#[derive(Debug, Clone, Default)]
pub struct Summed<'a> {
    index: foldhash::HashMap<OptimizeKey<'a>, u32>,
    /// Each key once, by id.
    pub keys: Vec<OptimizeKey<'a>>,
    /// The sums of `keys[id]`.
    pub sums: Vec<OptimizeSums>,
    pub counts: foldhash::HashMap<Entry, i64>,
}

impl<'a> Summed<'a> {
    /// Room for `keys` keys and `counts` histogram entries: the maps and
    /// vectors are allocated once at their size instead of growing through
    /// every power of two (each step a fresh allocation, rehashed).
    pub fn with_capacity(keys: usize, counts: usize) -> Self {
        Self {
            index: foldhash::HashMap::with_capacity_and_hasher(keys, Default::default()),
            keys: Vec::with_capacity(keys),
            sums: Vec::with_capacity(keys),
            counts: foldhash::HashMap::with_capacity_and_hasher(counts, Default::default()),
        }
    }

    /// The id of `key`, given a row of zero sums if new.
    pub fn id(&mut self, key: OptimizeKey<'a>) -> u32 {
        *self.index.entry(key).or_insert_with(|| {
            self.keys.push(key);
            self.sums.push(OptimizeSums::default());
            (self.keys.len() - 1) as u32
        })
    }

    pub fn count(&mut self, id: u32, metric: Metric, bucket: i32, n: i64) {
        *self.counts.entry((id, metric, bucket)).or_default() += n;
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// These sums with every key mapped by `to` (keys it maps alike are
    /// summed), in the tables' order.
    pub fn fold(&self, mut to: impl FnMut(&OptimizeKey<'a>) -> OptimizeKey<'a>) -> Folded<'a> {
        let mut out = Summed::with_capacity(self.keys.len(), self.counts.len());
        let ids: Vec<u32> = self
            .keys
            .iter()
            .zip(&self.sums)
            .map(|(key, sums)| {
                let id = out.id(to(key));
                out.sums[id as usize].add(sums);
                id
            })
            .collect();
        for (&(id, metric, bucket), &n) in &self.counts {
            out.count(ids[id as usize], metric, bucket, n);
        }
        out.finish()
    }

    /// The rows in key order: the keys sorted once, the counts by
    /// (key position, metric, bucket), which is the order of (key, metric,
    /// bucket).
    pub fn finish(mut self) -> Folded<'a> {
        let mut order: Vec<u32> = (0..self.keys.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.keys[*a as usize].cmp(&self.keys[*b as usize]));
        let mut position = vec![0u32; order.len()];
        for (at, id) in order.iter().enumerate() {
            position[*id as usize] = at as u32;
        }
        let keys = order.iter().map(|id| self.keys[*id as usize]).collect();
        let sums = order
            .iter()
            .map(|id| std::mem::take(&mut self.sums[*id as usize]))
            .collect();
        let mut counts: Vec<(Entry, i64)> = self
            .counts
            .into_iter()
            .map(|((id, metric, bucket), n)| ((position[id as usize], metric, bucket), n))
            .collect();
        counts.sort_unstable_by_key(|(entry, _)| *entry);
        Folded { keys, sums, counts }
    }
}

/// What some stored rows add to the rollup, use cases folded: each daily
/// row once, in key order, and each histogram row once, by (position of
/// its key in `keys`, metric, bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folded<'a> {
    pub keys: Vec<OptimizeKey<'a>>,
    pub sums: Vec<OptimizeSums>,
    pub counts: Vec<(Entry, i64)>,
}

impl Folded<'_> {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
