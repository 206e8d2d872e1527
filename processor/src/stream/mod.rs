//! The stream: the long-running `processor run`, from the consumer group to the committed batch
//! and what follows the commit (counters, alert pushes, health).

pub mod alert_outbox;
pub mod assignment;
pub mod batch;
pub mod consumer;
pub mod corrections;
pub mod dead_letters;
pub mod fair_labels;
mod first_seen;
mod forecasts;
pub mod handoff;
pub mod health;
pub mod label_metrics;
pub mod metrics;
pub mod optimize_apply;
pub mod pipeline;
pub mod prepare;
mod reservations;
pub mod topics;
pub mod write;
pub mod write_errors;
