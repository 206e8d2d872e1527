//! Optimization: the guide's last three best practices answered from the
//! ledger — prompt length, cost per request by model, what another model
//! would have cost, what caching saved. Shared by `processor report
//! optimize`, `processor what-if` and the gateway's `/v1/reports/*`, so all
//! three give the same figures.
//!
//! Layout:
//! - [`histogram`]: log-bucketed counts and percentiles with a stated
//!   relative error.
//! - [`parts`]: one request's list price split by token kind, by the
//!   ledger's own rating.
//! - [`rollup`]: what stored rows add to `usage_optimize_daily` and
//!   `usage_optimize_histogram` (sql/V14__optimization_rollup.sql), and
//!   the upserts that add it; [`columns`]: those rows as column arrays.
//! - [`pending`]: a batch's deltas stored in its transaction
//!   (sql/V21__optimization_rollup_pending.sql), and the applier that adds
//!   many batches' to the tables at once, exactly once.
//! - [`rebuild`]: one day and tenant of the rollup recomputed from the
//!   raw table (re-pricing, usage stored before the rollup).
//! - [`report`]: the optimization report, from the rollup alone (the
//!   tables plus the deltas not applied yet).
//! - [`whatif`]: the usage of a range re-priced at another model.

pub mod columns;
pub mod histogram;
pub mod parts;
pub mod pending;
pub mod rebuild;
pub mod report;
pub mod rollup;
pub mod sums;
pub mod whatif;

use chrono::{DateTime, NaiveDate, Utc};

use crate::exports::midnight;
use crate::DbError;

/// The label whose value is a row's use case.
pub const USE_CASE_LABEL: &str = "use_case";

/// The longest range one report covers.
pub const MAX_DAYS: i64 = 366;

#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("invalid report request: {0}")]
    Invalid(String),
    #[error("a stored row cannot be read: {0}")]
    Stored(String),
}

/// UTC days `[from, to)`, of one tenant or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tenant: Option<String>,
}

impl Range {
    /// The range's instants, once it is checked.
    pub fn bounds(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), OptimizeError> {
        if self.to <= self.from {
            return Err(OptimizeError::Invalid(format!(
                "to ({}) must be after from ({}); to is exclusive",
                self.to, self.from
            )));
        }
        if (self.to - self.from).num_days() > MAX_DAYS {
            return Err(OptimizeError::Invalid(format!(
                "a report covers at most {MAX_DAYS} days"
            )));
        }
        Ok((midnight(self.from), midnight(self.to)))
    }

    /// `YYYY-MM-DD`, as the command line and the HTTP query take days.
    pub fn parse_day(name: &str, text: &str) -> Result<NaiveDate, OptimizeError> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            OptimizeError::Invalid(format!(
                "{name} must be a date (YYYY-MM-DD), got {:?}",
                text.chars().take(40).collect::<String>()
            ))
        })
    }
}
