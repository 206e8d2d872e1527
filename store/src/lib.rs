//! tokenledger's storage: every SQL statement on tokenledger's tables, with
//! one row mapping per table by column name (`try_get("col")`, never a
//! position). The gateway, the processor and the benchmark call it and
//! write no SQL on the tables of their own (what stays outside, and why:
//! docs/design.md, "SQL outside `store`"). The domain rules (scope, periods,
//! thresholds, pricing) are `ledger`'s; this crate maps them to rows and
//! back. [`DbError`] is the one step-tagged database error, [`db`] its helper.
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
//! - [`audit`]: `gateway_mode_audit` as the processor's batch writes it:
//!   the row an event becomes, the binary COPY and the staging insert that
//!   skips stored keys, the stored hashes of the rest, and the call
//!   identities (`call_identities`).
//! - [`offsets`]: `ingest_offsets`, where each consumer group resumes, and
//!   the mark of the last record each position passed.
//! - [`alert_outbox`]: delivering `budget_alerts`: claims under a lease, the
//!   targets' answers, the gauges' reads.
//! - [`reprice`]: re-pricing's paging over the audit table, its updates and
//!   `cost_corrections` rows, and the record of runs and pending days.
//! - [`rollups`]: the continuous aggregates: refreshes, their policies'
//!   windows, and the totals and daily rows `processor report` shows.
//! - [`migrate`]: the schema itself, `sql/V<N>__*.sql` embedded and applied
//!   in version order with their checksums (`processor migrate`, and the
//!   test harness's databases, through the same runner).
//!
//! Lock order, everywhere: a budget's row in `budgets` first, then its
//! `budget_spend` rows. A batch holds the budgets it adds to `FOR SHARE`
//! until it commits; an edit holds the budget `FOR UPDATE` before it resets
//! spend, so the two wait for each other instead of interleaving.
//!
//! Every function takes a connection or transaction owned by the caller
//! (the gateway's pool, the processor's batch transaction) and binds every
//! value as a parameter.

pub mod alert_outbox;
pub mod alerts;
pub mod attribution;
pub mod audit;
pub mod budgets;
mod column;
pub mod corrections;
pub mod exports;
pub mod forecast_alerts;
pub mod forecasts;
pub mod migrate;
pub mod offsets;
pub mod optimize;
pub mod reconcile;
pub mod reprice;
pub mod reservations;
pub mod rollups;
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
