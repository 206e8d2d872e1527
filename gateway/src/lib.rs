//! tokenledger's HTTP gateway: authenticate, validate and append usage
//! events to Kafka, answering 202 only once Kafka has acknowledged them.
//!
//! Layout:
//! - [`config`]: the typed configuration: sections, defaults, cross-field
//!   rules. Its layering, the `Secret` type of credentials, logging,
//!   signal handling, the Postgres pool and the librdkafka client context
//!   are the `infra` crate's, shared with the processor.
//! - [`auth`]: API keys (stored as SHA-256), the [`auth::Authenticated`]
//!   extractor.
//! - [`append`]: the [`append::Appender`] trait the handlers write through,
//!   and how the fate of each record is reported.
//! - [`kafka`]: the idempotent Kafka producer behind that trait.
//! - [`memory`]: an in-memory appender with scripted failures, for tests.
//! - [`error`]: [`error::AppError`], the one mapping from refusals to
//!   status codes and JSON bodies; a refusal of usage events carries a
//!   [`metrics::Rejection`] that the shared middleware counts.
//! - [`state`]: [`state::AppState`], what every handler shares, and its
//!   [`state::Settings`].
//! - [`api`]: the handlers.
//! - [`app`]: the routers ([`app::router`], [`app::router_with`] for later
//!   routes, [`app::admin_router`]) and the layers they share.
//! - [`budgets`]: the admin budget API and the budget status endpoint, on
//!   the processor's database (`database.url`).
//! - [`reservations`]: budget reservations (`/v1/budgets/reservations`):
//!   money held against hard limits before a call, on the same database.
//! - [`request_id`], [`readiness`], [`metrics`]: cross-cutting pieces.
//! - [`server`]: serving both ports and draining once the shutdown token
//!   is cancelled (by `infra::signals` on SIGTERM).
//! - [`connection`]: each port's connection cap and its header-read and
//!   idle timeouts.

pub mod admin;
pub mod api;
pub mod app;
pub mod append;
pub mod auth;
pub mod budgets;
pub mod config;
pub mod connection;
pub mod error;
pub mod exports;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod otlp;
pub mod readiness;
pub mod reconciliation;
pub mod reports;
pub mod request_id;
pub mod reservations;
pub mod server;
pub mod state;

pub use app::{admin_router, router, router_with};
pub use append::{AppendError, AppendReport, Appender};
pub use auth::{Authenticated, KeyRing};
pub use config::Config;
pub use error::AppError;
pub use state::{AppState, Settings};
