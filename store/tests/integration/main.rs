//! The store's integration tests, one binary, against a real TimescaleDB.

mod budgets_db;
mod corrections_db;
mod exports_db;
mod offsets_db;
mod spend_rule;
