//! The processor's integration tests, one binary: each module is what one file tested before
//! (database tests against a real TimescaleDB, the Kafka pipeline against a real broker, the
//! `prices` command), `support` what they share.

mod support;

mod attribution_db;
mod budgets_db;
mod call_identity_db;
mod concurrency_db;
mod each_user_budgets_db;
mod forecast_alerts_db;
mod handoff_kafka;
mod key_budgets_db;
mod migrate_db;
mod optimize_db;
mod optimize_fold_db;
mod optimize_pending_db;
mod optimize_rebuild_db;
mod pipeline_kafka;
mod prices_cli;
mod provenance_db;
mod recent_keys_db;
mod reconcile_db;
mod reprice_db;
mod reservations_db;
mod rolling_db;
mod tenant_key_db;
mod unstorable_db;
mod writer_db;
