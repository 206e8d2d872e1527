//! tokenledger's domain model, shared by the gateway and the processor.
//!
//! Layout:
//! - [`event`]: the usage event, its validation rules and its wire form on
//!   the HTTP API and on Kafka.
//! - [`pricebook`]: list prices per billing dimension with effective dates
//!   and sources, tenants' negotiated terms, and the rating of usage.
//! - [`budget`]: budgets, their calendar periods in a time zone, threshold
//!   crossings and the text of their alerts.
//! - [`budget_row`] (feature `postgres`): how a budget is stored in the
//!   `budgets` table, the one mapping both services use.
//! - [`timestamp`]: the RFC 3339 text of a timestamp on the Kafka wire.
//! - [`usage_format`]: providers' own usage objects read as quantities.
//! - [`kafka_errors`] (feature `kafka`): which producer errors mean the
//!   broker refuses the producer itself rather than one record.
//!
//! Nothing here performs I/O; every rule is a pure function so it can be
//! tested exhaustively (see the proptest suites in each module).

pub mod budget;
#[cfg(feature = "postgres")]
pub mod budget_row;
pub mod event;
#[cfg(feature = "kafka")]
pub mod kafka_errors;
pub mod pricebook;
pub mod timestamp;
pub mod usage_format;

pub use budget::{Budget, Period, PeriodBounds, Scope, TenantScope, ThresholdAlert};
pub use event::{BatchError, EventError, FieldError, UsageEvent, ValidationLimits, KAFKA_SCHEMA};
pub use pricebook::{Cost, Price, PriceBook, PriceBookError, PricingStatus};
