//! tokenledger's processor: consumes usage events from Kafka in a consumer
//! group, prices them, writes each exactly once into TimescaleDB and
//! exports Prometheus counters for the rows it stored.
//!
//! # Layout
//!
//! Two halves, and what both use:
//!
//! - `stream`: `processor run`, the long-running consumer. Its modules are
//!   the steps of a record's way: `consumer` (the group member on its own
//!   thread, assignment at the stored offsets, `assignment` of which
//!   partitions are held, `topics` it creates), `batch` (records closed into
//!   batches by size or age), `prepare` (pure: decode, re-validate, dedupe,
//!   price), `write` (the one transaction per batch: rows, budget spend,
//!   attribution, offsets; `write_errors` says what a failure means and
//!   bisects), `dead_letters`, then what follows the commit: `metrics`
//!   (with `label_metrics`, `fair_labels`, `corrections`), `alert_outbox`
//!   (crossings pushed to Alertmanager and the webhook), `health`
//!   (`/healthz`, `/readyz`, `/metrics`); `pipeline` is the run loop tying
//!   them together, retries and shutdown; `handoff` hands records to the
//!   writers' channels (a full one pauses only its writer's partitions);
//!   `reservations` settles the budget reservations new events name, in the
//!   batch transaction; `forecasts` exports the burn-rate forecast gauge.
//! - `commands`: the operator commands, one module each: `migrate`,
//!   `report`, `refresh`, `reprice`, `rebuild_attribution`, `budgets`
//!   (`budgets apply`), `offsets` (`offsets show|reset`), `export` (FOCUS,
//!   statements), `prices` (`prices import-litellm`), `optimize` (`report
//!   optimize`, `what-if`, `rebuild-optimize`), `reconcile` (the ledger
//!   against the providers' own reports). Every one that reads
//!   or changes tables connects through `commands::connect_verified`.
//! - Shared: [`config`] (the typed configuration; its layering, `Secret`,
//!   logging, signals, the Postgres pool and the librdkafka log hook are the
//!   `infra` crate's; every statement on a table is the `store` crate's,
//!   the processor decides what to run when), [`database`] (the pool and
//!   single connections),
//!   [`migrate`] (`store::migrate`, the embedded `sql/V*.sql` migrations:
//!   `run` and every command verify them, `migrate` applies them), [`offsets`]
//!   (`store::offsets` and the floor of stored offsets: written by the
//!   stream, shown and reset by a command), `log_check` (whether a
//!   partition's log still reaches a stored offset), [`record`] (one Kafka
//!   record, owned), `budget_spend` (spend and crossings: the batch
//!   transaction and `reprice`), [`attribution`] (the use-case rollup:
//!   written by the stream, read by `report` and `reprice`).
//! - [`cli`]: the command line and its dispatch; `main.rs` only starts it.
//!
//! Modules are private; what the benchmark and the integration tests drive
//! directly is re-exported below, by the name it always had.
//!
//! # Exactly once
//!
//! Kafka delivers at least once; the table must count every event once.
//!
//! 1. **The row is the record of having processed an event.** Rows are keyed
//!    by `(created_at, tenant_id, id)` and inserted with `ON CONFLICT DO NOTHING
//!    RETURNING`, so delivering an event again (a client retry through the
//!    gateway, redelivery after a crash, two consumers during a rebalance,
//!    a replay) cannot add a second row. `RETURNING` tells which rows are
//!    new; a key already stored is compared by `payload_sha256`: equal is a
//!    duplicate, different a conflicting reuse of the id, which is
//!    dead-lettered instead of silently dropped.
//! 2. **The offsets live in the same transaction as the rows.** Each batch
//!    upserts `ingest_offsets.next_offset = GREATEST(stored, last + 1)` for
//!    every partition it touched and commits together with its rows, so the
//!    stored position and the stored rows can never disagree, and the
//!    position never moves backwards, even when two processors briefly
//!    write the same partition.
//! 3. **Nothing is skipped.** On assignment the consumer starts each
//!    partition at its stored `next_offset` (earliest when none), read
//!    inside the rebalance callback before the assignment takes effect;
//!    records below a partition's known stored offset are dropped as already
//!    stored. A record is below the stored offset only if a committed batch
//!    covered it, and a batch only covers a record it stored, found stored,
//!    or had acknowledged by the dead-letter topic *before* the transaction
//!    committed. Kafka's own committed offsets are written after the
//!    database commit for lag monitoring only and are never read.
//! 4. **Side effects follow the commit.** Prometheus counters move after
//!    the commit and only for the rows `RETURNING` reported as new, so a
//!    batch that is retried or redelivered does not count twice. A crash
//!    between commit and counting loses those increments from one process's
//!    counters (they restart from zero anyway) but never double-counts.
//!    Effects that must be exact (budget spend) belong inside the
//!    transaction, in [`write`](mod@write).

pub mod attribution;
mod budget_spend;
pub mod cli;
mod commands;
pub mod config;
pub mod database;
mod log_check;
pub use store::migrate;
pub mod offsets;
pub mod record;
mod stream;

// The benchmark and the integration tests drive these steps one at a time.
pub use commands::{budgets, optimize, reconcile, refresh, report, reprice};
pub use stream::{consumer, dead_letters, metrics, optimize_apply, pipeline, prepare, write};
