//! tokenledger's domain model, shared by the gateway and the processor.
//!
//! Layout:
//! - [`event`]: the usage event, its validation rules and its wire form on
//!   the HTTP API and on Kafka.
//! - [`pricebook`]: per-million-token prices with effective dates, and the
//!   cost of one event.
//! - [`budget`]: budgets, their calendar periods in a time zone, threshold
//!   crossings and the text of their alerts.
//! - [`budget_row`] (feature `postgres`): how a budget is stored in the
//!   `budgets` table, the one mapping both services use.
//! - [`timestamp`]: the RFC 3339 text of a timestamp on the Kafka wire.
//!
//! Nothing here performs I/O; every rule is a pure function so it can be
//! tested exhaustively (see the proptest suites in each module).

pub mod budget;
#[cfg(feature = "postgres")]
pub mod budget_row;
pub mod event;
pub mod pricebook;
pub mod timestamp;

pub use budget::{Budget, Period, PeriodBounds, Scope, TenantScope, ThresholdAlert};
pub use event::{BatchError, EventError, FieldError, UsageEvent, ValidationLimits, KAFKA_SCHEMA};
pub use pricebook::{Cost, Price, PriceBook, PriceBookError, PricingStatus};
