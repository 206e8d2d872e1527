//! The operator commands: one-shot subcommands of the `processor` binary, one module each.

pub mod budgets;
pub mod export;
pub mod offsets;
pub mod prices;
pub mod refresh;
pub mod report;
pub mod reprice;
