//! tokenledger's storage: the SQL over the tables that the gateway, the
//! processor and the benchmark share, with each table's row mapping by
//! column name. It owns the budgets tables (`budgets`, `budget_spend`,
//! `budget_alerts`, sql/V3__budgets.sql), the reads behind the exports and
//! the use-case rollup (`usage_attribution_daily`), and the totals of
//! `cost_corrections`; the audit table's batch writes, `ingest_offsets`, the
//! alert outbox's claims and re-pricing's paging are still the processor's.
//! The domain rules (scope, periods, thresholds) are `ledger::budget`; this
//! crate maps them to rows and back, and neither binary writes budgets SQL of
//! its own. [`DbError`] is the one step-tagged database error, [`db`] its helper.
//!
//! Layout:
//! - [`budgets`]: the definitions: the column list and row mapping, reads,
//!   and the edits (create, replace, delete, `processor budgets apply`),
//!   each one transaction that locks a budget's row before it touches the
//!   budget's spend.
//! - [`spend`]: spend per budget, tenant and period: the spend rule in SQL
//!   (the audit rows that count toward a budget), the current spend the
//!   status endpoint shows, and the statements the batch transaction uses
//!   to lock budgets and add to spend.
//! - [`alerts`]: recording threshold crossings in `budget_alerts`.
//! - [`exports`]: the FOCUS dataset and the monthly statements for finance
//!   teams, streamed from the raw table.
//! - [`forecasts`]: burn-rate forecasts from stored spend and a trailing
//!   window of audit rows; [`forecast_alerts`]: raising and resolving the
//!   forecast alerts of budgets with `forecast_alert` in `budget_alerts`.
//! - [`reservations`]: budget reservations: the grant, its holds on each
//!   budget, and their release (cancelled, settled by a usage event,
//!   expired), under the same lock order as a batch.
//! - [`attribution`]: cost by use case, the daily rollup per attribution
//!   label value (`usage_attribution_daily`).
//! - [`reconcile`]: the providers' usage and cost reports as fetched
//!   (immutable day revisions, sql/V16) and the ledger's usage summed the
//!   same way, for `processor reconcile`.
//! - [`optimize`]: prompt length, cost per request, what-if re-pricing and
//!   caching savings (`usage_optimize_daily`, `usage_optimize_histogram`).
//! - [`corrections`]: the totals of `cost_corrections`, what re-pricing
//!   changed.
//!
//! Lock order, everywhere: a budget's row in `budgets` first, then its
//! `budget_spend` rows. A batch holds the budgets it adds to `FOR SHARE`
//! until it commits; an edit holds the budget `FOR UPDATE` before it resets
//! spend, so the two wait for each other instead of interleaving.
//!
//! Every function takes a connection or transaction owned by the caller
//! (the gateway's pool, the processor's batch transaction) and binds every
//! value as a parameter.

pub mod alerts;
pub mod attribution;
pub mod budgets;
pub mod corrections;
pub mod exports;
pub mod forecast_alerts;
pub mod forecasts;
pub mod optimize;
pub mod reconcile;
pub mod reservations;
pub mod spend;

pub use budgets::{ApplyReport, EditError};
pub use spend::SpendKey;

/// A statement failed; `step` names what the store was doing.
#[derive(Debug, thiserror::Error)]
#[error("database error while {step}: {source}")]
pub struct DbError {
    pub step: &'static str,
    #[source]
    pub source: tokio_postgres::Error,
}

/// Maps a driver error to a [`DbError`] of `step`: `.map_err(store::db("reading budgets"))?`.
/// The one step-tagged database error of the store and of the processor's SQL.
pub fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
    move |source| DbError { step, source }
}
