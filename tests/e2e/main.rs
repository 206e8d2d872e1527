//! tokenledger's end-to-end tests, one binary: the real binaries against a real broker,
//! TimescaleDB, Prometheus and Alertmanager, each module what one file tested before; `deploy`
//! checks the Docker deployment without Docker, `grafana` reads the dashboards for the
//! `dashboards` and `observability` tests. What they share is this crate's library
//! (`tests/support/`, also used by the other crates' integration tests).

mod admin_gateway;
mod adversarial;
mod budget_forecasts;
mod budgets;
mod dashboards;
mod deploy;
mod exports;
mod faults;
mod grafana;
mod kafka_contract;
mod observability;
mod offsets;
mod operations;
mod optimize_reports;
mod otlp;
mod pipeline;
mod pricing_corpus;
mod reconciliation;
mod sdk_usage;
mod services;
mod tls;
mod untrusted_input;
mod writers;
mod zombie;
