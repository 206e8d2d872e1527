//! The gateway's integration tests, one binary: handlers through `Router::oneshot`, a real
//! socket, the Kafka mock cluster, the budgets API against a real database; `support` is what they
//! share.

mod support;

mod admin_db;
mod admin_refusals;
mod budgets_api;
mod budgets_db;
mod connections;
mod each_user_budgets_db;
mod fuzz_usage;
mod handlers;
mod kafka_mock;
mod key_budgets;
mod key_reload;
mod otlp;
mod reservations_db;
mod socket;
mod startup_refusals;
mod trust;
mod user_budgets_db;
