//! tokenledger's processor: consumes usage events from Kafka in a consumer
//! group, prices them, writes each exactly once into TimescaleDB and
//! exports Prometheus counters for the rows it stored.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration: sections, defaults, cross-field
//!   rules. Its layering, the `Secret` type of credentials, logging, signal
//!   handling, the Postgres pool and the librdkafka log hook are the
//!   `infra` crate's, shared with the gateway.
//! - [`migrate`]: the `sql/V*.sql` migrations, embedded, applied in order.
//! - [`consumer`]: the consumer-group member on its own thread; assignment
//!   at the offsets stored in the database; topic creation.
//! - [`record`]: one Kafka record, owned, copied out of librdkafka's message.
//! - [`topics`]: the topics the processor creates, with `min.insync.replicas`.
//! - [`batch`]: records accumulate into batches closed by size or age.
//! - [`prepare`]: pure, no I/O: decode, re-validate, sort out dead letters,
//!   dedupe inside the batch, price; classify against the database's answers.
//! - [`write`](mod@write): the one transaction per batch and its SQL: rows, budget
//!   spend, offsets; dead letters acknowledged before the commit.
//! - [`write_errors`]: what a failed write means (transient, permanent,
//!   fatal, by SQLSTATE), and the bisection that finds the events a
//!   permanent error is about.
//! - [`offsets`]: `ingest_offsets`, and the in-memory floor of stored offsets.
//! - [`log_check`]: whether a partition's log still reaches a stored offset.
//! - [`offsets_admin`]: `processor offsets show|reset`.
//! - [`assignment`]: which assigned partitions are consumed, which are held
//!   because the log no longer reaches their stored offset.
//! - [`dead_letters`]: what cannot be stored goes to the dead-letter topic.
//! - [`metrics`]: the guide's counters and the operational metrics, moved
//!   once per committed batch.
//! - [`health`]: `/healthz`, `/readyz` and the admin listener that also
//!   serves `/metrics`.
//! - [`pipeline`]: the run loop tying them together, retries and shutdown.
//! - [`report`]: `processor report`, what landed in the database.
//! - [`refresh`]: `processor refresh`, re-materializing the rollups over a range.
//! - [`corrections`]: `processor reprice`'s corrections exported as their own
//!   Prometheus series.
//! - [`prices`]: `processor prices import-litellm`, a community catalog
//!   converted into a price file.
//! - [`reprice`]: `processor reprice`, stored rows re-priced under the current
//!   book with an audit trail; budget spend and rollups made consistent.
//! - [`budgets`]: budget definitions from the database, `processor budgets apply`.
//! - [`budget_spend`]: budget spend and threshold crossings, in the batch transaction.
//! - [`forecasts`]: the burn-rate forecast gauge of budgets with `forecast_alert`.
//! - [`reservations`]: settling budget reservations named by new events, in the batch transaction.
//! - [`alert_outbox`]: pushes recorded crossings to Alertmanager and the webhook;
//!   the spend-ratio gauges.
//! - [`database`]: the processor's pool and single connections, on
//!   `infra::database`.
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

pub mod alert_outbox;
pub mod assignment;
pub mod attribution;
pub mod batch;
pub mod budget_spend;
pub mod budgets;
pub mod config;
pub mod consumer;
pub mod corrections;
pub mod database;
pub mod dead_letters;
pub mod export;
pub mod fair_labels;
pub mod forecasts;
pub mod health;
pub mod label_metrics;
pub mod log_check;
pub mod metrics;
pub mod migrate;
pub mod offsets;
pub mod offsets_admin;
pub mod pipeline;
pub mod prepare;
pub mod prices;
pub mod record;
pub mod refresh;
pub mod report;
pub mod reprice;
pub mod reservations;
pub mod topics;
pub mod write;
pub mod write_errors;
