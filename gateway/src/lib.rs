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
//! - [`api`]: the handlers and [`api::AppError`], the one mapping from
//!   failures to status codes and JSON bodies.
//! - [`app`]: [`app::AppState`] and the routers ([`app::router`],
//!   [`app::router_with`] for later routes, [`app::admin_router`]).
//! - [`budgets`]: the admin budget API and the budget status endpoint, on
//!   the processor's database (`database.url`).
//! - [`request_id`], [`readiness`], [`metrics`]: cross-cutting pieces.
//! - [`server`]: serving both ports and draining once the shutdown token
//!   is cancelled (by `infra::signals` on SIGTERM).

pub mod api;
pub mod app;
pub mod append;
pub mod auth;
pub mod budgets;
pub mod config;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod readiness;
pub mod request_id;
pub mod server;

pub use app::{admin_router, router, router_with, AppState, Settings};
pub use append::{AppendError, AppendReport, Appender};
pub use auth::{Authenticated, KeyRing};
pub use config::Config;
