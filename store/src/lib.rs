//! tokenledger's storage of budgets: the one home of the SQL over the
//! `budgets`, `budget_spend` and `budget_alerts` tables (sql/V3__budgets.sql)
//! that the gateway's budget API and the processor share. The domain rules
//! (scope, periods, thresholds) are `ledger::budget`; this crate maps them to
//! rows and back, and neither binary writes budgets SQL of its own.
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
//!   window of audit rows.
//! - [`reservations`]: budget reservations: the grant, its holds on each
//!   budget, and their release (cancelled, settled by a usage event,
//!   expired), under the same lock order as a batch.
//! - [`attribution`]: cost by use case, the daily rollup per attribution
//!   label value (`usage_attribution_daily`).
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
pub mod exports;
pub mod forecasts;
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

/// Maps a driver error to a [`DbError`] of `step`.
pub(crate) fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
    move |source| DbError { step, source }
}
