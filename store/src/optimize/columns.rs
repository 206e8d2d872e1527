//! The rollup's rows as one array per column, the shape both the upserts
//! (`UNNEST` of the arrays) and the pending rows (the arrays themselves)
//! bind them in; the upserts bind them a bounded range of rows at a time
//! ([`DailyColumns::of_range`], [`HistogramColumns::of_range`]).

use std::ops::Range;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;

use super::rollup::{OptimizeKey, OptimizeSums, METRICS};
use super::sums::Folded;

/// The key columns of some rows.
#[derive(Debug, Default)]
pub struct KeyColumns<'a> {
    pub days: Vec<DateTime<Utc>>,
    pub tenants: Vec<&'a str>,
    pub providers: Vec<&'a str>,
    pub models: Vec<&'a str>,
    pub use_cases: Vec<&'a str>,
}

impl<'a> KeyColumns<'a> {
    fn of<'k>(keys: impl Iterator<Item = &'k OptimizeKey<'a>>) -> Self
    where
        'a: 'k,
    {
        let mut columns = Self::default();
        for key in keys {
            columns.days.push(key.day);
            columns.tenants.push(key.tenant_id);
            columns.providers.push(key.provider);
            columns.models.push(key.model);
            columns.use_cases.push(key.use_case);
        }
        columns
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.days,
            &self.tenants,
            &self.providers,
            &self.models,
            &self.use_cases,
        ]
    }
}

/// `usage_optimize_daily`'s rows: the key, then the sums in the table's
/// order (`requests` … `no_cache_input_list_cost`).
#[derive(Debug)]
pub struct DailyColumns<'a> {
    pub keys: KeyColumns<'a>,
    ints: Vec<Vec<i64>>,
    nums: Vec<Vec<Decimal>>,
}

/// Where each sum goes: an integer column, or a numeric one.
enum Sum {
    Int(fn(&OptimizeSums) -> i64),
    Num(fn(&OptimizeSums) -> Decimal),
}

/// The sums in the table's column order.
const SUMS: [Sum; 22] = [
    Sum::Int(|s| s.requests),
    Sum::Int(|s| s.prompt_tokens),
    Sum::Int(|s| s.completion_tokens),
    Sum::Int(|s| s.total_tokens),
    Sum::Int(|s| s.cached_prompt_tokens),
    Sum::Int(|s| s.cache_write_tokens),
    Sum::Int(|s| s.reasoning_tokens),
    Sum::Int(|s| s.max_prompt_tokens),
    Sum::Num(|s| s.cost),
    Sum::Int(|s| s.priced_requests),
    Sum::Int(|s| s.priced_tokens),
    Sum::Int(|s| s.listed_requests),
    Sum::Num(|s| s.list_cost),
    Sum::Num(|s| s.input_list_cost),
    Sum::Num(|s| s.output_list_cost),
    Sum::Num(|s| s.cache_read_list_cost),
    Sum::Num(|s| s.cache_read_at_input_cost),
    Sum::Num(|s| s.cache_write_list_cost),
    Sum::Num(|s| s.cache_write_at_input_cost),
    Sum::Int(|s| s.no_cache_requests),
    Sum::Int(|s| s.no_cache_prompt_tokens),
    Sum::Num(|s| s.no_cache_input_list_cost),
];

impl<'a> DailyColumns<'a> {
    pub fn of(folded: &Folded<'a>) -> Self {
        Self::of_range(folded, 0..folded.keys.len())
    }

    /// The daily rows `rows` (positions in `folded.keys`).
    pub fn of_range(folded: &Folded<'a>, rows: Range<usize>) -> Self {
        let sums = &folded.sums[rows.clone()];
        let mut ints = Vec::new();
        let mut nums = Vec::new();
        for sum in &SUMS {
            match sum {
                Sum::Int(f) => ints.push(sums.iter().map(f).collect()),
                Sum::Num(f) => nums.push(sums.iter().map(f).collect()),
            }
        }
        Self {
            keys: KeyColumns::of(folded.keys[rows].iter()),
            ints,
            nums,
        }
    }

    /// The 27 arrays: key, then sums, in the table's column order.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = self.keys.params().to_vec();
        let (mut int, mut num) = (self.ints.iter(), self.nums.iter());
        for sum in &SUMS {
            match sum {
                Sum::Int(_) => params.extend(int.next().map(|c| c as &(dyn ToSql + Sync))),
                Sum::Num(_) => params.extend(num.next().map(|c| c as &(dyn ToSql + Sync))),
            }
        }
        params
    }
}

/// `usage_optimize_histogram`'s rows.
#[derive(Debug)]
pub struct HistogramColumns<'a> {
    pub keys: KeyColumns<'a>,
    pub metrics: Vec<&'static str>,
    pub buckets: Vec<i32>,
    pub requests: Vec<i64>,
}

impl<'a> HistogramColumns<'a> {
    pub fn of(folded: &Folded<'a>) -> Self {
        Self::of_range(folded, 0..folded.counts.len())
    }

    /// The histogram rows `rows` (positions in `folded.counts`).
    pub fn of_range(folded: &Folded<'a>, rows: Range<usize>) -> Self {
        let counts = &folded.counts[rows];
        Self {
            keys: KeyColumns::of(
                counts
                    .iter()
                    .map(|((at, _, _), _)| &folded.keys[*at as usize]),
            ),
            metrics: counts
                .iter()
                .map(|((_, metric, _), _)| METRICS[usize::from(*metric)])
                .collect(),
            buckets: counts.iter().map(|((_, _, bucket), _)| *bucket).collect(),
            requests: counts.iter().map(|(_, n)| *n).collect(),
        }
    }

    /// The 8 arrays, in the table's column order.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = self.keys.params().to_vec();
        params.extend([
            &self.metrics as &(dyn ToSql + Sync),
            &self.buckets,
            &self.requests,
        ]);
        params
    }
}

/// Each histogram row's key as its 1-based position among the daily rows'
/// keys (every histogram key is among them: both come from the same rows).
pub fn key_positions(folded: &Folded<'_>) -> Vec<i32> {
    folded
        .counts
        .iter()
        .map(|((at, _, _), _)| *at as i32 + 1)
        .collect()
}
