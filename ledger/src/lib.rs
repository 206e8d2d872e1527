//! tokenledger's domain model, shared by the gateway and the processor.
//!
//! Layout:
//! - [`event`]: the usage event, its validation rules and its wire form on
//!   the HTTP API and on Kafka.
//! - [`pricebook`]: list prices per billing dimension with effective dates
//!   and sources, tenants' negotiated terms, and the rating of usage.
//! - [`budget`]: budgets and their scope (the spend rule), their calendar
//!   periods in a time zone, threshold crossings, the text of their alerts
//!   and the validation of a definition; stored by the `store` crate.
//! - [`otlp`]: OpenTelemetry GenAI spans read as usage events.
//! - [`day`]: UTC days, an instant's and a day's midnight.
//! - [`timestamp`]: the RFC 3339 text of a timestamp on the Kafka wire.
//! - [`usage_format`]: providers' own usage objects read as quantities.
//!
//! Nothing here performs I/O; every rule is a pure function so it can be
//! tested exhaustively (see the proptest suites in each module).

pub mod budget;
pub mod day;
pub mod event;
pub mod otlp;
pub mod pricebook;
pub mod timestamp;
pub mod usage_format;

pub use budget::{Budget, Period, PeriodBounds, Scope, TenantScope, ThresholdAlert, UserScope};
pub use event::{BatchError, EventError, FieldError, UsageEvent, ValidationLimits, KAFKA_SCHEMA};
pub use pricebook::{Cost, Price, PriceBook, PriceBookError, PricingStatus};
